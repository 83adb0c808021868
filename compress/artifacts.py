"""Artifact I/O: atomic output directories and the `mlcompress.json` provenance record."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import OutputExistsError

PROVENANCE_FILE = "mlcompress.json"
_VERSIONED = ("mlcompress", "torch", "transformers", "tokenizers", "safetensors", "numpy")


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; rename it into place only on success.

    A failed or interrupted run leaves ``path`` as it was. An existing ``path`` is replaced
    only when ``overwrite`` is true, and then only after the new one is complete.
    """
    final = Path(path).expanduser().absolute()
    if final.exists() and not overwrite:
        raise OutputExistsError(
            f"output {final} already exists",
            "choose another output path, or pass --overwrite (overwrite=True) to replace it",
        )
    if final.exists() and not final.is_dir():
        raise OutputExistsError(f"output {final} exists and is not a directory", "choose another output path")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the artifact gets normal permissions
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.rename(final, old / "previous")
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of one file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
