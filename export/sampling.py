"""Choosing the next token from logits with numpy only: greedy, or sampling with temperature, top-k and top-p applied in
that order (as transformers' logits warpers do)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlcompress.errors import InputError


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. ``do_sample`` False: the most likely token (the other fields are ignored)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter

    def check(self) -> Sampling:
        """Refuse settings that cannot sample (a clear error instead of NaN probabilities)."""
        if self.do_sample and not self.temperature > 0:
            raise InputError(f"temperature {self.temperature} must be > 0 when sampling", "use do_sample=False for greedy")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise InputError(f"top_k {self.top_k} / top_p {self.top_p} out of range", "top_k >= 0 and 0 < top_p <= 1")
        return self


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def filtered(logits: np.ndarray, s: Sampling) -> np.ndarray:
    """Scaled logits [batch, vocab] with the tokens outside top-k and top-p set to -inf."""
    x = logits.astype(np.float64) / s.temperature
    if 0 < s.top_k < x.shape[-1]:
        kth = np.partition(x, -s.top_k, axis=-1)[:, -s.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    if s.top_p < 1.0:
        order = np.argsort(-x, axis=-1, kind="stable")
        probs = np.take_along_axis(_softmax(x), order, axis=-1)
        before = np.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens; the most likely one is always kept
        drop = np.zeros_like(x, dtype=bool)
        np.put_along_axis(drop, order, before >= s.top_p, axis=-1)
        x = np.where(drop, -np.inf, x)
    return x


def choose(logits: np.ndarray, s: Sampling, rng: np.random.Generator) -> np.ndarray:
    """The next token per row of ``logits`` [batch, vocab] (int64)."""
    if not s.do_sample:
        return logits.argmax(axis=-1).astype(np.int64)
    probs = _softmax(filtered(logits, s))
    cum = np.cumsum(probs, axis=-1)
    draw = rng.random(len(probs))[:, None] * cum[:, -1:]
    return np.minimum((cum < draw).sum(axis=-1), probs.shape[-1] - 1).astype(np.int64)
