"""The mlcompress exception family: every error carries a message and a hint a user can act on."""

from __future__ import annotations


class MlcompressError(Exception):
    """Root of every error mlcompress raises on purpose.

    ``exit_code`` is what the CLI exits with: 2 for bad input, 1 for a failed gate.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class InputError(MlcompressError):
    """Bad input: a value, file or option the user gave cannot be used."""


class ModelSourceError(InputError):
    """A model source is missing, corrupt, or of a kind mlcompress cannot read."""


class UnsupportedModelError(InputError):
    """The model or tokenizer is of a family this stage does not handle."""


class CorpusError(InputError):
    """A corpus is missing, empty, or in a format mlcompress cannot read."""


class LanguageError(InputError):
    """A language code is unknown, or has no corpus where one is needed."""


class OutputExistsError(InputError):
    """The output directory exists and overwriting was not asked for."""


class OutputError(InputError):
    """The output cannot be written: a read-only folder, no permission, or a full disk."""


class ExportError(MlcompressError):
    """An export step (ONNX export, graph optimisation, quantisation, ONNX Runtime) failed on this model."""


class GateError(MlcompressError):
    """A quality gate failed (retention or parity below its threshold)."""

    exit_code = 1
