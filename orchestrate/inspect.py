"""`mlcompress inspect`: what a model directory, export bundle, eval report or pipeline folder is, where it came from
(its provenance chain, followed through the `mlcompress.json` inputs), its sizes, the figures measured on it, and the
clients that load it (`mlcompress.clients`).

Light: reads JSON, safetensors headers and (for bundles without a parameter count) ONNX initializer shapes; no torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mlcompress.artifacts import dir_bytes, onnx_parameters, read_provenance
from mlcompress.clients import clients
from mlcompress.errors import InputError
from mlcompress.measure import safetensors_parameters, tokenizer_vocab_size


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One artifact: kind, model type, vocabulary, parameters, bytes, languages, stage and the metrics it records."""
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise InputError(f"{p} not found", "pass a model directory, an export bundle, an eval report folder or a pipeline folder")
    if p.is_file():
        if p.name.endswith((".tar.gz", ".tgz")):
            return {"path": str(p), "kind": "bundle archive", "bytes": p.stat().st_size}
        raise InputError(f"{p} is a file, not an artifact directory", "pass the directory a stage wrote")
    record = read_provenance(p) or {}
    info: dict[str, Any] = {"path": str(p), "bytes": dir_bytes(p), "stage": record.get("stage")}
    manifest = _read_json(p / "manifest.json")
    config = _read_json(p / "config.json")
    if (p / "pipeline.json").is_file():
        state = _read_json(p / "pipeline.json") or {}
        report = _read_json(p / "report.json") or {}
        info.update(kind="pipeline", languages=(state.get("config") or {}).get("languages"), source=(state.get("config") or {}).get("source"),
                    stages={k: {"status": v.get("status"), "output": v.get("output"), "seconds": v.get("seconds")}
                            for k, v in (state.get("stages") or {}).items()},
                    passed=report.get("passed"), gate=report.get("gate"), artifacts=report.get("artifacts"),
                    student_vs_trim=report.get("student_vs_trim"))  # a distilled student's scores beside the trim's
        return info
    if manifest is not None:
        info.update(_bundle(p, manifest))
    elif config is not None:
        info.update(kind="model", model_type=config.get("model_type"), architectures=config.get("architectures"),
                    layers=config.get("num_hidden_layers") or config.get("num_layers"), hidden=config.get("hidden_size") or config.get("d_model"),
                    parameters=safetensors_parameters(p), weight_bytes=sum(f.stat().st_size for f in p.glob("*.safetensors")),
                    vocab_size=tokenizer_vocab_size(p, config), config_vocab_size=config.get("vocab_size"),
                    languages=(record.get("parameters") or {}).get("languages"))
    elif (p / "report.json").is_file():
        rep = _read_json(p / "report.json") or {}
        info.update(kind="eval report", languages=rep.get("languages"), gate=rep.get("gate"), summary=rep.get("summary"))
    else:
        raise InputError(f"{p} is not an mlcompress artifact: no config.json, manifest.json, report.json or pipeline.json",
                         "pass a model directory, an export bundle, an eval report folder or a pipeline folder")
    if record:
        info["metrics"] = record.get("metrics")
        info["parameters_used"] = record.get("parameters")
        held = (record.get("metrics") or {}).get("heldout_coverage")
        if held:  # a trim's estimate of how much unseen text keeps its tokens
            info["heldout_coverage"] = held
    return info


def _bundle(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """An export bundle's fields: its model (an encoder-decoder's: both graphs of the default dtype) with parameters and
    weight bytes, other forms, languages, quantisation and measured figures; an encoder-decoder's graphs per dtype."""
    head = manifest.get("head") or {}
    s2s = _seq2seq(directory, manifest["seq2seq"]) if isinstance(manifest.get("seq2seq"), dict) else None
    default = s2s["graphs"].get(s2s["default_dtype"]) if s2s else None
    # the model; other forms of it (other dtypes, --ort, --tokenizer-in-graph) are listed apart
    models = [directory / g["file"] for g in default.values()] if default else [directory / str(manifest.get("model") or "model.onnx")]
    counts = [onnx_parameters(m) if m.is_file() else None for m in models]
    info = dict(kind="export bundle", model_type=head.get("architecture"), task=head.get("task"),
                parameters=manifest.get("parameters") or (sum(counts) if None not in counts else None),  # type: ignore[arg-type]
                weight_bytes=sum(_graph_bytes(m) for m in models), vocab_size=tokenizer_vocab_size(directory),
                forms=_forms(directory, manifest), languages=manifest.get("languages"),
                quantization=(manifest.get("quantization") or {}).get("name"), parity=manifest.get("parity"),
                latency_ms=manifest.get("latency_ms"), measured_on=manifest.get("measured_on"))
    return {**info, "seq2seq": s2s} if s2s else info


def _graph_bytes(model: Path) -> int:
    """An ONNX file's bytes with its external data (``NAME.onnx_data``, ``NAME.onnx.data``)."""
    return sum(f.stat().st_size for f in model.parent.glob(f"{model.name}*"))


def _seq2seq(directory: Path, block: dict[str, Any]) -> dict[str, Any]:
    """An encoder-decoder bundle's manifest ``seq2seq`` facts: the default dtype, each dtype's encoder and decoder
    files and bytes (None: missing), the target-language codes and the forced first token (with its code, if one)."""
    graphs = {str(dtype): {str(part): {"file": name, "bytes": _graph_bytes(directory / name) if (directory / name).is_file() else None}
                           for part, name in parts.items()}
              for dtype, parts in (block.get("dtypes") or {}).items() if isinstance(parts, dict)}
    codes = {str(lang): c for lang, c in (block.get("languages") or {}).items() if isinstance(c, dict)}
    forced = block.get("forced_bos_token_id")
    return {"default_dtype": block.get("default_dtype"), "graphs": graphs, "language_codes": codes,
            "forced_bos_token_id": forced, "forced_bos_token": next((c.get("token") for c in codes.values() if c.get("id") == forced), None)}


def _forms(directory: Path, manifest: dict[str, Any]) -> dict[str, int]:
    """The bundle's other forms of its model (`--ort`, `--tokenizer-in-graph`): file name -> bytes."""
    names = [entry.get("model") for key in ("ort", "tokenizer_in_graph") if isinstance(entry := manifest.get(key), dict)]
    return {name: (directory / name).stat().st_size for name in names if isinstance(name, str) and (directory / name).is_file()}


def provenance_chain(path: str | os.PathLike[str], limit: int = 20) -> list[dict[str, Any]]:
    """The artifact, then what it was made from, and so on: each step's stage, path, parameters and inputs."""
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    current: Path | None = Path(path).expanduser().absolute()
    while current is not None and len(chain) < limit and str(current) not in seen:
        seen.add(str(current))
        record = read_provenance(current) if current.is_dir() else None
        if record is None:
            chain.append({"path": str(current), "stage": "source" if chain else None, "record": False})
            break
        inputs = [i for i in record.get("inputs") or [] if isinstance(i, dict)]
        chain.append({"path": str(current), "stage": record.get("stage"), "created": record.get("created"), "record": True,
                      "inputs": inputs, "versions": {k: v for k, v in (record.get("versions") or {}).items() if k in ("mlcompress", "torch", "transformers")}})
        nxt = None
        for i in inputs:
            if i.get("role") in (None, "source", "model", "teacher") and i.get("path") and Path(i["path"]).exists():
                nxt = Path(i["path"])
                if i.get("role") != "source" or record.get("stage") != "eval":
                    break
        if nxt is None:
            src = next((i for i in inputs if i.get("source") or i.get("path")), None)
            if src:
                chain.append({"path": src.get("path"), "source": src.get("source"), "stage": "source", "record": False})
            break
        current = nxt
    return chain


def loaders(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The clients of a described artifact (`mlcompress.clients`): those that load it as it is, and those that do not,
    with why; for a pipeline folder, those of each artifact it made (with its stage)."""
    if info.get("kind") == "pipeline":
        return [{"stage": a["stage"], **c.as_dict()} for a in info.get("artifacts") or []
                if a.get("stage") != "source" and Path(a["path"]).exists() for c in clients(a["path"])]
    return [c.as_dict() for c in clients(info["path"])]


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``describe`` plus the provenance chain and the clients that load the artifact."""
    info = describe(path)
    info["provenance"] = provenance_chain(path) if info.get("kind") != "pipeline" else []
    info["clients"] = loaders(info)
    return info
