"""Benchmark `mlcompress eval`: the bundled multilingual-e5-small against its en+de trim (issue: mlcompress eval).

Prints every score of both models and the retention: Tatoeba retrieval (deu, ell and five more languages),
fidelity, POS transfer (train English, test de, el, ru, hi, zh), NLI transfer, STS17 tracks 1-5, efficiency;
then the gate both ways: the exact (scripts-policy) en+de trim passes on German, a copy with shuffled
embedding rows fails. Frozen-encoder probes, bounded sentence counts, embeddings computed once per model.

    python bench/eval.py [--data ../shared/data] [--out /tmp/mlcompress-bench-eval]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import transformers

from mlcompress.errors import GateError
from mlcompress.eval import Limits, evaluate, load_encoder, shuffled_embeddings
from mlcompress.eval.retention import gate
from mlcompress.sources import resolve_model
from mlcompress.vocab_trim import trim

ROOT = Path(__file__).resolve().parents[1]
LANGS = "de,el,fr,ru,zh,hi,ar"  # Tatoeba deu, ell + five more
POS_LANGS = "de,el,ru,hi,zh"
STS_LANGS = "ar,es,en"  # SemEval-2017 tracks 1-5: ar-ar, ar-en, es-es, es-en (4a, 4b), en-en


def print_scores(report: object) -> None:
    """Every score of both models, and the retention."""
    print(f"  {'task':10s} {'language':12s} {'metric':20s} {'source':>8s} {'candidate':>9s} {'retention':>9s}  n")
    for s in report.scores:
        ret = "-" if s.retention is None else f"{s.retention:.4f}"
        print(f"  {s.task:10s} {s.language:12s} {s.metric:20s} {s.source:8.4f} {s.candidate:9.4f} {ret:>9s}  {s.n}"
              + ("" if s.gated else "  (not gated)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mlcompress-bench-eval")
    args = ap.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(2)
    data, out = args.data, args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    source = resolve_model("bundled:multilingual-e5-small")
    t0 = time.perf_counter()
    trim(source.path, "en,de", {"en": data / "mono/en.txt.gz", "de": data / "mono/de.txt.gz"}, out / "e5-small-en-de", overwrite=True)
    print(f"en+de trim (mlcompress trim, counted on mono/en + mono/de) in {time.perf_counter() - t0:.1f} s")
    src = load_encoder("bundled:multilingual-e5-small")
    cand = load_encoder(out / "e5-small-en-de")

    limits = Limits()  # retrieval 1000 pairs, POS 2000 English train sentences / 500 test, NLI 1000 / 500 rows, STS17 all 250
    t0 = time.perf_counter()
    report = evaluate("bundled:multilingual-e5-small", out / "e5-small-en-de", LANGS,
                      "fidelity,retrieval,pos,nli,sts,efficiency", data, out / "report-e5-en-de", min_retention=0.97,
                      overwrite=True, task_languages={"pos": POS_LANGS, "nli": POS_LANGS, "sts": STS_LANGS},
                      limits=limits, transfer="probe", encoders=(src, cand), progress=lambda m: print(f"  .. {m}", flush=True))
    print(f"\n== bundled multilingual-e5-small vs its en+de trim ({time.perf_counter() - t0:.0f} s; "
          f"per task: {', '.join(f'{k} {v:.0f} s' for k, v in report.seconds.items())})")
    print_scores(report)
    e = report.efficiency
    for key in ("parameters", "bytes_on_disk", "latency_ms_p50", "latency_ms_p95", "throughput_per_s", "peak_memory_bytes"):
        print(f"  efficiency {key:18s} source {e['source'][key]:>14,.2f}  candidate {e['candidate'][key]:>14,.2f}  "
              f"ratio {e['candidate_over_source'].get(key, float('nan')):.3f}")
    print(f"  gate at 0.97 over all languages: passed={report.passed}; failures: "
          + ", ".join(f"{f['task']} {f['language']}" for f in report.gate["failures"]))
    german = [s for s in report.scores if s.language in ("de", "de-en", "en-en")]
    g = gate(german, 0.97)
    print(f"  gate at 0.97 on the trim's own languages (de, en): passed={g['passed']} ({g['checked']} scores)"
          + "".join(f"\n    below: {f['task']} {f['language']} {f['metric']} {f['retention']:.4f}" for f in g["failures"]))
    print(f"  report: {report.output}/report.html")

    # the gate both ways, on German
    t0 = time.perf_counter()
    trim(source.path, "en,de", None, out / "e5-small-en-de-scripts", scripts=True, overwrite=True)
    shuffled_embeddings(source.path, out / "e5-small-shuffled", seed=0)
    quick = Limits(retrieval_pairs=1000, fidelity_sentences=200, sts_pairs=500)
    for name, path in (("exact en+de trim (--scripts, lossless on German)", out / "e5-small-en-de-scripts"),
                       ("shuffled embedding rows", out / "e5-small-shuffled")):
        try:
            r = evaluate("bundled:multilingual-e5-small", path, "de", "fidelity,retrieval,sts", data, min_retention=0.97,
                         limits=quick, encoders=(src, load_encoder(path)), raise_on_fail=True)
            print(f"\n== gate, {name}: PASSED")
        except GateError as exc:
            r = None
            print(f"\n== gate, {name}: FAILED (exit code {exc.exit_code})\n  {exc.message}")
        if r is not None:
            print_scores(r)
    print(f"\ngate checks {time.perf_counter() - t0:.0f} s; whole run {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
