"""The distilled student's int8 edge bundle against the 12-layer trimmed int8 bundle, measured in one run.

Both come from the bundled multilingual-e5-small trimmed to the same en+el vocabulary (mono/ en+el, the
trim the student was distilled from). Both are exported with `mlcompress export --quantize int8-dynamic
--bundle`; then, in interleaved rounds on this CPU, batch-1 latency of the torch-free runtime (tokenization
included) on Tatoeba ell-eng sentences, bundle size, and Tatoeba ell-eng retrieval of each bundle.
Bars (issue 11): student bundle <= 18 MiB, batch-1 latency <= 0.6x the 12-layer trimmed bundle's.

    python bench/student_bundle.py --student /tmp/mlcompress-bench-bistil/student-embedding
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from pathlib import Path

import numpy as np
import transformers

from mlcompress.export import export, runtime
from mlcompress.vocab_trim import trim

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [x.strip() for x in f if x.strip()]


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def retrieval(a: np.ndarray, b: np.ndarray) -> float:
    sim, gold = a @ b.T, np.arange(len(a))
    return float(((sim.argmax(1) == gold).mean() + (sim.argmax(0) == gold).mean()) / 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, required=True, help="a distilled student directory (mlcompress distill general)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("/tmp/mlcompress-bench-student-bundle"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    mono = {lang: str(args.data / "mono" / f"{lang}.txt.gz") for lang in ("en", "el")}
    trimmed = trim("bundled:multilingual-e5-small", "en,el", mono, args.out / "e5-small-en-el", overwrite=True)
    # (model, embedding block size): the student also with 64-wide blocks of its 4-bit embedding table (half the scales)
    models = {"12-layer trimmed": (trimmed.output, 32), "6-layer student": (args.student, 32),
              "6-layer student, emb blocks 64": (args.student, 64)}
    bundles = {}
    for name, (model, block) in models.items():
        target = args.out / name.replace(" ", "-").replace(",", "")
        r = export(model, target, quantize="int8-dynamic", bundle=True, texts=mono, overwrite=True, measure_latency=False,
                   embedding_block_size=block)
        bundles[name] = target
        print(f"{name}: exported {target} ({dir_bytes(target) / MIB:.2f} MiB), parity {json.dumps(r.parity, default=str)[:300]}",
              flush=True)
    el, en = lines(args.data / "tatoeba/tatoeba.ell-eng.ell.gz"), lines(args.data / "tatoeba/tatoeba.ell-eng.eng.gz")
    loaded = {name: runtime.load(path) for name, path in bundles.items()}
    items = el[:40] + en[:40]
    for model in loaded.values():
        for s in items[:5]:
            model.encode([s])
    times: dict[str, list[float]] = {name: [] for name in loaded}
    for _ in range(args.rounds):  # interleaved: drift hits both alike
        for name, model in loaded.items():
            per = []
            for s in items:
                t = time.perf_counter()
                model.encode([s])
                per.append((time.perf_counter() - t) * 1000)
            times[name].append(statistics.median(per))
    rows = {}
    for name, model in loaded.items():
        ret = retrieval(model.encode(el), model.encode(en))
        rows[name] = {"bytes": dir_bytes(bundles[name]), "p50_ms": statistics.median(times[name]),
                      "rounds_ms": [round(t, 3) for t in times[name]], "tatoeba_ell_eng": ret}
    base = rows["12-layer trimmed"]
    for name, row in rows.items():
        print(f"{name:32s} {row['bytes'] / MIB:7.2f} MiB  batch-1 p50 {row['p50_ms']:.2f} ms {row['rounds_ms']}  "
              f"Tatoeba ell-eng {row['tatoeba_ell_eng']:.4f}")
    for name, student in rows.items():
        if name == "12-layer trimmed":
            continue
        ratio = student["p50_ms"] / base["p50_ms"]
        print(f"{name}: {student['bytes'] / MIB:.2f} MiB (bar <= 18: {'ok' if student['bytes'] <= 18 * MIB else 'MISSED'}); "
              f"latency ratio {ratio:.3f} (bar <= 0.6: {'ok' if ratio <= 0.6 else 'MISSED'})")
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
