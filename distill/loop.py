"""One training loop for both phases, on Accelerate: one device or many, bf16, accumulation, exact resume.

Each optimizer step takes a deterministic global batch (a function of the step number), so a resumed
run and a run on several processes see exactly the data an uninterrupted single-process run sees;
each process takes its contiguous share of the global batch and gradients are averaged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mlcompress.errors import InputError, OutputError

from .workdir import complete_checkpoints

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class TrainConfig:
    """Optimisation and runtime settings shared by phase 1, phase 2 and teacher fine-tuning."""

    steps: int = 2000
    batch_size: int | None = 32  # sequences per optimizer step, over all processes and accumulation steps
    grad_accum: int = 1
    lr: float | None = 1e-4  # peak; None (and batch size None): the stage's recipe (distill general: its objective's)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    device: str = "auto"  # auto, cpu or cuda
    mixed_precision: str = "auto"  # auto (bf16 on a GPU or CPU that has it), no, bf16 or fp16
    time_budget: float | None = None  # seconds for the whole run: the step count is sized to end inside it
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    progress: bool = True

    def with_recipe(self, batch_size: int, lr: float) -> TrainConfig:
        """This config with a stage's recipe where it leaves the batch size or the learning rate unset (None)."""
        return replace(self, batch_size=batch_size if self.batch_size is None else self.batch_size,
                       lr=lr if self.lr is None else self.lr)

    def validate(self) -> None:
        if self.batch_size is None or self.lr is None:
            raise InputError("no batch size or learning rate was set", "give --batch-size and --lr")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise InputError("steps, batch size and gradient accumulation must be positive",
                             "e.g. --steps 2000 --batch-size 32 --grad-accum 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"unknown device {self.device!r}", "use auto, cpu or cuda")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise InputError(f"unknown mixed precision {self.mixed_precision!r}", "use auto, no, bf16 or fp16")
        if self.time_budget is not None and self.time_budget <= 0:
            raise InputError(f"time budget {self.time_budget} s is not positive", "e.g. --time-budget 30m")


def parse_duration(text: str | float | int | None) -> float | None:
    """Seconds in a duration such as ``90``, ``90s``, ``30m``, ``1.5h`` or ``1h30m`` (None stays None)."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", text.strip().lower())
    if not parts or re.sub(r"[\d.\shms]", "", text.lower()) or "".join(n + u for n, u in parts) != re.sub(r"\s", "", text.lower()):
        raise InputError(f"cannot read the duration {text!r}", "write it as 45m, 1h, 1h30m or 900s")
    seconds = sum(float(n) * units[u] for n, u in parts)
    if seconds <= 0:
        raise InputError(f"duration {text!r} is not positive", "e.g. 30m")
    return seconds


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX512-BF16 or AMX), where bf16 autocast pays off; not
    when torch's kernels are capped below AVX512 (``ATEN_CPU_CAPABILITY=avx2``), where bf16 would be emulated."""
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "AVX512")()
    if not str(capability).upper().startswith(("AVX512", "AMX")):
        return False
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def auto_precision(use_cpu: bool) -> str:
    """bf16 where the device computes it natively (a GPU with bf16, or an AVX512-BF16/AMX CPU), else fp32."""
    if use_cpu:
        return "bf16" if cpu_has_bf16() else "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "no"


@dataclass
class TrainState:
    """Where a run stands: the number of optimizer steps done and the last logged figures."""

    step: int = 0
    resumed_from: int | None = None
    last: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    tokens: int = 0  # over the whole run, resumed parts included
    run_tokens: int = 0  # in this process's run only, for throughput
    planned: int = 0  # the step count of the schedule (config.steps, or the time budget's plan)


def resolve_precision(config: TrainConfig, use_cpu: bool) -> str | None:
    """The precision a run trains in: the one asked for; with ``auto``, the launcher's (``accelerate launch
    --mixed_precision`` or its config file, which set ACCELERATE_MIXED_PRECISION), else what the device computes
    natively. None hands the choice to accelerate (it reads that variable). Clear errors for what cannot run."""
    precision = config.mixed_precision
    if precision == "auto":
        return None if os.environ.get("ACCELERATE_MIXED_PRECISION") else auto_precision(use_cpu)
    if precision == "fp16" and use_cpu:
        raise InputError("fp16 mixed precision was asked for on a CPU, where torch has no fp16 autocast for training "
                         "(it would silently train in fp32)",
                         "use --precision bf16 (any x86 CPU; fast with AVX512-BF16 or AMX) or --precision no, or run on a GPU")
    if precision == "bf16" and not use_cpu and not torch.cuda.is_bf16_supported():
        raise InputError(f"bf16 mixed precision was asked for on {torch.cuda.get_device_name()}, which has no bf16",
                         "use --precision fp16 or --precision no on this GPU (or auto, which picks what it has)")
    return precision


def fresh_accelerate_state(use_cpu: bool) -> None:
    """Forget the accelerate state an earlier run in this process left (a process-wide singleton that would pin its
    precision for every later run), as accelerate's own tests do between tests. The process state (device, process
    group) is kept under a multi-process launch; in one process it is rebuilt when the device changes."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    partial = PartialState._shared_state
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    if partial and not distributed and (partial.get("device") is None
                                        or (partial["device"].type == "cpu") != use_cpu):
        PartialState._reset_state()


def make_accelerator(config: TrainConfig):
    """An Accelerator for the requested device and precision, with a state of its own (so that runs in one process
    can use different precisions); a clear error when a GPU is asked for and absent."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    config.validate()
    if config.device == "cuda" and not torch.cuda.is_available():
        raise InputError("a GPU was asked for (device cuda) but torch sees none",
                         "run on a machine with a CUDA GPU and a CUDA build of torch, or use --device cpu")
    use_cpu = config.device == "cpu" or not torch.cuda.is_available()
    precision = resolve_precision(config, use_cpu)
    fresh_accelerate_state(use_cpu)
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=precision, step_scheduler_with_optimizer=False)
    set_seed(config.seed)
    return accelerator


class LinearSchedule:
    """Linear warm-up then linear decay to zero at ``total`` steps; ``total`` may be set once a time budget is planned.

    An object (not a closure), so that LambdaLR saves and restores ``total`` and ``warmup_ratio`` with a checkpoint.
    """

    def __init__(self, total: int, warmup_ratio: float) -> None:
        self.total, self.warmup_ratio = int(total), float(warmup_ratio)

    def __call__(self, step: int) -> float:
        warmup = math.ceil(self.warmup_ratio * self.total)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (self.total - step) / max(1, self.total - warmup))


class BudgetPlan:
    """Sizes the step count to a time budget: time a few warm-up steps, then fit the schedule into what is left.

    The plan is re-checked after every step: shrunk at once if the run has slowed down enough to overrun, grown
    (at most every RECENT steps) if it runs more than 10% faster than planned, e.g. after a busy warm-up.
    A resumed run keeps the plan saved in its checkpoint and finishes that schedule.
    """

    WARMUP_STEPS = 1  # untimed (allocations, first-call costs)
    TIMED_STEPS = 5  # timed, or fewer once they take TIMED_SHARE of the budget
    TIMED_SHARE = 0.03
    RESERVE = 0.03  # share of the budget kept for the final save
    RECENT = 10

    def __init__(self, budget: float | None, started_at: float, planned: int | None) -> None:
        self.budget, self.started_at, self.planned = budget, started_at, planned
        self.grows = planned is None  # a resumed run keeps its plan: it finishes the schedule it started
        self.replanned_at = 0
        self.timer: tuple[int, float] | None = None
        self.recent: list[tuple[int, float]] = []  # (step, time) of the last RECENT steps: a slowdown shows at once

    @property
    def active(self) -> bool:
        return self.budget is not None and self.grows  # a resumed run keeps the saved plan as it is

    def deadline(self) -> float:
        return self.started_at + self.budget * (1 - self.RESERVE)

    def observe(self, step: int, now: float, schedule: LinearSchedule) -> bool:
        """Called after each step; returns True when the plan (``self.planned``) changed."""
        if not self.active:
            return False
        if self.timer is None:
            if step >= self.WARMUP_STEPS or self.planned is not None:
                self.timer = (step, now)
            return False
        first, t0 = self.timer
        done = step - first
        self.recent = (self.recent + [(step, now)])[-self.RECENT:]
        if done < 1 or (done < self.TIMED_STEPS and now - t0 < self.TIMED_SHARE * self.budget):
            return False
        pace = (now - t0) / done
        recent = (now - self.recent[0][1]) / (step - self.recent[0][0]) if len(self.recent) == self.RECENT else None
        left = self.deadline() - now
        fits = step + max(0, int(left / max(pace, recent or 0.0)))  # the slower pace: never overrun
        shrink = self.planned is not None and fits < self.planned - max(2, 0.02 * self.planned)
        # grow on the recent pace (the first steps may have been timed on a busy machine), at most every RECENT steps
        grown = step + max(0, int(left / recent)) if recent else 0
        grow = self.planned is not None and self.grows and grown > 1.1 * self.planned + 2 \
            and step - self.replanned_at >= self.RECENT
        if self.planned is None or shrink or grow:
            self.planned, self.replanned_at = max(step + 1, grown if grow else fits), step
            schedule.total = self.planned
            return True
        return False


def train(model: torch.nn.Module, loss_fn: LossFn, batch_for_step: Callable[[int], dict[str, torch.Tensor]],
          config: TrainConfig, work_dir: str | os.PathLike[str], accelerator=None, *,
          after_step: Callable[[torch.nn.Module], None] | None = None, stop_after: int | None = None,
          started_at: float | None = None,
          on_step: Callable[[int, int, torch.nn.Module], None] | None = None,
          before_step: Callable[[int, int], None] | None = None) -> TrainState:
    """Run ``config.steps`` optimizer steps of ``loss_fn``, resuming from the newest checkpoint in ``work_dir``.

    With ``config.time_budget`` the step count is planned from the measured speed instead, so that the
    schedule ends inside the budget counted from ``started_at`` (default: now); a resumed run keeps its plan.
    ``after_step`` runs on the unwrapped model after every optimizer step (sparse fine-tuning resets
    unselected entries there); ``on_step(step, planned_steps, model)`` after it; ``before_step(steps_done,
    planned_steps)`` before each step (a resumed run calls it too). ``stop_after`` ends the run early, as a kill
    would (for tests).
    """
    accelerator = accelerator or make_accelerator(config)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    world = accelerator.num_processes
    if config.batch_size % (world * config.grad_accum):
        raise InputError(f"batch size {config.batch_size} does not split over {world} process(es) x "
                         f"{config.grad_accum} accumulation step(s)", "choose a batch size divisible by their product")
    model, optimizer, scheduler, schedule = _prepare(model, config, accelerator)
    state = TrainState()
    existing = complete_checkpoints(work)
    saved_plan = None
    if existing:
        accelerator.load_state(str(existing[-1]))
        saved = json.loads((existing[-1] / "trainer_state.json").read_text())
        state.step = state.resumed_from = saved["step"]
        state.tokens = saved.get("tokens", 0)
        saved_plan = saved.get("planned_steps")
    plan = BudgetPlan(config.time_budget, time.perf_counter() if started_at is None else started_at, saved_plan)
    state.planned = schedule.total = saved_plan or (config.steps if not plan.active else schedule.total)
    start_time, start_step = time.perf_counter(), state.step
    progress = _Progress(state.planned, state.step, enabled=config.progress and accelerator.is_main_process)
    model.train()
    while state.step < state.planned:
        if before_step is not None:
            before_step(state.step, state.planned)
        figures = _step(model, loss_fn, batch_for_step(state.step), config, accelerator, optimizer, scheduler, state)
        if after_step is not None:
            after_step(accelerator.unwrap_model(model))
        if plan.observe(state.step, time.perf_counter(), schedule):
            state.planned = plan.planned
            progress.resize(state.planned)
        if on_step is not None:
            on_step(state.step, state.planned, accelerator.unwrap_model(model))
        _log(state, figures, config, accelerator, scheduler, progress, work / "metrics.jsonl", start_time, start_step,
             stop_after)
        if state.step % _checkpoint_every(config, state) == 0 or state.step == state.planned:
            _save_checkpoint(accelerator, work, state, config.keep_checkpoints)
        if stop_after is not None and state.step >= stop_after:
            break
    progress.close()
    state.seconds = time.perf_counter() - start_time
    accelerator.wait_for_everyone()
    return state


def _prepare(model: torch.nn.Module, config: TrainConfig, accelerator):
    """AdamW (no decay on biases and norms) and the linear schedule, prepared by Accelerate."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    # with a time budget the total is provisional (a generous guess) until the warm-up steps are timed
    schedule = LinearSchedule(config.steps if config.time_budget is None else 10**6, config.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return model, optimizer, scheduler, schedule


def _step(model, loss_fn: LossFn, batch: dict[str, torch.Tensor], config: TrainConfig, accelerator, optimizer,
          scheduler, state: TrainState) -> dict[str, torch.Tensor]:
    """One optimizer step over this process's share of the global batch; returns the detached loss parts."""
    world, rank = accelerator.num_processes, accelerator.process_index
    rows = next(iter(batch.values())).shape[0]
    share = rows // world
    local = {k: v[rank * share:(rank + 1) * share] for k, v in batch.items()}
    micro = share // config.grad_accum
    figures: dict[str, torch.Tensor] = {}  # detached; turned into floats only when logged (no sync per step)
    for m in range(config.grad_accum):
        part = {k: v[m * micro:(m + 1) * micro].to(accelerator.device) for k, v in local.items()}
        sync = accelerator.no_sync(model) if m < config.grad_accum - 1 else contextlib.nullcontext()
        with sync, accelerator.autocast():
            loss, parts = loss_fn(model, part)
            accelerator.backward(loss / config.grad_accum)
        for k, v in parts.items():
            figures[k] = figures.get(k, 0.0) + v / config.grad_accum
    if config.max_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    state.step += 1
    if "input_ids" in batch:  # real tokens: padding is not counted
        mask = batch.get("attention_mask")
        n = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        state.tokens += n
        state.run_tokens += n
    return figures


def _checkpoint_every(config: TrainConfig, state: TrainState) -> int:
    """Steps between checkpoints: the configured interval, and with a time budget at least five per run."""
    if config.time_budget is None:
        return config.checkpoint_every
    return max(1, min(config.checkpoint_every, state.planned // 5))


def _log(state: TrainState, figures: dict[str, torch.Tensor], config: TrainConfig, accelerator, scheduler,
         progress, metrics: Path, start_time: float, start_step: int, stop_after: int | None) -> None:
    """Every ``log_every`` steps (and at the end): update the progress bar and append a line to metrics.jsonl."""
    if not (state.step % config.log_every == 0 or state.step == state.planned or state.step == stop_after):
        return
    elapsed = time.perf_counter() - start_time
    state.last = {k: float(v) for k, v in figures.items()}
    progress.update(state.step, state.last)
    if accelerator.is_main_process:
        done = state.step - start_step
        record = {"step": state.step, "planned_steps": state.planned, "precision": accelerator.mixed_precision,
                  **{k: round(v, 6) for k, v in state.last.items()},
                  "lr": scheduler.get_last_lr()[0], "tokens": state.tokens, "elapsed_s": round(elapsed, 3),
                  "eta_s": round(elapsed / done * (state.planned - state.step), 1)}
        with metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _save_checkpoint(accelerator, work: Path, state: TrainState, keep: int) -> None:
    target = work / "checkpoints" / f"step-{state.step:07d}"
    try:
        accelerator.save_state(str(target))
    except Exception as exc:
        from mlcompress.artifacts import is_disk_full

        if not is_disk_full(exc):
            raise
        shutil.rmtree(target, ignore_errors=True)
        raise OutputError(f"the disk ran out of space while saving a checkpoint into {work} ({exc})",
                          "free some space on that disk and rerun the same command: it resumes from the last checkpoint"
                          ) from exc
    accelerator.wait_for_everyone()  # every rank has written its part (its RNG state) before the checkpoint is complete
    if accelerator.is_main_process:
        partial = target / "trainer_state.json.partial"  # the file that marks a checkpoint complete: renamed into place
        partial.write_text(json.dumps({"step": state.step, "tokens": state.tokens, "planned_steps": state.planned}) + "\n")
        os.replace(partial, target / "trainer_state.json")
        for old in complete_checkpoints(work)[:-max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class _Progress:
    """A rich progress bar with ETA on the main process, silent elsewhere or when not wanted."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]distill"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                TextColumn("{task.fields[figures]}"), transient=not sys.stderr.isatty())
            self.task = self.bar.add_task("steps", total=total, completed=done, figures="")
            self.bar.start()

    def resize(self, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=total)

    def update(self, step: int, figures: dict[str, float]) -> None:
        if self.bar is not None:
            text = " ".join(f"{k} {v:.4f}" for k, v in figures.items())
            self.bar.update(self.task, completed=step, figures=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
