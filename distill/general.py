"""BiStil phase 1: distil a general bilingual student from the multilingual teacher on source+target text."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mlcompress.artifacts import atomic_output_dir, write_provenance
from mlcompress.errors import InputError, LanguageError
from mlcompress.sources import DEFAULT_MODEL, resolve_model

from .attention import use_capture_backend
from .data import mixed_blocks, mlm_mask, step_rows
from .losses import soft_cross_entropy
from .loop import TrainConfig, make_accelerator, train
from .objective import add_representation_terms, paired_forward
from .student import PROJECTION_FILE, check_hidden_size, hidden_pairs, make_student, narrow_student, principal_basis
from .workdir import close_work_dir, open_work_dir


@dataclass
class Phase1Losses:
    """Weights of the phase-1 objective; BiStil uses hidden-state and attention losses."""

    hidden: float = 1.0
    attention: float = 1.0
    attention_kind: str = "mse"  # mse or kl
    logits: float = 0.0  # KD on MLM logits (teacher and student need an MLM head)
    mlm: float = 0.0  # plain MLM cross-entropy on masked tokens
    temperature: float = 2.0


@dataclass
class DistillResult:
    """What a distillation run produced and measured."""

    output: Path
    layer_map: list[int]
    steps: int
    resumed_from: int | None
    seconds: float
    tokens_per_second: float
    final: dict[str, float] = field(default_factory=dict)
    params_teacher: int = 0
    params_student: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output"] = str(self.output)
        return d


def phase1_loss(teacher: torch.nn.Module, mapping: list[int], losses: Phase1Losses, basis: torch.Tensor | None = None):
    """The loss function of phase 1 for the training loop: student vs teacher on the same masked blocks."""
    pairs = hidden_pairs(mapping)
    need_logits = losses.logits > 0 or losses.mlm > 0

    def loss_fn(student: torch.nn.Module, batch: dict[str, torch.Tensor]):
        t_out, s_out, t_att, s_att = paired_forward(teacher, student, {"input_ids": batch["input_ids"]}, mapping,
                                                    bool(losses.attention))
        parts: dict[str, torch.Tensor] = {}
        total = add_representation_terms(torch.zeros((), device=batch["input_ids"].device), parts, s_out, t_out,
                                         s_att, t_att, pairs, losses.hidden, losses.attention, losses.attention_kind,
                                         basis=basis)
        if need_logits:
            selected = batch["labels"] != -100
            if losses.logits:
                k = soft_cross_entropy(s_out.logits[selected], t_out.logits[selected], losses.temperature)
                total = total + losses.logits * k
                parts["logits"] = k.detach()
            if losses.mlm:
                m = torch.nn.functional.cross_entropy(s_out.logits[selected].float(), batch["labels"][selected])
                total = total + losses.mlm * m
                parts["mlm"] = m.detach()
        parts["loss"] = total.detach()
        return total, parts

    return loss_fn


def teacher_basis(teacher: torch.nn.Module, blocks: torch.Tensor, mapping: list[int], width: int,
                  max_blocks: int = 16) -> torch.Tensor:
    """Principal basis of the teacher's hidden states (embeddings and mapped layers) on the first training blocks."""
    device = next(teacher.parameters()).device
    with torch.no_grad():
        out = teacher(input_ids=blocks[:max_blocks].to(device), output_hidden_states=True)
    states = torch.cat([out.hidden_states[t].reshape(-1, out.hidden_states[t].shape[-1]).cpu()
                        for _, t in hidden_pairs(mapping)])
    return principal_basis(states, width)


def block_batches(blocks: torch.Tensor, batch_size: int, seed: int, vocab_size: int, mask_id: int | None,
                  special_ids: list[int]):
    """Global batch for each step: blocks in a seeded per-epoch order, MLM masks seeded by the step."""
    def batch_for_step(step: int) -> dict[str, torch.Tensor]:
        rows = step_rows(len(blocks), batch_size, seed, step)
        ids = blocks[rows]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        inputs, labels = mlm_mask(ids, gen, vocab_size, mask_id, special_ids)
        return {"input_ids": inputs, "labels": labels}

    return batch_for_step


def distill_general(
    teacher: str | os.PathLike[str] = DEFAULT_MODEL,
    languages: str | list[str] = "en,el",
    corpora: Mapping[str, Any] | list[str] | None = None,
    output: str | os.PathLike[str] = "student",
    *,
    every_k: int = 2,
    hidden_size: int | None = None,
    block_size: int = 256,
    max_blocks_per_language: int | None = None,
    losses: Phase1Losses | None = None,
    train_config: TrainConfig | None = None,
    trim_vocabulary: bool = False,
    overwrite: bool = False,
    restart: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    stop_after: int | None = None,
) -> DistillResult:
    """Phase 1: copy every k-th teacher layer into a student and distil it on the languages' text.

    Resumes an interrupted run to the same output (checkpoints live in a hidden sibling of it).
    ``trim_vocabulary`` first trims the teacher to the tokens the corpora use (mlcompress trim).
    ``hidden_size`` makes a narrower student, initialised by projection onto the principal subspace of the
    teacher's hidden states on the training text (the basis is saved as ``hidden_projection.safetensors``).
    """
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    from mlcompress.corpus import parse_corpora
    from mlcompress.languages import parse_languages

    losses = losses or Phase1Losses()
    config = train_config or TrainConfig()
    if losses.attention_kind not in ("mse", "kl"):
        raise InputError(f"unknown attention loss {losses.attention_kind!r}", "use mse or kl")
    langs = parse_languages(languages)
    if len(langs) < 2:
        raise LanguageError("phase 1 needs a source and a target language", "pass two languages, e.g. -l en,el")
    texts = parse_corpora(corpora)
    missing = [lang for lang in langs if lang not in texts]
    if missing:
        raise LanguageError(f"no text for language(s) {', '.join(missing)}",
                            "pass --corpus LANG=PATH for the source and the target language")
    out = Path(output).expanduser().absolute()
    source = resolve_model(teacher, cache_dir)
    settings = {"teacher": str(source.path), "languages": langs, "corpora": {k: [c.fingerprint() for c in v] for k, v in texts.items()},
                "every_k": every_k, "hidden_size": hidden_size, "block_size": block_size, "max_blocks": max_blocks_per_language,
                "losses": asdict(losses), "train": {k: v for k, v in asdict(config).items() if k != "progress"},
                "trim_vocabulary": trim_vocabulary}
    narrow = hidden_size is not None
    if narrow:  # a width the teacher cannot be narrowed to fails before anything is written
        from transformers import AutoConfig

        teacher_config = AutoConfig.from_pretrained(source.path)
        narrow = hidden_size != teacher_config.hidden_size
        if narrow:
            check_hidden_size(teacher_config, hidden_size)
    accelerator = make_accelerator(config)  # device errors before anything is written
    work = open_work_dir(out, settings, overwrite, restart)

    teacher_dir = source.path
    if trim_vocabulary:
        from mlcompress.vocab_trim import trim

        teacher_dir = work / "teacher-trimmed"
        if not (teacher_dir / "config.json").is_file():
            trim(source.path, langs, {k: [c.spec for c in v] for k, v in texts.items()}, teacher_dir, overwrite=True,
                 cache_dir=cache_dir)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    model_cls = AutoModelForMaskedLM if (losses.logits or losses.mlm) else AutoModel
    teacher_model = model_cls.from_pretrained(teacher_dir, dtype=torch.float32)
    if losses.attention:
        use_capture_backend(teacher_model)
    student, mapping = make_student(teacher_model, every_k)
    blocks, per_lang = mixed_blocks(tok, {lang: [line for c in texts[lang] for line in c.lines()] for lang in langs},
                                    block_size, max_blocks_per_language)
    basis = None
    if narrow:  # the basis is kept in the work dir, so that a resumed run uses exactly the same one
        saved = work / PROJECTION_FILE
        if saved.is_file():
            basis = load_file(str(saved))["basis"]
        else:
            basis = teacher_basis(teacher_model, blocks, mapping, hidden_size)
            if accelerator.is_main_process:
                save_file({"basis": basis}, str(saved))
        student, basis = narrow_student(student, hidden_size, basis)
    pooler = getattr(student.base_model, "pooler", None)
    if pooler is not None:  # not part of the phase-1 objective: keep it as copied (and out of DDP's gradient sync)
        pooler.requires_grad_(False)
    if losses.attention:
        use_capture_backend(student)
    teacher_model.eval().requires_grad_(False).to(accelerator.device)

    specials = sorted(set(tok.all_special_ids))
    vocab = teacher_model.get_input_embeddings().num_embeddings
    batches = block_batches(blocks, config.batch_size, config.seed, vocab, tok.mask_token_id, specials)
    state = train(student, phase1_loss(teacher_model, mapping, losses, basis), batches, config, work, accelerator,
                  stop_after=stop_after)
    result = DistillResult(out, mapping, state.step, state.resumed_from, state.seconds,
                           state.run_tokens / state.seconds if state.seconds else 0.0, state.last,
                           teacher_model.num_parameters(), student.num_parameters())
    if state.step < config.steps:  # stopped early (tests): leave the checkpoints for a resume
        return result
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(student)
        final.config.mlcompress_layer_map = mapping
        with atomic_output_dir(out, overwrite=overwrite) as tmp:
            final.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            if basis is not None:  # phase 2 matches hidden states through the same basis
                save_file({"basis": basis.contiguous()}, str(tmp / PROJECTION_FILE))
            write_provenance(tmp, "distill-general", {**settings, "layer_map": mapping},
                             [source.describe()], {**result.as_dict(), "blocks_per_language": per_lang})
        close_work_dir(work, out)
    accelerator.wait_for_everyone()
    return result
