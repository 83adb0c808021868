"""`evaluate` for decoder-only language models (Gemma 3, Qwen 2, Llama): generative tasks on held-out text.

When the source is a causal LM, `evaluate` (and `mlcompress eval`) comes here, with the same parameters, and measures:

- ``perplexity``: bits per byte of each model on held-out text (gated), and per-token NLL where both tokenize a
  text identically (diagnostic);
- ``next_token``: top-1 agreement (gated) and KL (diagnostic) where contexts tokenize identically, and the dropped mass,
  the source's next-token probability on ids the candidate lacks (diagnostic);
- ``greedy``: the share of prompts whose greedy continuation is the same text (diagnostic: one early difference changes
  a whole continuation, far stricter than the per-position scores; the report lists the first that differ);
- ``efficiency``: prefill latency of a fixed-length prompt and decode tokens/s at batch 1, both models timed together.

Held-out text: see `lm_data` (XNLI dev premises, else Tatoeba; never the trim corpus). The scores, their paired
bootstrap intervals, the ``--min-retention`` gate and the JSON/Markdown/HTML reports are the encoder tasks' own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mlcompress.errors import InputError
from mlcompress.languages import parse_languages

from .data import TASKS, DataSource
from .lm_scorer import CausalLM, IdMap
from .retention import Score, gate, gate_error
from .run import EvalReport, _check_output

GENERATIVE_TASKS = ("perplexity", "next_token", "greedy", "efficiency")
_TEXT_TASKS = ("perplexity", "next_token", "greedy")
_FALLBACK = ["The weather is nice today and the trains run on time.", "Das Wetter ist heute schön, und die Züge fahren pünktlich."]


@dataclass(frozen=True)
class LMLimits:
    """How much the generative tasks read and time (bounded so that a CPU run of a small model takes minutes)."""

    texts: int = 200  # held-out texts per language, teacher-forced (perplexity, next_token)
    max_chars: int = 600  # longer texts are cut at a word boundary
    prompts: int = 32  # greedy prompts per language
    new_tokens: int = 32  # greedy tokens per prompt
    prefill_tokens: int = 64  # efficiency: the fixed prompt length
    decode_tokens: int = 32  # efficiency: tokens generated after the prompt
    latency_runs: int = 24  # per timed operation, spread over the rounds
    efficiency_rounds: int = 6

    def capped(self, n: int) -> LMLimits:
        """These limits with the text and prompt counts capped at ``n``."""
        if n < 2:
            raise InputError(f"--max-examples {n} is too small", "give at least 2")
        return replace(self, texts=min(self.texts, n), prompts=min(self.prompts, n))


def parse_generative_tasks(spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The generative tasks asked for (None: all), in canonical order; an encoder task is refused with the choices."""
    if spec is None:
        return list(GENERATIVE_TASKS)
    items = [t.strip().lower() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    encoder = [t for t in items if t in TASKS and t not in GENERATIVE_TASKS]
    if encoder:
        raise InputError(f"task(s) {', '.join(encoder)} measure encoders, and the source is a causal LM",
                         f"for a causal LM choose from {','.join(GENERATIVE_TASKS)} (or leave --tasks out for all)")
    unknown = [t for t in items if t not in GENERATIVE_TASKS]
    if unknown or not items:
        raise InputError(f"unknown task(s): {', '.join(unknown) or '(none given)'}",
                         f"for a causal LM choose from {','.join(GENERATIVE_TASKS)}, e.g. --tasks perplexity,greedy")
    return [t for t in GENERATIVE_TASKS if t in items]


def _plan(data: DataSource, tasks: list[str], langs: list[str],
          per_task: dict[str, list[str]]) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """Which languages each text task runs on; what is skipped for lack of text; a task with none at all is an error."""
    from .lm_data import lm_missing

    plan, skipped = {}, []
    for task in tasks:
        wanted = per_task.get(task, langs)
        reasons = {lang: lm_missing(data, lang) for lang in wanted} if task != "efficiency" else {}
        ok = [lang for lang in wanted if reasons.get(lang) is None]
        if task != "efficiency" and not ok:
            detail = "; ".join(f"{lang}: {why}" for lang, why in reasons.items())
            raise InputError(f"task {task} has no held-out text for any requested language ({detail})",
                             "check --data (a folder laid out like ../shared/data: xnli/, tatoeba/), or give --hub-data lm:<lang>=...")
        plan[task] = ok
        skipped += [{"task": task, "language": lang, "reason": why} for lang, why in reasons.items() if why]
    return plan, skipped


def load_models(source: str | os.PathLike[str], candidate: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None,
                device: str | None, say: Callable[[str], None]) -> tuple[CausalLM, CausalLM]:
    """Load the source and the candidate causal LM, saying which one is loading."""
    from .lm_scorer import load_causal_lm

    say(f"loading {source}")
    src = load_causal_lm(source, cache_dir, device)
    say(f"loading {candidate}")
    return src, load_causal_lm(candidate, cache_dir, device)


def _language_scores(src: CausalLM, cand: CausalLM, ids: IdMap, data: DataSource, lang: str, tasks: list[str],
                     limits: LMLimits, seconds: dict[str, float]) -> list[Score]:
    """Every generative score of one language (the teacher-forced pass is shared by perplexity and next_token)."""
    from .lm_data import lm_texts, prompts_of
    from .lm_metrics import continuations, greedy_scores, measure_texts, next_token_scores, perplexity_scores

    texts, origin = lm_texts(data, lang, max(limits.texts, limits.prompts), limits.max_chars)
    out: list[Score] = []
    if "perplexity" in tasks or "next_token" in tasks:
        t = time.perf_counter()
        stats = measure_texts(src, cand, ids, texts[: limits.texts])
        if not stats.bytes:
            raise InputError(f"no {lang} text fits both models' positions", "give shorter texts (LMLimits.max_chars)")
        out += perplexity_scores(stats, lang, origin) if "perplexity" in tasks else []
        out += next_token_scores(stats, lang, origin) if "next_token" in tasks else []
        seconds["teacher_forced"] = seconds.get("teacher_forced", 0.0) + time.perf_counter() - t
    if "greedy" in tasks:
        t = time.perf_counter()
        prompts = prompts_of(texts, limits.prompts)
        if prompts:
            out += greedy_scores(continuations(src, cand, ids, prompts, limits.new_tokens), lang, origin, limits.new_tokens)
        seconds["greedy"] = seconds.get("greedy", 0.0) + time.perf_counter() - t
    return out


def _efficiency(src: CausalLM, cand: CausalLM, data: DataSource, langs: list[str], limits: LMLimits) -> dict[str, Any]:
    """Prefill and decode figures of both models, on held-out text of the first language that has some."""
    from .lm_data import lm_missing, lm_texts
    from .lm_efficiency import measure_lm

    lang = next((lang for lang in langs if lm_missing(data, lang) is None), None)
    texts = lm_texts(data, lang, 64, limits.max_chars)[0] if lang else list(_FALLBACK)
    return measure_lm(src, cand, texts, limits.prefill_tokens, limits.decode_tokens, limits.latency_runs,
                      limits.efficiency_rounds)


def evaluate_generative(
    source: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    languages: str | list[str],
    tasks: str | list[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    min_retention: float | None = None,
    *,
    overwrite: bool = False,
    task_languages: dict[str, str | list[str]] | None = None,
    hub_data: dict[str, str] | None = None,
    lm_limits: LMLimits | None = None,
    device: str | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    raise_on_fail: bool = False,
    progress: Callable[[str], None] | None = None,
    models: tuple[CausalLM, CausalLM] | None = None,
) -> EvalReport:
    """Evaluate causal LM ``candidate`` against causal LM ``source`` on the generative ``tasks`` (default: all) in
    ``languages``; the rest as `evaluate` (``models`` passes already loaded models)."""
    from .lm_scorer import id_map

    limits = lm_limits or LMLimits()
    say = progress or (lambda _msg: None)
    task_list, langs = parse_generative_tasks(tasks), parse_languages(languages)
    per_task = {t: parse_languages(v) for t, v in (task_languages or {}).items()}
    parse_generative_tasks(list(per_task) or task_list)
    if min_retention is not None and not 0 < min_retention <= 10:
        raise InputError(f"--min-retention {min_retention} is out of range", "give a fraction such as 0.97")
    data = DataSource.open(data_dir, hub_data)
    plan, skipped = _plan(data, task_list, langs, per_task)
    _check_output(output, overwrite)
    t0 = time.perf_counter()
    src, cand = models if models is not None else load_models(source, candidate, cache_dir, device, say)
    ids = id_map(src, cand)
    seconds = {"load": time.perf_counter() - t0}
    scores: list[Score] = []
    for lang in dict.fromkeys(lang for task in _TEXT_TASKS if task in plan for lang in plan[task]):
        say(f"{', '.join(t for t in _TEXT_TASKS if lang in plan.get(t, []))}: {lang}")
        scores += _language_scores(src, cand, ids, data, lang, [t for t in _TEXT_TASKS if lang in plan.get(t, [])],
                                   limits, seconds)
    efficiency: dict[str, Any] = {}
    if "efficiency" in plan:
        say("efficiency: prefill and decode, both models in interleaved rounds")
        t = time.perf_counter()
        efficiency = _efficiency(src, cand, data, plan.get("efficiency") or langs, limits)
        seconds["efficiency"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    parameters = {"model_kind": "causal-lm", "languages": langs, "tasks": task_list, "task_languages": per_task,
                  "min_retention": min_retention, "seed": seed, "data": str(data.root) if data.root else None,
                  "hub_data": data.hub, "lm_limits": asdict(limits), "id_map": ids.as_dict(),
                  "held_out": "xnli/dev-<lang> premises (deduplicated), else tatoeba <lang> side; --hub-data lm:<lang>"}
    report = EvalReport(src.describe() | {"size": src.size()}, cand.describe() | {"size": cand.size()}, langs, task_list,
                        scores, efficiency, skipped, gate(scores, min_retention), parameters, seconds)
    if output is not None:
        from .report import write_reports

        report.output = write_reports(report, Path(output), overwrite)
    if raise_on_fail and report.passed is False:
        raise gate_error(report.gate, str(report.output) if report.output else None)
    return report
