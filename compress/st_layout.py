"""The sentence-transformers layout of a model folder: read from a source, written beside every stage's output.

One reader and one writer for trim, distill and the pipeline (export and eval read the same layout):
``modules.json``, ``1_Pooling/config.json`` with its dimension, the source's ``Dense`` modules, ``N_Normalize/`` where the
source normalises, ``sentence_bert_config.json`` and ``config_sentence_transformers.json`` with the prompts under the
names sentence-transformers 6 reads (``query``, ``document``) and the source's default prompt.

The pooling config is written with the legacy keys (``word_embedding_dimension``, ``pooling_mode_mean_tokens`` ...), as
intfloat/multilingual-e5-small has it: sentence-transformers 6 converts them without a warning, and releases 2 to 5
read nothing else (its 6.x keys, ``embedding_dimension`` and ``pooling_mode``, are read here too).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .embedding_profile import E5_PREFIX, LEGACY_POOLING_KEYS, ST_CONFIG, EmbeddingProfile, embedding_profile, pooling_mode
from .errors import ModelSourceError, UnsupportedModelError

MODULES_FILE = "modules.json"
ST_MODEL_CONFIG = "sentence_bert_config.json"
#: every file and folder pattern of the layout, so that a stage rewriting it copies none of the source's
ST_FILES = (MODULES_FILE, ST_MODEL_CONFIG, ST_CONFIG)
E5_PROMPTS = {"query": E5_PREFIX, "document": "passage: "}
_DOCUMENT_ALIASES = ("document", "passage", "corpus")  # older names of the document prompt, the current one first
_KNOWN = ("Transformer", "Pooling", "Dense", "Normalize")
_MODULE_TYPES = {kind: f"sentence_transformers.models.{kind}" for kind in _KNOWN}


@dataclass(frozen=True)
class DenseLayer:
    """One sentence-transformers ``Dense`` module: a linear map and an activation after the pooling."""

    source: str  # the folder its weights are read from
    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "torch.nn.modules.activation.Tanh"

    def as_dict(self) -> dict[str, Any]:
        """The manifest's and the card's entry (no path)."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias,
                "activation": self.activation.rsplit(".", 1)[-1]}


@dataclass(frozen=True)
class SentenceLayout:
    """How a sentence-embedding model turns text into a vector: prompts, pooling, Dense modules, normalisation."""

    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    pooling: str = "mean"
    normalize: bool = True
    dense: tuple[DenseLayer, ...] = ()
    max_seq_length: int | None = None
    similarity: str = "cosine"

    @property
    def prefix(self) -> str:
        """The text the default prompt puts before a sentence ("" without one)."""
        return self.prompts.get(self.default_prompt_name or "", "")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path}: unreadable ({type(exc).__name__}: {exc})",
                               "restore the file from the model's source, or delete the sentence-transformers files") from exc


def _kind(entry: dict[str, Any]) -> str:
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def read_modules(model_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The entries of a model folder's ``modules.json`` (none without one); an unknown module type is an error."""
    path = Path(model_dir) / MODULES_FILE
    if not path.is_file():
        return []
    entries = _read_json(path)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ModelSourceError(f"{path} is not a sentence-transformers module list", "restore or delete modules.json")
    unknown = [str(e.get("type")) for e in entries if _kind(e) not in _KNOWN]
    if unknown:
        raise UnsupportedModelError(
            f"{path} lists {', '.join(unknown)}: mlcompress carries over only Transformer, Pooling, Dense and Normalize "
            "modules, so its outputs would compute other vectors than this model",
            "remove that module from modules.json if the model works without it, or use the model as it is")
    return entries


def st_pooling(model_dir: Path, entries: list[dict[str, Any]]) -> str | None:
    """The pooling mode of the layout's Pooling module (None without one)."""
    for entry in entries:
        if _kind(entry) == "Pooling":
            config = _read_json(model_dir / str(entry.get("path", "")) / "config.json")
            if not isinstance(config, dict):
                raise ModelSourceError(f"{model_dir}: the pooling config of modules.json is not a JSON object",
                                       "restore the sentence-transformers pooling folder")
            return pooling_mode(config) or "mean"
    return None


def dense_layers(model_dir: Path, entries: list[dict[str, Any]]) -> tuple[DenseLayer, ...]:
    """The layout's Dense modules in order (their weights stay in their folders until a stage reads them)."""
    return tuple(_dense(model_dir, e) for e in entries if _kind(e) == "Dense")


def _dense(model_dir: Path, entry: dict[str, Any]) -> DenseLayer:
    folder = model_dir / str(entry.get("path", ""))
    config = _read_json(folder / "config.json")
    try:
        layer = DenseLayer(str(folder.absolute()), int(config["in_features"]), int(config["out_features"]),
                           bool(config.get("bias", True)),
                           str(config.get("activation_function") or "torch.nn.modules.activation.Tanh"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelSourceError(f"{folder}/config.json is not a sentence-transformers Dense config ({exc})",
                               "restore the Dense folder from the model's source") from exc
    if config.get("use_residual"):
        raise UnsupportedModelError(f"{folder}: a Dense module with a residual connection is not supported",
                                    "use the model as it is")
    return layer


def _prompts(st: dict[str, Any], profile: EmbeddingProfile) -> tuple[dict[str, str], str | None]:
    """The prompts under sentence-transformers 6's names and the default one; the default gives ``profile.prefix``
    (the prefix every mlcompress stage and the bundle runtime put before a sentence)."""
    given = {k: v for k, v in (st.get("prompts") or {}).items() if isinstance(k, str) and isinstance(v, str) and v}
    if not given:
        if profile.prefix == E5_PREFIX:
            return dict(E5_PROMPTS), "query"
        return ({"query": profile.prefix}, "query") if profile.prefix else ({}, None)
    prompts = {k: v for k, v in given.items() if k not in _DOCUMENT_ALIASES}
    document = next((given[k] for k in _DOCUMENT_ALIASES if k in given), None)
    if document is not None:
        prompts["document"] = document
    default = st.get("default_prompt_name")
    default = "document" if default in _DOCUMENT_ALIASES else default
    if default not in prompts:
        default = next((k for k, v in prompts.items() if v == profile.prefix), None) if profile.prefix else None
    return prompts, default


def read_layout(model_dir: str | os.PathLike[str], spec: str | None = None) -> SentenceLayout | None:
    """The sentence-transformers layout of the model in ``model_dir`` (``spec``: how the user named it): its own
    configuration, else what its family implies (E5: mean pooling, normalised, "query: " / "passage: "); None for a
    model that is not known to be a sentence-embedding model."""
    model_dir = Path(model_dir)
    profile = embedding_profile(model_dir, spec)
    if not profile.sentence_model:
        return None
    entries = read_modules(model_dir)
    st_path = model_dir / ST_CONFIG
    st = _read_json(st_path) if st_path.is_file() else {}
    prompts, default = _prompts(st if isinstance(st, dict) else {}, profile)
    bert_path = model_dir / ST_MODEL_CONFIG
    bert = _read_json(bert_path) if bert_path.is_file() else {}
    max_seq = bert.get("max_seq_length") if isinstance(bert, dict) else None
    return SentenceLayout(
        prompts, default, st_pooling(model_dir, entries) or profile.pooling,
        any(_kind(e) == "Normalize" for e in entries) if entries else True,
        dense_layers(model_dir, entries),
        int(max_seq) if isinstance(max_seq, int) else None,
        str((st or {}).get("similarity_fn_name") or "cosine") if isinstance(st, dict) else "cosine")


def layout_for(profile: EmbeddingProfile) -> SentenceLayout:
    """The layout of a model known only by its embedding profile (its prefix and pooling; normalised)."""
    prompts, default = _prompts({}, profile)
    return SentenceLayout(prompts, default, profile.pooling)


def with_prefix(layout: SentenceLayout, prefix: str) -> SentenceLayout:
    """``layout`` with ``prefix`` as its default (query) prompt, when a user named another prefix than the model's."""
    if prefix == layout.prefix:
        return layout
    if not prefix:
        return replace(layout, default_prompt_name=None)
    return replace(layout, prompts={**layout.prompts, "query": prefix}, default_prompt_name="query")


def _pooling_config(mode: str, dimension: int) -> dict[str, Any]:
    """A pooling config in the legacy keys every sentence-transformers release reads (see the module docstring)."""
    keys = {key: mode == name for key, name in LEGACY_POOLING_KEYS.items()}
    if not any(keys.values()):
        raise UnsupportedModelError(f"pooling mode {mode!r} cannot be written as a sentence-transformers config",
                                    "use a model with one pooling mode (mean, cls, max, ...)")
    return {"word_embedding_dimension": dimension, **keys}


def max_seq_length(directory: Path) -> int:
    """The longest input in tokens: the model's position limit (less XLM-R's offset), at most the tokenizer's."""
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    offset = (config.get("pad_token_id") or 0) + 1 if config.get("model_type") in ("xlm-roberta", "roberta", "camembert") else 0
    limit = int(config.get("max_position_embeddings") or 512) - offset
    tok_path = directory / "tokenizer_config.json"
    tok = json.loads(tok_path.read_text(encoding="utf-8")) if tok_path.is_file() else {}
    declared = tok.get("model_max_length")
    return min(limit, int(declared)) if isinstance(declared, (int, float)) and declared < 100_000 else min(limit, 512)


def write_layout(directory: str | os.PathLike[str], layout: SentenceLayout, dimension: int, basis: Any = None) -> None:
    """Write ``layout`` into the model folder ``directory`` whose transformer gives ``dimension``-wide token vectors.

    Dense weights are copied from where ``layout`` read them; ``basis`` (a narrower student's (d_teacher, d_student)
    projection) is folded into the first one, so that it reads the student's vectors as the teacher's.
    """
    from .st_dense import dense_weights, write_dense

    directory = Path(directory)
    weights = [dense_weights(layer) for layer in layout.dense]  # read first: a source folder may be among those rewritten
    modules = [{"idx": 0, "name": "0", "path": "", "type": _MODULE_TYPES["Transformer"]}]
    folders = ["1_Pooling"] + [f"{i + 2}_Dense" for i in range(len(layout.dense))]
    folders += [f"{len(folders) + 1}_Normalize"] if layout.normalize else []
    for folder in folders:
        if (directory / folder).exists():
            shutil.rmtree(directory / folder)
        (directory / folder).mkdir()
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": folder, "type": _MODULE_TYPES[folder.split("_", 1)[1]]})
    _write_json(directory / "1_Pooling" / "config.json", _pooling_config(layout.pooling, dimension))
    for i, (layer, state) in enumerate(zip(layout.dense, weights)):
        write_dense(directory / folders[i + 1], layer, state, basis if i == 0 else None)
    _write_json(directory / MODULES_FILE, modules)
    _write_json(directory / ST_MODEL_CONFIG, {"max_seq_length": layout.max_seq_length or max_seq_length(directory),
                                              "do_lower_case": False})
    _write_json(directory / ST_CONFIG, {"prompts": layout.prompts, "default_prompt_name": layout.default_prompt_name,
                                        "similarity_fn_name": layout.similarity})


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
