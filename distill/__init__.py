"""mlcompress.distill: BiStil two-phase bilingual distillation (general student, then task student).

Names are imported on first use, so that the CLI can mount this stage without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DistillResult": "general", "Phase1Losses": "general", "distill_general": "general",
    "TrainConfig": "loop", "parse_duration": "loop", "layer_map": "student", "make_student": "student",
    "Phase2Losses": "task", "distill_task": "task", "finetune_teacher": "task",
    "work_dir_for": "workdir", "complete_checkpoints": "workdir",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
