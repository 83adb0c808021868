"""`mlcompress.export.export`: build its keywords into typed, checked options (`options`), then hand one export
function (graph formats: `onnx_backend`; bitsandbytes: `bnb`) to the one writer (`writer`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mlcompress.artifacts import check_output, scratch_dir
from mlcompress.errors import InputError
from mlcompress.languages import parse_languages

from .generative_api import export_generative
from .options import (ChecksConfig, EmbeddingConfig, EncoderOptions, OutputsConfig, QuantConfig,
                      embedding_block, quantization_config, resolve_auto)
from .quantize import AUTO
from .result import ExportResult
from .writer import write

if TYPE_CHECKING:
    from .onnx_backend import Prepared


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
    quantize: str | QuantConfig = AUTO,
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
    embedding_block_size: int | None = None,
    int4_block_size: int | None = None,
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

    ``max_drop`` (int8-dynamic, int8-static, int8-weights, int4, int4-weights) keeps the most sensitive weight
    operators at full precision until the drop against the float graph (1 - mean cosine; 1 - label agreement for
    classifiers) on ``accuracy_texts`` held-out target-language sentences is within it; the manifest records what was
    kept and what it cost.
    ``ort`` (bundles, onnx) also writes ONNX Runtime's mobile form: model.ort and required_operators.config.
    ``tokenizer_in_graph`` (bundles, onnx) also writes model_with_tokenizer.onnx: strings in, the model's output out
    (onnxruntime-extensions' SentencePiece tokenizer), checked against tokenizer.json + the ONNX graph.
    ``quantize`` names a scheme, or is its config ready-made (``Int4Config(block_size=32)``), which then stands for
    the scheme keywords (per_channel, reduce_range, calibration, int4_block_size: None is the scheme's default, 128 for
    int4, 32 for int4-weights). ``auto`` (the default): int8-weights with 32-wide embedding blocks, or for a student
    that trained on the int4-weights grid (`distill general`'s default) int4-weights on that grid, which is exact;
    both compute in float, so a sentence gets the same embedding in any batch. The keywords are built once, here, into
    typed configs (`options`), which refuse what they cannot mean before any work.
    """
    output = Path(output).expanduser().absolute()
    langs = parse_languages(languages) if languages and (not isinstance(languages, str) or languages.strip()) else []
    checks = ChecksConfig(parity_texts=parity_texts, calibration_texts=calibration_texts, accuracy_texts=accuracy_texts,
                          min_cosine=min_cosine, min_agreement=min_agreement, max_drop=max_drop, force=force)
    family, model_dir = _family(model, cache_dir)
    student_dir = model_dir if family == "encoder" and format == "onnx" else None
    block = embedding_block(quantize, student_dir, embedding_block_size)
    quantize = resolve_auto(quantize, student_dir, format)
    if family != "encoder":  # generative families have their own exporter, behind the same parameters
        return export_generative(family, model_dir, output, quantize=quantize, checks=checks, format=format, ort=ort,
                                 tokenizer_in_graph=tokenizer_in_graph, texts=texts, languages=langs,
                                 overwrite=overwrite, cache_dir=cache_dir)
    outputs = OutputsConfig(format=format, bundle=bundle, ort=ort, tokenizer_in_graph=tokenizer_in_graph,
                            optimize=optimize, measure_latency=measure_latency)
    scheme = quantization_config(quantize, per_channel=per_channel, reduce_range=reduce_range, calibration=calibration,
                                 int4_block_size=int4_block_size)
    options = EncoderOptions(scheme, EmbeddingConfig(quantize_embeddings, block), checks, outputs)
    if outputs.format == "tensorrt":
        from .tensorrt import require_tensorrt
        require_tensorrt(scheme.name)
    if outputs.format == "bnb":
        from .bnb import export_bnb
        return write(export_bnb(model, scheme.name, cache_dir=cache_dir), output, overwrite=overwrite)
    archive = _check_output(output, outputs.bundle, overwrite)

    from .onnx_backend import prepare

    prepared = prepare(model, cache_dir, texts, langs, task=task, pooling=pooling, normalize=normalize, prefix=prefix,
                       max_length=max_length)
    return _write_graph(prepared, options, langs, output, archive, overwrite)


def _write_graph(prepared: Prepared, options: EncoderOptions, langs: list[str], output: Path, archive: bool,
                 overwrite: bool) -> ExportResult:
    """Export the prepared model's graph (`onnx_backend`) in a scratch folder, and write it to ``output``."""
    from .onnx_backend import export_graph

    if options.outputs.tokenizer_in_graph:
        from .tokenizer_graph import check_supported

        check_supported(prepared.tokenizer_json, prepared.spec.task)
    scratch = scratch_dir("export")
    try:
        payload = export_graph(prepared, scratch, options, langs)
        return write(payload, output, overwrite=overwrite, archive=archive, scratch=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
