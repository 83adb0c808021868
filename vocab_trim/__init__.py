"""mlcompress.vocab_trim: token statistics over corpora, selection policies, tokenizer and model surgery.

Names are imported on first use, so that the CLI can mount this stage's command without importing torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {
    "Corpus": "mlcompress.corpus",
    "TokenCounts": ".counting", "count_corpus": ".counting", "count_lines": ".counting",
    "Coverage": ".policies", "MinCount": ".policies", "Quotas": ".policies", "Scripts": ".policies", "TopK": ".policies",
    "make_policy": ".policies",
    "TrimResult": ".trim", "trim": ".trim",
    "DroppedMass": ".generation", "GreedyIdentity": ".generation", "dropped_mass": ".generation",
    "dropped_masses": ".generation", "greedy_continuations": ".generation", "greedy_identity": ".generation",
    "kept_ids": ".generation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """``mlcompress.vocab_trim.trim`` is the function, as with an eager import: when the import system binds the
    ``trim`` submodule on the package (the first ``import mlcompress.vocab_trim.trim``), the function is bound instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "trim" and isinstance(value, types.ModuleType):
            value = value.trim
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
