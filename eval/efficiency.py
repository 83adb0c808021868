"""Efficiency on the current device: size, latency at batch 1, throughput at batch 32, peak memory.

Models that are compared are timed together, in interleaved rounds in one process: in each round every model runs
the same block of batch-1 sentences and then one batch-32 block, the models' order rotating from round to round. The
drift and noise of a shared machine (frequency scaling, other processes, caches) then fall on each model alike,
and no model always runs first or last. Each model's figures carry their spread over the rounds.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

import numpy as np

from .encoders import Encoder

ROUNDS = 6


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _PeakRss:
    """Samples the process RSS in a thread while the block runs; ``peak - start`` is the working memory the block added."""

    def __enter__(self) -> _PeakRss:
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def method(rounds: int, per_round: int, batch: int, batches_per_round: int) -> str:
    """The measuring method in words (written into every efficiency figure)."""
    return (f"interleaved rounds: {rounds} rounds in one process; in each round every model runs the same {per_round} "
            f"batch-1 sentences one at a time, then {batches_per_round} batch of {batch}, the models' order rotated by one "
            f"each round; latency_ms_p50/p95 over all batch-1 runs, latency_ms_p50_min/q1/q3/max over the per-round "
            f"medians; throughput_per_s the median of the per-round throughputs (min/max beside it)")


def rotation(names: list[str], rounds: int) -> list[list[str]]:
    """The models' order in each round, rotated by one per round, so that no model always runs first or last."""
    k = len(names)
    return [names[r % k:] + names[: r % k] for r in range(rounds)] if k else [[] for _ in range(rounds)]


def _is_cuda(encoder: Encoder) -> bool:
    return getattr(getattr(encoder, "device", None), "type", "cpu") == "cuda"


class _Timings:
    """One model's timings over the rounds: batch-1 seconds per round, batch throughput per round, peak memory."""

    def __init__(self, encoder: Encoder, prefix: str) -> None:
        self.encoder, self.prefix, self.cuda = encoder, prefix, _is_cuda(encoder)
        self.latency: list[list[float]] = []
        self.throughput: list[float] = []
        self.rss_growth = 0
        self.cuda_peak = 0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def warm(self, sentences: list[str], batch: list[str]) -> None:
        """Untimed runs first (lazy initialisation, allocator growth, kernel selection), at both batch sizes."""
        for t in sentences:
            self.encoder.embed_uncached([t], self.prefix)
        if batch:
            self.encoder.embed_uncached(batch, self.prefix)
        self._sync()

    def block(self, sentences: list[str], batches: list[list[str]]) -> None:
        """One round of this model: each sentence alone (timed one by one), then the batches (timed together)."""
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        times = []
        with _PeakRss() as mem:
            for t in sentences:
                start = time.perf_counter()
                self.encoder.embed_uncached([t], self.prefix)
                self._sync()
                times.append(time.perf_counter() - start)
            if batches:
                start = time.perf_counter()
                for b in batches:
                    self.encoder.embed_uncached(b, self.prefix)
                self._sync()
                self.throughput.append(sum(len(b) for b in batches) / (time.perf_counter() - start))
        self.latency.append(times)
        self.rss_growth = max(self.rss_growth, mem.peak - mem.start)
        if self.cuda:
            self.cuda_peak = max(self.cuda_peak, int(torch.cuda.max_memory_allocated()))


def _spread(values: list[float], key: str) -> dict[str, float]:
    """min, quartiles and max of ``values`` under ``key``-prefixed names."""
    q = np.percentile(values, [0, 25, 75, 100]) if values else [math.nan] * 4
    return {f"{key}_min": float(q[0]), f"{key}_q1": float(q[1]), f"{key}_q3": float(q[2]), f"{key}_max": float(q[3])}


def _figures(t: _Timings, batch: int, text: str) -> dict[str, Any]:
    """One model's efficiency entry: its size, the latency and throughput figures with their spread, peak memory."""
    size = t.encoder.size()
    all_ms = np.array([s for r in t.latency for s in r]) * 1000
    round_p50 = [float(np.median(r)) * 1000 for r in t.latency if r]
    thr = float(np.median(t.throughput)) if t.throughput else None
    out: dict[str, Any] = {
        **size,
        "device": "cuda" if t.cuda else "cpu",
        "latency_ms_p50": float(np.percentile(all_ms, 50)),
        "latency_ms_p95": float(np.percentile(all_ms, 95)),
        **_spread(round_p50, "latency_ms_p50"),
        "latency_ms_p50_rounds": [round(x, 4) for x in round_p50],
        "latency_runs": int(all_ms.size),
        "throughput_per_s_batch32": thr if batch == 32 else None,
        "throughput_per_s": thr,
        "throughput_per_s_min": min(t.throughput) if t.throughput else None,
        "throughput_per_s_max": max(t.throughput) if t.throughput else None,
        "throughput_per_s_rounds": [round(x, 2) for x in t.throughput],
        "throughput_batch": batch,
        "rounds": len(t.latency),
        "method": text,
    }
    if t.cuda:
        out["peak_memory_bytes"] = t.cuda_peak
        out["peak_memory_kind"] = "torch.cuda.max_memory_allocated during the model's rounds"
    else:
        weights = size.get("weights_in_memory_bytes") or size.get("weight_file_bytes") or 0
        out["peak_memory_bytes"] = int(weights + max(t.rss_growth, 0))
        out["peak_memory_kind"] = "weights in memory + peak RSS growth during the model's rounds (CPU)"
    return out


def measure_together(encoders: dict[str, Encoder], texts: list[str], runs: int = 60, rounds: int = ROUNDS, warmup: int = 3,
                     batch: int = 32, batches: int = 6, prefix: str = "") -> dict[str, Any]:
    """Time every model in the same interleaved rounds (see the module docstring), so that their figures compare.

    ``runs`` batch-1 sentences and ``batches`` batches of ``batch`` per model, spread evenly over ``rounds``; returns
    ``{"models": {name: figures}, "order": [names per round], "method": text, ...}``.
    """
    if not texts:
        raise ValueError("efficiency needs sample sentences")
    if not encoders:
        raise ValueError("efficiency needs at least one model")
    rounds = max(1, rounds)
    per_round, per_round_batches = max(1, math.ceil(runs / rounds)), math.ceil(max(batches, 0) / rounds)
    pick = lambda start, n: [texts[(start + i) % len(texts)] for i in range(n)]  # noqa: E731
    order = rotation(list(encoders), rounds)
    timings = {name: _Timings(enc, prefix) for name, enc in encoders.items()}
    for t in timings.values():
        t.warm(pick(0, warmup), pick(0, batch) if per_round_batches else [])
    for r, names in enumerate(order):
        sentences = pick(warmup + r * per_round, per_round)  # every model gets the same sentences in a round
        blocks = [pick((r * per_round_batches + i) * batch, batch) for i in range(per_round_batches)]
        for name in names:
            timings[name].block(sentences, blocks)
    text = method(rounds, per_round, batch, per_round_batches)
    return {"models": {name: _figures(t, batch, text) for name, t in timings.items()}, "order": order, "rounds": rounds,
            "method": text, "sample_sentences": len(texts)}


def paired_ratio(together: dict[str, Any], reference: str, other: str) -> dict[str, Any]:
    """``other`` / ``reference`` batch-1 median latency round by round (both timed in each round): median, min, max."""
    a = together["models"][reference]["latency_ms_p50_rounds"]
    b = together["models"][other]["latency_ms_p50_rounds"]
    ratios = [y / x for x, y in zip(a, b) if x]
    if not ratios:
        return {}
    return {"median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios),
            "rounds": [round(x, 4) for x in ratios], "of": f"{other} / {reference}, batch-1 median latency of each round"}


def measure(encoder: Encoder, texts: list[str], runs: int = 60, warmup: int = 3, batch: int = 32, batches: int = 6,
            prefix: str = "", rounds: int = ROUNDS) -> dict[str, Any]:
    """One model's figures, measured in rounds as ``measure_together`` does (compare models with that, not with this)."""
    return measure_together({"model": encoder}, texts, runs, rounds, warmup, batch, batches, prefix)["models"]["model"]
