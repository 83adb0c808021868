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
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mlcompress.errors import InputError

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class TrainConfig:
    """Optimisation and runtime settings shared by phase 1, phase 2 and teacher fine-tuning."""

    steps: int = 2000
    batch_size: int = 32  # sequences per optimizer step, over all processes and accumulation steps
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    device: str = "auto"  # auto, cpu or cuda
    mixed_precision: str = "auto"  # auto (bf16 on a GPU that has it), no, bf16 or fp16
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise InputError("steps, batch size and gradient accumulation must be positive",
                             "e.g. --steps 2000 --batch-size 32 --grad-accum 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"unknown device {self.device!r}", "use auto, cpu or cuda")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise InputError(f"unknown mixed precision {self.mixed_precision!r}", "use auto, no, bf16 or fp16")


@dataclass
class TrainState:
    """Where a run stands: the number of optimizer steps done and the last logged figures."""

    step: int = 0
    resumed_from: int | None = None
    last: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    tokens: int = 0  # over the whole run, resumed parts included
    run_tokens: int = 0  # in this process's run only, for throughput


def make_accelerator(config: TrainConfig):
    """An Accelerator for the requested device and precision; a clear error when a GPU is asked for and absent."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    config.validate()
    if config.device == "cuda" and not torch.cuda.is_available():
        raise InputError("a GPU was asked for (device cuda) but torch sees none",
                         "run on a machine with a CUDA GPU and a CUDA build of torch, or use --device cpu")
    use_cpu = config.device == "cpu" or not torch.cuda.is_available()
    precision = config.mixed_precision
    if precision == "auto":
        precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=precision, step_scheduler_with_optimizer=False)
    set_seed(config.seed)
    return accelerator


def _checkpoints(work_dir: Path) -> list[Path]:
    root = work_dir / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def train(model: torch.nn.Module, loss_fn: LossFn, batch_for_step: Callable[[int], dict[str, torch.Tensor]],
          config: TrainConfig, work_dir: str | os.PathLike[str], accelerator=None, *,
          after_step: Callable[[torch.nn.Module], None] | None = None, stop_after: int | None = None) -> TrainState:
    """Run ``config.steps`` optimizer steps of ``loss_fn``, resuming from the newest checkpoint in ``work_dir``.

    ``after_step`` runs on the unwrapped model after every optimizer step (sparse fine-tuning resets
    unselected entries there). ``stop_after`` ends the run early, as a kill would (for tests).
    """
    from transformers import get_linear_schedule_with_warmup

    accelerator = accelerator or make_accelerator(config)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    world, rank = accelerator.num_processes, accelerator.process_index
    if config.batch_size % (world * config.grad_accum):
        raise InputError(f"batch size {config.batch_size} does not split over {world} process(es) x "
                         f"{config.grad_accum} accumulation step(s)", "choose a batch size divisible by their product")

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * config.steps), config.steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    state = TrainState()
    existing = _checkpoints(work)
    if existing:
        accelerator.load_state(str(existing[-1]))
        saved = json.loads((existing[-1] / "trainer_state.json").read_text())
        state.step = state.resumed_from = saved["step"]
        state.tokens = saved.get("tokens", 0)
    metrics = work / "metrics.jsonl"
    start_time, start_step = time.perf_counter(), state.step
    progress = _Progress(config.steps, state.step, enabled=config.progress and accelerator.is_main_process)

    model.train()
    while state.step < config.steps:
        batch = batch_for_step(state.step)
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
        if after_step is not None:
            after_step(accelerator.unwrap_model(model))
        state.step += 1
        if "input_ids" in batch:
            state.tokens += int(batch["input_ids"].numel())
            state.run_tokens += int(batch["input_ids"].numel())
        log_now = state.step % config.log_every == 0 or state.step == config.steps or state.step == stop_after
        elapsed = time.perf_counter() - start_time
        if log_now:
            state.last = {k: float(v) for k, v in figures.items()}
            progress.update(state.step, state.last)
        if log_now and accelerator.is_main_process:
            done = state.step - start_step
            record = {"step": state.step, **{k: round(v, 6) for k, v in state.last.items()},
                      "lr": scheduler.get_last_lr()[0], "elapsed_s": round(elapsed, 3),
                      "eta_s": round(elapsed / done * (config.steps - state.step), 1)}
            with metrics.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if state.step % config.checkpoint_every == 0 or state.step == config.steps:
            _save_checkpoint(accelerator, work, state, config.keep_checkpoints)
        if stop_after is not None and state.step >= stop_after:
            break
    progress.close()
    state.seconds = time.perf_counter() - start_time
    accelerator.wait_for_everyone()
    return state


def _save_checkpoint(accelerator, work: Path, state: TrainState, keep: int) -> None:
    target = work / "checkpoints" / f"step-{state.step:07d}"
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        (target / "trainer_state.json").write_text(json.dumps({"step": state.step, "tokens": state.tokens}) + "\n")
        for old in _checkpoints(work)[:-max(keep, 1)]:
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

    def update(self, step: int, figures: dict[str, float]) -> None:
        if self.bar is not None:
            text = " ".join(f"{k} {v:.4f}" for k, v in figures.items())
            self.bar.update(self.task, completed=step, figures=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
