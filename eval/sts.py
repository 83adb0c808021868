"""Semantic textual similarity: Spearman correlation of cosine similarity with gold scores."""

from __future__ import annotations

import numpy as np

from .retrieval import normalize


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank (as scipy.stats.rankdata; vectorised, since the bootstrap calls it
    thousands of times)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    inverse = np.empty(len(x), dtype=np.int64)
    inverse[order] = np.arange(len(x))
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]] if len(x) else np.zeros(0, dtype=bool)
    group = np.cumsum(starts)[inverse]  # 1-based group of equal values, per element
    bounds = np.r_[np.flatnonzero(starts), len(x)]  # first position of each group, then the end
    return 0.5 * (bounds[group] + bounds[group - 1] + 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson correlation of the tie-averaged ranks)."""
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom else 0.0


def pair_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``a[i]`` with ``b[i]`` for every row."""
    return (normalize(a) * normalize(b)).sum(axis=1)


def sts_spearman(a: np.ndarray, b: np.ndarray, gold: list[float]) -> float:
    """Spearman correlation of pair cosines with gold similarity scores."""
    return spearman(pair_cosines(a, b), np.asarray(gold, dtype=np.float64))
