"""Silence third-party tools' advice for the length of one call, then put the host's logging back as it was."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(*loggers: str, capture_output: bool = True) -> Iterator[io.StringIO]:
    """Raise the named loggers ("" is the root) to ERROR and capture stdout/stderr; restore all on exit."""
    handles = [logging.getLogger(name) for name in loggers]
    saved = [h.level for h in handles]
    for h in handles:
        h.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        if capture_output:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield sink
        else:
            yield sink
    finally:
        for h, level in zip(handles, saved):
            h.setLevel(level)
