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
    """``mlcompress.Pipeline`` and ``mlcompress.PipelineResult``, imported on first use (no torch at import time).

    The one allowed exception to "core imports no stage and not the orchestration layer" (DESIGN.md, Layers):
    a convenience re-export, resolved only when the name is used, checked by tests/test_architecture.py.
    """
    if name in ("Pipeline", "PipelineResult"):
        from mlcompress.orchestrate import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'mlcompress' has no attribute {name!r}")


__all__ = ["CorpusError", "ExportError", "GateError", "InputError", "LanguageError", "MlcompressError", "ModelSourceError",
           "OutputError", "OutputExistsError", "Pipeline", "PipelineResult", "UnsupportedModelError", "__version__"]
