"""mlcompress.export: ONNX / TensorRT export, quantisation, parity checks, and edge bundles with a torch-free runtime.

Importing this package is light (no torch, no onnxruntime); each function imports what it needs.
"""

from .api import export
from .bundle import BundleError, verify
from .quantize import QUANTIZE_CHOICES
from .result import ExportResult
from .web_demo import write_demo

__all__ = ["QUANTIZE_CHOICES", "BundleError", "ExportResult", "export", "verify", "write_demo"]
