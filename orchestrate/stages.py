"""One plain function per pipeline stage: run the stage's public API on the run's config and return its metrics.

Each function takes the model it starts from, the folder to write and the validated config (``cfg["stages"][name]`` holds
the stage's options), and returns the JSON-ready metrics that ``pipeline.json`` records. They know nothing of the run's
state, fingerprints or reuse (that is ``runner``); each imports its stage through the stage's package only, on call.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlcompress.families import model_family

GENERATIVE = ("decoder", "seq2seq")  # families evaluated by their generative tasks (no encoders, no joint timing)


def trim_stage(model: Path, target: Path, cfg: dict[str, Any], corpora: dict[str, list[str]] | None, scripts: bool) -> dict[str, Any]:
    """Trim ``model``'s vocabulary to the config's languages (by ``corpora``, or by script) into ``target``."""
    from mlcompress.vocab_trim import trim

    opts = cfg["stages"]["trim"]
    # max_vocab null: trim's budget for an encoder bundle; none for a decoder, whose greedy continuations stay the
    # source's only when the word lists' tokens are kept too (bench/trim_generative.py: 48k drops 2.1-2.8% of the
    # source's next-token mass, unbudgeted 0.9-1.0%, with 100% greedy identity on Gemma 3 270M en+de); so for an
    # encoder-decoder, whose decoder generates the same way
    budget = {"max_vocab": opts["max_vocab"]} if opts["max_vocab"] is not None else \
        ({"max_vocab": None} if model_family(model) in GENERATIVE else {})
    r = trim(model, cfg["languages"], corpora, target, top_k=opts["top_k"], min_count=opts["min_count"],
             coverage=opts["coverage"], quotas=opts["quotas"], scripts=scripts, keep_tokens=opts["keep_tokens"],
             word_variants=opts["word_variants"], frequent_words=opts["frequent_words"], overwrite=True, cache_dir=cfg["cache_dir"],
             **budget)
    return {k: v for k, v in r.as_dict().items() if k != "output"}


def distill_stage(model: Path, target: Path, cfg: dict[str, Any], corpora: dict[str, list[str]], resume: bool) -> dict[str, Any]:
    """Distil a general student from ``model`` on ``corpora`` into ``target``.

    An interrupted distillation resumes from its checkpoints (``--force`` included: the same inputs give the same
    student); they are discarded only when the config says ``restart: true``. ``resume`` is checked before, by
    ``check_distill_resume``.
    """
    from mlcompress.distill import TrainConfig, distill_general, parse_duration

    opts = cfg["stages"]["distill"]
    tc = TrainConfig(steps=opts["steps"], batch_size=opts["batch_size"], grad_accum=opts["grad_accum"], lr=None if opts["lr"] is None else float(opts["lr"]),
                     device=opts["device"], mixed_precision=opts["mixed_precision"],
                     checkpoint_every=opts["checkpoint_every"], seed=opts["seed"],
                     time_budget=parse_duration(opts["time_budget"]), progress=False)
    r = distill_general(model, cfg["languages"], corpora, target, every_k=opts["every_k"],
                        layers=opts["layers"], objective=opts["objective"], max_length=opts["max_length"],
                        block_size=opts["block_size"], max_blocks_per_language=opts["max_blocks_per_language"],
                        train_config=tc, overwrite=True, restart=opts["restart"], cache_dir=cfg["cache_dir"],
                        quantization_aware=opts["quantization_aware"])
    return r.as_dict() if hasattr(r, "as_dict") else {}


def check_distill_resume(target: Path, cfg: dict[str, Any], resume: bool) -> None:
    """Refuse (before the run's state changes) to go on when ``target``'s work dir holds checkpoints of a distillation
    that started from other inputs (``resume`` false: another trimmed model), unless the config says ``restart: true``:
    neither continued from the wrong model nor thrown away unasked. Other options are refused by the distillation."""
    from mlcompress.distill import complete_checkpoints, work_dir_for
    from mlcompress.errors import InputError

    if resume or cfg["stages"]["distill"]["restart"]:
        return
    work = work_dir_for(target)
    done = [c for root in work.rglob("checkpoints") for c in complete_checkpoints(root.parent)] if work.is_dir() else []
    if done:
        raise InputError(f"{work} holds an interrupted distillation ({len(done)} checkpoint(s)) that started from other "
                         "inputs than this run's (the model it distils, or its corpora, changed since)",
                         "set stages.distill.restart: true in the config to discard its checkpoints and start over, "
                         "or put the previous inputs back and rerun to resume it")


def export_stage(model: Path, target: Path, cfg: dict[str, Any], corpora: dict[str, list[str]]) -> dict[str, Any]:
    """Export ``model`` (a bundle by default) into ``target``, calibrated and parity-checked on ``corpora``."""
    import mlcompress.export as ex

    opts = cfg["stages"]["export"]
    r = ex.export(model, target, format=opts["format"], quantize=opts["quantize"], bundle=opts["bundle"],
                  languages=cfg["languages"], texts=dict(corpora) or None, task=opts["task"],
                  quantize_embeddings=opts["quantize_embeddings"], max_length=opts["max_length"],
                  min_cosine=opts["min_cosine"], force=opts["force"], measure_latency=opts["measure_latency"],
                  max_drop=opts["max_drop"], ort=opts["ort"],
                  tokenizer_in_graph=opts["tokenizer_in_graph"], overwrite=True, cache_dir=cfg["cache_dir"])
    return {k: v for k, v in r.as_dict().items() if k not in ("output", "manifest")}


def in_scope(language: str, languages: list[str]) -> bool:
    """Whether a score's language field ("de", "de-en", "es-en (4a)") involves only the target languages."""
    codes = re.findall(r"[a-z]{2,3}", language.split("(")[0].lower())
    return bool(codes) and all(c in languages for c in codes)


def _limits(cfg: dict[str, Any]) -> Any:
    """The eval limits of the config (every data count capped at ``max_examples``)."""
    from mlcompress.eval import Limits

    opts = cfg["stages"]["eval"]
    return Limits().capped(opts["max_examples"]) if opts["max_examples"] else Limits()


def _evaluate_candidate(cfg: dict[str, Any], candidate: dict[str, Any], folder: Path, encoders: tuple[Any, Any] | None,
                        efficiency: dict[str, Any] | None, say: Callable[[str], None]) -> dict[str, Any]:
    """One candidate against the source: every score, and the gate and summary over the target languages' scores.
    ``efficiency`` is the candidate's part of the one interleaved timing of the source and every candidate."""
    from mlcompress.eval import evaluate, gate, summary

    opts = cfg["stages"]["eval"]
    progress = lambda m: say(f"eval {candidate['name']}: {m}")  # noqa: E731
    if encoders is None:  # causal LMs and encoder-decoders: the generative tasks, each model loaded by eval
        from mlcompress.eval import LMLimits, Seq2SeqLimits

        cap = opts["max_examples"]
        lm = LMLimits().capped(cap) if cap else LMLimits()
        s2s = Seq2SeqLimits().capped(cap) if cap else Seq2SeqLimits()
        rep = evaluate(cfg["source"], candidate["path"], cfg["languages"], _lm_tasks(opts["tasks"]), cfg["data"], folder,
                       None, cache_dir=cfg["cache_dir"], lm_limits=lm, seq2seq_limits=s2s, progress=progress)
    else:
        rep = evaluate(cfg["source"], candidate["path"], cfg["languages"], opts["tasks"], cfg["data"], folder,
                       None, task_languages=opts["task_languages"],
                       limits=_limits(cfg), transfer=opts["transfer"], cache_dir=cfg["cache_dir"],
                       encoders=encoders, within_languages=True, efficiency=efficiency, progress=progress)
    d = rep.as_dict()
    # the gate judges the target languages: a cross-lingual set pairing one with another language
    # (e.g. STS17 ar-en for an en,de model) is reported but not gated, since the trim dropped that language
    scope = [sc for sc in rep.scores if in_scope(sc.language, cfg["languages"])]
    outside = sorted({sc.language for sc in rep.scores if not in_scope(sc.language, cfg["languages"])})
    return {"gate": gate(scope, opts["min_retention"]), "summary": summary(scope),
            "summary_all_languages": d["summary"], "outside_target_languages": outside,
            "efficiency": d["efficiency"], "scores": d["scores"], "skipped": d["skipped"]}


def _lm_tasks(tasks: str) -> str | None:
    """The eval tasks for a causal LM or an encoder-decoder: the family's defaults when the config keeps the built-in
    job's encoder tasks (with a data folder, or the packaged sample's); tasks the user named are passed on (eval refuses
    encoder tasks for these families, naming their own)."""
    from mlcompress.eval import SAMPLE_TASKS

    from .config import DEFAULT_EVAL_TASKS

    return None if tasks in (DEFAULT_EVAL_TASKS, ",".join(SAMPLE_TASKS)) else tasks


def _joint_efficiency(cfg: dict[str, Any], source: Any, candidates: dict[str, Any],
                      say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """The source and every candidate timed in the same interleaved rounds (when efficiency is among the tasks), so
    that the report's latencies compare: per candidate name, its efficiency entry."""
    from mlcompress.eval import compare_efficiency, parse_tasks

    opts = cfg["stages"]["eval"]
    if "efficiency" not in parse_tasks(opts["tasks"]):
        return {}
    languages = (opts["task_languages"] or {}).get("efficiency") or cfg["languages"]
    say(f"eval: timing the source and {', '.join(candidates)} together, in interleaved rounds")
    return compare_efficiency(source, candidates, languages, cfg["data"], _limits(cfg))


def eval_stage(target: Path, cfg: dict[str, Any], source_path: Path, candidates: list[dict[str, Any]],
               say: Callable[[str], None]) -> dict[str, Any]:
    """Evaluate each candidate (``{"name", "path"}``) against the config's source into ``target/<name>``; the last is final."""
    from mlcompress.artifacts import atomic_output_dir, write_provenance
    from mlcompress.eval import load_encoder

    opts = cfg["stages"]["eval"]
    results = {}
    with atomic_output_dir(target, overwrite=True) as tmp:
        generative = model_family(source_path) in GENERATIVE
        src_enc = None if generative else load_encoder(cfg["source"], cfg["cache_dir"])  # as the user named it (E5 prefix)
        encs = {} if generative else {a["name"]: load_encoder(a["path"], cfg["cache_dir"]) for a in candidates}
        joint = {} if generative else _joint_efficiency(cfg, src_enc, encs, say)
        for a in candidates:
            say(f"eval: {a['name']} against the source")
            pair = None if generative else (src_enc, encs[a["name"]])
            results[a["name"]] = {**_evaluate_candidate(cfg, a, tmp / a["name"], pair, joint.get(a["name"]), say),
                                  "final": a is candidates[-1]}
        write_provenance(tmp, "pipeline-eval", {**opts, "languages": cfg["languages"], "data": cfg["data"]},
                         [{"role": "source", "source": cfg["source"], "path": str(source_path)}]
                         + [{"role": "candidate", "stage": a["name"], "path": a["path"]} for a in candidates],
                         {"results": {k: {"gate": v["gate"], "summary": v["summary"]} for k, v in results.items()}})
    return {"results": results}
