"""`export_decoder`: a decoder-only LM (Gemma 3, Qwen 2, Llama) to ONNX with a KV cache, in the optimum /
transformers.js layout, checked against PyTorch before anything is written.

    from mlcompress.export import export_decoder
    export_decoder("gemma-3-270m-trimmed/", "gemma-onnx/", quantize="int4")
    # gemma-onnx/onnx/model.onnx, onnx/model_q4.onnx, config.json, generation_config.json, tokenizer.json,
    # tokenizer_config.json, mlcompress.json, manifest.json

Steps: describe the family (`decoder_families`), export the fp32 graph (`decoder_graph`), check it (`decoder_parity`),
quantise it (`decoder_quantize`) and check that too, then write the folder atomically (`writer`) with a manifest of
sha256 per file (`decoder_bundle`, `bundle`), which `generate.load` / `runtime.load` verify. This module is the
family's `DecoderExporter`; the loop around it (load, scratch folder, record, write) is `generative_export`'s, shared
with the encoder-decoders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .decoder_bundle import SUPPORT_FILES, manifest_fields, write_support_files
from .decoder_families import DecoderSpec, describe
from .decoder_quantize import FILE, quantize_decoder, session_config
from .generative_export import Layout, cpu_session, export_params, load_fp32, run_generative_export
from .options import ChecksConfig, DecoderParityConfig, DecoderQuantConfig
from .result import ExportResult
from .step import step


class DecoderExporter:
    """The decoder-only family for `run_generative_export`: one graph per dtype (``onnx/model*.onnx``)."""

    kind = "decoder"
    scratch_name = "export-decoder"
    task = "text-generation"

    def load(self, path: Path) -> tuple[Any, DecoderSpec]:
        """The model's export layout (unsupported families refused before the weights load) and its fp32 model."""
        from transformers import AutoModelForCausalLM

        return load_fp32(path, AutoModelForCausalLM, describe)

    def support(self, scratch: Path, spec: DecoderSpec, dtype: str, source: Path) -> dict[str, Any]:
        """The support files written into ``scratch``; the tokenizer's padding and stop ids."""
        return write_support_files(source, scratch, dtype)

    def export_graphs(self, model: Any, spec: DecoderSpec, scratch: Path) -> None:
        """The fp32 graph with its KV cache, at ``onnx/model.onnx``."""
        from .decoder_graph import export_graph

        with step("exporting the decoder graph with its KV cache", "check the torch and transformers versions"):
            export_graph(model, spec, scratch / FILE["fp32"])

    def check(self, model: Any, spec: DecoderSpec, scratch: Path, quantization: DecoderQuantConfig,
              rows: list[list[int]], prompts: list[list[int]], tokens: dict[str, Any], checks: ChecksConfig,
              gate: DecoderParityConfig) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
        """Check the fp32 graph (gated), quantise and check the quantised one; return parity, quantisation, files."""
        from .decoder_parity import gate_fp32, gate_quantized, greedy_parity, logits_parity, quality
        from .decoding import DecoderSession

        quantize, pad = quantization.quantize, tokens["pad_id"]
        runner = DecoderSession(cpu_session(scratch / FILE["fp32"]), spec)
        with step("comparing the fp32 graph with PyTorch", "report it with the model's config"):
            logits = logits_parity(model, runner, rows, pad, gate.rtol)
            greedy = greedy_parity(model, runner, prompts, pad, tokens["eos_ids"], gate.new_tokens, gate.atol)
        parity = {"fp32": gate_fp32(logits, greedy, gate.atol, checks.force)}
        files, qinfo = {"fp32": FILE["fp32"]}, {"name": quantize}
        if quantize != "none":
            dtype = quantization.dtype
            with step(f"quantising the decoder ({quantize})", "try another quantisation"):
                info = quantize_decoder(scratch / FILE["fp32"], scratch / FILE[dtype], quantize,
                                        quantization.int8_method)
            qinfo = {**qinfo, **info, "session_config": session_config(info)}
            quantized = DecoderSession(cpu_session(scratch / FILE[dtype], qinfo["session_config"]), spec)
            q = quality(model, quantized, rows, pad)
            parity[dtype] = gate_quantized(q, quantize, checks.min_agreement, checks.force)
            files[dtype] = FILE[dtype]
        return parity, qinfo, files

    def layout(self, spec: DecoderSpec, scratch: Path, files: dict[str, str], default: str, tokens: dict[str, Any],
               sessions: dict[str, dict[str, str]]) -> Layout:
        """The graphs and support files, each graph's size, the default graph and the decoder's manifest fields."""
        sizes = {dtype: (scratch / f).stat().st_size for dtype, f in files.items()}
        return Layout(names=[*files.values(), *SUPPORT_FILES], sizes=sizes, model_file=files[default],
                      manifest=manifest_fields(spec, files, default, tokens, sessions, {}))


DECODER = DecoderExporter()


def _params(spec: DecoderSpec, quantization: DecoderQuantConfig, checks: ChecksConfig, gate: DecoderParityConfig
            ) -> dict[str, Any]:
    """The export's parameters, as mlcompress.json records them (`export_params` of the decoder kind)."""
    return export_params(DECODER.kind, spec, quantization, checks, gate)


def export_decoder(model_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str], *, quantize: str = "none",
                   int8_method: str = "nbits", texts: Sequence[str] | None = None, new_tokens: int = 24,
                   atol: float = 1e-4, rtol: float = 1e-4, min_agreement: float | None = None, force: bool = False,
                   overwrite: bool = False, cache_dir: str | os.PathLike[str] | None = None) -> ExportResult:
    """Export a decoder-only causal LM to ONNX with a KV cache (fp32 ``onnx/model.onnx``, plus ``model_quantized.onnx``
    for int8 or ``model_q4.onnx`` for int4) with its config, generation config and tokenizer files and a manifest.

    The fp32 graph's logits (with and without the cache) must be allclose to PyTorch's (``atol``, ``rtol``), and it
    must decode greedily token for token as transformers' generate for ``new_tokens`` tokens; a quantised graph's
    top-1 agreement and perplexity ratio are measured and recorded (gated by ``min_agreement`` when given). Nothing
    is written unless the checks pass (or ``force``). ``texts``: the check text (default: a few sentences in four
    languages). ``int8_method``: see `decoder_quantize` (default MatMulNBits 8-bit, the most accurate measured).
    """
    quantization = DecoderQuantConfig(quantize=quantize, int8_method=int8_method)
    gate = DecoderParityConfig(new_tokens=new_tokens, atol=atol, rtol=rtol)
    return run_decoder_export(model_dir, output_dir, quantization, ChecksConfig(min_agreement=min_agreement, force=force),
                              gate, texts=texts, overwrite=overwrite, cache_dir=cache_dir)


def run_decoder_export(model_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                       quantization: DecoderQuantConfig, checks: ChecksConfig, gate: DecoderParityConfig, *,
                       texts: Sequence[str] | None, overwrite: bool, cache_dir: str | os.PathLike[str] | None
                       ) -> ExportResult:
    """`export_decoder` with its options as configs (export() builds them from its own keywords): the scheme, the
    checks (``min_agreement``, ``force``) and the fp32 gate."""
    return run_generative_export(DECODER, model_dir, output_dir, quantization, checks, gate, texts=texts,
                                 overwrite=overwrite, cache_dir=cache_dir)
