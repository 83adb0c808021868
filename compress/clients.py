"""Which clients load an artifact folder as it is, read from its files alone (no torch, nothing imported):

- sentence-transformers: a model folder with ``modules.json``;
- transformers: a model folder (``config.json`` with its weights);
- the mlcompress runtime: any ONNX bundle (``manifest.json``);
- FastEmbed and transformers.js: a sentence-embedding bundle in the client layout (its graph under ``onnx/``,
  ``config.json``, ``tokenizer_config.json``); transformers.js mean-pools ``last_hidden_state``, so not with Dense modules.

onnxruntime-genai and llama.cpp load none of mlcompress's outputs (no ``genai_config.json``, no GGUF file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import read_json_object

_AUTO_SUFFIXES = ("ForMaskedLM", "ForTokenClassification", "ForSequenceClassification", "ForCausalLM")
_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class Client:
    """One client and an artifact: whether it loads it as it is, and how (the call; DIR: the artifact's folder, NAME:
    its name under transformers.js's localModelPath), or why not."""

    name: str
    loads: bool
    how: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"client": self.name, "loads": self.loads, "how": self.how}


def auto_class(config: dict[str, Any]) -> str:
    """The transformers Auto class that loads a model of this config.json (``AutoModel`` for a bare encoder)."""
    arch = str((config.get("architectures") or ["AutoModel"])[0])
    return next((f"AutoModel{suffix}" for suffix in _AUTO_SUFFIXES if arch.endswith(suffix)), "AutoModel")


def _decoder_clients(what: str) -> list[Client]:
    """The decoder runtimes that load none of mlcompress's outputs, and why."""
    return [Client("onnxruntime-genai", False, f"{what} has no genai_config.json (its own export format)"),
            Client("llama.cpp", False, f"{what} is not a GGUF file")]


def _model_clients(directory: Path, config: dict[str, Any]) -> list[Client]:
    """A save_pretrained folder: transformers (with its weights), sentence-transformers (with modules.json)."""
    out = []
    if (directory / "modules.json").is_file():
        out.append(Client("sentence-transformers", True, 'SentenceTransformer("DIR")'))
    if any(any(directory.glob(pattern)) for pattern in _WEIGHTS):
        auto = auto_class(config)
        out.append(Client("transformers", True, f'{auto}.from_pretrained("DIR")'))
        if auto == "AutoModelForCausalLM":
            out += _decoder_clients("a PyTorch folder")
        elif (directory / "modules.json").is_file():
            out.append(Client("FastEmbed, transformers.js", False, "export an ONNX bundle: mlcompress export DIR --bundle -o OUT"))
    return out


def _embedding_bundle_clients(directory: Path, manifest: dict[str, Any]) -> list[Client]:
    """FastEmbed and transformers.js on a sentence-embedding bundle, when it has their layout."""
    model = str(manifest.get("model") or "model.onnx")
    head = manifest.get("head") or {}
    missing = [name for name, ok in (("a graph under onnx/", model.startswith("onnx/") and (directory / model).is_file()),
                                     ("config.json", (directory / "config.json").is_file()),
                                     ("tokenizer_config.json", (directory / "tokenizer_config.json").is_file())) if not ok]
    if missing:
        why = f"missing {', '.join(missing)} (a bundle written before the client layout: export it again)"
        return [Client("FastEmbed", False, why), Client("transformers.js", False, why)]
    output = head.get("output", "sentence_embedding")
    out = [Client("FastEmbed", True, f'TextEmbedding.add_custom_model(model_file="{model}", output_name="{output}", '
                                     f'pooling=PoolingType.DISABLED, ...); TextEmbedding(..., specific_model_path="DIR"); '
                                     "add the prompt yourself")]
    if head.get("dense"):
        out.append(Client("transformers.js", False, "it mean-pools last_hidden_state, and this model has Dense modules after "
                                                    "its pooling: other vectors (use FastEmbed or the runtime)"))
    else:
        out.append(Client("transformers.js", True, f'pipeline("feature-extraction", "NAME") with '
                                                   f'pooling "{head.get("pooling") or "mean"}"; add the prompt yourself'))
    return out


def _bundle_clients(directory: Path, manifest: dict[str, Any]) -> list[Client]:
    """An export bundle: the mlcompress runtime (ONNX), and the clients its task and layout allow."""
    task = (manifest.get("head") or {}).get("task")
    if manifest.get("runtime", "onnxruntime") != "onnxruntime":
        return [Client("TensorRT", True, f"the engine file {manifest.get('model')} (on the GPU it was built for)")]
    call = {"sentence-embedding": "encode", "text-generation": "generate"}.get(str(task))
    cli = f"; mlcompress bundle {call} DIR TEXT" if call else ""
    out = [Client("mlcompress runtime", True, f'mlcompress.export.runtime.load("DIR"){cli}')]
    if task == "sentence-embedding":
        out += _embedding_bundle_clients(directory, manifest)
        out.append(Client("sentence-transformers", False, "load the PyTorch folder this bundle was exported from (its ONNX "
                                                          "backend cannot be installed beside transformers 5)"))
    elif task == "text-generation":
        out += _decoder_clients("the bundle")
    return out


def clients(directory: str | os.PathLike[str]) -> list[Client]:
    """The clients that load the artifact in ``directory`` (or a bundle archive) as it is (``loads``), and those a user
    might try that do not, with why; empty for what is no model (an eval report, a pipeline folder)."""
    p = Path(directory).expanduser().absolute()
    if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
        return [Client("mlcompress runtime", True, 'mlcompress.export.runtime.load("DIR.tar.gz")'),
                Client("other clients", False, "unpack the archive: they load the bundle folder")]
    manifest = read_json_object(p / "manifest.json")
    if manifest is not None:
        return _bundle_clients(p, manifest)
    config = read_json_object(p / "config.json")
    return _model_clients(p, config) if config is not None else []
