"""`mlcompress bundle demo`: a static web page that runs a sentence-embedding bundle in the browser, offline.

The folder holds the bundle's ONNX graph (at the path its manifest names), tokenizer.json and manifest.json, the page
(index.html, demo.js), the sentences it ranks (sentences.json) and, under vendor/, pinned onnxruntime-web (wasm) and
@huggingface/tokenizers.
Serve it over http (``python -m http.server -d DIR``) and open it: nothing is fetched from anywhere else.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from mlcompress.artifacts import atomic_output_dir, check_output, write_provenance

from . import npm_vendor
from .bundle import MANIFEST, BundleError, open_bundle, verify_dir
from .demo_texts import demo_sentences

PAGE_FILES = ("index.html", "demo.js")  # package data under export/web/
SENTENCES = "sentences.json"


def _checked_manifest(directory: Path) -> dict[str, Any]:
    """A verified manifest of a bundle the page can run: a sentence-embedding model in plain ONNX."""
    manifest = verify_dir(directory)
    task = manifest["head"]["task"]
    if task != "sentence-embedding":
        raise BundleError(f"bundle {directory} is a {task} model; the web demo ranks sentences by their embeddings",
                          "export a sentence-embedding bundle (`mlcompress export MODEL --bundle --task sentence-embedding`)")
    if not str(manifest["model"]).endswith(".onnx"):
        raise BundleError(f"bundle {directory}: its model {manifest['model']} is not an ONNX file", "re-export the bundle")
    return manifest


def _write_page(target: Path, manifest: dict[str, Any], source: Path, sentences: list[dict[str, str]]) -> None:
    """Copy the bundle's model, tokenizer and manifest, and write the page, its sentences and vendor/ into ``target``."""
    for name in (manifest["model"], manifest["tokenizer"]["file"], MANIFEST):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target / name)
    web = resources.files("mlcompress.export").joinpath("web")
    for name in PAGE_FILES:
        (target / name).write_bytes(web.joinpath(name).read_bytes())
    (target / SENTENCES).write_text(json.dumps(sentences, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_demo(bundle: str | os.PathLike[str], output: str | os.PathLike[str], sentences: str | os.PathLike[str] | None = None,
               *, data: str | os.PathLike[str] | None = None, per_language: int = 20, overwrite: bool = False,
               cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write the web demo of ``bundle`` (a directory or .tar.gz) into the folder ``output``, which appears only complete.

    ``sentences``: a file of sentences to rank (one a line), else ``per_language`` Tatoeba lines per bundle language
    from ``data`` (default ../shared/data). The npm packages are fetched once into the mlcompress cache (``cache_dir``).
    """
    final = check_output(output, overwrite, what="demo folder")
    directory, tmp = open_bundle(bundle)
    try:
        manifest = _checked_manifest(directory)
        listed = demo_sentences(manifest.get("languages"), sentences, data, per_language)
        with atomic_output_dir(final, overwrite=overwrite) as target:
            vendored = npm_vendor.vendor(target / "vendor", cache_dir)
            _write_page(target, manifest, directory, listed)
            write_provenance(target, "bundle-demo",
                             {"sentences": str(sentences) if sentences else None, "per_language": per_language,
                              "npm": npm_vendor.pins(), "vendor": vendored},
                             [{"bundle": str(Path(bundle).expanduser().absolute()),
                               "manifest_sha256": manifest.get("manifest_sha256")}],
                             {"sentences": len(listed), "model_bytes": manifest["files"][manifest["model"]]["bytes"]})
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
