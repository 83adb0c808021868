"""One export step's failure, said once: a library error becomes an ExportError with a hint (a full disk an OutputError)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mlcompress.artifacts import is_disk_full
from mlcompress.errors import ExportError, MlcompressError, OutputError


@contextlib.contextmanager
def step(what: str, hint: str) -> Iterator[None]:
    """Turn a library failure in one export step into an ExportError with a hint; mlcompress errors pass through."""
    try:
        yield
    except MlcompressError:
        raise
    except Exception as exc:  # exporter, optimiser, quantiser and ORT raise many types; the user needs one message
        if is_disk_full(exc):
            raise OutputError(f"the disk ran out of space during {what} ({exc}); nothing was written",
                              "free some space in the temporary folder (TMPDIR) and on the output's disk") from exc
        raise ExportError(f"{what} failed ({type(exc).__name__}: {exc}); nothing was written", hint) from exc
