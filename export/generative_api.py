"""`export()` for generative models: maps the encoder-facing options onto the decoder-only exporter (`decoder_export`)
or the encoder-decoder one (`seq2seq_export`), refusing the ones that have no meaning there, so that one command and
one function export any family the support table allows."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlcompress.errors import InputError
from mlcompress.families import check_supported

from .options import ChecksConfig, DecoderParityConfig, DecoderQuantConfig, QuantConfig, scheme_name
from .result import ExportResult

# export()'s --quantize -> (export_decoder's quantize, its int8 method)
DECODER_QUANTIZE = {"none": ("none", "nbits"), "int8-weights": ("int8", "nbits"), "int8": ("int8", "nbits"),
                    "int8-dynamic": ("int8", "dynamic"), "int4": ("int4", "nbits")}
_PARITY_LINES = 4  # per language, when corpora are given: prompts of the greedy-identity check


def _refuse_encoder_options(format: str, ort: bool, tokenizer_in_graph: bool, max_drop: float | None) -> None:
    """Options of the encoder path that decoders do not have (yet): a clear error naming each."""
    asked = [name for name, on in (("--format " + format, format != "onnx"), ("--ort", ort),
                                   ("--tokenizer-in-graph", tokenizer_in_graph), ("--max-drop", max_drop is not None))
             if on]
    if asked:
        raise InputError(f"{', '.join(asked)}: not available for generative (decoder and encoder-decoder) models",
                         "export it as ONNX (--format onnx) with --quantize none, int8-weights (8-bit MatMulNBits) or int4")


def _check_text(texts: Mapping[str, Any] | list[str] | None, model_dir: Path, languages: list[str]) -> list[str] | None:
    """The check prompts: given sentences, a few lines of each language's corpus, or None (the exporter's own)."""
    if texts is None:
        return None
    from .texts import take, text_sources

    return take(text_sources(texts, model_dir, languages), _PARITY_LINES, 0)


def decoder_quantization(quantize: str | QuantConfig) -> DecoderQuantConfig:
    """export()'s --quantize (a name, or a scheme's config) as the decoder's scheme, through ``DECODER_QUANTIZE``."""
    name = scheme_name(quantize)
    if name not in DECODER_QUANTIZE:
        raise InputError(f"--quantize {name} is not available for decoder models",
                         f"choose one of {', '.join(DECODER_QUANTIZE)} (int8-weights: 8-bit MatMulNBits, the default)")
    q, method = DECODER_QUANTIZE[name]
    return DecoderQuantConfig(quantize=q, int8_method=method)


def export_generative(family: str, model_dir: Path, output: str | os.PathLike[str], *, quantize: str | QuantConfig,
                      checks: ChecksConfig, format: str, ort: bool, tokenizer_in_graph: bool,
                      texts: Mapping[str, Any] | list[str] | None, languages: list[str], overwrite: bool,
                      cache_dir: str | os.PathLike[str] | None) -> ExportResult:
    """Export a generative ``family`` model (decoder-only LMs; seq2seq: encoder-decoders) through its own exporter,
    with export()'s ``checks`` (min_agreement, force; --max-drop refused)."""
    check_supported(family, "export", str(model_dir))
    _refuse_encoder_options(format, ort, tokenizer_in_graph, checks.max_drop)
    quantization = decoder_quantization(quantize)
    if family == "seq2seq":
        from .seq2seq_export import run_seq2seq_export as run
    else:
        from .decoder_export import run_decoder_export as run
    return run(model_dir, output, quantization, checks, DecoderParityConfig(),
               texts=_check_text(texts, model_dir, languages), overwrite=overwrite, cache_dir=cache_dir)
