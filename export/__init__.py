"""mlcompress.export: ONNX / TensorRT export, quantisation, parity checks, and edge bundles with a torch-free runtime.

Importing this package is light (no torch, no onnxruntime); each function imports what it needs.
"""

from .api import ExportResult, export
from .bundle import BundleError, verify

__all__ = ["BundleError", "ExportResult", "export", "verify"]
