"""The few lines a result object of the Python API prints (``print(result)``, ``result.summary()``): a title, then
labelled figures, before -> after where a stage changed them. Shared by TrimResult, DistillResult, ExportResult,
EvalReport and PipelineResult, so that they read alike."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def count(n: Any) -> str:
    """A count for a person: 117.7M, 36.6k, 512 ('—' for no number)."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "—"
    for least, scale, unit in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(n) >= least:
            return f"{n / scale:.1f}{unit}"
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:.3g}"


def megabytes(n: Any) -> str:
    """Bytes as MB (10^6), one decimal ('—' for no number)."""
    return f"{n / 1e6:,.1f} MB" if isinstance(n, (int, float)) and not isinstance(n, bool) else "—"


def change(before: Any, after: Any, fmt: Any = count) -> str:
    """``before -> after (share)``, the share when both are positive numbers."""
    share = (f" ({after / before:.1%})" if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before > 0
             else "")
    return f"{fmt(before)} -> {fmt(after)}{share}"


def percentages(values: dict[str, Any], digits: int = 1) -> str:
    """``en 99.8%, de 99.5%`` from a mapping of fractions."""
    return ", ".join(f"{k} {v:.{digits}%}" for k, v in values.items() if isinstance(v, (int, float)))


def render(title: str, rows: Iterable[tuple[str, Any]]) -> str:
    """The title, then one indented ``label  value`` line per row whose value is set (labels aligned)."""
    kept = [(label, str(value)) for label, value in rows if value not in (None, "", [], {})]
    width = max((len(label) for label, _ in kept), default=0)
    return "\n".join([title, *(f"  {label.ljust(width)}  {value}" for label, value in kept)])
