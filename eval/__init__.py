"""mlcompress.eval: compare a compressed model with its source on the same work, and report retention.

Heavy imports (torch, transformers, matplotlib) happen inside the functions, so importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_TASKS", "TASKS", "EvalReport", "Limits", "Score", "evaluate", "load_encoder", "shuffled_embeddings"]


def __getattr__(name: str) -> Any:
    """Load the public API lazily (keeps `mlcompress --help` fast)."""
    if name in ("evaluate", "EvalReport", "Limits", "DEFAULT_TASKS"):
        from . import run

        return getattr(run, name)
    if name == "TASKS":
        from .data import TASKS

        return TASKS
    if name == "Score":
        from .retention import Score

        return Score
    if name == "load_encoder":
        from .encoders import load_encoder

        return load_encoder
    if name == "shuffled_embeddings":
        from .controls import shuffled_embeddings

        return shuffled_embeddings
    raise AttributeError(f"module 'mlcompress.eval' has no attribute {name!r}")
