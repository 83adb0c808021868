"""Bitext retrieval, the Tatoeba protocol: nearest neighbour by cosine similarity, in both directions."""

from __future__ import annotations

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def retrieval_accuracy(src: np.ndarray, tgt: np.ndarray) -> dict[str, float]:
    """Share of rows whose nearest neighbour by cosine is their own translation: src->tgt, tgt->src, and the mean."""
    if len(src) != len(tgt) or len(src) == 0:
        raise ValueError(f"retrieval needs two equally long, non-empty sets (got {len(src)} and {len(tgt)})")
    sim = normalize(src) @ normalize(tgt).T
    gold = np.arange(len(src))
    forward = float((sim.argmax(axis=1) == gold).mean())
    backward = float((sim.argmax(axis=0) == gold).mean())
    return {"src_to_en": forward, "en_to_src": backward, "accuracy": (forward + backward) / 2}
