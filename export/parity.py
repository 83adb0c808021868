"""Parity of an exported graph with the PyTorch model on target-language text: cosine, max abs difference, label agreement;
and the gate that refuses an export below its thresholds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mlcompress.errors import GateError

from .step import step

# Minimum mean cosine and label agreement per quantisation; an export below either is refused unless forced.
COSINE_THRESHOLDS = {"none": 0.9999, "fp16": 0.999, "int8-dynamic": 0.99, "int8-static": 0.98, "int8-weights": 0.99,
                     "int4": 0.98, "int4-weights": 0.98}
AGREEMENT_THRESHOLDS = {"none": 0.99, "fp16": 0.98, "int8-dynamic": 0.9, "int8-static": 0.85, "int8-weights": 0.9,
                        "int4": 0.85, "int4-weights": 0.85}


@dataclass(frozen=True)
class Parity:
    """How close an export's outputs are to PyTorch's on the same inputs."""

    texts: int
    mean_cosine: float
    min_cosine: float
    max_abs_diff: float
    label_agreement: float | None  # classification and masked-LM heads: argmax agreement over sentences or tokens
    cosine_threshold: float
    agreement_threshold: float | None

    @property
    def passed(self) -> bool:
        """True when cosine (and label agreement, where there are labels) meet their thresholds."""
        ok = self.mean_cosine >= self.cosine_threshold
        if self.label_agreement is not None and self.agreement_threshold is not None:
            ok = ok and self.label_agreement >= self.agreement_threshold
        return ok

    def as_dict(self) -> dict[str, Any]:
        """The manifest and provenance entry."""
        return {**asdict(self), "passed": self.passed}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-12)


def torch_outputs(module: Any, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """The PyTorch module's output for each batch of inputs (fp32, no grad)."""
    import torch

    with torch.inference_mode():
        return [module(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"])).float().numpy() for f in feeds]


def ort_outputs(session: Any, output_name: str, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """The onnxruntime session's output for each batch of inputs, as float32."""
    return [session.run([output_name], f)[0].astype(np.float32) for f in feeds]


def compare(task: str, reference: list[np.ndarray], exported: list[np.ndarray], feeds: list[dict[str, np.ndarray]],
            cosine_threshold: float, agreement_threshold: float | None) -> Parity:
    """Compare outputs batch by batch; per-token heads are compared on real (unpadded) tokens only."""
    cos, diffs, agree = [], [], []
    for ref, got, f in zip(reference, exported, feeds):
        if task in ("token-classification", "masked-lm"):
            keep = f["attention_mask"].astype(bool)
            ref, got = ref[keep], got[keep]
        cos.append(_cosines(ref, got))
        diffs.append(float(np.abs(ref - got).max()) if ref.size else 0.0)
        if task != "sentence-embedding":
            agree.append(ref.argmax(-1) == got.argmax(-1))
    c = np.concatenate(cos) if cos else np.zeros(0)
    return Parity(texts=int(sum(len(f["input_ids"]) for f in feeds)), mean_cosine=float(c.mean()) if c.size else 0.0,
                  min_cosine=float(c.min()) if c.size else 0.0, max_abs_diff=max(diffs, default=0.0),
                  label_agreement=float(np.concatenate(agree).mean()) if agree else None,
                  cosine_threshold=cosine_threshold, agreement_threshold=agreement_threshold if agree else None)


def thresholds(quantize: str, min_cosine: float | None, min_agreement: float | None) -> tuple[float, float]:
    """The mean-cosine and label-agreement thresholds: those given, else the quantisation's defaults."""
    cos_t = COSINE_THRESHOLDS[quantize] if min_cosine is None else min_cosine
    agr_t = AGREEMENT_THRESHOLDS[quantize] if min_agreement is None else min_agreement
    return cos_t, agr_t


def settle(record: dict[str, Any], force: bool, message: Callable[[], str], hint: str) -> dict[str, Any]:
    """Every export gate's verdict on its ``record`` (with ``passed``): kept when it passed; else refused with
    GateError(``message()``, ``hint``), or, with ``force``, marked forced."""
    if record["passed"]:
        return record
    if not force:
        raise GateError(message(), hint)
    return {**record, "forced": True}


def gate(parity: Parity, quantize: str, force: bool) -> dict[str, Any]:
    """The parity record for the manifest; an export below its thresholds is refused (GateError), or marked forced."""
    def message() -> str:
        what = f"mean cosine {parity.mean_cosine:.4f} (threshold {parity.cosine_threshold})"
        if parity.label_agreement is not None:
            what += f", label agreement {parity.label_agreement:.3f} (threshold {parity.agreement_threshold})"
        return (f"the {quantize} export fails its parity check against PyTorch on {parity.texts} target-language "
                f"sentences: {what}; nothing was written")

    return settle(parity.as_dict(), force, message,
                  "try a gentler quantisation (int8-dynamic, or none), or pass --force to write it anyway")


def check(session: Any, module: Any, task: str, output_name: str, feeds: list[dict[str, np.ndarray]], quantize: str,
          min_cosine: float | None, min_agreement: float | None, force: bool) -> dict[str, Any]:
    """Run the exported graph (an onnxruntime session) and the PyTorch module on ``feeds``, compare, and gate."""
    cos_t, agr_t = thresholds(quantize, min_cosine, min_agreement)
    with step("running the exported graph in ONNX Runtime", "update onnxruntime, or try another --quantize"):
        got = ort_outputs(session, output_name, feeds)
    return gate(compare(task, torch_outputs(module, feeds), got, feeds, cos_t, agr_t), quantize, force)


def greedy_differences(ref: list[list[int]], got: list[list[int]], margin: Callable[[int, list[int]], float],
                       atol: float) -> dict[str, Any]:
    """Greedy tokens of a graph (``got``) against PyTorch's (``ref``), per prompt: how many are identical, and where
    the others first differ; a divergence where PyTorch's two best logits lie within ``atol`` (``margin(prompt,
    tokens before the step)``) is a tie, reported, not a failure."""
    identical, ties, mismatches = 0, [], []
    for i, (a, b) in enumerate(zip(ref, got)):
        if a == b:
            identical += 1
            continue
        step = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        gap = margin(i, a[:step])
        (ties if gap <= atol else mismatches).append({"prompt": i, "step": step, "top2_margin": gap})
    return {"identical": identical, "ties": ties, "mismatches": mismatches}
