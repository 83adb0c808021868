"""mlcompress: small, fast, language-specific models from massively multilingual transformers."""

__version__ = "0.1.0"
