"""Edge bundles: the manifest (files with sha256, inputs, outputs, provenance, parity, speed), its checks, .tar.gz packing.

Imports only the standard library and `mlcompress.errors`, so the torch-free runtime can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from mlcompress.artifacts import sha256_file
from mlcompress.errors import InputError

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "mlcompress-bundle/1"


class BundleError(InputError):
    """A bundle is missing, incomplete, or does not match its manifest."""


def _manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own digest field, so a changed manifest byte shows too."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def write_manifest(directory: Path, fields: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """Write ``manifest.json`` listing ``files`` (relative to ``directory``) with their sha256 and size."""
    entries = {name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size} for name in files}
    manifest = {"format": BUNDLE_FORMAT, **fields, "files": entries,
                "size_bytes": sum(e["bytes"] for e in entries.values())}
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a bundle directory, or a clear error when there is none or it is not JSON."""
    path = directory / MANIFEST
    if not path.is_file():
        raise BundleError(f"{directory} is not an mlcompress bundle: it has no {MANIFEST}",
                          "pass the directory (or .tar.gz) that `mlcompress export --bundle` wrote")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is corrupt: not valid JSON ({exc})", "re-export the bundle") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not a {BUNDLE_FORMAT} manifest", "re-export the bundle with this mlcompress")
    return manifest


def verify_dir(directory: Path) -> dict[str, Any]:
    """Check every file of a bundle directory against its manifest; return the manifest or raise BundleError."""
    manifest = read_manifest(directory)
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise BundleError(f"{directory / MANIFEST} was changed after the bundle was written (its digest does not match)",
                          "do not edit bundles by hand; re-export it")
    for name, entry in manifest.get("files", {}).items():
        path = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"manifest names a file outside the bundle: {name!r}", "re-export the bundle")
        if not path.is_file():
            raise BundleError(f"bundle {directory} is missing {name}", "copy the whole bundle directory, or re-export it")
        if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            raise BundleError(f"bundle file {name} does not match its sha256 in {MANIFEST}: it is corrupt or was modified",
                              "re-copy or re-export the bundle; a modified model is never loaded")
    return manifest


def open_bundle(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """The bundle directory for ``path`` (a directory, or a .tar.gz unpacked to a temp dir returned second for cleanup)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path, None
    if not path.exists():
        raise BundleError(f"bundle {path} not found", "pass a bundle directory or .tar.gz written by `mlcompress export --bundle`")
    tmp = Path(tempfile.mkdtemp(prefix="mlcompress-bundle-"))
    try:
        with tarfile.open(path, "r:*") as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"{path} is not a readable bundle archive ({type(exc).__name__}: {exc})",
                          "re-copy or re-export the bundle") from exc
    roots = [p for p in tmp.iterdir()]
    root = roots[0] if len(roots) == 1 and roots[0].is_dir() else tmp
    return root, tmp


def verify(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a bundle (directory or .tar.gz) against its manifest; return the manifest or raise BundleError."""
    directory, tmp = open_bundle(path)
    try:
        return verify_dir(directory)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def pack(directory: Path, archive: Path) -> Path:
    """Write ``directory`` as a .tar.gz whose single top-level folder is the bundle."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory, arcname=archive.name.removesuffix(".tar.gz").removesuffix(".tgz") or "bundle")
    return archive
