"""The export function of the graph formats (onnx, tensorrt): load the model, its head and tokenizer; build the graph
(`graph`), check it against PyTorch (`parity`), time it, build a TensorRT engine from it where asked; hand the writer
a `Payload`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcompress.artifacts import sha256_file

from .graph import build
from .step import step
from .options import EncoderOptions
from .texts import batches, languages_in, sentences, take, text_sources
from .writer import Payload, copier, measured_on


@dataclass
class Prepared:
    """The model to export: its source, configuration and head, the target-language text, and the tokenizer's settings."""

    source: Any
    config: Any
    spec: Any
    sources: dict[str, Any]
    pad_id: int
    pad_token: str
    max_length: int
    prefix: str  # the default prompt's text: what parity, calibration and timing text is prefixed with
    tokenizer_json: dict[str, Any]
    prompts: dict[str, str] | None = None  # sentence embeddings: prompt name -> text (E5: query, document)
    default_prompt: str | None = None


def prepare(model: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None,
            texts: Mapping[str, Any] | list[str] | None, langs: list[str], *, task: str | None, pooling: str | None,
            normalize: bool | None, prefix: str | None, max_length: int | None) -> Prepared:
    """Resolve MODEL, detect its head, find the target-language text, and fix the tokenizer's padding, length and
    prompts (the model's own prefix for sentence embeddings only; other heads get ``prefix`` alone, default none)."""
    from mlcompress.sources import load_config, load_tokenizer, resolve_model

    from .heads import detect_head
    from .prompts import export_prompts

    source = resolve_model(model, cache_dir)  # transformers' own verbosity is the caller's (the CLI turns it down)
    config = load_config(source.path)
    spec = detect_head(config, source.path, task=task, pooling=pooling, normalize=normalize)
    sources = text_sources(texts, source.path, langs)
    hf_tok = load_tokenizer(source.path)
    pad_token = hf_tok.pad_token or hf_tok.eos_token or hf_tok.unk_token
    pad_id = hf_tok.convert_tokens_to_ids(pad_token)
    offset = (config.pad_token_id or 0) + 1 if config.model_type in ("xlm-roberta", "roberta", "camembert") else 0
    limit = min(int(getattr(config, "max_position_embeddings", 512)) - offset, 512 if hf_tok.model_max_length > 100_000 else hf_tok.model_max_length)
    max_length = min(max_length or limit, limit)
    prompts, default = export_prompts(source.path, str(model), spec.task, prefix)
    prefix = prompts.get(default, "") if spec.task == "sentence-embedding" and default else (prefix or "")
    tok_json = json.loads(hf_tok.backend_tokenizer.to_str())
    tok_json["padding"] = tok_json["truncation"] = None
    return Prepared(source, config, spec, sources, pad_id, pad_token, max_length, prefix, tok_json, prompts, default)


def export_graph(p: Prepared, scratch: Path, options: EncoderOptions, langs: list[str]) -> Payload:
    """Export, optimise, quantise, check and time one graph in ``scratch`` (and build its engine for tensorrt)."""
    from .heads import load_for_export, wrap
    from .runtime import make_tokenizer

    checks, outputs, quantize = options.checks, options.outputs, options.quantization.name
    (scratch / "tokenizer.json").write_text(json.dumps(p.tokenizer_json, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    tok = make_tokenizer(scratch / "tokenizer.json", p.pad_id, p.pad_token, p.max_length)
    n_langs = languages_in(p.sources)
    feeds = batches(tok, take(p.sources, max(1, checks.parity_texts // n_langs), checks.calibration_texts // n_langs), p.prefix, 16)
    module = wrap(load_for_export(p.source.path, p.spec), p.spec)
    final, fused, qinfo = build(module, p.spec, p.config, scratch, options, tok, p.prefix, p.sources, p.pad_id)
    with step("loading the exported graph in ONNX Runtime", "update onnxruntime, or try another --quantize"):
        session = _session(final, qinfo.get("session_config"))
    from .parity import check

    parity = check(session, module, p.spec.task, p.spec.output_name, feeds, quantize, checks.min_cosine,
                   checks.min_agreement, checks.force)
    latency, timed = _latency(session, p, tok) if outputs.measure_latency else (None, None)
    if qinfo.get("accuracy_control"):
        _control_cost(qinfo["accuracy_control"], scratch / "candidate-000.onnx", final, p.spec.output_name, timed)
    model_file = final.name
    if outputs.format == "tensorrt":
        from .tensorrt import build_engine

        model_file, qinfo = build_engine(final, scratch / "model.engine", quantize).name, {**qinfo, "tensorrt": True}
    forms = _edge_forms(final, session, p, scratch, tok, options, qinfo.get("session_config"))
    if outputs.format == "onnx":
        model_file = _client_layout(final, p, scratch, quantize)
    result = {"format": outputs.format, "quantize": quantize, "task": p.spec.task, "model_file": model_file,
              "parity": parity, "latency_ms": latency, "fused_operators": fused, "quantization": qinfo}
    return _payload(p, result, scratch, _out_dim(module, feeds[0]), outputs.bundle, langs, checks.force, forms)


def _edge_forms(final: Path, session: Any, p: Prepared, scratch: Path, tok: Any, options: EncoderOptions,
                session_config: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The bundle's other forms of the model, by manifest key: ``ort`` (--ort: model.ort and its operator config) and
    ``tokenizer_in_graph`` (--tokenizer-in-graph: strings in, checked against the two-file path, ``session`` of
    ``final`` with tokenizer.json, on target text)."""
    forms: dict[str, dict[str, Any]] = {}
    if options.outputs.ort:
        from .mobile import convert

        forms["ort"] = convert(final, scratch)
    if options.outputs.tokenizer_in_graph:
        from mlcompress.errors import GateError

        from .tokenizer_graph import TEXT_MODEL, text_model_parity, write_text_model

        with step("building the model with its tokenizer inside (onnxruntime-extensions)", "export without --tokenizer-in-graph"):
            entry = write_text_model(final, scratch / TEXT_MODEL, p.tokenizer_json, p.prefix, p.max_length, p.pad_id)
        texts = sentences(take(p.sources, max(1, options.checks.parity_texts), 0))
        entry["parity"] = text_model_parity(scratch / TEXT_MODEL, session, tok, p.tokenizer_json, p.prefix, p.max_length,
                                            p.pad_id, texts, session_config=session_config)
        if not entry["parity"]["passed"] and not options.checks.force:
            raise GateError(f"the model with its tokenizer inside differs from tokenizer.json + model: "
                            f"{entry['parity']['token_id_mismatches']} of {len(texts)} texts got other token ids "
                            f"(e.g. {entry['parity']['mismatched'][:2]}), largest output difference "
                            f"{entry['parity']['max_abs_diff']:.2e}", "report it; --force writes the bundle anyway")
        forms["tokenizer_in_graph"] = entry
    return forms


def _client_layout(final: Path, p: Prepared, scratch: Path, quantize: str) -> str:
    """Move the graph to its transformers.js name under onnx/ and write the client files (config.json,
    tokenizer_config.json, special_tokens_map.json) beside it in ``scratch``; return the graph's new name."""
    from .layout import graph_file, write_client_files

    name = graph_file(quantize)
    (scratch / name).parent.mkdir(parents=True, exist_ok=True)
    final.replace(scratch / name)
    write_client_files(p.source.path, scratch, p.tokenizer_json, p.pad_token, p.max_length, quantize)
    return name


def _session(path: Path, config: dict[str, str] | None = None) -> Any:
    """An onnxruntime CPU session for the graph at ``path`` (ORT's own log quiet below errors), with the session
    ``config`` entries its quantisation asks for."""
    import onnxruntime as ort

    from .runtime import session_options

    return ort.InferenceSession(str(path), session_options(config=config), providers=["CPUExecutionProvider"])


def _latency(session: Any, p: Prepared, tok: Any) -> tuple[dict[str, Any], tuple[dict[str, Any], dict[str, Any]]]:
    """Batch-1 and batch-32 latency on sentence-length target text, with what was timed; and the two timed inputs."""
    from .latency import session_latency
    from .runtime import tokenize

    texts = sentences(take(p.sources, 32, 0))[:32]  # sentence-length inputs, as users embed them
    texts = (texts * (32 // max(1, len(texts)) + 1))[:32]
    feeds_b1, feeds_b32 = tokenize(tok, texts[:1], p.prefix), tokenize(tok, texts, p.prefix)
    latency = session_latency(session, p.spec.output_name, feeds_b1, feeds_b32)
    # the figures depend on text length: say what was timed
    latency["tokens_batch_1"] = int(feeds_b1["input_ids"].shape[1])
    latency["padded_length_batch_32"] = int(feeds_b32["input_ids"].shape[1])
    return latency, (feeds_b1, feeds_b32)


def _control_cost(control: dict[str, Any], plain: Path, final: Path, output_name: str,
                  timed: tuple[dict[str, Any], dict[str, Any]] | None) -> None:
    """What --max-drop's float operators cost against the plain graph (the search's first trial), timed the same way."""
    if timed is not None and plain.is_file():
        from .latency import session_latency

        control["plain_latency_ms"] = session_latency(_session(plain), output_name, *timed)
    control["plain_bytes"] = (plain if plain.is_file() else final).stat().st_size
    control["bytes"] = final.stat().st_size


def _out_dim(module: Any, feeds: dict[str, Any]) -> int:
    from .parity import torch_outputs

    return int(torch_outputs(module, [{k: v[:1] for k, v in feeds.items()}])[0].shape[-1])


def _payload(p: Prepared, result: dict[str, Any], scratch: Path, out_dim: int, bundle: bool, langs: list[str],
             force: bool, forms: dict[str, dict[str, Any]] | None = None) -> Payload:
    """The provenance, the bundle manifest's fields (bundles only) and the files the writer copies from ``scratch``
    (an ONNX export's client files too; with ``forms``, the other forms' files: `--ort`'s model.ort and its config,
    `--tokenizer-in-graph`'s model)."""
    from .layout import CLIENT_FILES

    model_file, qinfo, task = result["model_file"], result["quantization"], p.spec.task
    forms = forms or {}
    mobile = forms.get("ort")
    extra = [entry[key] for entry in forms.values() for key in ("model", "operators_config") if key in entry]
    copied = [model_file, "tokenizer.json", *(CLIENT_FILES if result["format"] == "onnx" else []), *extra]
    params = {"format": result["format"], "quantize": result["quantize"], "bundle": bundle,
              "languages": langs or sorted(k for k in p.sources if k != "given"), "task": task, "prefix": p.prefix,
              "prompts": p.prompts or None, "max_length": p.max_length, "quantization": qinfo, "force": force}
    weights = sorted(p.source.path.glob("*.safetensors"))
    src_entry = {**p.source.describe(), "sha256": sha256_file(weights[0]) if weights else None}
    metrics = {"parity": result["parity"], "latency_ms": result["latency_ms"], "fused_operators": result["fused_operators"],
               "model_bytes": (scratch / model_file).stat().st_size}
    if mobile:
        params["ort"] = {k: v for k, v in mobile.items() if k != "operators"}
        metrics["ort_model_bytes"] = (scratch / mobile["model"]).stat().st_size
    if "tokenizer_in_graph" in forms:
        params["tokenizer_in_graph"] = True
        metrics["tokenizer_in_graph"] = {"parity": forms["tokenizer_in_graph"]["parity"],
                                         "model_bytes": (scratch / forms["tokenizer_in_graph"]["model"]).stat().st_size}
    manifest = {**_manifest(p, result, out_dim, src_entry, params["languages"]), **forms} if bundle else None
    return Payload(save=copier(scratch, copied), params=params, inputs=[src_entry], metrics=metrics,
                   result=result, manifest=manifest, files=[*copied, "mlcompress.json"])


def _manifest(p: Prepared, result: dict[str, Any], out_dim: int, src_entry: dict[str, Any], languages: list[str]
              ) -> dict[str, Any]:
    """A bundle manifest's fields: the model, its head, inputs and outputs (sentence embeddings: ``last_hidden_state``
    too), tokenizer, prompts (sentence embeddings), the client layout's dtype (ONNX), and what was measured."""
    from .layout import CLIENT_FILES, DTYPE
    from .outputs import HIDDEN_STATE

    task = p.spec.task
    pooled = task in ("sentence-embedding", "sequence-classification")
    shape = ["batch", out_dim] if pooled else ["batch", "sequence", out_dim]
    outputs = [{"name": p.spec.output_name, "dtype": "float32", "shape": shape}]
    if task == "sentence-embedding":
        outputs.append({"name": HIDDEN_STATE, "dtype": "float32", "shape": ["batch", "sequence", int(p.config.hidden_size)]})
    manifest = {
        "model": result["model_file"], "runtime": "onnxruntime" if result["format"] == "onnx" else "tensorrt",
        "head": p.spec.as_dict(),
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in ("input_ids", "attention_mask")],
        "outputs": outputs,
        "tokenizer": {"file": "tokenizer.json", "pad_id": int(p.pad_id), "pad_token": p.pad_token,
                      "max_length": p.max_length, "prefix": p.prefix},
        "languages": languages, "quantization": {"name": result["quantize"], **result["quantization"]},
        "source": src_entry, "parity": result["parity"], "latency_ms": result["latency_ms"], "measured_on": measured_on(),
    }
    if task == "sentence-embedding":
        manifest.update(prompts=p.prompts or {}, default_prompt_name=p.default_prompt)
    if result["format"] == "onnx":
        manifest["layout"] = {"graphs": "onnx/", "dtype": DTYPE[result["quantize"]], "client_files": list(CLIENT_FILES)}
    return manifest
