"""The layout of an ONNX export that other clients load as it is (transformers.js, FastEmbed, optimum): the graph
under ``onnx/`` with the transformers.js name of its dtype (the names the decoder export uses), ``config.json`` with
``model_type`` and ``transformers.js_config`` naming that dtype, ``tokenizer_config.json`` with ``model_max_length``,
and ``special_tokens_map.json``, beside the bundle's ``tokenizer.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlcompress.errors import ModelSourceError

from .decoder_quantize import FILE

# encoder quantisation -> transformers.js dtype (its file: FILE, else onnx/model_<dtype>.onnx as transformers.js names it)
DTYPE = {"none": "fp32", "fp16": "fp16", "int8-dynamic": "q8", "int8-static": "q8", "int8-weights": "q8", "int4": "q4",
         "int4-weights": "q4"}
CLIENT_FILES = ["config.json", "tokenizer_config.json", "special_tokens_map.json"]
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_DROPPED = ("is_local", "local_files_only", "name_or_path", "auto_map")  # machine-local or code-loading entries


def graph_file(quantize: str) -> str:
    """Where the graph of an export quantised as ``quantize`` goes: onnx/model.onnx (fp32), onnx/model_quantized.onnx
    (int8: transformers.js's q8), onnx/model_q4.onnx (int4), onnx/model_fp16.onnx."""
    dtype = DTYPE[quantize]
    return FILE.get(dtype, f"onnx/model_{dtype}.onnx")


def _read(path: Path) -> dict[str, Any]:
    """A JSON object file of the source ({} when absent); a corrupt one is a clear error."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"{path} is not valid JSON ({exc})", "restore the file, or re-save the model") from exc
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _token_text(value: Any) -> str | None:
    """A special token's text, whether written as a string or as an AddedToken object."""
    value = value.get("content") if isinstance(value, dict) else value
    return value if isinstance(value, str) else None


def tokenizer_config(source: dict[str, Any], pad_token: str, max_length: int) -> dict[str, Any]:
    """The source's tokenizer_config.json for the bundle: special tokens as plain strings (FastEmbed reads the pad
    token from there), the bundle's ``max_length`` as ``model_max_length``, machine-local entries left out."""
    config = {k: v for k, v in source.items() if k not in _DROPPED}
    for key in SPECIAL_KEYS:
        if key in config:
            config[key] = _token_text(config[key])
    config["pad_token"] = config.get("pad_token") or pad_token
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    config["model_max_length"] = int(max_length)
    return config


def special_tokens_map(config: dict[str, Any], tokenizer_json: dict[str, Any]) -> dict[str, Any]:
    """The named special tokens, each as tokenizer.json declares it (content, lstrip, rstrip, normalized, single_word),
    so that a client adding them again (FastEmbed) changes nothing."""
    added = {t.get("content"): t for t in tokenizer_json.get("added_tokens") or [] if isinstance(t, dict)}
    keys = ("content", "lstrip", "rstrip", "normalized", "single_word")
    out: dict[str, Any] = {}
    for key in SPECIAL_KEYS:
        text = config.get(key)
        if isinstance(text, str):
            out[key] = {k: added[text][k] for k in keys if k in added[text]} if text in added else text
    return out


def write_client_files(source: Path, target: Path, tokenizer_json: dict[str, Any], pad_token: str, max_length: int,
                       quantize: str) -> list[str]:
    """Write config.json, tokenizer_config.json and special_tokens_map.json of the model in ``source`` into
    ``target``, config.json's ``transformers.js_config`` naming the dtype of ``quantize``; return their names."""
    config = _read(source / "config.json")
    config["transformers.js_config"] = {**(config.get("transformers.js_config") or {}), "dtype": DTYPE[quantize]}
    _write(target / "config.json", config)
    tok_config = tokenizer_config(_read(source / "tokenizer_config.json"), pad_token, max_length)
    _write(target / "tokenizer_config.json", tok_config)
    _write(target / "special_tokens_map.json", special_tokens_map(tok_config, tokenizer_json))
    return list(CLIENT_FILES)
