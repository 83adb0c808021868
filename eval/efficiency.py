"""Efficiency on the current device: size, latency p50/p95 at batch 1, throughput at batch 32, peak memory."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from .encoders import Encoder


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


def measure(encoder: Encoder, texts: list[str], runs: int = 30, warmup: int = 3, batch: int = 32, batches: int = 3,
            prefix: str = "") -> dict[str, Any]:
    """Size, latency at batch 1 (p50/p95 over ``runs`` sentences), throughput at ``batch``, and peak memory."""
    if not texts:
        raise ValueError("efficiency needs sample sentences")
    cuda = getattr(getattr(encoder, "device", None), "type", "cpu") == "cuda"
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sample = [texts[i % len(texts)] for i in range(runs + warmup)]
    for t in sample[:warmup]:
        encoder.embed_uncached([t], prefix)
    latencies = []
    with _PeakRss() as mem:
        for t in sample[warmup:]:
            start = time.perf_counter()
            encoder.embed_uncached([t], prefix)
            if cuda:
                torch.cuda.synchronize()
            latencies.append(time.perf_counter() - start)
        big = [texts[i % len(texts)] for i in range(batch * batches)]
        start = time.perf_counter()
        for i in range(batches):
            encoder.embed_uncached(big[i * batch : (i + 1) * batch], prefix)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    size = encoder.size()
    lat = np.array(latencies) * 1000
    out = {
        **size,
        "device": "cuda" if cuda else "cpu",
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "throughput_per_s_batch32": batch * batches / seconds if batch == 32 else None,
        "throughput_per_s": batch * batches / seconds,
        "throughput_batch": batch,
    }
    if cuda:
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
        out["peak_memory_kind"] = "torch.cuda.max_memory_allocated during the runs"
    else:
        weights = size.get("weights_in_memory_bytes") or size.get("weight_file_bytes") or 0
        out["peak_memory_bytes"] = int(weights + max(mem.peak - mem.start, 0))
        out["peak_memory_kind"] = "weights in memory + peak RSS growth during the runs (CPU)"
    return out
