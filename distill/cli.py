"""CLI of the distill stage (`mlcompress distill general|task`), mounted on the root app by `mlcompress.orchestrate.cli`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

distill_app = typer.Typer(no_args_is_help=True, help="BiStil bilingual distillation: a general student, then a task student.")

Steps = Annotated[int, typer.Option(help="Optimizer steps.")]
Batch = Annotated[int, typer.Option(help="Sequences per optimizer step, over all processes.")]
Accum = Annotated[int, typer.Option(help="Gradient accumulation steps.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda (an error if cuda is asked for and absent).")]
Precision = Annotated[str, typer.Option(help="auto (bf16 on a GPU or an AVX512-BF16/AMX CPU), no, bf16 or fp16.")]
Budget = Annotated[Optional[str], typer.Option(help="Time for the whole run, e.g. 30m or 1h: the step count is sized from the measured speed to end inside it (replaces --steps).")]
Ckpt = Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps.")]
Seed = Annotated[int, typer.Option(help="Seed of data order, masking and initialisation.")]
Overwrite = Annotated[bool, typer.Option(help="Replace OUTPUT if it exists (only once the new one is complete).")]
Restart = Annotated[bool, typer.Option(help="Discard an interrupted run's checkpoints instead of resuming it.")]
CacheDir = Annotated[Optional[Path], typer.Option(help="Cache for bundled models and token counts.")]


def _config(steps: int, batch_size: int | None, grad_accum: int, lr: float | None, device: str, precision: str, checkpoint_every: int,
            seed: int, time_budget: str | None = None):
    from .loop import TrainConfig, parse_duration

    return TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, device=device,
                       mixed_precision=precision, checkpoint_every=checkpoint_every, seed=seed,
                       time_budget=parse_duration(time_budget))


def _report(result) -> None:
    from rich.console import Console

    Console().print_json(json.dumps(result.as_dict()))


def _phase1_losses(objective: str, teacher: str, cache_dir, hidden: float, attention: float | None,
                   pooled: float | None, relational: float | None, kind: str, logits: float, mlm: float,
                   contrastive: float | None = None, crosslingual: float | None = None, temperature: float = 0.05):
    """The objective's preset weights, with the ones given on the command line in their place."""
    from mlcompress.embedding_profile import embedding_profile
    from mlcompress.sources import resolve_model

    from .general import Phase1Losses

    if objective == "auto":
        objective = "embedding" if embedding_profile(resolve_model(teacher, cache_dir).path, teacher).sentence_model else "bistil"
    preset = Phase1Losses.preset(objective)
    return Phase1Losses(hidden=hidden, attention=preset.attention if attention is None else attention,
                        attention_kind=kind, logits=logits, mlm=mlm,
                        pooled=preset.pooled if pooled is None else pooled,
                        relational=preset.relational if relational is None else relational,
                        contrastive=preset.contrastive if contrastive is None else contrastive,
                        crosslingual=preset.crosslingual if crosslingual is None else crosslingual,
                        contrast_temperature=temperature)


@distill_app.command("general")
def general(
    teacher: Annotated[str, typer.Argument(help="Teacher: a model directory, a Hub id, or bundled:multilingual-e5-small.")] = "bundled:multilingual-e5-small",
    languages: Annotated[str, typer.Option("-l", "--languages", help="Source and target language, e.g. en,el.")] = "en,el",
    corpus: Annotated[Optional[list[str]], typer.Option("--corpus", help="LANG=PATH (file, folder, datasets id), once per language.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output directory of the student.")] = Path("student"),
    every_k: Annotated[int, typer.Option(help="Keep every k-th teacher layer (2 halves the depth).")] = 2,
    layers: Annotated[Optional[str], typer.Option(help="Teacher layers to copy, 0-based, e.g. 0,2,4,6,8,10 (overrides --every-k).")] = None,
    objective: Annotated[str, typer.Option(help="auto (embedding for sentence-embedding teachers), embedding (single sentences with the prefix, pooled + relational + hidden terms) or bistil (hidden + attention on packed MLM blocks).")] = "auto",
    prefix: Annotated[Optional[str], typer.Option(help="Text before each sentence (default: the model's own, e.g. 'query: ' for E5).")] = None,
    max_length: Annotated[int, typer.Option(help="Longest sentence in tokens (embedding objective).")] = 128,
    hidden_size: Annotated[Optional[int], typer.Option(help="A narrower student of this width, initialised by projection (default: the teacher's).")] = None,
    block_size: Annotated[int, typer.Option(help="Tokens per packed block.")] = 256,
    max_blocks: Annotated[Optional[int], typer.Option(help="At most N blocks per language.")] = None,
    hidden_weight: Annotated[float, typer.Option(help="Weight of the hidden-state MSE.")] = 1.0,
    attention_weight: Annotated[Optional[float], typer.Option(help="Weight of the attention-distribution loss (default: 1 for bistil, 0 for embedding).")] = None,
    pooled_weight: Annotated[Optional[float], typer.Option(help="Weight of 1 - cosine of pooled embeddings (default: 10 for embedding, 0 for bistil).")] = None,
    relational_weight: Annotated[Optional[float], typer.Option(help="Weight of the in-batch similarity MSE (default: 10 for embedding, 0 for bistil).")] = None,
    contrastive_weight: Annotated[Optional[float], typer.Option(help="Weight of the in-batch contrastive term: each student embedding picks its teacher embedding out of the batch (default: the embedding objective's preset, 0 for bistil).")] = None,
    crosslingual_weight: Annotated[Optional[float], typer.Option(help="Weight of the cross-lingual ranking term: each sentence ranks the batch's other-language sentences (its teacher-nearest one among them) as the teacher does; needs the teacher cache (default: the embedding objective's preset, 0 for bistil).")] = None,
    contrast_temperature: Annotated[float, typer.Option(help="Temperature of the contrastive and cross-lingual terms.")] = 0.05,
    teacher_cache: Annotated[bool, typer.Option(help="Run the teacher once over the sentences and train the student alone on its stored targets (embedding objective without an attention term).")] = True,
    targets_dir: Annotated[Optional[Path], typer.Option(help="Where the teacher targets live (default: in the run's work dir, removed with it); runs on the same teacher and text share them.")] = None,
    max_sentences: Annotated[Optional[int], typer.Option(help="At most N sentences per language (embedding objective; default: what the budget's teacher pass gets through, or about two passes of --steps).")] = None,
    quantization_aware: Annotated[Optional[bool], typer.Option("--quantization-aware/--no-quantization-aware", help="Train the student through the 4-bit grid of its edge bundle and save it on that grid, so that export's default bundle of it (int4-weights, about 25% smaller than int8) is exact (default: on for the embedding objective).")] = None,
    attention_loss: Annotated[str, typer.Option(help="mse or kl.")] = "mse",
    logit_weight: Annotated[float, typer.Option(help="Weight of MLM-logit KD (needs an MLM head).")] = 0.0,
    mlm_weight: Annotated[float, typer.Option(help="Weight of plain MLM (needs an MLM head).")] = 0.0,
    trim_vocab: Annotated[bool, typer.Option("--trim-vocab", help="First trim the teacher to the corpora's tokens.")] = False,
    steps: Steps = 2000,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per optimizer step, over all processes (default: the objective's recipe, 64 for embedding, 16 for bistil).")] = None,
    grad_accum: Accum = 1,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the objective's recipe, 5e-4 for embedding, 3e-4 for bistil).")] = None,
    device: Device = "auto", precision: Precision = "auto", time_budget: Budget = None, checkpoint_every: Ckpt = 200,
    seed: Seed = 0, overwrite: Overwrite = False, restart: Restart = False, cache_dir: CacheDir = None,
) -> None:
    """Phase 1: distil a general bilingual student (every k-th layer of the teacher) on source and target text."""
    from .general import distill_general

    losses = _phase1_losses(objective, teacher, cache_dir, hidden_weight, attention_weight, pooled_weight,
                            relational_weight, attention_loss, logit_weight, mlm_weight, contrastive_weight,
                            crosslingual_weight, contrast_temperature)
    result = distill_general(teacher, languages, corpus, output, every_k=every_k, layers=layers, objective=objective,
                             prefix=prefix, max_length=max_length, hidden_size=hidden_size, block_size=block_size,
                             max_blocks_per_language=max_blocks, losses=losses,
                             train_config=_config(steps, batch_size, grad_accum, lr, device, precision, checkpoint_every,
                                                  seed, time_budget),
                             trim_vocabulary=trim_vocab, overwrite=overwrite, restart=restart, cache_dir=cache_dir,
                             teacher_cache=teacher_cache, targets_dir=targets_dir,
                             max_sentences_per_language=max_sentences, quantization_aware=quantization_aware)
    _report(result)


@distill_app.command("task")
def task(
    student: Annotated[str, typer.Argument(help="The phase-1 student directory.")],
    task_name: Annotated[str, typer.Option("--task", help="token-classification or sequence-classification.")],
    train_file: Annotated[Path, typer.Option("--train", help="Source-language training data (token<TAB>TAG, or a<TAB>b<TAB>label).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output directory of the task student.")],
    teacher: Annotated[Optional[str], typer.Option(help="A teacher already fine-tuned on the task.")] = None,
    source: Annotated[Optional[str], typer.Option(help="Fine-tune this model on --train first and use it as the teacher.")] = None,
    temperature: Annotated[float, typer.Option(help="Soft-label temperature T.")] = 2.0,
    hidden_weight: Annotated[float, typer.Option(help="Weight of the hidden-state MSE.")] = 1.0,
    attention_weight: Annotated[float, typer.Option(help="Weight of the attention-distribution loss.")] = 1.0,
    density: Annotated[Optional[float], typer.Option(help="Lottery-ticket sparse fine-tuning: train only this fraction of parameters.")] = None,
    dense_steps: Annotated[Optional[int], typer.Option(help="Steps of the dense pass that picks the sparse parameters.")] = None,
    max_examples: Annotated[Optional[int], typer.Option(help="Use at most N training examples.")] = None,
    steps: Steps = 1000, batch_size: Batch = 32, grad_accum: Accum = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 5e-5,
    device: Device = "auto", precision: Precision = "auto", time_budget: Budget = None, checkpoint_every: Ckpt = 200,
    seed: Seed = 0, overwrite: Overwrite = False, restart: Restart = False, cache_dir: CacheDir = None,
) -> None:
    """Phase 2: distil a task-tuned teacher into the phase-1 student (optionally sparse)."""
    from mlcompress.errors import InputError

    from .task import Phase2Losses, distill_task, finetune_teacher

    config = _config(steps, batch_size, grad_accum, lr, device, precision, checkpoint_every, seed, time_budget)
    if (teacher is None) == (source is None):
        raise InputError("give exactly one of --teacher (already task-tuned) and --source (to fine-tune first)",
                         "e.g. --source bundled:multilingual-e5-small")
    if source is not None:
        teacher_out = output.parent / f"{output.name}-teacher"
        finetune_teacher(source, task_name, train_file, teacher_out, max_examples=max_examples,
                         train_config=_config(steps, batch_size, grad_accum, 3e-5, device, precision, checkpoint_every, seed),
                         overwrite=overwrite, restart=restart, cache_dir=cache_dir)
        teacher = str(teacher_out)
    losses = Phase2Losses(temperature=temperature, hidden=hidden_weight, attention=attention_weight)
    result = distill_task(teacher, student, task_name, train_file, output, losses=losses, density=density,
                          dense_steps=dense_steps, max_examples=max_examples, train_config=config,
                          overwrite=overwrite, restart=restart, cache_dir=cache_dir)
    _report(result)


def register(app: typer.Typer) -> None:
    """Add `distill general` and `distill task` to the root app."""
    app.add_typer(distill_app, name="distill")
