"""`evaluate` for encoder-decoders (mT5, mBART-50, M2M100, NLLB): the same tasks as for causal LMs, on held-out
translation pairs.

When the source is an encoder-decoder, `evaluate` (and `mlcompress eval`) comes here, with the same parameters. Text:
the Tatoeba pairs of each language with English (``tatoeba/tatoeba.<xxx>-eng.{<xxx>,eng}``: evaluation text that the
trim corpus ``mono/`` never holds), in both directions (``en-de`` and ``de-en`` for ``-l de``). Per direction:

- ``perplexity``: teacher-forced NLL of the reference translation given the source sentence, in bits per byte (gated:
  retention = source / candidate, so 1/retention is the NLL ratio candidate / source), and per token where both
  tokenize the reference identically (diagnostic) — `lm_metrics`' measures, on the decoder's positions after its prefix;
- ``next_token``: top-1 agreement (gated), KL and dropped mass (diagnostic) on those positions;
- ``greedy``: the share of source sentences whose greedy translation is the same text (diagnostic);
- ``translation`` (a model that really translates: language codes; or when asked): chrF and BLEU (sacrebleu's
  defaults, 13a tokenisation; never the flores200 tokenizer, which downloads) of both models' greedy translations
  against the references (gated), with paired-bootstrap intervals over sentences.

A translation model is given the source language's code on the encoder side and the target language's code as its
forced first decoder token; a candidate whose trim removed a requested target language is refused with the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mlcompress.errors import InputError
from mlcompress.languages import parse_languages, tatoeba_code

from .data import DataSource, _find, read_lines
from .lm_scorer import IdMap
from .retention import Score, gate, gate_error
from .run import EvalReport, _check_output
from .seq2seq_scorer import Seq2SeqLM

SEQ2SEQ_TASKS = ("perplexity", "next_token", "greedy", "translation")
_TEACHER_FORCED = ("perplexity", "next_token")


@dataclass(frozen=True)
class Seq2SeqLimits:
    """How much the seq2seq tasks read (bounded so that a CPU run of a small model takes minutes)."""

    pairs: int = 200  # teacher-forced pairs per direction
    max_chars: int = 300  # longer sentences are left out
    prompts: int = 48  # greedy translations per direction (greedy and translation tasks)
    new_tokens: int = 48  # greedy tokens per translation

    def capped(self, n: int) -> Seq2SeqLimits:
        """These limits with the pair and prompt counts capped at ``n``."""
        if n < 2:
            raise InputError(f"--max-examples {n} is too small", "give at least 2")
        return replace(self, pairs=min(self.pairs, n), prompts=min(self.prompts, n))


def parse_seq2seq_tasks(spec: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """The seq2seq tasks asked for in canonical order (None: the defaults, chosen once the source is loaded)."""
    if spec is None:
        return None
    items = [t.strip().lower() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    unknown = [t for t in items if t not in SEQ2SEQ_TASKS and t != "efficiency"]
    if unknown or not items:
        raise InputError(f"unknown or unsupported task(s) for an encoder-decoder: {', '.join(unknown) or '(none given)'}",
                         f"for an encoder-decoder choose from {','.join(SEQ2SEQ_TASKS)} (or leave --tasks out)")
    if "efficiency" in items:
        raise InputError("the efficiency task does not time encoder-decoders yet",
                         f"choose from {','.join(SEQ2SEQ_TASKS)}; bench/generative.py times seq2seq bundles")
    return [t for t in SEQ2SEQ_TASKS if t in items]


def directions(languages: list[str]) -> list[tuple[str, str]]:
    """(source language, target language) pairs: each non-English language with English, both ways."""
    out = [d for lang in languages if lang != "en" for d in (("en", lang), (lang, "en"))]
    if not out:
        raise InputError(f"no translation direction in {','.join(languages)}: Tatoeba pairs each language with English",
                         "add a language other than English, e.g. -l de")
    return out


def tatoeba_pairs(data: DataSource, lang: str, n: int, max_chars: int) -> tuple[list[tuple[str, str]], str]:
    """Up to ``n`` distinct (English, ``lang``) sentence pairs of Tatoeba, each side at most ``max_chars`` long."""
    code = tatoeba_code(lang)
    base = data.root / "tatoeba" if data.root is not None else None
    eng = _find(base, f"tatoeba.{code}-eng.eng") if base else None
    other = _find(base, f"tatoeba.{code}-eng.{code}") if base else None
    if eng is None or other is None:
        raise InputError(f"no Tatoeba pairs for {lang}: missing tatoeba/tatoeba.{code}-eng.{{eng,{code}}}.gz",
                         "pass --data, a folder laid out like ../shared/data (tatoeba/)")
    pairs = [(a.strip(), b.strip()) for a, b in zip(read_lines(eng), read_lines(other))
             if a.strip() and b.strip() and max(len(a), len(b)) <= max_chars]
    return list(dict.fromkeys(pairs))[:n], str(other)


def _check_targets(cand: Seq2SeqLM, src: Seq2SeqLM, targets: list[str]) -> None:
    """Refuse a target language that the source translates into and the candidate cannot (its trim removed the code)."""
    from mlcompress.translation import target_language_code

    for lang in targets:
        if lang in src.codes and lang not in cand.codes:
            target_language_code(cand.path, lang)  # raises the clear error (the trim's record says why)
            raise InputError(f"{cand.spec} has no language code for {lang}, which {src.spec} translates into",
                             "evaluate the languages the candidate was built for")


def teacher_forced(src: Seq2SeqLM, cand: Seq2SeqLM, ids: IdMap, pairs: list[tuple[str, str]], s_lang: str,
                   t_lang: str, batch: int = 8) -> Any:
    """Both models' teacher-forced measures (`lm_metrics.TextStats`) of the references, scored on the decoder
    positions after the prefix (the start id and a forced language code are given, not predicted)."""
    from .lm_metrics import Kept, TextStats, add_text

    kept, stats = Kept(ids), TextStats()
    s_cut, c_cut = len(src.target_prefix(t_lang)) - 1, len(cand.target_prefix(t_lang)) - 1
    rows = [(tgt, (src.source_ids(s, s_lang), src.target_row(tgt, t_lang)), (cand.source_ids(s, s_lang),
             cand.target_row(tgt, t_lang))) for s, tgt in pairs]
    limit = min(m.max_length or 1 << 30 for m in (src, cand))
    rows = [r for r in rows if max(len(r[1][0]), len(r[1][1]), len(r[2][0]), len(r[2][1])) <= limit]
    for i in range(0, len(rows), batch):
        part = rows[i:i + batch]
        ls_all, lc_all = src.logits([r[1] for r in part]), cand.logits([r[2] for r in part])
        for (text, (_, s_row), (_, c_row)), ls, lc in zip(part, ls_all, lc_all):
            s_ids, c_ids = s_row[s_cut:], c_row[c_cut:]
            if len(s_ids) >= 2 and len(c_ids) >= 2:
                add_text(stats, text, s_ids, c_ids, ls[s_cut:], lc[c_cut:], ids, kept)
    return stats


def translate(src: Seq2SeqLM, cand: Seq2SeqLM, ids: IdMap, pairs: list[tuple[str, str]], s_lang: str, t_lang: str,
              new_tokens: int) -> list[dict[str, Any]]:
    """Greedy translations of each source sentence by both models: the texts, the reference, whether they agree."""
    from .lm_metrics import common_prefix

    out = []
    for s, ref in pairs:
        s_new = src.greedy(src.source_ids(s, s_lang), src.target_prefix(t_lang), new_tokens)
        c_new = cand.greedy(cand.source_ids(s, s_lang), cand.target_prefix(t_lang), new_tokens)
        s_text, c_text = src.decode(s_new), cand.decode(c_new)
        out.append({"prompt": s, "reference": ref, "source": s_text, "candidate": c_text, "same_text": s_text == c_text,
                    "same_tokens": ids.map(c_new) == s_new, "common_prefix_chars": common_prefix(list(s_text), list(c_text)),
                    "tokens": [len(s_new), len(c_new)]})
    return out


def translation_scores(runs: list[dict[str, Any]], direction: str, origin: str) -> list[Score]:
    """chrF and BLEU (sacrebleu's defaults: 13a tokenisation) of both models' translations against the references,
    each with a paired-bootstrap interval over sentences (per-sentence statistics summed, as sacrebleu scores them)."""
    from .bootstrap import paired_bootstrap

    metrics = _sacrebleu_metrics()
    refs = [r["reference"] for r in runs]
    out = []
    for name, metric in metrics:
        stats = [np.asarray(metric._extract_corpus_statistics([r[side] for r in runs], [refs]), dtype=np.float64)
                 for side in ("source", "candidate")]
        score = lambda idx, m: float(metric._compute_score_from_stats(list(stats[m][idx].sum(axis=0))).score)  # noqa: E731
        whole = np.arange(len(runs))
        s, c = score(whole, 0), score(whole, 1)
        out.append(Score("translation", direction, name, s, c, len(runs), dataset=origin,
                         interval=paired_bootstrap(score, len(runs), 0.0).as_dict(),
                         note=f"sacrebleu {metric.get_signature()}; greedy translations of {len(runs)} sentences "
                              "against the Tatoeba references"))
    return out


def _sacrebleu_metrics() -> list[tuple[str, Any]]:
    """sacrebleu's chrF and BLEU (13a), or a clear error naming the extra that installs it."""
    try:
        from sacrebleu.metrics import BLEU, CHRF
    except ImportError as exc:
        raise InputError("the translation task needs sacrebleu, which is not installed",
                         "pip install 'mlcompress[translation]' (or sacrebleu), or leave translation out of --tasks") from exc
    return [("chrf", CHRF()), ("bleu", BLEU(tokenize="13a"))]


def _resolve_tasks(asked: list[str] | None, src: Seq2SeqLM) -> tuple[list[str], list[dict[str, str]]]:
    """The tasks to run: those asked, or every task (translation only for a model that translates and sacrebleu)."""
    if asked is not None:
        return asked, []
    if not src.translates:
        return list(SEQ2SEQ_TASKS[:3]), [{"task": "translation", "language": "*", "reason": "the source has no language "
                                          "codes (not a translation model): pass --tasks ...,translation to score it"}]
    try:
        _sacrebleu_metrics()
    except InputError:
        return list(SEQ2SEQ_TASKS[:3]), [{"task": "translation", "language": "*",
                                          "reason": "sacrebleu is not installed (pip install 'mlcompress[translation]')"}]
    return list(SEQ2SEQ_TASKS), []


def _direction_scores(src: Seq2SeqLM, cand: Seq2SeqLM, ids: IdMap, pairs: list[tuple[str, str]], origin: str,
                      direction: tuple[str, str], tasks: list[str], limits: Seq2SeqLimits,
                      seconds: dict[str, float]) -> list[Score]:
    """Every score of one direction (``pairs`` are (English, other) sentence pairs)."""
    from .lm_metrics import greedy_scores, next_token_scores, perplexity_scores

    s_lang, t_lang = direction
    oriented = pairs if s_lang == "en" else [(b, a) for a, b in pairs]
    name, out = f"{s_lang}-{t_lang}", []
    if any(t in tasks for t in _TEACHER_FORCED):
        t0 = time.perf_counter()
        stats = teacher_forced(src, cand, ids, oriented[: limits.pairs], s_lang, t_lang)
        if not stats.bytes:
            raise InputError(f"no {name} pair fits both models' positions", "give shorter sentences (max_chars)")
        for score in perplexity_scores(stats, name, origin) if "perplexity" in tasks else []:
            score.details["nll_ratio_candidate_over_source"] = 1.0 / score.retention if score.retention else None
            out.append(score)
        out += next_token_scores(stats, name, origin) if "next_token" in tasks else []
        seconds["teacher_forced"] = seconds.get("teacher_forced", 0.0) + time.perf_counter() - t0
    if "greedy" in tasks or "translation" in tasks:
        t0 = time.perf_counter()
        runs = translate(src, cand, ids, oriented[: limits.prompts], s_lang, t_lang, limits.new_tokens)
        out += greedy_scores(runs, name, origin, limits.new_tokens) if "greedy" in tasks else []
        out += translation_scores(runs, name, origin) if "translation" in tasks else []
        seconds["greedy"] = seconds.get("greedy", 0.0) + time.perf_counter() - t0
    return out


def _open_data(data_dir: str | os.PathLike[str] | None, hub_data: dict[str, str] | None) -> DataSource:
    """The data folder, else the packaged Tatoeba sample (200 pairs per language with English)."""
    if data_dir is None and not hub_data:
        from .sample import sample_data_dir

        return DataSource.open(sample_data_dir())
    return DataSource.open(data_dir, hub_data)


def evaluate_seq2seq(
    source: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    languages: str | list[str],
    tasks: str | list[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    min_retention: float | None = None,
    *,
    overwrite: bool = False,
    hub_data: dict[str, str] | None = None,
    limits: Seq2SeqLimits | None = None,
    device: str | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    raise_on_fail: bool = False,
    progress: Callable[[str], None] | None = None,
    models: tuple[Seq2SeqLM, Seq2SeqLM] | None = None,
) -> EvalReport:
    """Evaluate encoder-decoder ``candidate`` against ``source`` on translation pairs of ``languages`` with English
    (`SEQ2SEQ_TASKS`; ``tasks`` None: all that apply); the rest as `evaluate` (``models``: already loaded models)."""
    from .lm_scorer import id_map
    from .seq2seq_scorer import load_seq2seq

    limits = limits or Seq2SeqLimits()
    say = progress or (lambda _msg: None)
    asked, langs = parse_seq2seq_tasks(tasks), parse_languages(languages)
    if min_retention is not None and not 0 < min_retention <= 10:
        raise InputError(f"--min-retention {min_retention} is out of range", "give a fraction such as 0.97")
    data, ways = _open_data(data_dir, hub_data), directions(langs)
    pairs = {lang: tatoeba_pairs(data, lang, max(limits.pairs, limits.prompts), limits.max_chars) for lang in langs if lang != "en"}
    _check_output(output, overwrite)
    t0 = time.perf_counter()
    if models is None:
        say(f"loading {source}")
        src = load_seq2seq(source, cache_dir, device)
        say(f"loading {candidate}")
        models = (src, load_seq2seq(candidate, cache_dir, device))
    src, cand = models
    _check_targets(cand, src, sorted({t for _, t in ways}))
    task_list, skipped = _resolve_tasks(asked, src)
    ids, seconds, scores = id_map(src, cand), {"load": time.perf_counter() - t0}, []
    for way in ways:
        say(f"{', '.join(task_list)}: {way[0]}-{way[1]}")
        lang = way[1] if way[0] == "en" else way[0]
        scores += _direction_scores(src, cand, ids, *pairs[lang], way, task_list, limits, seconds)
    seconds["total"] = time.perf_counter() - t0
    parameters = {"model_kind": "seq2seq", "languages": langs, "tasks": task_list, "directions": [f"{a}-{b}" for a, b in ways],
                  "min_retention": min_retention, "seed": seed, "data": str(data.root) if data.root else None,
                  "seq2seq_limits": asdict(limits), "id_map": ids.as_dict(),
                  "held_out": "tatoeba/tatoeba.<xxx>-eng pairs (never the trim corpus mono/), both directions"}
    report = EvalReport(src.describe() | {"size": src.size()}, cand.describe() | {"size": cand.size()}, langs, task_list,
                        scores, {}, skipped, gate(scores, min_retention), parameters, seconds)
    if output is not None:
        from .report import write_reports

        report.output = write_reports(report, Path(output), overwrite)
    if raise_on_fail and report.passed is False:
        raise gate_error(report.gate, str(report.output) if report.output else None)
    return report
