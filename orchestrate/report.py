"""The pipeline report: ``OUT/report.json`` (the gate's verdict, every stage, every artifact's figures) and
``OUT/report.html``, rendered by the eval stage's report renderer (``mlcompress.eval.pipeline_html``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .inspect import describe


def stage_rows(artifacts: list[dict[str, Any]], evaluations: dict[str, Any]) -> list[dict[str, Any]]:
    """Per artifact: bytes, parameters, vocabulary, latency and retention (from eval's figures where it measured them)."""
    rows = []
    src_eff = next((v["efficiency"].get("source") for v in evaluations.values() if v.get("efficiency")), None)
    for a in artifacts:
        info = describe(Path(a["path"]))
        row = {"stage": a["name"], "path": a["path"], "kind": info.get("kind"), "bytes": info.get("bytes"),
               "weight_bytes": info.get("weight_bytes"), "parameters": info.get("parameters"), "vocab_size": info.get("vocab_size")}
        eff = (src_eff if a["name"] == "source" else (evaluations.get(a["name"], {}).get("efficiency") or {}).get("candidate"))
        if eff:
            row["latency_ms_p50"] = eff.get("latency_ms_p50")
            row["throughput_per_s"] = eff.get("throughput_per_s")
            row["peak_memory_bytes"] = eff.get("peak_memory_bytes")
        ev = evaluations.get(a["name"])
        if ev:
            row["retention"] = {t: v["min_retention"] for t, v in ev["summary"].items()}
            row["gate"] = ev["gate"].get("passed")
        rows.append(row)
    return rows


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_pipeline_report(out: Path, cfg: dict[str, Any], records: list[dict[str, Any]], artifacts: list[dict[str, Any]],
                          evaluations: dict[str, Any], gate: dict[str, Any], missing: list[str]) -> dict[str, Any]:
    """OUT/report.json (the gate's verdict, every stage) and OUT/report.html (one page, plots embedded, opens offline)."""
    from mlcompress.eval import pipeline_html

    report = {
        "passed": gate.get("passed"), "gate": gate, "source": cfg["source"], "languages": cfg["languages"], "data": cfg["data"],
        "stages": [{k: v for k, v in r.items() if k not in ("metrics",)} for r in records],
        "artifacts": stage_rows(artifacts, evaluations),
        "evaluations": {k: {"gate": v["gate"], "summary": v["summary"], "scores": v["scores"], "skipped": v["skipped"]}
                        for k, v in evaluations.items()},
        "notes": [f"{r['name']}: {r['note']}" for r in records if r.get("note")], "languages_without_text": missing,
    }
    _write_atomic(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    _write_atomic(out / "report.html", pipeline_html(report))
    return report


def _stage_line(stage: dict[str, Any]) -> str:
    """What one stage did: ran / reused / skipped, its seconds, and its note."""
    seconds = f", {stage['seconds']:.1f} s" if isinstance(stage.get("seconds"), (int, float)) else ""
    return f"{stage.get('action', '')}{seconds}" + (f" ({stage['note']})" if stage.get("note") else "")


def pipeline_summary(result: Any) -> str:
    """The few lines a `PipelineResult` prints: stages, each artifact's vocabulary, bytes and retention, the gate."""
    from mlcompress.eval import gate_line
    from mlcompress.summary import count, megabytes, render

    artifacts = result.report.get("artifacts") or []
    sizes = " -> ".join(f"{a['stage']} {megabytes(a.get('bytes'))}, vocab {count(a.get('vocab_size'))}" for a in artifacts)
    retention = "; ".join(f"{a['stage']}: " + ", ".join(f"{t} {v:.3f}" for t, v in a["retention"].items())
                          for a in artifacts if a.get("retention"))
    verdict = {True: "PASSED", False: "FAILED", None: "no gate"}[result.passed]
    return render(f"pipeline -> {result.output}: {verdict}", [
        *((s["name"], _stage_line(s)) for s in result.stages), ("sizes", sizes), ("min retention", retention),
        ("gate", gate_line(result.gate) if result.gate.get("min_retention") is not None else None),
        ("reports", f"{result.output / 'report.json'}, {result.output / 'report.html'}")])
