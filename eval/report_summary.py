"""The few lines an `EvalReport` prints: retention per task, the lowest gated score, size and speed against the source
(encoders: batch-1 latency; causal LMs: decode tokens/s), what was skipped and the gate's verdict."""

from __future__ import annotations

from typing import Any

from mlcompress.summary import change, count, megabytes, render

from .retention import summary


def gate_line(gate: dict[str, Any]) -> str:
    """The gate's verdict in one line."""
    if gate.get("passed") is None:
        return "no gate (no min_retention)"
    verdict = "PASSED" if gate["passed"] else f"FAILED ({len(gate.get('failures') or [])} below the bar)"
    return f"{verdict} at {gate['min_retention']} ({gate.get('checked', 0)} scores checked)"


def _lowest(report: Any) -> str | None:
    """The gated score with the lowest retention, with its interval where it has one."""
    gated = [s for s in report.scores if s.gated and s.retention is not None]
    if not gated:
        return None
    s = min(gated, key=lambda x: x.retention)
    i = s.interval or {}
    ci = f", 95% {i['retention_low']:.3f}..{i['retention_high']:.3f}" if "retention_low" in i else ""
    return f"{s.task} {s.language} {s.metric}: {s.source:.4f} -> {s.candidate:.4f} (retention {s.retention:.3f}{ci})"


def _speed(efficiency: dict[str, Any]) -> tuple[str, str | None]:
    """(label, source -> candidate) of the speed the efficiency task measured, if it ran."""
    src, cand = efficiency.get("source") or {}, efficiency.get("candidate") or {}
    if "latency_ms_p50" in src and "latency_ms_p50" in cand:
        return "batch-1 ms p50", change(src["latency_ms_p50"], cand["latency_ms_p50"], lambda v: f"{v:.2f}")
    if "decode_tokens_per_s" in src and "decode_tokens_per_s" in cand:
        return "decode tokens/s", change(src["decode_tokens_per_s"], cand["decode_tokens_per_s"], lambda v: f"{v:.1f}")
    return "speed", None


def eval_summary(report: Any) -> str:
    """The report's summary lines (``EvalReport.summary``)."""
    src, cand = report.source.get("size") or {}, report.candidate.get("size") or {}
    tasks = [(task, f"min retention {v['min_retention']:.3f}, mean {v['mean_retention']:.3f} over {v['scores']} score(s)")
             for task, v in summary(report.scores).items()]
    return render(f"eval {report.candidate.get('spec')} against {report.source.get('spec')} ({', '.join(report.languages)})", [
        *tasks, ("lowest", _lowest(report)),
        ("parameters", change(src.get("parameters"), cand.get("parameters")) if src.get("parameters") else None),
        ("bytes on disk", change(src.get("bytes_on_disk"), cand.get("bytes_on_disk"), megabytes) if src.get("bytes_on_disk") else None),
        _speed(report.efficiency or {}),
        ("skipped", f"{count(len(report.skipped))} task/language pairs (see .skipped)" if report.skipped else None),
        ("gate", gate_line(report.gate))])
