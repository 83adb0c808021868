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


def _retention(score: dict[str, Any] | None) -> float | None:
    return score.get("retention") if score and isinstance(score.get("retention"), (int, float)) else None


def _compared_row(key: tuple[Any, ...], scores: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """One score (task, language, metric) of the student beside the trimmed model's, both against the source; with
    the distilled PyTorch model's where it was evaluated too. None: that model does not give this score."""
    student, trim, distilled = scores["student"], scores["trim"], scores["distilled"]
    first = student or trim or {}
    st, tr = _retention(student), _retention(trim)
    return {"task": key[0], "language": key[1], "metric": key[2], "gated": bool(first.get("gated", True)),
            "source": first.get("source"), "trim": (trim or {}).get("candidate"), "student": (student or {}).get("candidate"),
            "trim_retention": tr, "student_retention": st, "distilled_retention": _retention(distilled),
            "retention_change": st - tr if st is not None and tr is not None else None}


def _latency(evaluation: dict[str, Any] | None) -> float | None:
    """A candidate's batch-1 median latency in ms, where eval timed it."""
    value = (((evaluation or {}).get("efficiency") or {}).get("candidate") or {}).get("latency_ms_p50")
    return value if isinstance(value, (int, float)) else None


def _speed(evaluations: dict[str, Any], student: str) -> dict[str, Any]:
    """Batch-1 latencies of the trim, the student's final form and the distilled PyTorch model; the speed-up compares
    like with like (the distilled model against the trim, both PyTorch), never a PyTorch model with an ONNX bundle."""
    ms = {"trim": _latency(evaluations.get("trim")), "student": _latency(evaluations.get(student)),
          "distilled": _latency(evaluations.get("distill"))}
    fair = "distilled" if student != "distill" else "student"
    speedup = ms["trim"] / ms[fair] if ms["trim"] and ms[fair] else None
    return {"latency_ms_p50": ms, "student_speedup": speedup,
            "speedup_of": "the distilled model (02-distill) over the trimmed model, both PyTorch" if speedup else None}


def student_vs_trim(artifacts: list[dict[str, Any]], evaluations: dict[str, Any]) -> dict[str, Any] | None:
    """When the run distilled a student: per eval score, the student's (the final candidate: its bundle when exported)
    beside the trimmed model's, both against the source, with speed, size and each one's gate. None otherwise."""
    paths = {a["name"]: a["path"] for a in artifacts}
    student = next((a["name"] for a in reversed(artifacts) if a["name"] in ("export", "distill")), None)
    if "distill" not in paths or student is None or "trim" not in evaluations or student not in evaluations:
        return None
    by_key = {name: {(s.get("task"), s.get("language"), s.get("metric")): s for s in (evaluations.get(name) or {}).get("scores") or []}
              for name in ("trim", student, "distill")}
    keys = list(dict.fromkeys([*by_key[student], *by_key["trim"]]))
    rows = [_compared_row(k, {"student": by_key[student].get(k), "trim": by_key["trim"].get(k),
                              "distilled": by_key["distill"].get(k) if student != "distill" else None}) for k in keys]
    info = {name: describe(Path(paths[name])) for name in ("trim", student)}
    return {"student": student, "student_path": paths[student], "trim_path": paths["trim"], "rows": rows,
            **_speed(evaluations, student),
            "bytes": {"trim": info["trim"].get("bytes"), "student": info[student].get("bytes")},
            "parameters": {"trim": info["trim"].get("parameters"), "student": info[student].get("parameters")},
            "gate": {"trim": evaluations["trim"]["gate"].get("passed"), "student": evaluations[student]["gate"].get("passed")}}


def compared_scores(cmp: dict[str, Any]) -> str:
    """Each score the student gives, its retention vs the trim's, and the student's like-for-like speed-up."""
    def num(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, (int, float)) else "—"

    shown = [r for r in cmp["rows"] if r["student_retention"] is not None]
    pairs = [(r["task"], r["language"]) for r in shown]
    scores = "; ".join(f"{r['task']} {r['language']}" + (f" {r['metric']}" if pairs.count((r['task'], r['language'])) > 1 else "")
                       + f" {num(r['student_retention'])} vs {num(r['trim_retention'])}" for r in shown)
    speed = f"; batch-1 latency {cmp['student_speedup']:.2f}x faster (PyTorch)" if cmp.get("student_speedup") else ""
    return (scores or "no scores") + speed


def comparison_line(cmp: dict[str, Any]) -> str:
    """The student against the trimmed model in one line (the report's notes): retention, speed-up, both gates."""
    gates = {True: "passes", False: "fails", None: "no gate"}
    return (f"student ({cmp['student']}) vs trim, retention of the source's score: {compared_scores(cmp)}; "
            f"gate: student {gates[cmp['gate']['student']]}, trim {gates[cmp['gate']['trim']]} (the student's decides the run)")


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
        "student_vs_trim": student_vs_trim(artifacts, evaluations),
    }
    if report["student_vs_trim"]:  # the HTML page shows the notes: the comparison's line among them
        report["notes"].append(comparison_line(report["student_vs_trim"]))
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
    cmp = result.report.get("student_vs_trim")
    return render(f"pipeline -> {result.output}: {verdict}", [
        *((s["name"], _stage_line(s)) for s in result.stages), ("sizes", sizes), ("min retention", retention),
        ("student vs trim", compared_scores(cmp) if cmp else None),
        ("gate", gate_line(result.gate) if result.gate.get("min_retention") is not None else None),
        ("reports", f"{result.output / 'report.json'}, {result.output / 'report.html'}")])
