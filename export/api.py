"""`mlcompress.export.export`: check the arguments, then hand one export function (graph formats: `onnx_backend`;
bitsandbytes: `bnb`) to the one writer (`writer`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from mlcompress.artifacts import check_output, scratch_dir
from mlcompress.errors import InputError
from mlcompress.languages import parse_languages

from .accuracy_control import QUANTISED_OPS
from .generative_api import export_generative
from .graph import CALIBRATION_METHODS
from .quantize import QUANTIZE_CHOICES
from .result import ExportResult
from .writer import write

FORMATS = ("onnx", "tensorrt", "bnb")


def _check_arguments(format: str, quantize: str, calibration: str, max_drop: float | None) -> None:
    """Refuse an unknown format, quantisation or calibration, and --max-drop where the search cannot steer."""
    if format not in FORMATS:
        raise InputError(f"unknown format {format!r}", f"choose one of {', '.join(FORMATS)}")
    if quantize not in QUANTIZE_CHOICES:
        raise InputError(f"unknown quantisation {quantize!r}", f"choose one of {', '.join(QUANTIZE_CHOICES)}")
    if calibration not in CALIBRATION_METHODS:
        raise InputError(f"unknown calibration method {calibration!r}", f"choose one of {', '.join(CALIBRATION_METHODS)}")
    if max_drop is not None and (quantize not in QUANTISED_OPS or format != "onnx"
                                 or not 0 < max_drop < 1):
        raise InputError(f"--max-drop {max_drop} with --format {format} --quantize {quantize}",
                         "use --max-drop between 0 and 1 (e.g. 0.005) with --format onnx and int8-dynamic, int8-static, int8-weights or int4")


def _check_forms(ort: bool, tokenizer_in_graph: bool, format: str, bundle: bool) -> None:
    """--ort and --tokenizer-in-graph add forms of a bundle's ONNX graph: refuse them without --bundle or with another
    format."""
    for flag, given, what in (("--ort", ort, "the .ort model and its operator config go"),
                              ("--tokenizer-in-graph", tokenizer_in_graph, "the model with its tokenizer inside goes")):
        if given and format != "onnx":
            raise InputError(f"{flag} with --format {format}: that form is built from an ONNX graph",
                             f"use {flag} with --format onnx --bundle")
        if given and not bundle:
            raise InputError(f"{flag} without --bundle: {what} into an edge bundle",
                             "add --bundle (OUT a directory or a .tar.gz)")


def _check_output(output: Path, bundle: bool, overwrite: bool) -> bool:
    """True when the output is a .tar.gz archive (bundles only); refuse an existing path unless overwriting."""
    archive = output.name.endswith((".tar.gz", ".tgz"))
    if archive and not bundle:
        raise InputError(f"{output} is an archive name but --bundle was not given", "add --bundle, or name an output directory")
    check_output(output, overwrite)
    return archive


def _family(model: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None) -> tuple[str, Path | None]:
    """The model's family and folder (a resolved source); ("encoder", None) when it is not a model folder yet (the
    encoder path then reports what is wrong with it)."""
    from mlcompress.errors import ModelSourceError
    from mlcompress.families import model_family
    from mlcompress.sources import resolve_model

    try:
        path = resolve_model(model, cache_dir).path
        return model_family(path), path
    except ModelSourceError:
        return "encoder", None


def export(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    format: str = "onnx",
    quantize: str = "int8-weights",
    bundle: bool = False,
    ort: bool = False,
    tokenizer_in_graph: bool = False,
    languages: str | list[str] | None = None,
    texts: Mapping[str, str | os.PathLike[str] | list[str]] | list[str] | None = None,
    task: str | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    prefix: str | None = None,
    max_length: int | None = None,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    quantize_embeddings: bool | None = None,
    embedding_block_size: int = 32,
    int4_block_size: int = 128,
    calibration: str = "minmax",
    optimize: bool = True,
    parity_texts: int = 32,
    calibration_texts: int = 64,
    min_cosine: float | None = None,
    min_agreement: float | None = None,
    max_drop: float | None = None,
    accuracy_texts: int = 128,
    force: bool = False,
    measure_latency: bool = True,
    overwrite: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Export MODEL to ONNX (or a TensorRT engine / bitsandbytes checkpoint), quantise it, check parity, and write OUT.

    ``max_drop`` (int8-dynamic, int8-static, int4) keeps the most sensitive weight operators at full precision until
    the drop against the float graph (1 - mean cosine; 1 - label agreement for classifiers) on ``accuracy_texts``
    held-out target-language sentences is within it; the manifest records what was kept and what it cost.
    ``ort`` (bundles, onnx) also writes ONNX Runtime's mobile form: model.ort and required_operators.config.
    ``tokenizer_in_graph`` (bundles, onnx) also writes model_with_tokenizer.onnx: strings in, the model's output out
    (onnxruntime-extensions' SentencePiece tokenizer), checked against tokenizer.json + the ONNX graph.
    """
    output = Path(output).expanduser().absolute()
    langs = parse_languages(languages) if languages and (not isinstance(languages, str) or languages.strip()) else []
    family, model_dir = _family(model, cache_dir)
    if family != "encoder":  # generative families have their own exporter, behind the same parameters
        return export_generative(family, model_dir, output, format=format, quantize=quantize, ort=ort,
                                 tokenizer_in_graph=tokenizer_in_graph, max_drop=max_drop, texts=texts, languages=langs,
                                 min_agreement=min_agreement, force=force, overwrite=overwrite, cache_dir=cache_dir)
    _check_arguments(format, quantize, calibration, max_drop)
    _check_forms(ort, tokenizer_in_graph, format, bundle)
    if format == "tensorrt":
        from .tensorrt import require_tensorrt
        require_tensorrt(quantize)
    if format == "bnb":
        from .bnb import export_bnb
        return write(export_bnb(model, quantize, cache_dir=cache_dir), output, overwrite=overwrite)
    archive = _check_output(output, bundle, overwrite)

    from .onnx_backend import export_graph, prepare

    prepared = prepare(model, cache_dir, texts, langs, task=task, pooling=pooling, normalize=normalize, prefix=prefix,
                       max_length=max_length)
    if tokenizer_in_graph:
        from .tokenizer_graph import check_supported

        check_supported(prepared.tokenizer_json, prepared.spec.task)
    opts = {"per_channel": per_channel, "reduce_range": reduce_range, "quantize_embeddings": quantize_embeddings,
            "embedding_block_size": embedding_block_size, "int4_block_size": int4_block_size, "calibration": calibration,
            "optimize": optimize, "parity_texts": parity_texts, "calibration_texts": calibration_texts,
            "min_cosine": min_cosine, "min_agreement": min_agreement, "max_drop": max_drop,
            "accuracy_texts": accuracy_texts, "force": force, "measure_latency": measure_latency, "ort": ort,
            "tokenizer_in_graph": tokenizer_in_graph}
    scratch = scratch_dir("export")
    try:
        payload = export_graph(prepared, scratch, format, quantize, bundle, langs, opts)
        return write(payload, output, overwrite=overwrite, archive=archive, scratch=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
