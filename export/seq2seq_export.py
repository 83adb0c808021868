"""`export_seq2seq`: an encoder-decoder (T5 / mT5, mBART, M2M100 / NLLB) to ONNX with a KV cache, in the optimum /
transformers.js layout, checked against PyTorch before anything is written.

    from mlcompress.export import export_seq2seq
    export_seq2seq("nllb-trimmed/", "nllb-onnx/", quantize="int8")
    # nllb-onnx/onnx/encoder_model.onnx, onnx/decoder_model_merged.onnx (fp32), onnx/encoder_model_quantized.onnx,
    # onnx/decoder_model_merged_quantized.onnx, config.json, generation_config.json, tokenizer.json,
    # tokenizer_config.json, mlcompress.json, manifest.json

Steps: describe the family (`seq2seq_families`), export the encoder and the with-past decoder, write the cross
projections and merge the decoder (`seq2seq_graph`), check them (`seq2seq_parity`), quantise each part with the
decoder passes (`decoder_quantize`: MatMulNBits, embeddings, untied heads) and merge the quantised parts (the weights
stored once), check that too, then write the folder atomically (`writer`) with a manifest of sha256 per file. This
module is the family's `Seq2SeqExporter`; the loop around it (load, scratch folder, record, write) is
`generative_export`'s, shared with the decoder-only LMs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .decoder_bundle import SUPPORT_FILES, write_support_files
from .decoder_quantize import quantize_decoder, session_config
from .generative_export import Layout, cpu_session, load_fp32, run_generative_export
from .options import ChecksConfig, DecoderParityConfig, DecoderQuantConfig
from .result import ExportResult
from .seq2seq_families import Seq2SeqSpec, describe, language_codes
from .seq2seq_generate import TASK
from .step import step

# transformers.js's file names per dtype: encoder, merged decoder
FILES = {dtype: {"encoder": f"onnx/encoder_model{suffix}.onnx", "decoder": f"onnx/decoder_model_merged{suffix}.onnx"}
         for dtype, suffix in (("fp32", ""), ("q8", "_quantized"), ("q4", "_q4"))}
PARTS = ("encoder", "with_past", "cross")  # cross (projections) after with_past: it takes its opset


def _graphs(model: Any, spec: Seq2SeqSpec, scratch: Path, dtype: str, quantization: DecoderQuantConfig | None = None
            ) -> dict[str, Any]:
    """Write ``dtype``'s encoder and merged decoder into ``scratch`` (fp32: the encoder and the with-past decoder
    exported from ``model``, the cross projections written from its weights; else: each fp32 part quantised, then
    merged); return what quantisation did per part."""
    import onnx

    from .seq2seq_graph import cross_graph, export_graph, merge_decoders

    parts = scratch / "parts"
    parts.mkdir(exist_ok=True)
    done: dict[str, Any] = {}
    for kind in PARTS:
        fp32 = parts / f"fp32_{kind}.onnx"
        if quantization is not None:
            with step(f"quantising the {kind.replace('_', '-')} graph ({quantization.quantize})", "try another quantisation"):
                done[kind] = quantize_decoder(fp32, parts / f"{dtype}_{kind}.onnx", quantization.quantize,
                                              quantization.int8_method)
        elif kind == "cross":
            opset = next(o.version for o in onnx.load(str(parts / "fp32_with_past.onnx")).opset_import if not o.domain)
            cross_graph(model, spec, fp32, opset)
        else:
            with step(f"exporting the {kind.replace('_', '-')} graph", "check the torch and transformers versions"):
                export_graph(model, spec, kind, fp32)
    shutil.copyfile(parts / f"{dtype}_encoder.onnx", scratch / FILES[dtype]["encoder"])
    with step("merging the decoder graphs", "report it with the model's config"):
        merge_decoders(parts / f"{dtype}_cross.onnx", parts / f"{dtype}_with_past.onnx", spec,
                       scratch / FILES[dtype]["decoder"])
    return done


def _sessions(scratch: Path, dtype: str, config: dict[str, str] | None = None) -> tuple[Any, Any]:
    """onnxruntime sessions of ``dtype``'s encoder and merged decoder."""
    encoder, decoder = (cpu_session(scratch / FILES[dtype][part], config) for part in ("encoder", "decoder"))
    return encoder, decoder


class Seq2SeqExporter:
    """The encoder-decoder family for `run_generative_export`: an encoder and a merged decoder per dtype."""

    kind = "seq2seq"
    scratch_name = "export-seq2seq"
    task = TASK

    def load(self, path: Path) -> tuple[Any, Seq2SeqSpec]:
        """The model's export layout (unsupported families refused before the weights load) and its fp32 model."""
        from transformers import AutoModelForSeq2SeqLM

        return load_fp32(path, AutoModelForSeq2SeqLM, describe)

    def support(self, scratch: Path, spec: Seq2SeqSpec, dtype: str, source: Path) -> dict[str, Any]:
        """The support files (config, generation config, tokenizer) written into ``scratch``; the tokenizer's padding
        and stop ids, the model's language codes and the decoder's first tokens (start, and the forced BOS when set)."""
        tokens = write_support_files(source, scratch, dtype)
        added = json.loads((scratch / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens") or []
        tokens["languages"] = language_codes(spec.family, {t["content"]: int(t["id"]) for t in added})
        generation = json.loads((scratch / "generation_config.json").read_text(encoding="utf-8"))
        forced = generation.get("forced_bos_token_id")
        tokens["forced_bos_token_id"] = forced if isinstance(forced, int) else None
        tokens["prefix"] = [spec.decoder_start_token_id] + ([forced] if isinstance(forced, int) else [])
        return tokens

    def export_graphs(self, model: Any, spec: Seq2SeqSpec, scratch: Path) -> None:
        """The fp32 encoder and merged decoder (see `_graphs`)."""
        _graphs(model, spec, scratch, "fp32")

    def check(self, model: Any, spec: Seq2SeqSpec, scratch: Path, quantization: DecoderQuantConfig,
              rows: list[list[int]], prompts: list[list[int]], tokens: dict[str, Any], checks: ChecksConfig,
              gate: DecoderParityConfig) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, str]]]:
        """Check the fp32 graphs (gated), quantise and check the quantised ones; return parity, quantisation, files.
        Greedy decoding starts from the first two check texts whole (``prompts`` are the decoder-only LMs')."""
        from .decoder_parity import gate_fp32, gate_quantized
        from .seq2seq_parity import check_batch, greedy_parity, logits_parity, quality

        prefix = tokens["prefix"]
        ids, mask, targets = check_batch(rows, prefix, tokens["pad_id"])
        encoder, decoder = _sessions(scratch, "fp32")
        with step("comparing the fp32 graphs with PyTorch", "report it with the model's config"):
            logits = logits_parity(model, encoder, decoder, spec, ids, mask, targets, gate.rtol)
            greedy = greedy_parity(model, encoder, decoder, spec, rows[:2], prefix, tokens["eos_ids"], tokens["pad_id"],
                                   gate.new_tokens, gate.atol)
        parity = {"fp32": gate_fp32(logits, greedy, gate.atol, checks.force)}
        files, qinfo = {"fp32": FILES["fp32"]}, {"name": quantization.quantize}
        if quantization.quantize != "none":
            dtype = quantization.dtype
            parts = _graphs(model, spec, scratch, dtype, quantization)
            qinfo = {**qinfo, "parts": parts, "session_config": session_config(parts["encoder"])}
            encoder, decoder = _sessions(scratch, dtype, qinfo["session_config"])
            q = quality(model, encoder, decoder, spec, ids, mask, targets)
            parity[dtype] = gate_quantized(q, quantization.quantize, checks.min_agreement, checks.force)
            files[dtype] = FILES[dtype]
        return parity, qinfo, files

    def layout(self, spec: Seq2SeqSpec, scratch: Path, files: dict[str, dict[str, str]], default: str,
               tokens: dict[str, Any], sessions: dict[str, dict[str, str]]) -> Layout:
        """The graphs and support files, each part's size per dtype, the default decoder and the seq2seq manifest
        fields."""
        sizes = {dtype: {part: (scratch / f).stat().st_size for part, f in d.items()} for dtype, d in files.items()}
        io = spec.io()
        manifest = {
            "model": files[default]["decoder"], "runtime": "onnxruntime", "head": {"task": TASK, "output": "logits"},
            "inputs": io["decoder"][0], "outputs": io["decoder"][1],
            "tokenizer": {"file": "tokenizer.json", "pad_id": tokens["pad_id"], "pad_token": tokens["pad_token"],
                          "max_length": spec.max_length, "padding_side": "right"},
            "seq2seq": {"spec": spec.as_dict(), "dtypes": files, "default_dtype": default,
                        "eos_token_ids": tokens["eos_ids"], "forced_bos_token_id": tokens["forced_bos_token_id"],
                        "languages": tokens["languages"], "session_config": sessions,
                        "encoder": {"inputs": io["encoder"][0], "outputs": io["encoder"][1]},
                        "layout": "optimum/transformers.js encoder-decoder (encoder_model + decoder_model_merged)"}}
        return Layout(names=[*(f for dtype in files.values() for f in dtype.values()), *SUPPORT_FILES], sizes=sizes,
                      model_file=files[default]["decoder"], manifest=manifest)


SEQ2SEQ = Seq2SeqExporter()


def export_seq2seq(model_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str], *, quantize: str = "none",
                   int8_method: str = "nbits", texts: Sequence[str] | None = None, new_tokens: int = 16,
                   atol: float = 1e-4, rtol: float = 1e-4, min_agreement: float | None = None, force: bool = False,
                   overwrite: bool = False, cache_dir: str | os.PathLike[str] | None = None) -> ExportResult:
    """Export an encoder-decoder to ONNX with a KV cache: ``onnx/encoder_model.onnx`` and
    ``onnx/decoder_model_merged.onnx`` (fp32), plus ``*_quantized.onnx`` for int8 or ``*_q4.onnx`` for int4, with the
    config, generation config and tokenizer files and a manifest.

    The fp32 graphs must match PyTorch (encoder alone, decoder alone with and without the cache, both together:
    allclose with ``atol``/``rtol``) and decode greedily token for token as transformers' generate for ``new_tokens``
    tokens; a quantised pair's top-1 agreement and perplexity ratio are measured and recorded (gated by
    ``min_agreement`` when given). Nothing is written unless the checks pass (or ``force``).
    """
    quantization = DecoderQuantConfig(quantize=quantize, int8_method=int8_method)
    gate = DecoderParityConfig(new_tokens=new_tokens, atol=atol, rtol=rtol)
    return run_seq2seq_export(model_dir, output_dir, quantization, ChecksConfig(min_agreement=min_agreement, force=force),
                              gate, texts=texts, overwrite=overwrite, cache_dir=cache_dir)


def run_seq2seq_export(model_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                       quantization: DecoderQuantConfig, checks: ChecksConfig, gate: DecoderParityConfig, *,
                       texts: Sequence[str] | None, overwrite: bool, cache_dir: str | os.PathLike[str] | None
                       ) -> ExportResult:
    """`export_seq2seq` with its options as configs (export() builds them from its own keywords)."""
    return run_generative_export(SEQ2SEQ, model_dir, output_dir, quantization, checks, gate, texts=texts,
                                 overwrite=overwrite, cache_dir=cache_dir)
