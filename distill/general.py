"""BiStil phase 1: distil a general bilingual student from the multilingual teacher on source+target text."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mlcompress.artifacts import atomic_output_dir, write_provenance
from mlcompress.errors import InputError, LanguageError
from mlcompress.families import check_supported, model_family
from mlcompress.sources import DEFAULT_MODEL, resolve_model

from .attention import use_capture_backend
from .data import mixed_blocks, mlm_mask, step_rows
from .losses import soft_cross_entropy
from .loop import TrainConfig, make_accelerator, train
from .objective import add_representation_terms, paired_forward
from .on_grid import INT4_GRID, QAT_START, GridSpec, OnGridLoss, snapped_copy
from .sentence_objective import sentence_loss, sentence_pool
from .student import PROJECTION_FILE, check_hidden_size, hidden_pairs, make_student, narrow_student, principal_basis
from .workdir import close_work_dir, discard_if_unused, open_work_dir, release_work_dir, work_dir_for


@dataclass
class Phase1Losses:
    """Weights of the phase-1 objective; BiStil uses hidden-state and attention losses.

    ``pooled``, ``relational``, ``contrastive`` and ``crosslingual`` weigh the sentence-embedding terms of the
    ``embedding`` objective.
    """

    hidden: float = 1.0
    attention: float = 1.0
    attention_kind: str = "mse"  # mse or kl
    logits: float = 0.0  # KD on MLM logits (teacher and student need an MLM head)
    mlm: float = 0.0  # plain MLM cross-entropy on masked tokens
    temperature: float = 2.0
    pooled: float = 0.0  # 1 - cosine of pooled sentence embeddings (embedding objective)
    relational: float = 0.0  # MSE of in-batch similarity matrices (embedding objective)
    contrastive: float = 0.0  # in-batch InfoNCE, student embedding -> its teacher embedding (embedding objective)
    crosslingual: float = 0.0  # KL of cross-lingual in-batch rankings, teacher-nearest partners in the batch
    contrast_temperature: float = 0.05  # of the contrastive and cross-lingual terms

    @classmethod
    def preset(cls, objective: str) -> Phase1Losses:
        """The default weights of an objective: ``bistil`` (hidden + attention) or ``embedding``."""
        if objective == "embedding":
            return cls(hidden=1.0, attention=0.0, pooled=10.0, relational=10.0, contrastive=1.0, crosslingual=1.0)
        return cls()


OBJECTIVES = ("auto", "bistil", "embedding")


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
    objective: str = "bistil"
    tokens: int = 0  # real (unpadded) tokens seen over the whole run
    teacher_pass: dict[str, Any] = field(default_factory=dict)  # teacher targets computed once: sentences, seconds

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        d = asdict(self)
        d["output"] = str(self.output)
        return d

    def summary(self) -> str:
        """A few lines: parameters teacher -> student, the layers kept, steps and speed, the final losses."""
        from mlcompress.summary import change, count, render

        resumed = f" (resumed from step {self.resumed_from})" if self.resumed_from else ""
        losses = ", ".join(f"{k} {v:.4g}" for k, v in self.final.items() if isinstance(v, (int, float)))
        title = f"distill ({self.objective})" if self.layer_map else "fine-tune"  # finetune_teacher keeps every layer
        rows = [("parameters", change(self.params_teacher, self.params_student) if self.params_teacher else count(self.params_student)),
                ("teacher layers", ", ".join(map(str, self.layer_map)))]
        if self.teacher_pass:
            p = self.teacher_pass
            rows.append(("teacher targets", f"{sum(p['sentences'].values()):,} sentences "
                         f"({sum(p['computed'].values()):,} computed now, in {p['seconds']:,.0f} s; the rest reused)"))
        rows += [("steps", f"{self.steps}{resumed} in {self.seconds:,.0f} s, {count(self.tokens_per_second)} tokens/s"),
                 ("final", losses)]
        return render(f"{title} -> {self.output}", rows)

    def __str__(self) -> str:
        return self.summary()


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


# Batch size and peak learning rate when the run leaves them unset, per objective: chosen on the shared data's dev sets
# (en+el; embedding: bench/bistil.py's runs, bistil: bench/distill_ablation.py).
RECIPES = {"embedding": {"batch_size": 64, "lr": 5e-4}, "bistil": {"batch_size": 16, "lr": 3e-4}}


def distill_general(
    teacher: str | os.PathLike[str] = DEFAULT_MODEL,
    languages: str | list[str] = "en,el",
    corpora: Mapping[str, Any] | list[str] | None = None,
    output: str | os.PathLike[str] = "student",
    *,
    every_k: int = 2,
    layers: str | list[int] | None = None,
    objective: str = "auto",
    hidden_size: int | None = None,
    block_size: int = 256,
    max_blocks_per_language: int | None = None,
    max_length: int = 128,
    short_span_share: float = 0.3,
    max_sentences_per_language: int | None = None,
    prefix: str | None = None,
    losses: Phase1Losses | None = None,
    train_config: TrainConfig | None = None,
    trim_vocabulary: bool = False,
    overwrite: bool = False,
    restart: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    snapshots: tuple[float, ...] = (),
    stop_after: int | None = None,
    teacher_cache: bool = True,
    targets_dir: str | os.PathLike[str] | None = None,
    quantization_aware: bool | None = None,
    quantization_aware_start: float = QAT_START,
) -> DistillResult:
    """Phase 1: copy every k-th teacher layer (or ``layers``) into a student and distil it on the languages' text.

    ``objective``: ``bistil`` matches hidden states and attention on packed MLM blocks; ``embedding`` trains on single
    sentences with the model's prefix and adds pooled-embedding, relational, contrastive and cross-lingual ranking
    terms; ``auto`` picks ``embedding`` for sentence-embedding teachers (known from their configuration or provenance).
    A ``train_config`` whose batch size or learning rate is None (or none at all) takes the objective's ``RECIPES``.
    Resumes an interrupted run to the same output (checkpoints live in a hidden sibling of it). A
    ``train_config.time_budget`` sizes the run to end inside it. ``trim_vocabulary`` first trims the teacher to the
    tokens the corpora use. ``hidden_size`` makes a narrower student, initialised by projection onto the principal
    subspace of the teacher's hidden states (saved as ``hidden_projection.safetensors``). ``snapshots`` (shares of the
    run, e.g. ``(0.25, 0.5)``) also save the student part-way, under ``OUTPUT/snapshots/``. ``teacher_cache`` (embedding
    objective without an attention term): the teacher runs once over the sentence pool and training reads its targets
    from disk (under the work dir, or ``targets_dir``, where runs on the same teacher and text share them).
    ``quantization_aware`` (None: on for the embedding objective) trains the student through the 4-bit grid of its edge
    bundle and saves it on that grid, so that export's default for it (int4-weights) is exact; from
    ``quantization_aware_start`` (a share of the planned steps) on.
    """
    started = time.perf_counter()
    langs, texts = _languages_and_texts(languages, corpora)
    out = Path(output).expanduser().absolute()
    source = resolve_model(teacher, cache_dir)
    check_supported(model_family(source.path), "distill", str(teacher))
    objective, profile = _objective(objective, source.path, str(teacher), prefix)
    config = (train_config or TrainConfig(batch_size=None, lr=None)).with_recipe(**RECIPES[objective])
    losses = _checked_losses(losses, objective)
    cached = _uses_teacher_cache(objective, losses, teacher_cache)
    grid = _grid(objective, quantization_aware)
    data = _data_settings(objective, profile, block_size, max_blocks_per_language, max_length, short_span_share, max_sentences_per_language)
    settings = {"teacher": str(source.path), "languages": langs, "corpora": {k: [c.fingerprint() for c in v] for k, v in texts.items()},
                "every_k": every_k, "layers": layers, "objective": objective, "data": data, "hidden_size": hidden_size,
                "losses": asdict(losses), "train": {k: v for k, v in asdict(config).items() if k != "progress"},
                "trim_vocabulary": trim_vocabulary, "teacher_cache": cached, "on_grid": grid and {**grid.as_dict(), "start": quantization_aware_start}}
    narrow, accelerator = _check_width(source.path, hidden_size), make_accelerator(config)  # errors before any write
    fresh = not work_dir_for(out).exists()
    work = open_work_dir(out, settings, overwrite, restart, accelerator)
    with discard_if_unused(work, fresh, accelerator):  # a run that fails before its first checkpoint leaves nothing
        teacher_dir = _teacher_dir(source.path, langs, texts, work, trim_vocabulary, cache_dir, accelerator)
        run = _Phase1Run(teacher_dir, langs, texts, objective, losses, data, config, every_k, layers, grid,
                         quantization_aware_start)
        if narrow:
            run.narrow(work, hidden_size, accelerator.is_main_process)
        run.teacher.eval().requires_grad_(False).to(accelerator.device)
        if cached:
            run.use_targets(work, targets_dir, settings, started, accelerator)
        layout = _student_layout(source.path, str(teacher), profile, objective, prefix)
        on_step, loss = _snapshotter(run, out, snapshots, accelerator, layout) if snapshots else None, run.loss_fn()
        state = train(run.student, loss, run.batches(), config, work, accelerator, stop_after=stop_after,
                      started_at=started, on_step=on_step, before_step=getattr(loss, "before_step", None))
    return _finish(run, state, out, objective, overwrite, layout, {**settings, "layer_map": run.mapping},
                   [source.describe(), *_corpus_inputs(texts)], work, accelerator)


def _grid(objective: str, quantization_aware: bool | None) -> GridSpec | None:
    """The 4-bit grid the student trains on: INT4_GRID when asked, by default for the embedding objective."""
    return INT4_GRID if (objective == "embedding" if quantization_aware is None else quantization_aware) else None


def _finish(run: _Phase1Run, state: Any, out: Path, objective: str, overwrite: bool, layout: Any,
            parameters: dict[str, Any], inputs: list[dict[str, Any]], work: Path, accelerator: Any) -> DistillResult:
    """What the run measured; a finished run's student is written and its work dir closed, a run stopped early
    (tests) keeps its checkpoints for a resume."""
    result = DistillResult(out, run.mapping, state.step, state.resumed_from, state.seconds,
                           state.run_tokens / state.seconds if state.seconds else 0.0, state.last,
                           run.teacher.num_parameters(), run.student.num_parameters(), objective, state.tokens,
                           run.teacher_pass)
    if state.step < state.planned:
        if accelerator.is_main_process:
            release_work_dir(work)
        return result
    if accelerator.is_main_process:
        _write_student(run, out, overwrite, layout, parameters, inputs, result, accelerator)
        close_work_dir(work, out)
    accelerator.wait_for_everyone()
    return result


def _checked_losses(losses: Phase1Losses | None, objective: str) -> Phase1Losses:
    """The given loss weights, else the objective's preset; an unknown attention loss is an error."""
    losses = losses or Phase1Losses.preset(objective)
    if losses.attention_kind not in ("mse", "kl"):
        raise InputError(f"unknown attention loss {losses.attention_kind!r}", "use mse or kl")
    return losses


def _uses_teacher_cache(objective: str, losses: Phase1Losses, wanted: bool) -> bool:
    """Whether the run reads teacher targets computed once: the embedding objective without an attention term (whose
    queries and keys are not cached); the cross-lingual term needs them (its pairs come from the cached embeddings)."""
    cached = wanted and objective == "embedding" and not losses.attention
    if losses.crosslingual and not cached:
        raise InputError("the cross-lingual ranking term pairs sentences by the teacher's cached embeddings, which "
                         + ("the bistil objective does not use" if objective != "embedding" else
                            "an attention term or --no-teacher-cache turns off"),
                         "set its weight to 0 (--crosslingual-weight 0), or use the embedding objective with the "
                         "teacher cache and no attention term")
    return cached


def _data_settings(objective: str, profile: Any, block_size: int, max_blocks: int | None, max_length: int,
                   short_span_share: float, max_sentences: int | None) -> dict[str, Any]:
    """How the training text is cut: packed MLM blocks (bistil) or prefixed single sentences (embedding).

    Part of the run's settings, so a resume with other data settings is refused.
    """
    if objective == "bistil":
        return {"block_size": block_size, "max_blocks": max_blocks}
    return {"prefix": profile.prefix, "pooling": profile.pooling, "max_length": max_length,
            "short_span_share": short_span_share, "max_sentences": max_sentences}


def _student_layout(teacher_dir: Path, spec: str, profile: Any, objective: str, prefix: str | None) -> Any:
    """The sentence-transformers layout the student is written with: the teacher's (Dense modules included), or, for a
    teacher that is not a sentence model distilled with the embedding objective, one from its profile; else None."""
    from mlcompress.st_layout import layout_for, read_layout, with_prefix

    layout = read_layout(teacher_dir, spec)
    if layout is None:
        return layout_for(profile) if objective == "embedding" else None
    return with_prefix(layout, prefix) if prefix is not None else layout


def _corpus_inputs(texts: dict[str, Any]) -> list[dict[str, Any]]:
    """The corpora the student was distilled on, as provenance inputs (language, spec, fingerprint)."""
    return [{"language": lang, "corpus": c.spec, "fingerprint": c.fingerprint()} for lang, cs in texts.items() for c in cs]


def _write_student(run: _Phase1Run, out: Path, overwrite: bool, layout: Any, parameters: dict[str, Any],
                   inputs: list[dict[str, Any]], result: DistillResult, accelerator: Any) -> None:
    """Write the finished student to ``out`` atomically, with its provenance, its model card and the run's snapshots
    (main process)."""
    from mlcompress.model_card import write_model_card

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        run.save(accelerator.unwrap_model(run.student), tmp, layout)
        write_provenance(tmp, "distill-general", parameters, inputs, {**result.as_dict(), run.sizes_key: run.sizes})
        write_model_card(tmp, name=out.name)
        snap = work_dir_for(out) / "snapshots"
        if snap.is_dir():
            shutil.move(str(snap), str(tmp / "snapshots"))


def _languages_and_texts(languages: str | list[str], corpora: Any) -> tuple[list[str], dict[str, Any]]:
    """The source and target language and a corpus for each, or a clear error."""
    from mlcompress.corpus import parse_corpora
    from mlcompress.languages import parse_languages

    langs = parse_languages(languages)
    if len(langs) < 2:
        raise LanguageError("phase 1 needs a source and a target language", "pass two languages, e.g. -l en,el")
    texts = parse_corpora(corpora)
    missing = [lang for lang in langs if lang not in texts]
    if missing:
        raise LanguageError(f"no text for language(s) {', '.join(missing)}",
                            "pass --corpus LANG=PATH for the source and the target language")
    return langs, texts


def _objective(objective: str, teacher_dir: Path, spec: str, prefix: str | None):
    """The objective to run (``auto`` resolved by the teacher's embedding profile) and that profile."""
    from mlcompress.embedding_profile import embedding_profile

    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}", "use auto, bistil or embedding")
    profile = embedding_profile(teacher_dir, spec)
    if prefix is not None:
        profile = replace(profile, prefix=prefix)
    if objective == "auto":
        objective = "embedding" if profile.sentence_model else "bistil"
    return objective, profile


def _check_width(teacher_dir: Path, hidden_size: int | None) -> bool:
    """Whether a narrower student is asked for; a width the teacher cannot be narrowed to fails here."""
    if hidden_size is None:
        return False
    from transformers import AutoConfig

    teacher_config = AutoConfig.from_pretrained(teacher_dir)
    if hidden_size == teacher_config.hidden_size:
        return False
    check_hidden_size(teacher_config, hidden_size)
    return True


def _teacher_dir(source: Path, langs: list[str], texts: dict[str, Any], work: Path, trim_vocabulary: bool,
                 cache_dir: str | os.PathLike[str] | None, accelerator: Any) -> Path:
    """The teacher to distil from: the source, or its trim to the corpora's tokens (kept in the work dir).

    The main process trims; the others wait for it rather than write the same directory at once.
    """
    if not trim_vocabulary:
        return source
    from mlcompress.vocab_trim import trim

    teacher_dir = work / "teacher-trimmed"
    if accelerator.is_main_process and not (teacher_dir / "config.json").is_file():
        trim(source, langs, {k: [c.spec for c in v] for k, v in texts.items()}, teacher_dir, overwrite=True,
             cache_dir=cache_dir)
    accelerator.wait_for_everyone()
    return teacher_dir


def _snapshotter(run: _Phase1Run, out: Path, shares: tuple[float, ...], accelerator, layout: Any):
    """An ``on_step`` hook that saves the student when the run passes each share of its planned steps."""
    done: set[float] = set()
    target = work_dir_for(out) / "snapshots"

    def on_step(step: int, planned: int, model: torch.nn.Module) -> None:
        for share in shares:
            if share not in done and share < 1 and step >= max(1, round(share * planned)):
                done.add(share)
                if accelerator.is_main_process:
                    run.save(model, target / f"at-{round(share * 100):03d}pct-step-{step:07d}", layout, extra={"share": share, "planned": planned})

    return on_step


class _Phase1Run:
    """Teacher, student, data and loss of one phase-1 run, built from its settings."""

    def __init__(self, teacher_dir: Path, langs: list[str], texts: dict[str, Any], objective: str,
                 losses: Phase1Losses, data: dict[str, Any], config: TrainConfig, every_k: int,
                 layers: str | list[int] | None, grid: GridSpec | None = None, grid_start: float = 0.0) -> None:
        from transformers import AutoModel, AutoModelForMaskedLM

        from mlcompress.sources import load_tokenizer, load_weights

        self.objective, self.losses, self.data, self.config, self.grid = objective, losses, data, config, grid
        self.grid_start = grid_start
        self.teacher_dir = teacher_dir
        self.tok = load_tokenizer(teacher_dir)
        model_cls = AutoModelForMaskedLM if (losses.logits or losses.mlm) else AutoModel
        self.teacher = load_weights(model_cls, teacher_dir, dtype=torch.float32)
        if losses.attention:
            use_capture_backend(self.teacher)
        self.student, self.mapping = make_student(self.teacher, every_k, layers)
        lines = {lang: [line for c in texts[lang] for line in c.lines()] for lang in langs}
        if objective == "bistil":
            self.blocks, self.sizes = mixed_blocks(self.tok, lines, data["block_size"], data["max_blocks"])
        else:
            self.pool = sentence_pool(self.tok, lines, data["prefix"], data["max_length"], data["short_span_share"],
                                      config.seed, data["max_sentences"])
            self.sizes = self.pool.sizes()
        self.sizes_key = "blocks_per_language" if objective == "bistil" else "sentences_per_language"
        self.basis: torch.Tensor | None = None
        self.targets, self.teacher_pass = None, {}
        self._prepare_student()

    def _prepare_student(self) -> None:
        """Freeze the pooler (not part of the phase-1 objective, and out of DDP's gradient sync); capture attention."""
        pooler = getattr(self.student.base_model, "pooler", None)
        if pooler is not None:
            pooler.requires_grad_(False)
        if self.losses.attention:
            use_capture_backend(self.student)

    def narrow(self, work: Path, hidden_size: int, main_process: bool) -> None:
        """Make the student narrower; the basis is kept in the work dir, so that a resumed run uses the same one."""
        saved = work / PROJECTION_FILE
        if saved.is_file():
            basis = load_file(str(saved))["basis"]
        else:
            sample = self.blocks if self.objective == "bistil" else self.batches()(0)["input_ids"]
            basis = teacher_basis(self.teacher, sample, self.mapping, hidden_size)
            if main_process:  # renamed into place: another rank never reads half a file
                partial = saved.with_name(saved.name + ".partial")
                save_file({"basis": basis}, str(partial))
                os.replace(partial, saved)
        self.student, self.basis = narrow_student(self.student, hidden_size, basis)
        self._prepare_student()

    def use_targets(self, work: Path, targets_dir: str | os.PathLike[str] | None, settings: dict[str, Any],
                    started: float, accelerator: Any) -> None:
        """Compute the teacher's targets once (or reuse them) and train on the sentences they cover: the cap's, a
        time budget's teacher share's, or, for a number of steps, about two passes' worth; pair the sentences by the
        teacher for the cross-lingual term."""
        from mlcompress.artifacts import json_digest

        from .teacher_targets import PASSES, TEACHER_SHARE, pair_by_teacher, prepare_targets, teacher_fingerprint

        c, sizes = self.config, self.pool.sizes()
        layers = [t for _, t in hidden_pairs(self.mapping)] if self.losses.hidden else []
        autocast = "bf16" if accelerator.mixed_precision == "bf16" else None
        key = json_digest({"teacher": teacher_fingerprint(self.teacher_dir), "corpora": settings["corpora"],
                           "data": {k: v for k, v in self.data.items() if k != "max_sentences"}, "seed": c.seed,
                           "layers": layers, "autocast": autocast})[:16]
        root = Path(targets_dir).expanduser() if targets_dir is not None else work / "teacher-targets"
        wanted = None if c.time_budget is not None else {lang: -(-c.steps * c.batch_size // (len(sizes) * PASSES))
                                                          for lang in sizes}
        if self.data["max_sentences"] is not None:
            wanted = dict(sizes)
        deadline = started + TEACHER_SHARE * c.time_budget if c.time_budget is not None else None
        self.pool, self.targets, self.teacher_pass = prepare_targets(
            self.teacher, self.pool, layers, self.data["pooling"], root / key, work, wanted, deadline, autocast,
            accelerator.is_main_process, accelerator.wait_for_everyone)
        self.sizes = self.pool.sizes()
        if self.losses.crosslingual:
            pair_by_teacher(self.pool, self.targets)

    def loss_fn(self):
        if self.objective == "bistil":
            loss = phase1_loss(self.teacher, self.mapping, self.losses, self.basis)
        else:
            loss = sentence_loss(self.teacher, self.mapping, self.losses, self.data["pooling"], self.basis,
                                 self.targets, list(self.pool.ids))
        return OnGridLoss(loss, self.grid, self.grid_start) if self.grid is not None else loss

    def batches(self):
        if self.objective == "bistil":
            specials = sorted(set(self.tok.all_special_ids))
            vocab = self.teacher.get_input_embeddings().num_embeddings
            return block_batches(self.blocks, self.config.batch_size, self.config.seed, vocab, self.tok.mask_token_id,
                                 specials)
        return self.pool.batch_for_step(self.config.batch_size, self.config.seed)

    def save(self, model: torch.nn.Module, directory: Path, layout: Any, extra: dict[str, Any] | None = None) -> None:
        """Write the student as a loadable model directory (weights, tokenizer, layer map, basis, and the
        sentence-transformers ``layout`` with the teacher's Dense modules read through the basis)."""
        from mlcompress.st_layout import write_layout

        directory.mkdir(parents=True, exist_ok=True)
        if self.grid is not None:  # saved on the grid it trained through
            model = snapped_copy(model, self.grid)
        model.config.mlcompress_layer_map = self.mapping
        model.save_pretrained(directory)
        self.tok.save_pretrained(directory)
        if self.basis is not None:  # phase 2 matches hidden states through the same basis
            save_file({"basis": self.basis.contiguous()}, str(directory / PROJECTION_FILE))
        if layout is not None:
            write_layout(directory, layout, int(model.config.hidden_size), basis=self.basis)
        if extra is not None:
            (directory / "snapshot.json").write_text(json.dumps(extra) + "\n", encoding="utf-8")
