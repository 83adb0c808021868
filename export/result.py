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

    def summary(self) -> str:
        """A few lines: what was written and its bytes, parity with PyTorch and the gate's verdict, latency."""
        from mlcompress.summary import megabytes, render

        latency = ", ".join(f"{k.replace('_', ' ')} {v:.2f} ms" for k, v in (self.latency_ms or {}).items()
                            if k.startswith("batch_") and isinstance(v, (int, float)))
        return render(f"export {self.format} {self.quantize} ({self.task}) -> {self.output}", [
            ("written", f"{megabytes(self.size_bytes)}" + (", a bundle (manifest.json)" if self.manifest else "")),
            ("model file", self.model_file), ("parity", parity_line(self.parity)), ("latency", latency)])

    def __str__(self) -> str:
        return self.summary()


def parity_line(parity: dict[str, Any] | None) -> str | None:
    """The parity check in one line: mean and min cosine (encoders), or each graph's verdict and figures (decoders)."""
    if not parity:
        return None
    verdict = {True: "passed", False: "FAILED"}.get(parity.get("passed"), "no verdict")
    if isinstance(parity.get("mean_cosine"), (int, float)):
        return (f"mean cosine {parity['mean_cosine']:.5f}, min {parity.get('min_cosine', float('nan')):.5f} on "
                f"{parity.get('texts', '?')} texts: {verdict}")
    graphs = {k: v for k, v in parity.items() if isinstance(v, dict)}
    parts = []
    for name, entry in graphs.items():
        figures = [f"{label} {entry[key]:.4g}" for key, label in (("top1_agreement", "top-1 agreement"),
                                                                 ("perplexity_ratio", "perplexity ratio"))
                   if isinstance(entry.get(key), (int, float))]
        parts.append(f"{name} " + ", ".join(figures + [{True: "passed", False: "FAILED"}.get(entry.get("passed"), "no verdict")]))
    return "; ".join(parts) or verdict
