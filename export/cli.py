"""CLI commands of the export stage, mounted on the root app by `mlcompress.cli` (in progress)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app (none yet)."""
