"""`export_decoder`: a decoder-only LM (Gemma 3, Qwen 2, Llama) to ONNX with a KV cache, in the optimum /
transformers.js layout, checked against PyTorch before anything is written.

    from mlcompress.export import export_decoder
    export_decoder("gemma-3-270m-trimmed/", "gemma-onnx/", quantize="int4")
    # gemma-onnx/onnx/model.onnx, onnx/model_q4.onnx, config.json, generation_config.json, tokenizer.json,
    # tokenizer_config.json, mlcompress.json, manifest.json

Steps: describe the family (`decoder_families`), export the fp32 graph (`decoder_graph`), check it (`decoder_parity`),
quantise it (`decoder_quantize`) and check that too, then write the folder atomically (`writer`) with a manifest of
sha256 per file (`decoder_bundle`, `bundle`), which `generate.load` / `runtime.load` verify.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlcompress.artifacts import check_output, scratch_dir, sha256_file
from mlcompress.errors import InputError

from .decoder_bundle import SUPPORT_FILES, manifest_fields, write_support_files
from .decoder_families import DecoderSpec, describe
from .decoder_quantize import DTYPE, FILE, quantize_decoder, session_config
from .options import ChecksConfig, DecoderParityConfig, DecoderQuantConfig
from .result import ExportResult
from .step import step
from .writer import Payload, measured_on, write

# Default check text (used when none is given): short, several languages and scripts.
DEFAULT_TEXTS = ("The weather in Berlin is mild today, and the trains run on time.",
                 "Die Bundesregierung hat heute ein neues Gesetz beschlossen.",
                 "La ville de Lyon est connue pour sa cuisine et ses traboules.",
                 "Ο καιρός σήμερα είναι ζεστός και ηλιόλουστος.")


def _load(source: Path) -> tuple[Any, DecoderSpec]:
    """The model's export layout (unsupported families refused before the weights load) and its fp32 PyTorch model."""
    import torch
    from mlcompress.sources import load_config, load_weights
    from transformers import AutoModelForCausalLM

    spec = describe(load_config(source))
    model = load_weights(AutoModelForCausalLM, source, dtype=torch.float32).eval()
    return model, spec


def _texts(texts: Sequence[str] | None, tokenizer_file: Path, max_tokens: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of the check texts (up to ``max_tokens`` each) and the greedy prompts (their first tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_padding()
    tok.no_truncation()
    lines = [t for t in (texts or DEFAULT_TEXTS) if t and t.strip()]
    if not lines:
        raise InputError("no check text: every given text is empty", "pass a few sentences, or omit texts")
    rows = [ids[:max_tokens] for ids in (tok.encode(t).ids for t in lines) if ids]
    return rows, [r[: max(2, min(12, len(r)))] for r in rows[:2]]


def _session(path: Path, config: dict[str, str] | None = None) -> Any:
    """A CPU onnxruntime session of the graph at ``path`` (ORT's log quiet below errors)."""
    import onnxruntime as ort

    from .runtime import session_options

    with step(f"loading {path.name} in ONNX Runtime", "update onnxruntime"):
        return ort.InferenceSession(str(path), session_options(config=config), providers=["CPUExecutionProvider"])


def _check(model: Any, spec: DecoderSpec, scratch: Path, quantization: DecoderQuantConfig, rows: list[list[int]],
           prompts: list[list[int]], tokens: dict[str, Any], checks: ChecksConfig, gate: DecoderParityConfig
           ) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Check the fp32 graph (gated), quantise and check the quantised one; return parity, quantisation, dtype files."""
    from .decoder_parity import gate_fp32, gate_quantized, greedy_parity, logits_parity, quality
    from .decoding import DecoderSession

    quantize = quantization.quantize
    runner = DecoderSession(_session(scratch / FILE["fp32"]), spec)
    with step("comparing the fp32 graph with PyTorch", "report it with the model's config"):
        logits = logits_parity(model, runner, rows, tokens["pad_id"], gate.rtol)
        greedy = greedy_parity(model, runner, prompts, tokens["pad_id"], tokens["eos_ids"], gate.new_tokens, gate.atol)
    parity = {"fp32": gate_fp32(logits, greedy, gate.atol, checks.force)}
    files, qinfo = {"fp32": FILE["fp32"]}, {"name": quantize}
    if quantize != "none":
        dtype = quantization.dtype
        with step(f"quantising the decoder ({quantize})", "try another quantisation"):
            info = quantize_decoder(scratch / FILE["fp32"], scratch / FILE[dtype], quantize, quantization.int8_method)
        qinfo = {**qinfo, **info, "session_config": session_config(info)}
        q = quality(model, DecoderSession(_session(scratch / FILE[dtype], qinfo["session_config"]), spec), rows, tokens["pad_id"])
        parity[dtype] = gate_quantized(q, quantize, checks.min_agreement, checks.force)
        files[dtype] = FILE[dtype]
    return parity, qinfo, files


def _params(spec: DecoderSpec, quantization: DecoderQuantConfig, checks: ChecksConfig, gate: DecoderParityConfig
            ) -> dict[str, Any]:
    """The export's parameters, as mlcompress.json records them."""
    return {"format": "onnx", "kind": "decoder", "quantize": quantization.quantize, "family": spec.family,
            "int8_method": quantization.int8_method, "new_tokens": gate.new_tokens, "atol": gate.atol, "rtol": gate.rtol,
            "min_agreement": checks.min_agreement, "force": checks.force}


def _payload(source: Any, spec: DecoderSpec, scratch: Path, quantize: str, tokens: dict[str, Any], parity: dict[str, Any],
             qinfo: dict[str, Any], files: dict[str, str], params: dict[str, Any]) -> Payload:
    """What the writer copies, records (``params``) and lists in the manifest."""
    default = DTYPE[quantize]
    names = [*files.values(), *SUPPORT_FILES]
    weights = sorted(source.path.glob("*.safetensors"))
    src_entry = {**source.describe(), "sha256": sha256_file(weights[0]) if weights else None}
    sizes = {dtype: (scratch / f).stat().st_size for dtype, f in files.items()}
    extra = {"source": src_entry, "quantization": qinfo, "parity": parity, "measured_on": measured_on()}
    sessions = {default: qinfo["session_config"]} if qinfo.get("session_config") else {}
    manifest = manifest_fields(spec, files, default, tokens, sessions, extra)

    def save(target: Path) -> None:
        for name in names:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(scratch / name, target / name)

    result = {"format": "onnx", "quantize": quantize, "task": "text-generation", "model_file": files[default],
              "parity": parity, "latency_ms": None, "quantization": qinfo}
    return Payload(save=save, params=params, inputs=[src_entry], metrics={"parity": parity, "model_bytes": sizes},
                   result=result, manifest=manifest, files=[*names, "mlcompress.json"])


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
    output = Path(output_dir).expanduser().absolute()
    archive = output.name.endswith((".tar.gz", ".tgz"))
    check_output(output, overwrite)
    from mlcompress.sources import resolve_model

    from .decoder_graph import export_graph

    source = resolve_model(model_dir, cache_dir)
    model, spec = _load(source.path)
    scratch = scratch_dir("export-decoder")
    try:
        (scratch / "onnx").mkdir()
        tokens = write_support_files(source.path, scratch, quantization.dtype)
        rows, prompts = _texts(texts, scratch / "tokenizer.json", 48)
        with step("exporting the decoder graph with its KV cache", "check the torch and transformers versions"):
            export_graph(model, spec, scratch / FILE["fp32"])
        parity, qinfo, files = _check(model, spec, scratch, quantization, rows, prompts, tokens, checks, gate)
        payload = _payload(source, spec, scratch, quantization.quantize, tokens, parity, qinfo, files,
                           _params(spec, quantization, checks, gate))
        return write(payload, output, overwrite=overwrite, archive=archive, scratch=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
