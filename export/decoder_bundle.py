"""The files of a decoder bundle beside its graphs, in the optimum / transformers.js layout: config.json (with a
``transformers.js_config`` naming the default dtype), generation_config.json, tokenizer.json and tokenizer_config.json
(chat template kept); and the bundle manifest's fields."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mlcompress.errors import ModelSourceError

from .chat import template_of
from .decoder_families import DecoderSpec

SUPPORT_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]


def _read(path: Path) -> dict[str, Any]:
    """A JSON object file ({} when absent); a corrupt one is a clear error."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"{path} is not valid JSON ({exc})", "restore the file, or re-save the model") from exc
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _tokenizer_json(source: Path, target: Path) -> None:
    """tokenizer.json as the model has it, or serialised from its fast tokenizer when it has none."""
    if (source / "tokenizer.json").is_file():
        shutil.copyfile(source / "tokenizer.json", target / "tokenizer.json")
        return
    from mlcompress.sources import load_tokenizer

    (target / "tokenizer.json").write_text(load_tokenizer(source).backend_tokenizer.to_str(), encoding="utf-8")


def write_support_files(source: Path, target: Path, default_dtype: str) -> dict[str, Any]:
    """Write the bundle's config, generation config and tokenizer files into ``target``; return the tokenizer's
    padding (``pad_id``, ``pad_token``) and stop ids (``eos_ids``)."""
    from tokenizers import Tokenizer

    config = _read(source / "config.json")
    config["transformers.js_config"] = {**(config.get("transformers.js_config") or {}), "dtype": default_dtype}
    _write(target / "config.json", config)
    generation = _read(source / "generation_config.json") or {
        k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
    _write(target / "generation_config.json", generation)
    _tokenizer_json(source, target)
    tok_config = _read(source / "tokenizer_config.json")
    jinja = source / "chat_template.jinja"  # transformers 5 saves the template beside tokenizer_config.json
    template = template_of(tok_config, jinja.read_text(encoding="utf-8") if jinja.is_file() else None)
    if template is not None:
        tok_config["chat_template"] = template  # where transformers.js reads it
    _write(target / "tokenizer_config.json", tok_config)
    tok = Tokenizer.from_file(str(target / "tokenizer.json"))
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    eos_ids = [int(x) for x in (eos if isinstance(eos, list) else [eos]) if isinstance(x, int)]
    pad = tok_config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    pad_id = tok.token_to_id(pad) if isinstance(pad, str) else None
    for fallback in (generation.get("pad_token_id"), config.get("pad_token_id"), *eos_ids, 0):
        if pad_id is None and isinstance(fallback, int):
            pad_id = fallback
    return {"pad_id": int(pad_id or 0), "pad_token": tok.id_to_token(int(pad_id or 0)) or "", "eos_ids": eos_ids,
            "chat_template": template is not None}


def manifest_fields(spec: DecoderSpec, files: dict[str, str], default_dtype: str, tokens: dict[str, Any],
                    session_config: dict[str, dict[str, str]], extra: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a decoder bundle: the default model, the tokenizer, the I/O and cache layout, every dtype's file
    (``files``: dtype -> path) and the session entries a dtype's graph asks for, plus ``extra`` (source,
    quantisation, parity)."""
    ins, outs = spec.io()
    return {
        "model": files[default_dtype], "runtime": "onnxruntime",
        "head": {"task": "text-generation", "output": "logits"},
        "inputs": ins, "outputs": outs,
        "tokenizer": {"file": "tokenizer.json", "pad_id": tokens["pad_id"], "pad_token": tokens["pad_token"],
                      "max_length": spec.max_length, "padding_side": "left"},
        "decoder": {"spec": spec.as_dict(), "dtypes": files, "default_dtype": default_dtype, "eos_token_ids": tokens["eos_ids"],
                    "chat_template": tokens["chat_template"], "session_config": session_config,
                    "layout": "optimum/transformers.js decoder-only"},
        **extra,
    }
