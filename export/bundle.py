"""Edge bundles: the manifest (files with sha256, inputs, outputs, provenance, parity, speed), its checks, .tar.gz packing.

Imports only the standard library and `mlcompress.errors`, so the torch-free runtime can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from mlcompress.artifacts import scratch_dir, sha256_file
from mlcompress.errors import InputError

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "mlcompress-bundle/1"
# Unpacking limits: no real bundle comes near them; a crafted archive (a decompression bomb, millions of members) stops early.
MAX_BUNDLE_BYTES = 16 << 30  # MLCOMPRESS_MAX_BUNDLE_BYTES overrides it
MAX_MEMBERS = 10_000
MAX_MANIFEST_BYTES = 16 << 20
# What the runtime reads from a manifest; a manifest without them cannot be loaded.
REQUIRED_FIELDS = {"model": str, "files": dict, "tokenizer": dict, "head": dict, "outputs": list}
REQUIRED_TOKENIZER_FIELDS = ("file", "pad_id", "pad_token", "max_length")
REQUIRED_HEAD_FIELDS = ("task", "output")
ORT_FIELDS = ("model", "operators_config")  # the manifest's `ort` entry (bundles exported with --ort)
TEXT_FIELDS = ("model", "input")  # its `tokenizer_in_graph` entry (--tokenizer-in-graph)


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
    inside(directory, MANIFEST)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is corrupt: not valid JSON ({exc})", "re-export the bundle") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not a {BUNDLE_FORMAT} manifest", "re-export the bundle with this mlcompress")
    return manifest


def _safe_name(name: str) -> bool:
    """True for a relative path with no `..`, no drive or root, and no backslash (a name that stays inside its folder)."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return False
    pure = PurePosixPath(name)
    return not pure.is_absolute() and ".." not in pure.parts and not (len(name) > 1 and name[1] == ":")


def inside(directory: Path, name: str) -> Path:
    """``directory / name``, refused when the name or a symlink on its way leads outside the bundle."""
    if not _safe_name(name):
        raise BundleError(f"bundle {directory}: the manifest names a file outside the bundle: {name!r}",
                          "a bundle's files are plain relative paths inside it; re-export the bundle")
    path = directory / name
    root = directory.resolve()
    if not path.resolve().is_relative_to(root):
        raise BundleError(f"bundle {directory}: {name} is a link that points outside the bundle ({path.resolve()})",
                          "copy the bundle with its files (cp -L), or re-export it; a bundle never links outside itself")
    return path


def check_fields(manifest: dict[str, Any], where: Path) -> None:
    """Refuse a manifest that lacks a field the runtime reads, or whose model or tokenizer is not a verified file."""
    missing = [k for k, kind in REQUIRED_FIELDS.items() if not isinstance(manifest.get(k), kind)]
    for part, keys in (("tokenizer", REQUIRED_TOKENIZER_FIELDS), ("head", REQUIRED_HEAD_FIELDS)):
        entry = manifest.get(part) if isinstance(manifest.get(part), dict) else {}
        missing += [f"{part}.{k}" for k in keys if part not in missing and k not in entry]
    if missing:
        raise BundleError(f"{where / MANIFEST} lacks field(s) {', '.join(missing)} (or they have the wrong type)",
                          "the bundle is incomplete or from another tool; re-export it with `mlcompress export --bundle`")
    files = manifest["files"]
    roles = [("model", manifest["model"]), ("tokenizer", manifest["tokenizer"]["file"]), *_form_files(manifest, where)]
    for role, name in roles:
        if not isinstance(name, str) or name not in files:
            raise BundleError(f"{where / MANIFEST}: its {role} file {name!r} is not among the files it lists with a sha256",
                              "a bundle loads only files whose checksums it verifies; re-export the bundle")
    for name, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("bytes"), int):
            raise BundleError(f"{where / MANIFEST}: its entry for {name!r} has no sha256 and byte count",
                              "re-export the bundle")


def _form_files(manifest: dict[str, Any], where: Path) -> list[tuple[str, Any]]:
    """The files of the other forms a manifest names (`--ort`'s model.ort and operator config, `--tokenizer-in-graph`'s
    model; none without those entries): they too must be listed with a sha256."""
    roles: list[tuple[str, Any]] = []
    for key, fields, flag, names in (("ort", ORT_FIELDS, "--ort", (".ort model", "operator config")),
                                     ("tokenizer_in_graph", TEXT_FIELDS, "--tokenizer-in-graph", ("tokenizer-in-graph model",))):
        if key not in manifest:
            continue
        entry = manifest[key]
        if not isinstance(entry, dict) or not all(k in entry for k in fields):
            raise BundleError(f"{where / MANIFEST}: its {key} entry lacks {' or '.join(fields)}",
                              f"the bundle is incomplete or from another tool; re-export it with `--bundle {flag}`")
        roles += [(name, entry[field]) for name, field in zip(names, fields)]
    return roles


def verify_dir(directory: Path) -> dict[str, Any]:
    """Check every file of a bundle directory against its manifest; return the manifest or raise BundleError.

    The model and the tokenizer must be listed (so verified) and every listed file must stay inside the bundle.
    """
    manifest = read_manifest(directory)
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise BundleError(f"{directory / MANIFEST} was changed after the bundle was written (its digest does not match)",
                          "do not edit bundles by hand; re-export it")
    check_fields(manifest, directory)
    for name, entry in manifest["files"].items():
        path = inside(directory, name)
        if not path.is_file():
            raise BundleError(f"bundle {directory} is missing {name}", "copy the whole bundle directory, or re-export it")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise BundleError(f"bundle file {name} does not match its sha256 in {MANIFEST}: it is corrupt or was modified",
                              "re-copy or re-export the bundle; a modified model is never loaded")
    return manifest


def _declared_sizes(manifest_path: Path, folder: PurePosixPath) -> dict[str, int] | None:
    """Archive member name -> bytes that a manifest met while unpacking declares (None when it cannot be read: verify says why)."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        return {str(folder / name): int(e["bytes"]) for name, e in files.items() if _safe_name(name)}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    """Write one regular member, never more bytes than its header declares, never over an existing file."""
    if target.exists():
        raise BundleError(f"archive member {member.name} appears twice", "re-export the bundle")
    src = tar.extractfile(member)
    if src is None:
        raise BundleError(f"archive member {member.name} has no data", "re-export the bundle")
    written = 0
    with src, open(target, "xb") as out:
        while block := src.read(1 << 20):
            written += len(block)
            if written > member.size:
                raise BundleError(f"archive member {member.name} holds more than the {member.size} bytes it declares",
                                  "the archive is corrupt or crafted; re-export the bundle")
            out.write(block)


def max_bundle_bytes() -> int:
    """The unpacking limit for a whole bundle: MLCOMPRESS_MAX_BUNDLE_BYTES, else MAX_BUNDLE_BYTES."""
    value = os.environ.get("MLCOMPRESS_MAX_BUNDLE_BYTES", "")
    return int(value) if value.strip().isdigit() else MAX_BUNDLE_BYTES


def _member_problem(member: tarfile.TarInfo, name: str, room: int, limit: int, declared: dict[str, int] | None) -> str | None:
    """Why a member may not be unpacked (None when it may): links, devices, paths out, sizes beyond the limits."""
    if not _safe_name(member.name):
        return f"member {member.name!r} has a path that leads outside the bundle"
    if member.issym() or member.islnk():
        return f"member {member.name!r} is a link (to {member.linkname!r}); bundles hold plain files only"
    if not (member.isfile() or member.isdir()):
        return f"member {member.name!r} is a device, pipe or other special file; bundles hold plain files only"
    if member.isfile() and member.size > room:
        return (f"member {member.name!r} unpacks to {member.size:,} bytes, beyond the {limit:,}-byte limit "
                "for a whole bundle (MLCOMPRESS_MAX_BUNDLE_BYTES)")
    if member.isfile() and declared is not None and name in declared and member.size != declared[name]:
        return f"member {member.name!r} is {member.size:,} bytes, but the bundle's manifest declares {declared[name]:,}"
    if member.isfile() and PurePosixPath(name).name == MANIFEST and member.size > MAX_MANIFEST_BYTES:
        return f"member {member.name!r} is {member.size:,} bytes, far too large for a manifest"
    return None


def extract(archive: Path, dest: Path, max_bytes: int | None = None) -> None:
    """Unpack a bundle archive into the empty folder ``dest``, member by member, checked before any byte is written.

    Only folders and regular files; no absolute paths, `..`, links or devices; sizes capped (in all and, once the
    manifest has been read, per file as the manifest declares). The same on every Python (no reliance on
    ``tarfile``'s ``filter="data"``, which Python 3.10 before 3.10.12 lacks); files are written by this code, never by tarfile.
    """
    limit = max_bundle_bytes() if max_bytes is None else max_bytes
    declared: dict[str, int] | None = None
    total = 0
    with tarfile.open(archive, "r:*") as tar:
        for count, member in enumerate(tar, 1):
            name = str(PurePosixPath(member.name))
            problem = (f"the archive has more than {MAX_MEMBERS:,} members" if count > MAX_MEMBERS
                       else _member_problem(member, name, limit - total, limit, declared))
            if problem:
                raise BundleError(f"{archive}: refusing to unpack it: {problem}",
                                  "only unpack bundles written by `mlcompress export --bundle`; re-export it")
            target = dest / name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_member(tar, member, target)
            total += member.size
            if declared is None and PurePosixPath(name).name == MANIFEST:
                declared = _declared_sizes(target, PurePosixPath(name).parent)


def open_bundle(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """The bundle directory for ``path`` (a directory, or a .tar.gz unpacked to a temp dir returned second for cleanup)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path, None
    if not path.exists():
        raise BundleError(f"bundle {path} not found", "pass a bundle directory or .tar.gz written by `mlcompress export --bundle`")
    tmp = scratch_dir("bundle")
    try:
        extract(path, tmp)
    except BundleError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"{path} is not a readable bundle archive ({type(exc).__name__}: {exc})",
                          "re-copy or re-export the bundle") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    roots = list(tmp.iterdir())
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
    """Write ``directory`` as a .tar.gz whose single top-level folder is the bundle, its manifest first.

    The manifest leads so that unpacking knows every file's declared size before it meets the file.
    """
    root = archive.name.removesuffix(".tar.gz").removesuffix(".tgz") or "bundle"
    names = sorted((p.name for p in directory.iterdir()), key=lambda n: (n != MANIFEST, n))
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory, arcname=root, recursive=False)
        for name in names:
            tar.add(directory / name, arcname=f"{root}/{name}")
    return archive
