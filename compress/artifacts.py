"""Artifact I/O: atomic output directories and the `mlcompress.json` provenance record."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import MlcompressError, OutputError, OutputExistsError

PROVENANCE_FILE = "mlcompress.json"
_VERSIONED = ("mlcompress", "torch", "transformers", "tokenizers", "safetensors", "numpy")


# errno values that mean "the disk (or a quota, or a file-size limit) is full", and the texts Rust libraries
# (safetensors, tokenizers) put in their errors for them
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "file too large", "os error 28", "os error 27",
               "os error 122")


def check_output(path: str | os.PathLike[str], overwrite: bool = False, what: str = "output") -> Path:
    """Refuse, before any work, an output that exists (unless ``overwrite``) or whose folder cannot be written.

    Every stage calls this first, so a read-only folder costs the user a second, not a trained model.
    """
    final = Path(path).expanduser().absolute()
    if final.parent.is_dir():
        sweep_leftovers(final)
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{what} {final} already exists", "choose another output path, or pass --overwrite")
    parent = next((p for p in (final.parent, *final.parent.parents) if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise OutputError(f"cannot create {what} {final}: {parent} is not a folder", "choose another output path")
    try:
        probe = tempfile.mkdtemp(prefix=f".{final.name}.probe-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise _output_error(exc, final) from exc
    return final


def _output_error(exc: BaseException, final: Path) -> OutputError:
    """The clear error for an OS refusal to write ``final``: permissions, a read-only file system, or a full disk."""
    code = getattr(exc, "errno", None)
    if is_disk_full(exc):
        return OutputError(f"the disk ran out of space while writing {final} ({exc}); nothing was written there",
                           "free some space on that disk, or choose an output on another disk")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write into {final.parent}: {os.strerror(code)}",
                           "choose an output folder you can write to, or change that folder's permissions")
    return OutputError(f"cannot write {final}: {exc}", "check the output path and its disk")


def is_disk_full(exc: BaseException) -> bool:
    """True for an error that means no space was left (an OSError's errno, or a Rust library's message)."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    return any(text in str(exc).lower() for text in _FULL_TEXTS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _left_by_dead_process(suffix: str) -> bool:
    """Whether a leftover name's ``PID-…`` suffix names a process that no longer runs."""
    pid = suffix.split("-", 1)[0]
    return pid.isdigit() and not _alive(int(pid))


def sweep_leftovers(final: Path) -> None:
    """Clean up after runs to ``final`` that were killed: their temporary folders go, and a previous artifact
    caught between the two renames of a replacement is put back. Folders of live processes are left alone."""
    for leftover in final.parent.glob(f".{glob.escape(final.name)}.*-*"):
        kind, _, rest = leftover.name[len(final.name) + 2:].partition("-")
        if kind not in ("tmp", "old") or not _left_by_dead_process(rest):
            continue
        previous = leftover / "previous"
        with contextlib.suppress(OSError):  # best effort: a folder we may not change is left as it is
            if kind == "old" and previous.is_dir() and not final.exists():
                os.rename(previous, final)
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def scratch_dir(kind: str) -> Path:
    """A private working folder in the system temp folder, named for this process, made after removing those
    that killed processes left behind (an export's scratch holds graphs of hundreds of MB)."""
    stem = f"mlcompress-{kind}-"
    for old in Path(tempfile.gettempdir()).glob(f"{stem}*-*"):
        if _left_by_dead_process(old.name[len(stem):]) and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{stem}{os.getpid()}-"))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the OS or file system cannot."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; rename it into place only on success.

    A failed or interrupted run leaves ``path`` as it was. An existing ``path`` is replaced
    only when ``overwrite`` is true, and then only after the new one is complete. Leftovers of
    runs that were killed (SIGKILL, power loss) are cleaned up by the next run to ``path``.
    """
    final = Path(path).expanduser().absolute()
    if final.parent.is_dir():
        sweep_leftovers(final)  # first: a previous artifact a killed replacement left aside counts as existing
    if final.exists() and not overwrite:
        raise OutputExistsError(
            f"output {final} already exists",
            "choose another output path, or pass --overwrite (overwrite=True) to replace it",
        )
    if final.exists() and not final.is_dir():
        raise OutputExistsError(f"output {final} exists and is not a directory", "choose another output path")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    except OSError as exc:
        raise _output_error(exc, final) from exc
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the artifact gets normal permissions
    try:
        yield tmp
        if final.exists() and _exchange(tmp, final):  # one atomic step: the new artifact in, the previous one in tmp
            shutil.rmtree(tmp, ignore_errors=True)
        elif final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent))
            os.rename(final, old / "previous")
            os.rename(tmp, final)  # a kill between the two renames is repaired by the next run's sweep_leftovers
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, MlcompressError) and (
                is_disk_full(exc) or _refused_here(exc, final.parent)):
            raise _output_error(exc, final) from exc
        raise


def _refused_here(exc: BaseException, folder: Path) -> bool:
    """A permission error on a path inside ``folder`` (a write refused there, not an input that cannot be read)."""
    name = getattr(exc, "filename", None)
    return isinstance(exc, PermissionError) and name is not None and str(name).startswith(str(folder))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of one file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON file's top-level object, or None when the file is missing, unreadable, not JSON or not an object
    (for optional files: a config, a manifest, a record that may be absent)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def json_digest(obj: Any) -> str:
    """Hex sha256 of an object's canonical JSON (sorted keys; non-JSON values as str): a fingerprint of settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact, for its provenance record."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def write_provenance(
    directory: str | os.PathLike[str],
    stage: str,
    parameters: dict[str, Any],
    inputs: list[dict[str, Any]],
    metrics: dict[str, Any],
) -> Path:
    """Write ``mlcompress.json`` (stage, parameters, inputs, library versions, metrics)."""
    record = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parameters": parameters,
        "inputs": inputs,
        "versions": library_versions(),
        "metrics": metrics,
    }
    out = Path(directory) / PROVENANCE_FILE
    out.write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return out


def read_provenance(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``mlcompress.json`` record of an artifact, or None when it has none."""
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        from .errors import InputError

        raise InputError(f"{path} is not a readable mlcompress record ({exc})",
                         "restore the file, or delete it and rebuild the artifact with its stage's command") from exc
    if not isinstance(record, dict):
        from .errors import InputError

        raise InputError(f"{path} is not an mlcompress record (a JSON object)", "rebuild the artifact with its stage's command")
    return record


# ---- sizes, shared by every stage and the orchestration layer -------------------------------------------------------


def dir_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of every file under ``path`` (or of ``path`` itself when it is a file)."""
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def onnx_parameters(path: str | os.PathLike[str]) -> int | None:
    """Elements in the initializers of an ONNX model file, or of a directory's ONNX model(s), read without their
    external data; None without onnx."""
    try:
        import onnx
    except ImportError:
        return None
    total = 0
    for f in [Path(path)] if Path(path).is_file() else sorted(Path(path).glob("*.onnx")):
        model = onnx.load(str(f), load_external_data=False)
        for init in model.graph.initializer:
            count = 1
            for d in init.dims:
                count *= int(d)
            total += count
    return total or None


def format_mb(n: Any, unit: str = "", missing: str = "—") -> str:
    """Bytes as megabytes (10^6) with one decimal, e.g. '12.3' (+ ``unit``); ``missing`` for a value that is not a number."""
    return f"{n / 1e6:,.1f}{unit}" if isinstance(n, (int, float)) else missing


def quiet_transformers() -> None:
    """Silence transformers' logging and progress bars (the commands print their own progress)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def format_number(x: Any, fmt: str = "{:,}", missing: str = "—") -> str:
    """``fmt.format(x)`` for a number; ``missing`` for anything else (a figure that was not measured)."""
    return fmt.format(x) if isinstance(x, (int, float)) else missing
