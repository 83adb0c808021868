"""Latency of an onnxruntime session at a given batch size (median of timed runs after warm-up)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_ms(fn: Callable[[], Any], runs: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``runs`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def session_latency(session: Any, output_name: str, feeds_b1: dict[str, Any], feeds_b32: dict[str, Any],
                    runs_b1: int = 20, runs_b32: int = 3) -> dict[str, float]:
    """Batch-1 and batch-32 latency in ms of ``session`` on the given inputs."""
    return {"batch_1": round(median_ms(lambda: session.run([output_name], feeds_b1), runs_b1), 3),
            "batch_32": round(median_ms(lambda: session.run([output_name], feeds_b32), runs_b32, warmup=1), 3)}
