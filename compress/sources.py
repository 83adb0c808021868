"""Model sources: a local `save_pretrained` directory, a Hub id, or a model bundled with mlcompress."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelSourceError

BUNDLED_PREFIX = "bundled:"
DEFAULT_MODEL = "bundled:multilingual-e5-small"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model came from (as the user named it) and the local directory that holds it."""

    spec: str
    path: Path
    kind: str  # "local", "hub" or "bundled"

    def describe(self) -> dict[str, Any]:
        """The provenance entry for this source."""
        return {"source": self.spec, "kind": self.kind, "path": str(self.path)}


def resolve_model(spec: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> ModelSource:
    """Turn what the user named into a local model directory, building or downloading it if needed."""
    text = str(spec)
    if text.startswith(BUNDLED_PREFIX):
        from .bundled import ensure_bundled

        name = text[len(BUNDLED_PREFIX):]
        return ModelSource(text, ensure_bundled(name, Path(cache_dir) if cache_dir else None), "bundled")
    path = Path(text).expanduser()
    if path.exists():
        check_model_dir(path)
        return ModelSource(text, path.absolute(), "local")
    if _HUB_ID.match(text) and not text.startswith((".", "~")) and os.sep not in text.replace("/", "", 1):
        return ModelSource(text, _download(text, cache_dir), "hub")
    raise ModelSourceError(
        f"model {text!r} not found: no such directory, and it is not a Hub id or a bundled model",
        f"pass a save_pretrained directory, a Hub id such as FacebookAI/xlm-roberta-base, or {DEFAULT_MODEL}",
    )


def check_model_dir(path: Path) -> None:
    """Refuse a directory that is not a `save_pretrained` model with a tokenizer."""
    if not path.is_dir():
        raise ModelSourceError(f"{path} is not a directory", "pass the directory that save_pretrained wrote")
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"{path} is not a model directory: it has no config.json",
            "pass the directory that a model's save_pretrained wrote",
        )
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    if not weights:
        raise ModelSourceError(f"{path} holds no model weights (*.safetensors)", "re-save the model with save_pretrained")


def _download(repo_id: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    """Fetch a Hub model snapshot (weights, config, tokenizer files) into the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "merges.txt", "vocab.*"]
    try:
        local = snapshot_download(repo_id, allow_patterns=patterns, cache_dir=cache_dir)
    except Exception as exc:  # offline, unknown repo, gated repo: all one message to the user
        raise ModelSourceError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub: {type(exc).__name__}: {exc}",
            "check the id and your network, or download the model and pass its local directory",
        ) from exc
    path = Path(local)
    check_model_dir(path)
    return path


def load_config(path: Path) -> Any:
    """A model directory's transformers config; a missing, corrupt or unknown config.json is a clear error."""
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(path)  # never trust_remote_code: no code from a model repo runs
    except Exception as exc:
        raise ModelSourceError(f"{path}: unreadable config.json ({type(exc).__name__}: {exc})",
                               "re-save the model with save_pretrained, or restore its config.json") from exc


def load_model(path: Path) -> Any:
    """Load a model with its head (the class its config names), turning failures into clear errors."""
    import transformers

    config = load_config(path)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    return load_weights(cls or transformers.AutoModel, path, dtype="auto").eval()


def load_weights(cls: Any, path: Path, **kwargs: Any) -> Any:
    """``cls.from_pretrained(path, **kwargs)``, with a failure (corrupt or truncated weights) turned into a clear error."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise ModelSourceError(
            f"{path}: could not load the model weights ({type(exc).__name__}: {exc})",
            "the weights may be corrupt or truncated: re-save or re-download the model",
        ) from exc


def load_tokenizer(path: Path) -> Any:
    """Load a model directory's fast tokenizer; slow-only tokenizers are refused."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ModelSourceError(
            f"{path}: could not load its tokenizer ({type(exc).__name__}: {exc})",
            "the directory needs tokenizer.json (or the files its tokenizer class reads)",
        ) from exc
    if getattr(tok, "backend_tokenizer", None) is None:
        from .errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"{path}: {type(tok).__name__} is not backed by the tokenizers library",
            "mlcompress needs a fast tokenizer (tokenizer.json)",
        )
    return tok
