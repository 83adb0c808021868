"""The built-in job, `mlcompress pipeline -l en,X`, for every X in DATA/mono that wordfreq has a word list for.

Prints one row per pair: the trimmed vocabulary, the int8 bundle's size, the lowest gated retention of the
trimmed model and of the bundle with its 95% paired-bootstrap interval, the bundle's Tatoeba retrieval retention,
the gate's verdict and the wall time. `--quantize int8-dynamic` on a copy of a finished --out reruns only the export
and its eval (the pipeline reuses the unchanged trim), for a comparison on the same trims.

    .venv/bin/python bench/pipeline_langs.py [--langs de,es] [--out out/langs] [--max-drop 0.002] [--quantize Q]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def lowest(evaluation: dict[str, Any] | None, languages: list[str]) -> dict[str, Any] | None:
    """The gated score (above chance, all its languages targets) with the lowest retention, or None."""
    from mlcompress.orchestrate.stages import in_scope

    gated = [s for s in (evaluation or {}).get("scores", [])
             if s.get("gated") and s.get("retention") is not None and in_scope(s["language"], languages)]
    return min(gated, key=lambda s: s["retention"]) if gated else None


def retrieval_retention(evaluation: dict[str, Any] | None) -> float | None:
    """The bundle's lowest retrieval retention (Tatoeba X-eng), the figure the export's default is chosen on."""
    scores = [s["retention"] for s in (evaluation or {}).get("scores", []) if s["task"] == "retrieval" and s.get("retention")]
    return min(scores) if scores else None


def describe(score: dict[str, Any] | None) -> str:
    if score is None:
        return "—"
    iv = score.get("interval") or {}
    span = f" [{iv['retention_low']:.3f}, {iv['retention_high']:.3f}]" if "retention_low" in iv else ""
    return f"{score['retention']:.3f}{span} {score['task']} {score['language']}"


def run_one(lang: str, out: Path, max_drop: float | None, quantize: str | None = None) -> dict[str, Any]:
    """Run the built-in job for en+lang (with another quantisation or --max-drop if asked) and summarise its report."""
    from mlcompress import Pipeline

    pipe = Pipeline.default(f"en,{lang}", DATA)
    if max_drop is not None or quantize is not None:
        if max_drop is not None:
            pipe.config["stages"]["export"]["max_drop"] = max_drop
        if quantize is not None:
            pipe.config["stages"]["export"]["quantize"] = quantize
        pipe = Pipeline(pipe.config)
    pipe.run(out / f"en-{lang}")
    return summarise(lang, out)


def summarise(lang: str, out: Path) -> dict[str, Any]:
    """One row from a finished run's report.json and pipeline.json (wall time: the stages' own seconds)."""
    folder = out / f"en-{lang}"
    report = json.loads((folder / "report.json").read_text())
    state = json.loads((folder / "pipeline.json").read_text())
    rows = {r["stage"]: r for r in report["artifacts"]}
    langs = report["languages"]
    return {"lang": lang, "vocab": rows.get("trim", {}).get("vocab_size"), "bundle_mib": (rows.get("export", {}).get("bytes") or 0) / 2**20,
            "trim_lowest": lowest(report["evaluations"].get("trim"), langs),
            "bundle_lowest": lowest(report["evaluations"].get("export"), langs), "passed": report["passed"],
            "bundle_retrieval": retrieval_retention(report["evaluations"].get("export")),
            "seconds": sum(s.get("seconds") or 0 for s in state["stages"].values())}


def main() -> None:
    import wordfreq

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--langs", help="comma-separated languages (default: every mono/ language wordfreq covers, but en)")
    parser.add_argument("--out", default=str(ROOT / "out" / "langs"))
    parser.add_argument("--max-drop", type=float, default=None)
    parser.add_argument("--quantize", default=None, help="the export's quantisation (default: the built-in job's)")
    parser.add_argument("--summarise", action="store_true", help="print the table from finished runs in --out, run nothing")
    args = parser.parse_args()
    covered = set(wordfreq.available_languages("best"))
    mono = sorted(p.name.split(".")[0] for p in (DATA / "mono").glob("*.txt.gz"))
    langs = args.langs.split(",") if args.langs else [x for x in mono if x in covered and x != "en"]
    print(f"mono/ languages without a wordfreq list (not run): {', '.join(x for x in mono if x not in covered)}", flush=True)
    print("| pair | vocabulary | bundle MiB | lowest gated retention, trim [95% interval] | lowest gated retention, bundle [95% interval] | bundle retrieval retention | gate | wall s |")
    print("| --- | ---: | ---: | --- | --- | ---: | --- | ---: |", flush=True)
    rows = []
    for lang in langs:
        row = summarise(lang, Path(args.out)) if args.summarise else run_one(lang, Path(args.out), args.max_drop,
                                                                                   args.quantize)
        rows.append(row)
        print(f"| en+{lang} | {row['vocab']:,} | {row['bundle_mib']:.2f} | {describe(row['trim_lowest'])} | "
              f"{describe(row['bundle_lowest'])} | {row['bundle_retrieval'] or float('nan'):.3f} | {'pass' if row['passed'] else 'FAIL'} | {row['seconds']:.0f} |", flush=True)
    failed = [r["lang"] for r in rows if not r["passed"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} pairs pass their gate" + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
