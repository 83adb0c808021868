"""One export loop for the generative families (decoder-only LMs in `decoder_export`, encoder-decoders in
`seq2seq_export`), after optimum's exporters: one exporter object per family, one loop for all.

A family's `GenerativeExporter` says what differs (how its model loads, its support files, its graphs, their checks and
its manifest fields); `run_generative_export` is the rest, written once: refuse an occupied output, resolve and load the
model, export and check in a scratch folder, record the parameters (mlcompress.json) and hand the `writer` one
`Payload`. Also here, for both families: the check text's tokenisation and the CPU onnxruntime session.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mlcompress.artifacts import check_output, scratch_dir, sha256_file
from mlcompress.errors import InputError

from .decoder_quantize import DTYPE
from .options import ChecksConfig, DecoderParityConfig, DecoderQuantConfig
from .result import ExportResult
from .step import step
from .writer import Payload, copier, measured_on, write

# Default check text (used when none is given): short, several languages and scripts.
DEFAULT_TEXTS = ("The weather in Berlin is mild today, and the trains run on time.",
                 "Die Bundesregierung hat heute ein neues Gesetz beschlossen.",
                 "La ville de Lyon est connue pour sa cuisine et ses traboules.",
                 "Ο καιρός σήμερα είναι ζεστός και ηλιόλουστος.")
CHECK_TOKENS = 48  # the most tokens of one check text


@dataclass
class Layout:
    """A family's share of the bundle: the files to copy from the scratch folder, their sizes per dtype, the graph a
    runtime loads by default and the family's manifest fields (the loop appends source, quantisation, parity)."""

    names: list[str]
    sizes: dict[str, Any]
    model_file: str
    manifest: dict[str, Any]


class GenerativeExporter(Protocol):
    """What one generative family tells the export loop; ``spec`` is the family's export layout (``.family`` read)."""

    kind: str  # mlcompress.json's "kind": "decoder" or "seq2seq"
    scratch_name: str  # the scratch folder's name
    task: str  # the result's task

    def load(self, path: Path) -> tuple[Any, Any]:
        """The fp32 PyTorch model and its spec (an unsupported family refused before the weights load)."""

    def support(self, scratch: Path, spec: Any, dtype: str, source: Path) -> dict[str, Any]:
        """Write the config, generation config and tokenizer files into ``scratch``; return the token facts."""

    def export_graphs(self, model: Any, spec: Any, scratch: Path) -> None:
        """Export the fp32 graphs into ``scratch``."""

    def check(self, model: Any, spec: Any, scratch: Path, quantization: DecoderQuantConfig, rows: list[list[int]],
              prompts: list[list[int]], tokens: dict[str, Any], checks: ChecksConfig, gate: DecoderParityConfig
              ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Check the fp32 graphs (gated), quantise and check; return parity, quantisation and the files per dtype."""

    def layout(self, spec: Any, scratch: Path, files: dict[str, Any], default: str, tokens: dict[str, Any],
               sessions: dict[str, dict[str, str]]) -> Layout:
        """The family's files, sizes, default graph and manifest fields."""


def load_fp32(path: Path, auto_class: Any, describe: Callable[[Any], Any]) -> tuple[Any, Any]:
    """The fp32 PyTorch model at ``path`` (``auto_class``: transformers' auto class of the family) and its spec
    (``describe`` of its config: an unsupported family is refused before the weights load)."""
    import torch
    from mlcompress.sources import load_config, load_weights

    spec = describe(load_config(path))
    model = load_weights(auto_class, path, dtype=torch.float32).eval()
    return model, spec


def check_texts(texts: Sequence[str] | None, tokenizer_file: Path, max_tokens: int = CHECK_TOKENS
                ) -> tuple[list[list[int]], list[list[int]]]:
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


def cpu_session(path: Path, config: dict[str, str] | None = None) -> Any:
    """A CPU onnxruntime session of the graph at ``path`` (ORT's log quiet below errors)."""
    import onnxruntime as ort

    from .runtime import session_options

    with step(f"loading {path.name} in ONNX Runtime", "update onnxruntime"):
        return ort.InferenceSession(str(path), session_options(config=config), providers=["CPUExecutionProvider"])


def export_params(kind: str, spec: Any, quantization: DecoderQuantConfig, checks: ChecksConfig,
                  gate: DecoderParityConfig) -> dict[str, Any]:
    """The export's parameters, as mlcompress.json records them."""
    return {"format": "onnx", "kind": kind, "quantize": quantization.quantize, "family": spec.family,
            "int8_method": quantization.int8_method, "new_tokens": gate.new_tokens, "atol": gate.atol, "rtol": gate.rtol,
            "min_agreement": checks.min_agreement, "force": checks.force}


def _payload(exporter: GenerativeExporter, source: Any, spec: Any, scratch: Path, quantize: str, tokens: dict[str, Any],
             checked: tuple[dict[str, Any], dict[str, Any], dict[str, Any]], params: dict[str, Any]) -> Payload:
    """What the writer copies, records (``params``) and lists in the manifest."""
    parity, qinfo, files = checked
    default = DTYPE[quantize]
    weights = sorted(source.path.glob("*.safetensors"))
    src_entry = {**source.describe(), "sha256": sha256_file(weights[0]) if weights else None}
    sessions = {default: qinfo["session_config"]} if qinfo.get("session_config") else {}
    bundle = exporter.layout(spec, scratch, files, default, tokens, sessions)
    manifest = {**bundle.manifest, "source": src_entry, "quantization": qinfo, "parity": parity,
                "measured_on": measured_on()}
    result = {"format": "onnx", "quantize": quantize, "task": exporter.task, "model_file": bundle.model_file,
              "parity": parity, "latency_ms": None, "quantization": qinfo}
    return Payload(save=copier(scratch, bundle.names), params=params, inputs=[src_entry],
                   metrics={"parity": parity, "model_bytes": bundle.sizes}, result=result, manifest=manifest,
                   files=[*bundle.names, "mlcompress.json"])


def run_generative_export(exporter: GenerativeExporter, model_dir: str | os.PathLike[str],
                          output_dir: str | os.PathLike[str], quantization: DecoderQuantConfig, checks: ChecksConfig,
                          gate: DecoderParityConfig, *, texts: Sequence[str] | None, overwrite: bool,
                          cache_dir: str | os.PathLike[str] | None) -> ExportResult:
    """Export one generative model through its family's ``exporter``: load, export and check in a scratch folder
    (removed afterwards), then write the bundle (a folder, or a .tar.gz by ``output_dir``'s name) atomically."""
    output = Path(output_dir).expanduser().absolute()
    archive = output.name.endswith((".tar.gz", ".tgz"))
    check_output(output, overwrite)
    from mlcompress.sources import resolve_model

    source = resolve_model(model_dir, cache_dir)
    model, spec = exporter.load(source.path)
    scratch = scratch_dir(exporter.scratch_name)
    try:
        (scratch / "onnx").mkdir()
        tokens = exporter.support(scratch, spec, quantization.dtype, source.path)
        rows, prompts = check_texts(texts, scratch / "tokenizer.json")
        exporter.export_graphs(model, spec, scratch)
        checked = exporter.check(model, spec, scratch, quantization, rows, prompts, tokens, checks, gate)
        params = export_params(exporter.kind, spec, quantization, checks, gate)
        payload = _payload(exporter, source, spec, scratch, quantization.quantize, tokens, checked, params)
        return write(payload, output, overwrite=overwrite, archive=archive, scratch=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
