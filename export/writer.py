"""The one writer of every export format (onnx, tensorrt, bnb): an export function hands it a `Payload`; it writes the
files, the provenance (mlcompress.json) and, for bundles, the manifest, into a folder swapped in atomically or into a
.tar.gz archive, and returns the `ExportResult`."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcompress.artifacts import atomic_output_dir, sweep_leftovers, write_provenance

from .bundle import MANIFEST, pack, write_manifest
from .result import ExportResult


@dataclass
class Payload:
    """What one export function hands to the writer."""

    save: Callable[[Path], None]  # puts the artifact's files (model, tokenizer) in a folder
    params: dict[str, Any]  # provenance: the export's parameters, inputs and metrics
    inputs: list[dict[str, Any]]
    metrics: dict[str, Any]
    result: dict[str, Any]  # the ExportResult's fields but output, size_bytes and manifest
    manifest: dict[str, Any] | None = None  # bundle fields: a manifest.json listing ``files`` is written
    files: list[str] | None = None  # the files written (and counted in the size); None: whatever ``save`` writes


def copier(scratch: Path, names: list[str]) -> Callable[[Path], None]:
    """A ``save`` that copies ``names`` (relative paths, e.g. onnx/model.onnx) from ``scratch``."""
    def save(target: Path) -> None:
        for name in names:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(scratch / name, target / name)

    return save


def measured_on() -> dict[str, Any]:
    """The machine the figures in a manifest were measured on."""
    return {"machine": platform.machine(), "processor": _cpu_name(), "cpus": os.cpu_count()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write(payload: Payload, output: Path, *, overwrite: bool = False, archive: bool = False, scratch: Path | None = None
          ) -> ExportResult:
    """Write ``payload`` to ``output``: a folder swapped in only once complete, or (``archive``) a .tar.gz staged in
    ``scratch`` (default: the temp folder) and renamed into place."""
    if archive:
        with tempfile.TemporaryDirectory(prefix="bundle-", dir=scratch) as stage:
            manifest = _write_archive(payload, output, Path(stage))
        size = output.stat().st_size
    else:
        with atomic_output_dir(output, overwrite=overwrite) as target:
            manifest = _fill(payload, target, output.name)
        counted = None if payload.files is None else payload.files + [MANIFEST]
        size = sum(p.stat().st_size for p in output.rglob("*")  # files in subfolders too (a decoder's onnx/)
                   if p.is_file() and (counted is None or p.relative_to(output).as_posix() in counted))
    return ExportResult(output=output, size_bytes=size, manifest=manifest, **payload.result)


def _fill(payload: Payload, target: Path, name: str) -> dict[str, Any] | None:
    """The artifact's files, its provenance, (bundles) its manifest, and its model card (README.md, last: it reads
    the other two; not in the manifest's checksums, since the pipeline rewrites it) in ``target``, the folder that
    becomes ``name``; return the manifest."""
    from mlcompress.model_card import write_model_card

    payload.save(target)
    write_provenance(target, "export", payload.params, payload.inputs, payload.metrics)
    manifest = None if payload.manifest is None else write_manifest(target, payload.manifest, payload.files or [])
    write_model_card(target, name=name)
    return manifest


def _write_archive(payload: Payload, output: Path, folder: Path) -> dict[str, Any] | None:
    """Stage the bundle in ``folder``, pack it beside ``output`` under a partial name, and rename it into place."""
    stage = folder / output.name.removesuffix(".tar.gz").removesuffix(".tgz")
    stage.mkdir()
    manifest = _fill(payload, stage, stage.name)
    output.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(output)
    partial = output.with_name(f".{output.name}.tmp-{os.getpid()}-partial")  # swept if this process is killed
    try:
        pack(stage, partial)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)  # a failed or interrupted pack leaves no half archive
    return manifest
