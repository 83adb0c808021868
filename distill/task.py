"""BiStil phase 2: fine-tune a teacher on source-language task data, then distil it into the phase-1 student.

The student learns from the task-tuned teacher's soft labels at temperature T plus hidden-state and
attention losses; optionally only a sparse subset of its parameters is trained (lottery-ticket
sparse fine-tuning), which keeps the student close to its general bilingual self.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mlcompress.artifacts import atomic_output_dir, write_provenance
from mlcompress.model_card import write_model_card
from mlcompress.errors import InputError
from mlcompress.families import check_supported, model_family
from mlcompress.sources import load_tokenizer, load_weights, resolve_model

from .attention import use_capture_backend
from .general import DistillResult
from .loop import TrainConfig, make_accelerator, train
from .losses import soft_cross_entropy
from .objective import add_representation_terms, paired_forward
from .sparse import SparseUpdate, select_by_movement
from .student import PROJECTION_FILE, encoder_layers, hidden_pairs
from .task_data import TASKS, encode_task, example_batches
from .workdir import close_work_dir, discard_if_unused, open_work_dir, release_work_dir, work_dir_for

DENSE_SHARE = 1 / 3  # of a time budget, for the dense pass that picks the sparse parameters


@dataclass
class Phase2Losses:
    """Weights of the phase-2 objective."""

    soft: float = 1.0
    temperature: float = 2.0
    hidden: float = 1.0
    attention: float = 1.0
    attention_kind: str = "mse"
    hard: float = 0.0  # cross-entropy with the gold labels


def _auto_class(task: str):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    if task not in TASKS:
        raise InputError(f"unknown task {task!r}", f"choose one of: {', '.join(TASKS)}")
    return AutoModelForTokenClassification if task == "token-classification" else AutoModelForSequenceClassification


def finetune_teacher(source: str | os.PathLike[str], task: str, train_file: str | os.PathLike[str],
                     output: str | os.PathLike[str], *, max_examples: int | None = None, max_length: int = 128,
                     train_config: TrainConfig | None = None, overwrite: bool = False, restart: bool = False,
                     cache_dir: str | os.PathLike[str] | None = None, stop_after: int | None = None) -> DistillResult:
    """Fine-tune the source model on source-language task data (the phase-2 teacher)."""
    config = train_config or TrainConfig(lr=3e-5)
    out = Path(output).expanduser().absolute()
    src = resolve_model(source, cache_dir)
    check_supported(model_family(src.path), "distill", str(source))
    settings = {"stage": "teacher", "source": str(src.path), "task": task, "train_file": str(train_file),
                "max_examples": max_examples, "max_length": max_length,
                "train": {k: v for k, v in asdict(config).items() if k != "progress"}}
    accelerator = make_accelerator(config)  # device errors before anything is written
    fresh = not work_dir_for(out).exists()
    work = open_work_dir(out, settings, overwrite, restart, accelerator)
    with discard_if_unused(work, fresh, accelerator):  # a run that fails before its first checkpoint leaves nothing
        tok = load_tokenizer(src.path)
        data = encode_task(task, train_file, tok, max_length, max_examples)
        model = load_weights(
            _auto_class(task), src.path, num_labels=len(data.labels), id2label=dict(enumerate(data.labels)),
            label2id={n: i for i, n in enumerate(data.labels)}, dtype=torch.float32)

        def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]):
            loss = m(**batch).loss
            return loss, {"loss": loss.detach()}

        state = train(model, loss_fn, example_batches(data, config.batch_size, config.seed), config, work, accelerator,
                      stop_after=stop_after)
        result = DistillResult(out, [], state.step, state.resumed_from, state.seconds,
                               state.run_tokens / state.seconds if state.seconds else 0.0, state.last,
                               model.num_parameters(), model.num_parameters())
        if state.step >= state.planned and accelerator.is_main_process:
            with atomic_output_dir(out, overwrite=overwrite) as tmp:
                accelerator.unwrap_model(model).save_pretrained(tmp)
                tok.save_pretrained(tmp)
                write_provenance(tmp, "distill-teacher", settings, [src.describe()], result.as_dict())
                write_model_card(tmp, name=out.name)
            close_work_dir(work, out)
        _finish(state, work, accelerator)
    return result


def _finish(state: Any, work: Path, accelerator: Any) -> None:
    """End a run on every rank together, once the main process has written the output (no rank returns before the
    output exists); a run stopped early gives up its work dir for the resume."""
    if state.step < state.planned and accelerator.is_main_process:
        release_work_dir(work)
    accelerator.wait_for_everyone()


def phase2_loss(teacher: torch.nn.Module, mapping: list[int], losses: Phase2Losses, task: str,
                basis: torch.Tensor | None = None):
    """Student vs task-tuned teacher: soft cross-entropy at T, hidden and attention losses, optional gold CE."""
    pairs = hidden_pairs(mapping)

    def loss_fn(student: torch.nn.Module, batch: dict[str, torch.Tensor]):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        t_out, s_out, t_att, s_att = paired_forward(teacher, student, inputs, mapping, bool(losses.attention))
        mask = batch["attention_mask"].float()
        parts: dict[str, torch.Tensor] = {}
        if task == "token-classification":
            soft = soft_cross_entropy(s_out.logits, t_out.logits, losses.temperature, mask)
        else:
            soft = soft_cross_entropy(s_out.logits, t_out.logits, losses.temperature)
        parts["soft"] = soft.detach()
        total = add_representation_terms(losses.soft * soft, parts, s_out, t_out, s_att, t_att, pairs, losses.hidden,
                                         losses.attention, losses.attention_kind, mask, basis)
        if losses.hard:
            logits = s_out.logits.float()
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
            total = total + losses.hard * ce
            parts["hard"] = ce.detach()
        parts["loss"] = total.detach()
        return total, parts

    return loss_fn


def distill_task(teacher: str | os.PathLike[str], student: str | os.PathLike[str], task: str,
                 train_file: str | os.PathLike[str], output: str | os.PathLike[str], *,
                 losses: Phase2Losses | None = None, density: float | None = None, dense_steps: int | None = None,
                 max_examples: int | None = None, max_length: int = 128, train_config: TrainConfig | None = None,
                 overwrite: bool = False, restart: bool = False, cache_dir: str | os.PathLike[str] | None = None,
                 stop_after: int | None = None) -> DistillResult:
    """Phase 2: distil the task-tuned ``teacher`` into the phase-1 ``student`` (densely, or sparsely at ``density``)."""
    losses = losses or Phase2Losses()
    config = train_config or TrainConfig(lr=5e-5)
    out = Path(output).expanduser().absolute()
    t_src, s_src = resolve_model(teacher, cache_dir), resolve_model(student, cache_dir)
    check_supported(model_family(t_src.path), "distill", str(teacher))
    settings = {"stage": "task", "teacher": str(t_src.path), "student": str(s_src.path), "task": task,
                "train_file": str(train_file), "losses": asdict(losses), "density": density, "dense_steps": dense_steps,
                "max_examples": max_examples, "max_length": max_length,
                "train": {k: v for k, v in asdict(config).items() if k != "progress"}}
    started = time.perf_counter()
    accelerator = make_accelerator(config)  # device errors before anything is written
    fresh = not work_dir_for(out).exists()
    work = open_work_dir(out, settings, overwrite, restart, accelerator)
    with discard_if_unused(work, fresh, accelerator):  # a run that fails before its first checkpoint leaves nothing
        cls = _auto_class(task)
        teacher_model = load_weights(cls, t_src.path, dtype=torch.float32)
        names = [teacher_model.config.id2label[i] for i in range(teacher_model.config.num_labels)]
        tok = load_tokenizer(s_src.path)
        data = encode_task(task, train_file, tok, max_length, max_examples, labels=names)

        def load_student() -> torch.nn.Module:
            return load_weights(cls, s_src.path, num_labels=len(names), id2label=dict(enumerate(names)),
                                       label2id={n: i for i, n in enumerate(names)}, dtype=torch.float32)

        student_model = load_student()
        mapping = _layer_map(teacher_model, student_model)
        basis = _student_basis(teacher_model, student_model, s_src.path)
        if losses.attention:
            use_capture_backend(teacher_model)
            use_capture_backend(student_model)
        teacher_model.eval().requires_grad_(False).to(accelerator.device)
        loss_fn = phase2_loss(teacher_model, mapping, losses, task, basis)
        batches = example_batches(data, config.batch_size, config.seed)

        after_step, selected = None, None
        if density is not None:
            initial = {k: v.detach().clone() for k, v in student_model.state_dict().items()}
            masks = _sparse_masks(student_model, initial, loss_fn, batches, config, dense_steps, density, work, accelerator,
                                  started)
            student_model = load_student()
            student_model.load_state_dict(initial)  # the lottery ticket: back to the start, train only the winners
            if losses.attention:
                use_capture_backend(student_model)
            after_step = SparseUpdate(student_model, masks)
            after_step.freeze_unselected(student_model)
            selected = int(sum(m.sum() for m in masks.values()))
        state = train(student_model, loss_fn, batches, config, work / ("sparse" if density else "dense"), accelerator,
                      after_step=after_step, stop_after=stop_after, started_at=started)
        result = DistillResult(out, mapping, state.step, state.resumed_from, state.seconds,
                               state.run_tokens / state.seconds if state.seconds else 0.0, state.last,
                               teacher_model.num_parameters(), student_model.num_parameters())
        if state.step >= state.planned and accelerator.is_main_process:
            final = accelerator.unwrap_model(student_model)
            final.requires_grad_(True)
            with atomic_output_dir(out, overwrite=overwrite) as tmp:
                final.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                if density is not None:  # the selected entries, for users composing sparse fine-tunings
                    save_file({k: m.to(torch.uint8).contiguous() for k, m in masks.items()}, str(tmp / "sparse_mask.safetensors"))
                write_provenance(tmp, "distill-task", {**settings, "layer_map": mapping}, [t_src.describe(), s_src.describe()],
                                 {**result.as_dict(), "selected_parameters": selected})
                write_model_card(tmp, name=out.name)
            close_work_dir(work, out)
        _finish(state, work, accelerator)
    return result


def _sparse_masks(student_model: torch.nn.Module, initial: dict[str, torch.Tensor], loss_fn: Any, batches: Any,
                  config: TrainConfig, dense_steps: int | None, density: float, work: Path, accelerator: Any,
                  started: float) -> dict[str, torch.Tensor]:
    """The parameters the sparse run trains: those a dense pass moved most (kept in the work dir for a resume).

    The dense pass trains ``student_model`` in place; the caller reloads the student before the sparse run.
    """
    masks_file = work / "masks.safetensors"
    if masks_file.is_file():
        return {k: v.bool() for k, v in load_file(str(masks_file)).items()}
    # with a time budget, the dense pass that picks the parameters gets a third of it
    dense_budget = None if config.time_budget is None else config.time_budget * DENSE_SHARE
    dense_config = TrainConfig(**{**asdict(config), "steps": dense_steps or config.steps, "time_budget": dense_budget})
    train(student_model, loss_fn, batches, dense_config, work / "dense", accelerator, started_at=started)
    trained = {k: v.detach().cpu() for k, v in accelerator.unwrap_model(student_model).state_dict().items()}
    head = tuple(n for n, _ in student_model.named_parameters() if n.startswith(("classifier", "score")))
    params = {n for n, _ in student_model.named_parameters()}
    masks = select_by_movement({k: v for k, v in initial.items() if k in params}, trained, density, always=head)
    if accelerator.is_main_process:  # safetensors (no pickle), renamed into place (a kill leaves no half file)
        partial = masks_file.with_suffix(".partial")
        save_file({k: m.to(torch.uint8).contiguous() for k, m in masks.items()}, str(partial))
        os.replace(partial, masks_file)
    return masks


def _layer_map(teacher: torch.nn.Module, student: torch.nn.Module) -> list[int]:
    """The student's phase-1 layer map (kept in its config), else every k-th teacher layer."""
    saved = getattr(student.config, "mlcompress_layer_map", None)
    n_t, n_s = len(encoder_layers(teacher)), len(encoder_layers(student))
    if saved and len(saved) == n_s and max(saved) < n_t:
        return list(saved)
    if n_t % n_s:
        raise InputError(f"cannot map {n_s} student layers onto {n_t} teacher layers",
                         "use a student made by `mlcompress distill general` from this teacher")
    k = n_t // n_s
    return list(range(k - 1, n_t, k))


def _student_basis(teacher: torch.nn.Module, student: torch.nn.Module, student_dir: Path) -> torch.Tensor | None:
    """The phase-1 projection basis of a narrower student (None when the widths match)."""
    d_t, d_s = int(teacher.config.hidden_size), int(student.config.hidden_size)
    if d_t == d_s:
        return None
    path = Path(student_dir) / PROJECTION_FILE
    if not path.is_file():
        raise InputError(f"the student is {d_s} wide and the teacher {d_t}, and {path} is missing",
                         "use a narrower student made by `mlcompress distill general --hidden-size`, which saves it")
    from safetensors.torch import load_file

    basis = load_file(str(path))["basis"]
    if tuple(basis.shape) != (d_t, d_s):
        raise InputError(f"{path} has shape {tuple(basis.shape)}, expected ({d_t}, {d_s})",
                         "was the student distilled from a teacher of another width?")
    return basis
