"""Scores -> retention (candidate / source, per task and language) -> the ``--min-retention`` gate."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mlcompress.errors import GateError


@dataclass
class Score:
    """One measured quantity for both models: a task, a language (or a language pair) and a metric."""

    task: str
    language: str
    metric: str
    source: float
    candidate: float
    n: int
    gated: bool = True
    dataset: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    retention: float | None = field(default=None)
    interval: dict[str, Any] | None = None  # paired bootstrap (eval.bootstrap): retention and source 95% intervals

    def __post_init__(self) -> None:
        if self.retention is None and self.source > 0:
            self.retention = self.candidate / self.source
        if self.retention is None:
            self.gated = False
            self.note = (self.note + "; " if self.note else "") + "source score <= 0: retention undefined, not gated"
        elif self.interval is not None and not self.interval.get("above_chance", True):
            self.gated = False
            i = self.interval
            self.note = (self.note + "; " if self.note else "") + (
                f"source score not significantly above chance ({i['chance']:.3g}; 95% interval "
                f"{i['source_low']:.3f}..{i['source_high']:.3f}): reported, not gated")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


GATE_RULE = ("every gated score must keep at least the bar's share of the source's score (point estimate, "
             "shown with its 95% paired-bootstrap interval); a score whose source result is not significantly above "
             "chance, or whose retention is undefined, is reported and not gated")


def gate(scores: list[Score], min_retention: float | None) -> dict[str, Any]:
    """The gate's verdict: every gated score must keep at least ``min_retention`` of the source's (GATE_RULE)."""
    if min_retention is None:
        return {"min_retention": None, "passed": None, "failures": [], "checked": 0, "rule": GATE_RULE}
    checked = [s for s in scores if s.gated and s.retention is not None]
    failures = [s for s in checked if s.retention < min_retention]
    return {"min_retention": min_retention, "passed": not failures, "checked": len(checked), "rule": GATE_RULE,
            "failures": [{"task": s.task, "language": s.language, "metric": s.metric, "retention": s.retention,
                          "source": s.source, "candidate": s.candidate} for s in failures]}


def summary(scores: list[Score]) -> dict[str, dict[str, float]]:
    """Per task: mean and minimum retention over its gated scores."""
    out: dict[str, dict[str, float]] = {}
    for task in dict.fromkeys(s.task for s in scores):
        vals = [s.retention for s in scores if s.task == task and s.gated and s.retention is not None]
        if vals:
            out[task] = {"mean_retention": sum(vals) / len(vals), "min_retention": min(vals), "scores": len(vals)}
    return out


def gate_error(verdict: dict[str, Any], report_dir: str | None = None) -> GateError:
    """A GateError that names every task and language below the bar."""
    lines = [f"{f['task']} {f['language']} {f['metric']}: retention {f['retention']:.3f} "
             f"(source {f['source']:.4f}, candidate {f['candidate']:.4f})" for f in verdict["failures"]]
    message = (f"retention gate failed: {len(lines)} of {verdict['checked']} scores below {verdict['min_retention']}:\n  "
               + "\n  ".join(lines))
    hint = "see the report" + (f" in {report_dir}" if report_dir else "") + "; evaluate only the languages the model was built for, or lower --min-retention"
    return GateError(message, hint)
