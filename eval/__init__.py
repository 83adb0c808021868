"""mlcompress.eval: compare a compressed model with its source on the same work, and report retention.

Heavy imports (torch, transformers, matplotlib) happen inside the functions, so importing this package is cheap.
The names below are the stage's public API; other layers import them from here, never from the modules.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (imported on first use: keeps `mlcompress --help` fast)
_EXPORTS = {
    "evaluate": "run", "EvalReport": "run", "Limits": "run", "DEFAULT_TASKS": "run", "compare_efficiency": "run",
    "TASKS": "data", "parse_tasks": "data",
    "sample_data_dir": "sample", "is_sample_data": "sample", "sample_note": "sample", "SAMPLE_TASKS": "sample",
    "SAMPLE_LANGUAGES": "sample", "SAMPLE_PAIRS": "sample", "sample_sentences": "sample",
    "Score": "retention", "gate": "retention", "summary": "retention", "gate_error": "retention",
    "load_encoder": "encoders",
    "shuffled_embeddings": "controls",
    "pipeline_html": "report", "gate_line": "report_summary",
    "evaluate_generative": "generative", "LMLimits": "generative", "GENERATIVE_TASKS": "generative",
    "evaluate_seq2seq": "seq2seq", "Seq2SeqLimits": "seq2seq", "SEQ2SEQ_TASKS": "seq2seq",
    "Seq2SeqLM": "seq2seq_scorer", "Seq2SeqBundleLM": "seq2seq_scorer", "load_seq2seq": "seq2seq_scorer", "is_seq2seq": "seq2seq_scorer",
    "CausalLM": "lm_scorer", "measure_lms": "lm_efficiency", "load_causal_lm": "lm_scorer", "is_causal_lm": "lm_scorer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load the public API lazily."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'mlcompress.eval' has no attribute {name!r}")
