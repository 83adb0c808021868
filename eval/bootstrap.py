"""Paired bootstrap confidence intervals for retention, and a test of whether a source score beats chance.

Both models are scored on the same examples, so the examples are resampled together (a paired bootstrap):
each resample draws n example indices with replacement, scores both models on them, and takes the ratio.
The 2.5th and 97.5th percentiles of the ratios give the 95% interval of the retention. The same resamples
give the source score's interval; when its lower end is not above the task's chance level, the score is
reported but not gated (a retention of a chance-level score is noise, not a verdict).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .sts import pair_cosines, spearman

RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """Paired-bootstrap result: 95% intervals of the retention and of the source's score."""

    retention_low: float
    retention_high: float
    source_low: float
    source_high: float
    chance: float
    resamples: int

    @property
    def above_chance(self) -> bool:
        """Whether the source's score is significantly above chance (its interval's lower end is above it)."""
        return self.source_low > self.chance

    def as_dict(self) -> dict[str, float | bool]:
        return {"retention_low": self.retention_low, "retention_high": self.retention_high,
                "source_low": self.source_low, "source_high": self.source_high, "chance": self.chance,
                "above_chance": self.above_chance, "resamples": self.resamples, "level": LEVEL}


def paired_bootstrap(score: Callable[[np.ndarray, int], float], n: int, chance: float,
                     resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Intervals from ``score(indices, model)`` (model 0: source, 1: candidate) over resampled example indices."""
    rng = np.random.default_rng(seed)
    ratios, sources = np.empty(resamples), np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, n, n)
        s, c = score(idx, 0), score(idx, 1)
        sources[r] = s
        ratios[r] = c / s if s > 0 else np.nan
    tail = (1 - LEVEL) / 2 * 100
    valid = ratios[np.isfinite(ratios)]
    low, high = (np.percentile(valid, [tail, 100 - tail]) if len(valid) else (np.nan, np.nan))
    s_low, s_high = np.percentile(sources, [tail, 100 - tail])
    return Interval(float(low), float(high), float(s_low), float(s_high), chance, resamples)


def mean_interval(correct: tuple[np.ndarray, np.ndarray], chance: float, seed: int = 0) -> Interval:
    """Intervals for an accuracy: per-example outcomes (0/1, or a share) of source and candidate."""
    arrays = [np.asarray(c, dtype=np.float64) for c in correct]
    return paired_bootstrap(lambda idx, m: float(arrays[m][idx].mean()), len(arrays[0]), chance, seed=seed)


def ratio_interval(right: tuple[np.ndarray, np.ndarray], total: np.ndarray, chance: float, seed: int = 0) -> Interval:
    """Intervals for a pooled accuracy (sum right / sum total over resampled units, e.g. POS sentences)."""
    r = [np.asarray(x, dtype=np.float64) for x in right]
    t = np.asarray(total, dtype=np.float64)
    return paired_bootstrap(lambda idx, m: float(r[m][idx].sum() / max(t[idx].sum(), 1.0)), len(t), chance, seed=seed)


def sts_interval(pairs: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], gold: list[float],
                 seed: int = 0) -> Interval:
    """Intervals for STS Spearman: pairs resampled together for both models; chance is rho = 0."""
    cosines = [pair_cosines(a, b) for a, b in pairs]
    labels = np.asarray(gold, dtype=np.float64)
    return paired_bootstrap(lambda idx, m: spearman(cosines[m][idx], labels[idx]), len(labels), 0.0, seed=seed)


def retrieval_outcomes(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """Per pair: the mean of its two retrieval outcomes (src->tgt and tgt->src hits), as the Tatoeba score averages."""
    from .retrieval import normalize

    sim = normalize(src) @ normalize(tgt).T
    gold = np.arange(len(src))
    return ((sim.argmax(axis=1) == gold).astype(np.float64) + (sim.argmax(axis=0) == gold).astype(np.float64)) / 2
