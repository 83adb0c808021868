"""The resumable working directory of a distillation run: checkpoints and metrics beside the output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlcompress.artifacts import check_output, json_digest
from mlcompress.errors import InputError


def work_dir_for(output: Path) -> Path:
    """Where a run to ``output`` keeps its checkpoints until it finishes: a hidden sibling."""
    return output.parent / f".{output.name}.work"


def open_work_dir(output: Path, settings: dict[str, Any], overwrite: bool, restart: bool, accelerator: Any = None) -> Path:
    """Create or reopen the work dir; refuse one left by a run with other settings unless ``restart``.

    Under several processes only the main one touches the directory; the others wait for it, so no
    rank reads a settings file another rank is still writing or deletes a directory another just made.
    """
    check_output(output, overwrite)
    work = work_dir_for(output)
    if accelerator is None or accelerator.is_main_process:
        _prepare(work, json_digest(settings), settings, restart)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return work


def _prepare(work: Path, digest: str, settings: dict[str, Any], restart: bool) -> None:
    """Clear (restart) or check the work dir, then record the run's settings atomically."""
    marker = work / "settings.json"
    if work.exists() and restart:
        shutil.rmtree(work)
    if work.exists() and marker.is_file():
        try:
            saved = json.loads(marker.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{marker} is damaged ({exc})", "pass --restart to discard the interrupted run") from exc
        if saved.get("digest") != digest:
            raise InputError(f"{work} holds an interrupted run with other settings",
                             "rerun with the same settings to resume it, or pass --restart to discard it")
    work.mkdir(parents=True, exist_ok=True)
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(json.dumps({"digest": digest, "settings": settings}, indent=2, default=str) + "\n")
    os.replace(partial, marker)


def close_work_dir(work: Path, output: Path) -> None:
    """Keep the metrics log with the finished artifact and drop the checkpoints."""
    metrics = work / "metrics.jsonl"
    if metrics.is_file():
        shutil.copy2(metrics, output / "metrics.jsonl")
    shutil.rmtree(work, ignore_errors=True)


def complete_checkpoints(work_dir: Path) -> list[Path]:
    """The checkpoints under ``work_dir/checkpoints`` that were written to the end (their trainer_state.json, written
    last, is there), oldest first."""
    root = work_dir / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


@contextlib.contextmanager
def discard_if_unused(work: Path, fresh: bool, accelerator: Any = None) -> Iterator[None]:
    """On a failure, remove the work dir this run created if it holds no checkpoint yet (a failed start leaves nothing
    on disk); a work dir with checkpoints, or one an earlier run made, is kept for the resume."""
    try:
        yield
    except BaseException:
        main = accelerator is None or accelerator.is_main_process
        if fresh and main and not any(complete_checkpoints(c.parent) for c in work.rglob("checkpoints")):
            shutil.rmtree(work, ignore_errors=True)
        raise
