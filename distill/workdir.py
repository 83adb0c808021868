"""The resumable working directory of a distillation run: checkpoints and metrics beside the output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mlcompress.artifacts import json_digest
from mlcompress.errors import InputError, OutputExistsError


def work_dir_for(output: Path) -> Path:
    """Where a run to ``output`` keeps its checkpoints until it finishes: a hidden sibling."""
    return output.parent / f".{output.name}.work"


def open_work_dir(output: Path, settings: dict[str, Any], overwrite: bool, restart: bool) -> Path:
    """Create or reopen the work dir; refuse one left by a run with other settings unless ``restart``."""
    if output.exists() and not overwrite:
        raise OutputExistsError(f"output {output} already exists", "choose another output path, or pass --overwrite")
    work = work_dir_for(output)
    digest = json_digest(settings)
    marker = work / "settings.json"
    if work.exists() and restart:
        shutil.rmtree(work)
    if work.exists() and marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("digest") != digest:
            raise InputError(f"{work} holds an interrupted run with other settings",
                             "rerun with the same settings to resume it, or pass --restart to discard it")
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"digest": digest, "settings": settings}, indent=2, default=str) + "\n")
    return work


def close_work_dir(work: Path, output: Path) -> None:
    """Keep the metrics log with the finished artifact and drop the checkpoints."""
    metrics = work / "metrics.jsonl"
    if metrics.is_file():
        shutil.copy2(metrics, output / "metrics.jsonl")
    shutil.rmtree(work, ignore_errors=True)
