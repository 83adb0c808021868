"""How a sentence-embedding model is used: its text prefix, its pooling, and whether it is one at all.

One detector for every stage. It reads the model's own configuration first (sentence-transformers'
``config_sentence_transformers.json`` prompts and ``modules.json`` / ``*_Pooling/config.json``), then the
provenance chain that mlcompress writes (``mlcompress.json``: the names of the models it came from),
never substrings of folder paths.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import PROVENANCE_FILE

E5_PREFIX = "query: "
ST_CONFIG = "config_sentence_transformers.json"
# E5 family names: intfloat/multilingual-e5-small, e5-base-v2, bundled:multilingual-e5-small-enpt ...
_E5_NAME = re.compile(r"(^|[/:_-])(multilingual-)?e5(-[a-z0-9.]+)*$", re.IGNORECASE)


@dataclass(frozen=True)
class EmbeddingProfile:
    """What a user of the model puts before a sentence and how its tokens become one vector."""

    prefix: str = ""
    pooling: str = "mean"  # mean or cls
    sentence_model: bool = False  # known to be a sentence-embedding model
    evidence: str = "none"  # where the answer came from

    def as_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "pooling": self.pooling, "sentence_model": self.sentence_model,
                "evidence": self.evidence}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _st_pooling(model_dir: Path) -> str | None:
    """Pooling named by a sentence-transformers layout, if the model has one."""
    for cfg in sorted(model_dir.glob("*Pooling/config.json")):
        conf = _read_json(cfg) or {}
        if conf.get("pooling_mode_cls_token"):
            return "cls"
        if conf.get("pooling_mode_mean_tokens"):
            return "mean"
    return None


def _is_e5_name(name: str) -> bool:
    base = name.strip().rstrip("/").split("@")[0]
    return bool(_E5_NAME.search(base))


def model_names(model_dir: Path, spec: str | None = None, depth: int = 6) -> list[str]:
    """Names of the models this one came from: the spec (when it is a Hub id or bundled name), the bundled
    name, and the sources named in each ``mlcompress.json`` up the chain (followed through local inputs)."""
    names: list[str] = []
    if spec and not Path(spec).expanduser().exists():
        names.append(spec)
    seen: set[Path] = set()
    todo = [model_dir]
    while todo and depth > 0:
        directory = todo.pop()
        depth -= 1
        if directory in seen:
            continue
        seen.add(directory)
        record = _read_json(directory / PROVENANCE_FILE) or {}
        params = record.get("parameters") or {}
        if record.get("stage") == "bundled" and isinstance(params.get("name"), str):
            names.append(params["name"])
        for key in ("source_name", "teacher_name"):
            if isinstance(params.get(key), str):
                names.append(params[key])
        for item in record.get("inputs") or []:
            if not isinstance(item, dict):
                continue
            if isinstance(item.get("source"), str) and not Path(item["source"]).expanduser().exists():
                names.append(item["source"])
            path = item.get("path")
            if isinstance(path, str) and Path(path).is_dir():
                todo.append(Path(path))
    return names


def embedding_profile(model: str | os.PathLike[str], spec: str | None = None) -> EmbeddingProfile:
    """The prefix and pooling of the model in directory ``model`` (``spec`` is how the user named it)."""
    model_dir = Path(model)
    st = _read_json(model_dir / ST_CONFIG)
    pooling = _st_pooling(model_dir)
    if st is not None:
        prompts = st.get("prompts") or {}
        name = st.get("default_prompt_name") or ("query" if "query" in prompts else None)
        prefix = prompts.get(name, "") if name else ""
        return EmbeddingProfile(prefix if isinstance(prefix, str) else "", pooling or "mean", True, ST_CONFIG)
    for name in model_names(model_dir, spec):
        if _is_e5_name(name):
            return EmbeddingProfile(E5_PREFIX, pooling or "mean", True, f"E5 model by provenance ({name})")
    if pooling is not None:
        return EmbeddingProfile("", pooling, True, "sentence-transformers pooling config")
    return EmbeddingProfile()


def write_sentence_transformers_config(directory: str | os.PathLike[str], profile: EmbeddingProfile) -> None:
    """Record ``profile`` in a model directory the way sentence-transformers does (prompts and pooling)."""
    directory = Path(directory)
    prompts = {"query": profile.prefix, "passage": "passage: "} if profile.prefix == E5_PREFIX else \
        ({"query": profile.prefix} if profile.prefix else {})
    st = {"prompts": prompts, "default_prompt_name": "query" if profile.prefix else None,
          "similarity_fn_name": "cosine"}
    (directory / ST_CONFIG).write_text(json.dumps(st, indent=2) + "\n", encoding="utf-8")
    pooling_dir = directory / "1_Pooling"
    pooling_dir.mkdir(exist_ok=True)
    (pooling_dir / "config.json").write_text(json.dumps({
        "pooling_mode_cls_token": profile.pooling == "cls", "pooling_mode_mean_tokens": profile.pooling == "mean",
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2) + "\n",
        encoding="utf-8")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (directory / "2_Normalize").mkdir(exist_ok=True)
    (directory / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
