"""mlcompress: small, fast, language-specific models from massively multilingual transformers."""

from .errors import (
    CorpusError,
    ExportError,
    GateError,
    InputError,
    LanguageError,
    MlcompressError,
    ModelSourceError,
    OutputError,
    OutputExistsError,
    UnsupportedModelError,
)

__version__ = "0.1.0"



def __getattr__(name: str):
    """``mlcompress.Pipeline`` and ``mlcompress.PipelineResult``, imported on first use (no torch at import time)."""
    if name in ("Pipeline", "PipelineResult"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'mlcompress' has no attribute {name!r}")


__all__ = ["CorpusError", "ExportError", "GateError", "InputError", "LanguageError", "MlcompressError", "ModelSourceError",
           "OutputError", "OutputExistsError", "Pipeline", "PipelineResult", "UnsupportedModelError", "__version__"]
