"""Benchmark a real decoder through mlcompress: Gemma 3 270M trimmed per language pair, exported, timed and scored.

For each pair en+X (default X = de, es, ja, ru), with the pipeline's decoder recipe (trim on ``DATA/mono`` plus the
word lists, no vocabulary budget; export with the KV cache at 8-bit and 4-bit weights), one table row per model:

- vocabulary, parameters, bytes (the bundle without the other dtypes' graphs);
- prefill ms of a 32-token prompt and decode tokens/s at batch 1 over 128 new tokens, every model of the pair timed
  in the same interleaved rounds (``mlcompress.eval.measure_lms``): the source in PyTorch fp32, the trim in PyTorch
  fp32, the trim's ONNX bundles (int8, int4), and, where installed (bench only, never dependencies), llama.cpp on the
  source's own Q4_K_M GGUF (``llama-cpp-python``, the outside anchor) and onnxruntime-genai 0.18's model builder on
  the trim (``--genai``, the second producer; ``bench/genai_producer.py``);
- against the source, on held-out target-language text (XNLI dev premises, else Tatoeba; never ``mono/``), through
  ``evaluate_generative``: bits-per-byte retention, perplexity ratio on texts both tokenise alike, next-token top-1
  agreement, and for the trim in fp32 the NLL difference and greedy 32-token identity.

    flock /tmp/cpu.lock .venv/bin/python bench/generative.py [--langs de,es,ja,ru] [--work out/bench-generative]
        [--texts 24] [--rounds 3] [--runs 6] [--genai [int4,int8]] [--reuse] [--timing-only]

The eval sets chose nothing here (the trim recipe was chosen by bench/trim_generative.py, the quantisation on PAWS-X
dev sentences), so the quality figures are blind except en+de's trim recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from mlcompress.artifacts import quiet_transformers
from mlcompress.eval import LMLimits, evaluate_generative, load_causal_lm, measure_lms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
SOURCE = "bundled:gemma-3-270m"
QUANTS = {"int8": "int8-weights", "int4": "int4"}


def trimmed(source: Path, lang: str, data: Path, work: Path, reuse: bool) -> Path:
    """The en+``lang`` trim of ``source`` by the pipeline's decoder recipe (reused when asked and present)."""
    from mlcompress.vocab_trim import trim

    out = work / f"en-{lang}" / "trim"
    if not (reuse and (out / "mlcompress.json").is_file()):
        corpora = {code: [str(data / "mono" / f"{code}.txt.gz")] for code in ("en", lang)}
        trim(source, ["en", lang], corpora, out, max_vocab=None, overwrite=True)
    return out


def exported(model: Path, lang: str, quant: str, data: Path, work: Path, reuse: bool) -> Path:
    """The decoder bundle of ``model`` at ``quant`` (int8 / int4), parity-checked on held-out-free mono text."""
    from mlcompress.export import export

    out = work / f"en-{lang}" / quant
    if not (reuse and (out / "manifest.json").is_file()):
        corpora = {code: str(data / "mono" / f"{code}.txt.gz") for code in ("en", lang)}
        export(model, out, quantize=QUANTS[quant], languages=["en", lang], texts=corpora, overwrite=True,
               measure_latency=False)
    return out


def anchors(source_dir: Path, trim: Path, lang: str, work: Path, genai: str | None, reuse: bool) -> dict[str, Any]:
    """The outside models that are installed: llama.cpp on the source GGUF, onnxruntime-genai's build of the trim."""
    out: dict[str, Any] = {}
    try:
        import llama_anchor

        if llama_anchor.available() is None:
            out["llama.cpp Q4_K_M (source)"] = llama_anchor.LlamaCppLM(llama_anchor.gguf_path())
        else:
            print(f"llama.cpp skipped: {llama_anchor.available()}")
    except ImportError as exc:
        print(f"llama.cpp skipped: {exc}")
    if genai:
        import genai_producer

        for precision in genai.split(","):
            target = work / f"en-{lang}" / f"genai-{precision}"
            if not (reuse and target.is_dir() and any(target.glob("*.onnx"))):
                genai_producer.build(trim, target, precision)
            out[f"ORT-GenAI {precision} (trim)"] = genai_producer.GenAILM(target)
    return out


def models_of(source: Path, trim: Path, bundles: dict[str, Path], extra: dict[str, Any]) -> dict[str, Any]:
    """Every model of one pair's row set, loaded once (named for the table)."""
    models = {"source, PyTorch fp32": load_causal_lm(str(source)), "trim, PyTorch fp32": load_causal_lm(str(trim))}
    models.update({f"trim, ONNX {q}": load_causal_lm(str(path)) for q, path in bundles.items()})
    models.update(extra)
    return models


def quality(models: dict[str, Any], lang: str, data: Path, texts: int, work: Path) -> dict[str, dict[str, Any]]:
    """Each candidate's scores against the source on held-out text of ``lang`` and English."""
    names = list(models)
    source = models[names[0]]
    out: dict[str, dict[str, Any]] = {}
    for name in names[1:]:
        tasks = ["perplexity", "next_token"] + (["greedy"] if name.startswith("trim, PyTorch") else [])
        limits = LMLimits(texts=texts, prompts=texts)
        report = evaluate_generative(SOURCE, models[name].path, ["en", lang], tasks=tasks, data_dir=data,
                                     lm_limits=limits, models=(source, models[name]), overwrite=True,
                                     output=work / f"en-{lang}" / "eval" / re.sub(r"[^a-z0-9]+", "-", name.lower()))
        out[name] = {f"{s.task}/{s.metric}/{s.language}": s for s in report.scores}
    return out


def _field(s: Any, name: str) -> Any:
    """A field of a Score, or of its dict as read back from results.json."""
    return s.get(name) if isinstance(s, dict) else getattr(s, name, None)


def score(scores: dict[str, Any], key: str, field: str = "candidate") -> str:
    """One figure of a candidate's scores, or a dash."""
    s = scores.get(key)
    value = _field(s, field) if s is not None else None
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def nll_figures(scores: dict[str, Any], lang: str) -> str:
    """On texts both models tokenise alike (target language): the perplexity ratio to the source, and the NLL
    difference (nats/token) to the source renormalised over the kept ids (what an exact trim leaves unchanged)."""
    import math

    s = scores.get(f"perplexity/nll_per_token_same_tokens/{lang}")
    if s is None:
        return "- | -"
    kept = (_field(s, "details") or {}).get("candidate_minus_source_over_kept_ids")
    ratio = math.exp(_field(s, "candidate") - _field(s, "source"))
    return f"{ratio:.4f} | {kept:+.1e}" if kept is not None else f"{ratio:.4f} | -"


def run_pair(lang: str, args: argparse.Namespace, source: Path) -> dict[str, Any]:
    """Trim, export, time and score one pair; returns its figures."""
    from mlcompress.eval.data import DataSource  # bench only: the generative eval's own held-out text
    from mlcompress.eval.lm_data import lm_texts

    work, data = args.work, args.data
    t = time.time()
    trim = trimmed(source, lang, data, work, args.reuse)
    bundles = {q: exported(trim, lang, q, data, work, args.reuse) for q in QUANTS}
    print(f"en+{lang}: trim and exports ready in {time.time() - t:.0f} s", flush=True)
    models = models_of(source, trim, bundles, anchors(source, trim, lang, work, args.genai, args.reuse))
    text = lm_texts(DataSource(root=data), lang, 64)[0]
    if args.skip_timing:
        figures, together = {name: {} for name in models}, {"order": None}
    else:
        figures, together = measure_lms(models, text, args.prompt, args.new_tokens, args.runs, args.rounds)
    stored = (stored_scores(work, lang) or {}) if args.timing_only else None
    scores = stored if stored is not None else quality(models, lang, data, args.texts, work)
    pair = {"lang": lang, "figures": figures, "order": together["order"], "scores": scores,
            "sizes": {n: m.size() for n, m in models.items()}, "vocab": {n: m.vocab_size for n, m in models.items()},
            "scores_reused": scores is stored}
    (work / f"en-{lang}" / "results.json").write_text(json.dumps(pair, indent=1, default=_plain))
    return pair


def _plain(o: Any) -> Any:
    """JSON form of a Score (its fields) or anything else (its text)."""
    return dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o)


def stored_scores(work: Path, lang: str) -> dict[str, Any] | None:
    """The quality scores of an earlier run of this pair (its results.json, or the run-wide one), if any."""
    for path in (work / f"en-{lang}" / "results.json", work / "results.json"):
        if path.is_file():
            data = json.loads(path.read_text())
            for pair in data if isinstance(data, list) else [data]:
                if pair.get("lang") == lang and pair.get("scores"):
                    return pair["scores"]
    return None


def table(pair: dict[str, Any]) -> str:
    """The Markdown rows of one pair."""
    lang = pair["lang"]
    rows = [f"\n### en+{lang}\n",
            "| model | vocabulary | parameters | MiB | prefill ms (32 tok) | decode tok/s (128 new) | bits/byte retention "
            f"{lang} / en | ppl ratio {lang} | ΔNLL vs kept {lang} | top-1 agreement {lang} / en | greedy identical {lang} / en |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = None
    for name, f in pair["figures"].items():
        size, s = pair["sizes"][name], pair["scores"].get(name, {})
        tps = f.get("decode_tokens_per_s") or 0.0
        base = base or tps or 1.0
        mib = (size.get("bytes_on_disk") or 0) / 2**20
        params = size.get("parameters")
        rows.append(f"| {name} | {pair['vocab'][name]:,} | {params / 1e6 if params else 0:.1f}M | {mib:.1f} | "
                    f"{f.get('prefill_ms_p50', 0.0):.1f} | {tps:.1f} ({tps / base:.2f}x) | "
                    f"{score(s, f'perplexity/bits_per_byte/{lang}', 'retention')} / "
                    f"{score(s, 'perplexity/bits_per_byte/en', 'retention')} | {nll_figures(s, lang)} | "
                    f"{score(s, f'next_token/top1_agreement/{lang}')} / {score(s, 'next_token/top1_agreement/en')} | "
                    f"{score(s, f'greedy/identical_text/{lang}')} / {score(s, 'greedy/identical_text/en')} |")
    return "\n".join(rows)


def main() -> None:
    """Run the pairs and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--langs", default="de,es,ja,ru")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-generative")
    ap.add_argument("--texts", type=int, default=24, help="held-out texts and greedy prompts per language")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--genai", nargs="?", const="int4,int8", default=None,
                    help="also build, time and score onnxruntime-genai's builds of the trim (precisions, default int4,int8)")
    ap.add_argument("--reuse", action="store_true", help="reuse trims, exports and builds already in --work")
    ap.add_argument("--skip-timing", action="store_true", help="quality scores only (time later with --timing-only)")
    ap.add_argument("--timing-only", action="store_true",
                    help="time only, showing the quality scores an earlier run stored for the pair (if any)")
    args = ap.parse_args()
    quiet_transformers()
    from mlcompress.sources import resolve_model

    source = resolve_model(SOURCE, None).path
    results = []
    for lang in [x.strip() for x in args.langs.split(",") if x.strip()]:
        pair = run_pair(lang, args, source)
        results.append(pair)
        print(table(pair), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=1, default=_plain))
    print("\n".join(table(p) for p in results))


if __name__ == "__main__":
    main()
