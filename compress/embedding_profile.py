"""How a sentence-embedding model is used: its text prefix, its pooling, and whether it is one at all.

One detector for every stage. It reads the model's own configuration first (sentence-transformers'
``config_sentence_transformers.json`` prompts and ``modules.json`` / ``*_Pooling/config.json``), then the
provenance chain that mlcompress writes (``mlcompress.json``: the names of the models it came from),
never substrings of folder paths.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import PROVENANCE_FILE, read_json_object

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


# sentence-transformers' legacy pooling keys (what its 2.x-5.x releases write, and 6.x still reads) -> the mode name
LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                       "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def pooling_mode(config: dict[str, Any]) -> str | None:
    """The mode of a sentence-transformers pooling config: its ``pooling_mode`` (6.x) or legacy boolean keys."""
    mode = config.get("pooling_mode")
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if isinstance(mode, str):
        return mode
    if mode is not None:
        return "+".join(str(m) for m in mode)  # several modes concatenated: a name no stage supports
    active = [name for key, name in LEGACY_POOLING_KEYS.items() if config.get(key)]
    return "+".join(active) if active else None


def _st_pooling(model_dir: Path) -> str | None:
    """Pooling named by a sentence-transformers layout, if the model has one (mean or cls; None for others)."""
    for cfg in sorted(model_dir.glob("*Pooling/config.json")):
        mode = pooling_mode(read_json_object(cfg) or {})
        if mode in ("cls", "mean"):
            return mode
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
        record = read_json_object(directory / PROVENANCE_FILE) or {}
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
    st = read_json_object(model_dir / ST_CONFIG)
    pooling = _st_pooling(model_dir)
    prompts = {k: v for k, v in ((st or {}).get("prompts") or {}).items() if isinstance(v, str) and v}
    if prompts:  # a config without prompts says nothing about the prefix: the model's name may (E5)
        name = st.get("default_prompt_name") or ("query" if "query" in prompts else None)
        return EmbeddingProfile(prompts.get(name, "") if name else "", pooling or "mean", True, ST_CONFIG)
    for name in model_names(model_dir, spec):
        if _is_e5_name(name):
            return EmbeddingProfile(E5_PREFIX, pooling or "mean", True, f"E5 model by provenance ({name})")
    if st is not None or pooling is not None or (model_dir / "modules.json").is_file():
        return EmbeddingProfile("", pooling or "mean", True, "sentence-transformers config")
    return EmbeddingProfile()
