"""mlcompress.export: ONNX / TensorRT export, quantisation, parity checks, and edge bundles with a torch-free runtime.

Importing this package is light (no torch, no onnxruntime); each function imports what it needs. The names in
``_LAZY`` are imported on first use.
"""

from typing import Any

from .api import export
from .bundle import BundleError, verify
from .options import (Fp16Config, Int4Config, Int4WeightsConfig, Int8DynamicConfig, Int8StaticConfig, Int8WeightsConfig,
                      NoQuantConfig)
from .quantize import AUTO, QUANTIZE_CHOICES
from .result import ExportResult
from .web_demo import write_demo

# name -> module that defines it, imported when the name is first used
_LAZY = {"export_decoder": ".decoder_export", "export_seq2seq": ".seq2seq_export"}


def __getattr__(name: str) -> Any:
    """The lazily imported public names (``export_decoder``, ``export_seq2seq``)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AUTO", "QUANTIZE_CHOICES", "BundleError", "ExportResult", "Fp16Config", "Int4Config", "Int4WeightsConfig",
           "Int8DynamicConfig",
           "Int8StaticConfig", "Int8WeightsConfig", "NoQuantConfig", "export", "export_decoder", "export_seq2seq",
           "verify", "write_demo"]
