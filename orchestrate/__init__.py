"""mlcompress.orchestrate: the layer above the stages. The pipeline (config, runner, one function per stage, the
combined report), the root command line that mounts every stage's commands, and `inspect`.

It imports each stage only through the stage's package (``mlcompress.eval``, never ``mlcompress.eval.data``); nothing
below it imports it, except the one lazy ``mlcompress.Pipeline`` re-export. Names load on first use (no torch here).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Pipeline": "runner", "PipelineResult": "runner", "run_pipeline": "runner",
    "default_config": "config", "load_config": "config", "validate_config": "config",
    "DEFAULT_EVAL_TASKS": "config", "DEFAULT_MIN_RETENTION": "config",
    "describe": "inspect", "provenance_chain": "inspect",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
