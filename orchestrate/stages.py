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


def trim_stage(model: Path, target: Path, cfg: dict[str, Any], corpora: dict[str, list[str]] | None, scripts: bool) -> dict[str, Any]:
    """Trim ``model``'s vocabulary to the config's languages (by ``corpora``, or by script) into ``target``."""
    from mlcompress.vocab_trim import trim

    opts = cfg["stages"]["trim"]
    r = trim(model, cfg["languages"], corpora, target, top_k=opts["top_k"], min_count=opts["min_count"],
             coverage=opts["coverage"], quotas=opts["quotas"], scripts=scripts, keep_tokens=opts["keep_tokens"],
             word_variants=opts["word_variants"], frequent_words=opts["frequent_words"], overwrite=True, cache_dir=cfg["cache_dir"],
             **({"max_vocab": opts["max_vocab"]} if opts["max_vocab"] is not None else {}))  # None: trim's budget
    return {k: v for k, v in r.as_dict().items() if k != "output"}


def distill_stage(model: Path, target: Path, cfg: dict[str, Any], corpora: dict[str, list[str]], resume: bool) -> dict[str, Any]:
    """Distil a general student from ``model`` on ``corpora`` into ``target``; ``resume`` continues an interrupted run."""
    from mlcompress.distill import TrainConfig, distill_general, parse_duration

    opts = cfg["stages"]["distill"]
    tc = TrainConfig(steps=opts["steps"], batch_size=opts["batch_size"], grad_accum=opts["grad_accum"], lr=float(opts["lr"]),
                     device=opts["device"], mixed_precision=opts["mixed_precision"],
                     checkpoint_every=opts["checkpoint_every"], seed=opts["seed"],
                     time_budget=parse_duration(opts["time_budget"]), progress=False)
    r = distill_general(model, cfg["languages"], corpora, target, every_k=opts["every_k"],
                        layers=opts["layers"], objective=opts["objective"], max_length=opts["max_length"],
                        block_size=opts["block_size"], max_blocks_per_language=opts["max_blocks_per_language"],
                        train_config=tc, overwrite=True, restart=not resume, cache_dir=cfg["cache_dir"])
    return r.as_dict() if hasattr(r, "as_dict") else {}


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


def _evaluate_candidate(cfg: dict[str, Any], candidate: dict[str, Any], folder: Path, source_encoder: Any,
                        say: Callable[[str], None]) -> dict[str, Any]:
    """One candidate against the source: every score, and the gate and summary over the target languages' scores."""
    from mlcompress.eval import Limits, evaluate, gate, load_encoder, summary

    opts = cfg["stages"]["eval"]
    limits = Limits().capped(opts["max_examples"]) if opts["max_examples"] else Limits()
    rep = evaluate(cfg["source"], candidate["path"], cfg["languages"], opts["tasks"], cfg["data"], folder,
                   None, task_languages=opts["task_languages"],
                   limits=limits, transfer=opts["transfer"], cache_dir=cfg["cache_dir"],
                   encoders=(source_encoder, load_encoder(candidate["path"], cfg["cache_dir"])), within_languages=True,
                   progress=lambda m: say(f"eval {candidate['name']}: {m}"))
    d = rep.as_dict()
    # the gate judges the target languages: a cross-lingual set pairing one with another language
    # (e.g. STS17 ar-en for an en,de model) is reported but not gated, since the trim dropped that language
    scope = [sc for sc in rep.scores if in_scope(sc.language, cfg["languages"])]
    outside = sorted({sc.language for sc in rep.scores if not in_scope(sc.language, cfg["languages"])})
    return {"gate": gate(scope, opts["min_retention"]), "summary": summary(scope),
            "summary_all_languages": d["summary"], "outside_target_languages": outside,
            "efficiency": d["efficiency"], "scores": d["scores"], "skipped": d["skipped"]}


def eval_stage(target: Path, cfg: dict[str, Any], source_path: Path, candidates: list[dict[str, Any]],
               say: Callable[[str], None]) -> dict[str, Any]:
    """Evaluate each candidate (``{"name", "path"}``) against the config's source into ``target/<name>``; the last is final."""
    from mlcompress.artifacts import atomic_output_dir, write_provenance
    from mlcompress.eval import load_encoder

    opts = cfg["stages"]["eval"]
    results = {}
    with atomic_output_dir(target, overwrite=True) as tmp:
        src_enc = load_encoder(cfg["source"], cfg["cache_dir"])  # named as the user did (E5 prefix detection)
        for a in candidates:
            say(f"eval: {a['name']} against the source")
            results[a["name"]] = {**_evaluate_candidate(cfg, a, tmp / a["name"], src_enc, say), "final": a is candidates[-1]}
        write_provenance(tmp, "pipeline-eval", {**opts, "languages": cfg["languages"], "data": cfg["data"]},
                         [{"role": "source", "source": cfg["source"], "path": str(source_path)}]
                         + [{"role": "candidate", "stage": a["name"], "path": a["path"]} for a in candidates],
                         {"results": {k: {"gate": v["gate"], "summary": v["summary"]} for k, v in results.items()}})
    return {"results": results}
