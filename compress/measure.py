"""An artifact's size figures read from its files, without loading it: vocabulary, parameters and weight bytes.

Shared by ``mlcompress inspect`` and the model card. Reads JSON, safetensors headers and ONNX initializer shapes.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from .artifacts import onnx_parameters

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def safetensors_parameters(path: str | os.PathLike[str]) -> int:
    """Elements in every tensor of a model directory's safetensors files, read from their headers."""
    total = 0
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as handle:
            (n,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                count = 1
                for d in meta.get("shape", []):
                    count *= int(d)
                total += count
    return total


def tokenizer_vocab_size(path: str | os.PathLike[str], config: dict[str, Any] | None = None) -> int | None:
    """Tokens of the folder's tokenizer.json (its highest id + 1), else the config's ``vocab_size``."""
    tok = _read_json(Path(path) / "tokenizer.json")
    if isinstance(tok, dict):
        model = tok.get("model") or {}
        vocab = model.get("vocab")
        n = len(vocab) if isinstance(vocab, (list, dict)) else 0
        ids = [t.get("id", -1) for t in tok.get("added_tokens", [])]
        return max([n - 1] + ids) + 1 if n or ids else None
    return (config or {}).get("vocab_size")


def bundle_model_files(path: Path, manifest: dict[str, Any]) -> list[Path]:
    """A bundle's model file and its external-data files (other forms of the model, ``--ort`` ..., excluded)."""
    model = path / str(manifest.get("model") or "model.onnx")
    return sorted(f for f in model.parent.glob(f"{model.name}*") if f.is_file())


def figures(path: str | os.PathLike[str]) -> dict[str, int | None]:
    """``vocabulary``, ``parameters`` and ``bytes`` (of the weight files) of a model folder or an export bundle."""
    p = Path(path)
    manifest = _read_json(p / "manifest.json")
    if isinstance(manifest, dict):
        files = bundle_model_files(p, manifest)
        params = manifest.get("parameters") or (onnx_parameters(files[0]) if files else None)
        return {"vocabulary": tokenizer_vocab_size(p), "parameters": params, "bytes": sum(f.stat().st_size for f in files)}
    config = _read_json(p / "config.json")
    weights = [f for f in p.iterdir() if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES)] if p.is_dir() else []
    return {"vocabulary": tokenizer_vocab_size(p, config if isinstance(config, dict) else None),
            "parameters": safetensors_parameters(p) or None, "bytes": sum(f.stat().st_size for f in weights) or None}
