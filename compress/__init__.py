"""mlcompress: small, fast, language-specific models from massively multilingual transformers."""

from .errors import (
    CorpusError,
    GateError,
    InputError,
    LanguageError,
    MlcompressError,
    ModelSourceError,
    OutputExistsError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = ["CorpusError", "GateError", "InputError", "LanguageError", "MlcompressError", "ModelSourceError",
           "OutputExistsError", "UnsupportedModelError", "__version__"]
