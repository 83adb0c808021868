"""`ExportResult`: what an export wrote and measured (returned by `export()` for every format)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ExportResult:
    """What an export wrote and measured."""

    output: Path
    format: str
    quantize: str
    task: str
    model_file: str
    size_bytes: int
    parity: dict[str, Any] | None
    latency_ms: dict[str, float] | None
    fused_operators: dict[str, int] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for --json and reports)."""
        d = asdict(self)
        d["output"] = str(self.output)
        return d
