"""The distilled student's edge bundle under each quantisation choice, measured in one run (issue 25: the default).

For a student made by `mlcompress distill general` (en+el), each choice is exported as a bundle with
`mlcompress.export.export`, beside an fp32 bundle of the same student (the reference; it matches PyTorch to 1e-7).
Per choice: bundle size; Tatoeba ell-eng retrieval (1,000 pairs, mean of both directions' top-1) and its retention
against the fp32 bundle; mean cosine with the fp32 bundle's embeddings on those sentences; batch independence (64
Tatoeba sentences, Greek and English mixed, embedded one at a time against the same sentences in batches of 32 of
mixed lengths: max abs difference). Bars (issue 25): bundle <= 15 MiB, retention >= 0.99, max abs diff <= 1e-5.
`auto` is export()'s default: for a student saved on the 4-bit grid (quantisation-aware distillation, the default)
it resolves to int4-weights (block 32) with 64-wide embedding blocks, the same bundle as "int4-weights/32, emb 4-bit/64",
and is exact; for a student off the grid, to int8-weights. --reuse keeps bundles a previous run left in --out.

With --timing (off by default: the CPU is often shared) it also times batch-1 latency of the torch-free runtime
against the 12-layer trimmed en+el bundle in interleaved rounds (issue 11's bar: <= 0.6x).

    python bench/student_bundle.py --student /tmp/abl/student-base
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import transformers

from mlcompress.export import export, runtime

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
BAR_MIB, BAR_RETENTION, BAR_BATCH = 15.0, 0.99, 1e-5
# name -> export() keywords (the fp32 reference is exported first)
CHOICES: dict[str, dict[str, Any]] = {
    "fp32 (reference)": {"quantize": "none"},
    "int8-weights, emb 4-bit/32 (old default)": {"quantize": "int8-weights"},
    "int8-weights, emb 4-bit/64": {"quantize": "int8-weights", "embedding_block_size": 64},
    "int4-weights/32, emb 4-bit/32": {"quantize": "int4-weights", "int4_block_size": 32},
    "int4-weights/32, emb 4-bit/64": {"quantize": "int4-weights", "int4_block_size": 32, "embedding_block_size": 64},
    "int4-weights/64, emb 4-bit/64": {"quantize": "int4-weights", "int4_block_size": 64, "embedding_block_size": 64},
    "int4-weights/128, emb 4-bit/32": {"quantize": "int4-weights", "int4_block_size": 128},
    "int4 (MatMulNBits)/32, emb 4-bit/32": {"quantize": "int4", "int4_block_size": 32},
    "int4 (MatMulNBits)/128, emb 4-bit/32": {"quantize": "int4", "int4_block_size": 128},
    "auto (export's default)": {},
}


def lines(path: Path) -> list[str]:
    """The non-empty lines of a gzipped text file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [x.strip() for x in f if x.strip()]


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (the bundle as shipped)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def retrieval(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of both directions' top-1 accuracy of aligned rows (Tatoeba's bitext retrieval)."""
    sim, gold = a @ b.T, np.arange(len(a))
    return float(((sim.argmax(1) == gold).mean() + (sim.argmax(0) == gold).mean()) / 2)


def batch_gap(model: Any, sentences: list[str]) -> float:
    """Max abs difference between each sentence embedded alone and in batches of 32 of mixed lengths."""
    alone = np.stack([model.encode(s) for s in sentences])
    return float(np.abs(model.encode(sentences, batch_size=32) - alone).max())


def export_choices(student: Path, out: Path, texts: dict[str, str], names: list[str],
                   reuse: bool = False) -> dict[str, dict[str, Any]]:
    """Export the student once per choice (a bundle each; with ``reuse``, a bundle already there is kept); return each
    bundle's path and resolved scheme."""
    done = {}
    for name in names:
        target = out / "".join(c if c.isalnum() else "-" for c in name).strip("-")
        if reuse and (target / "manifest.json").is_file():
            manifest = json.loads((target / "manifest.json").read_text())
            done[name] = {"path": target, "quantize": manifest["quantization"]["name"], "parity_cosine": None}
            print(f"reused {name}: {done[name]['quantize']}, {dir_bytes(target) / MIB:.2f} MiB", flush=True)
            continue
        # force: a choice that fails the export's parity gate is still written, to measure how far it falls
        r = export(student, target, bundle=True, texts=texts, overwrite=True, measure_latency=False, force=True,
                   **CHOICES[name])
        done[name] = {"path": target, "quantize": r.quantize, "parity_cosine": r.parity.get("mean_cosine")}
        print(f"exported {name}: {r.quantize}, {dir_bytes(target) / MIB:.2f} MiB, parity mean cosine "
              f"{r.parity.get('mean_cosine'):.5f}", flush=True)
    return done


def measure(bundles: dict[str, dict[str, Any]], el: list[str], en: list[str]) -> dict[str, dict[str, Any]]:
    """Size, retrieval and its retention, cosine with the fp32 reference, batch gap of each bundle."""
    mixed = [s for pair in zip(el[:32], en[:32]) for s in pair]  # Greek and English, short and long, interleaved
    rows, ref = {}, None
    for name, info in bundles.items():
        model = runtime.load(info["path"])
        a, b = model.encode(el, batch_size=32), model.encode(en, batch_size=32)
        ref = ref or (a, b, retrieval(a, b))
        cos = float(np.concatenate([(a * ref[0]).sum(1), (b * ref[1]).sum(1)]).mean())
        score = retrieval(a, b)
        rows[name] = {"quantize": info["quantize"], "bytes": dir_bytes(info["path"]), "tatoeba_ell_eng": score,
                      "retention": score / ref[2], "cosine_vs_fp32": cos, "batch_max_abs_diff": batch_gap(model, mixed)}
    return rows


def report(rows: dict[str, dict[str, Any]]) -> None:
    """Print the table and which choices meet all three bars."""
    print(f"\n| choice | scheme | MiB | Tatoeba ell-eng | retention vs fp32 | cosine vs fp32 | alone vs batch max abs | bars |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, r in rows.items():
        ok = r["bytes"] <= BAR_MIB * MIB and r["retention"] >= BAR_RETENTION and r["batch_max_abs_diff"] <= BAR_BATCH
        print(f"| {name} | {r['quantize']} | {r['bytes'] / MIB:.2f} | {r['tatoeba_ell_eng']:.4f} | {r['retention']:.4f} | "
              f"{r['cosine_vs_fp32']:.5f} | {r['batch_max_abs_diff']:.1e} | {'all met' if ok else 'missed'} |")


def timing(student_bundle: Path, data: Path, out: Path, items: list[str], rounds: int) -> None:
    """Batch-1 latency of the student's default bundle against the 12-layer trimmed bundle, interleaved rounds."""
    from mlcompress.vocab_trim import trim

    mono = {lang: str(data / "mono" / f"{lang}.txt.gz") for lang in ("en", "el")}
    trimmed = trim("bundled:multilingual-e5-small", "en,el", mono, out / "e5-small-en-el", overwrite=True)
    export(trimmed.output, out / "12-layer", bundle=True, texts=mono, overwrite=True, measure_latency=False)
    loaded = {"12-layer trimmed": runtime.load(out / "12-layer"), "6-layer student": runtime.load(student_bundle)}
    times: dict[str, list[float]] = {name: [] for name in loaded}
    for _ in range(rounds):  # interleaved: drift hits both alike
        for name, model in loaded.items():
            per = []
            for s in items:
                t = time.perf_counter()
                model.encode([s])
                per.append((time.perf_counter() - t) * 1000)
            times[name].append(statistics.median(per))
    base = statistics.median(times["12-layer trimmed"])
    for name, ts in times.items():
        print(f"{name}: batch-1 p50 {statistics.median(ts):.2f} ms ({[round(t, 3) for t in ts]}), "
              f"ratio {statistics.median(ts) / base:.3f}")


def main() -> None:
    """Export each choice, measure, print the table; optionally time the default against the 12-layer bundle."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, required=True, help="a distilled student directory (mlcompress distill general)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("/tmp/mlcompress-bench-student-bundle"))
    ap.add_argument("--choices", default="", help="comma-separated indices into the choices (default: all; 0, the fp32 "
                                                   "reference, is always included)")
    ap.add_argument("--timing", action="store_true", help="also time batch-1 latency (needs an otherwise idle CPU)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reuse", action="store_true", help="keep the bundles a previous run left in --out")
    args = ap.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    names = list(CHOICES)
    if args.choices:
        names = [names[0]] + [names[int(i)] for i in args.choices.split(",") if int(i) != 0]
    texts = {lang: str(args.data / "mono" / f"{lang}.txt.gz") for lang in ("en", "el")}
    bundles = export_choices(args.student, args.out, texts, names, args.reuse)
    el = lines(args.data / "tatoeba/tatoeba.ell-eng.ell.gz")[:1000]
    en = lines(args.data / "tatoeba/tatoeba.ell-eng.eng.gz")[:1000]
    rows = measure(bundles, el, en)
    report(rows)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    if args.timing:
        default = bundles.get("auto (export's default)") or next(iter(bundles.values()))
        timing(default["path"], args.data, args.out, el[:40] + en[:40], args.rounds)


if __name__ == "__main__":
    main()
