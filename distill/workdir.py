"""The resumable working directory of a distillation run: checkpoints and metrics beside the output.

A run holds its work dir through ``owner.json`` (host, pid, the process's start time), refreshed every minute while
it runs. A later run takes the work dir over (and resumes it) only when that owner is gone: on this host, a process
with that pid and start time no longer runs; on another host (a shared file system, where a pid says nothing), the
file has not been refreshed for ``STALE_AFTER_S``, or the user deleted it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlcompress.artifacts import check_output, json_digest
from mlcompress.errors import InputError

OWNER_FILE = "owner.json"
HEARTBEAT_S = 60.0  # how often a running owner refreshes its file
STALE_AFTER_S = 15 * 60.0  # an owner on another host not heard from for this long has stopped
_HELD: dict[str, str] = {}  # owner file -> the token of this process's run that holds it


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
        _refuse_if_in_use(work)  # before --restart may remove anything: a running run's checkpoints are not ours
        _prepare(work, json_digest(settings), settings, restart)
        _hold(work)
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
                             "rerun with the same settings to resume it, or discard its checkpoints with --restart "
                             "(in a pipeline config: stages.distill.restart: true)")
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
    _HELD.pop(str(work / OWNER_FILE), None)


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
        elif main:
            release_work_dir(work)  # kept for a resume, which may start at once, from any host
        raise


# ---- the owner of a work dir ------------------------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), so that a reused pid is not taken for it."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` of this host runs, and is the one that started at ``started`` (when known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it runs
    now = _process_start(pid)
    return started is None or now is None or now == started


def live_owner(work: Path) -> dict[str, Any] | None:
    """The owner record of a run that may still be using ``work`` (None when there is none, or it is gone)."""
    lock = work / OWNER_FILE
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
        age = time.time() - lock.stat().st_mtime
        host, pid = str(owner["host"]), int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no owner, or a file no run wrote (it is written atomically)
    if host == socket.gethostname():
        if pid == os.getpid():
            return None  # an earlier run in this process, which has returned
        return {**owner, "age": age} if _alive(pid, owner.get("started")) else None
    return {**owner, "age": age} if age < STALE_AFTER_S else None


def _refuse_if_in_use(work: Path) -> None:
    """A clear error when another run, on this host or another, may still be writing ``work``."""
    owner = live_owner(work)
    if owner is None:
        return
    here = owner["host"] == socket.gethostname()
    where = f"this host ({owner['host']})" if here else f"host {owner['host']}"
    seen = "it is running" if here else f"its last sign of life was {owner['age'] / 60:.0f} min ago"
    raise InputError(f"{work} is in use by process {owner['pid']} on {where} ({seen})",
                     f"wait for that run to finish or stop it; if it no longer runs (its machine went down), delete "
                     f"{work / OWNER_FILE} and rerun: the checkpoints are kept and the run resumes from them (an owner "
                     f"on another host not heard from for {STALE_AFTER_S / 60:.0f} min is replaced without asking)")


def _hold(work: Path) -> None:
    """Write this run's owner record (atomically) and refresh it from a background thread while the process lives."""
    token = uuid.uuid4().hex
    lock = work / OWNER_FILE
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": token}
    partial = lock.with_name(f"{lock.name}.{os.getpid()}.partial")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    os.replace(partial, lock)
    _HELD[str(lock)] = token
    threading.Thread(target=_heartbeat, args=(lock, token), name="mlcompress-work-dir-owner", daemon=True).start()


def _heartbeat(lock: Path, token: str) -> None:
    """Refresh the owner file's time until it is gone or another run holds it."""
    while True:
        time.sleep(HEARTBEAT_S)
        if _HELD.get(str(lock)) != token:
            return
        try:
            os.utime(lock)
        except OSError:
            return


def release_work_dir(work: Path) -> None:
    """Give up this process's hold on ``work`` (its checkpoints stay), so that a rerun from any host resumes at once."""
    lock = work / OWNER_FILE
    token = _HELD.pop(str(lock), None)
    with contextlib.suppress(OSError, ValueError):
        if token is not None and json.loads(lock.read_text(encoding="utf-8")).get("token") == token:
            lock.unlink()
