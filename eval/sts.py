"""Semantic textual similarity: Spearman correlation of cosine similarity with gold scores."""

from __future__ import annotations

import numpy as np

from .retrieval import normalize


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


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
