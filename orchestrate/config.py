"""The pipeline config: its schema and defaults, ``validate_config``, ``load_config`` and the built-in job.

Importing this module is light: no torch, no transformers. Stages are checked through their public API only.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from mlcompress.corpus import default_data_dir
from mlcompress.errors import InputError, LanguageError
from mlcompress.languages import normalize_language, parse_languages
from mlcompress.sources import DEFAULT_MODEL

STAGES = ("trim", "distill", "export", "eval")

# the default eval: tasks a vocabulary trim + int8 export can be judged on with an embedding-only bundle, on a CPU, in minutes
DEFAULT_EVAL_TASKS = "retrieval,sts,fidelity,efficiency"
DEFAULT_MIN_RETENTION = 0.95
DEFAULT_MAX_EXAMPLES = 300

_NONE = type(None)
# option -> (accepted types, default)
_TOP: dict[str, tuple[tuple[type, ...], Any]] = {
    "source": ((str,), DEFAULT_MODEL),
    "languages": ((str, list), None),
    "data": ((str, _NONE), None),
    "corpora": ((dict, _NONE), None),
    "cache_dir": ((str, _NONE), None),
    "stages": ((dict, list, _NONE), None),
}
_STAGE_OPTIONS: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    "trim": {
        "top_k": ((int, _NONE), None), "min_count": ((int, _NONE), None), "coverage": ((float, int, _NONE), None),
        "quotas": ((dict, _NONE), None), "scripts": ((bool,), False), "keep_tokens": ((list,), []),
        "word_variants": ((bool, _NONE), None), "frequent_words": ((int, _NONE), None), "max_vocab": ((int, _NONE), None),
    },
    "distill": {
        "enabled": ((bool, str), "auto"), "device": ((str,), "auto"), "every_k": ((int,), 2), "block_size": ((int,), 256),
        "max_blocks_per_language": ((int, _NONE), None), "steps": ((int,), 2000), "batch_size": ((int, _NONE), None),
        "grad_accum": ((int,), 1), "lr": ((float, int, _NONE), None), "mixed_precision": ((str,), "auto"),
        "checkpoint_every": ((int,), 200), "seed": ((int,), 0), "time_budget": ((str, int, float, _NONE), None),
        "objective": ((str,), "auto"), "layers": ((str, list, _NONE), None), "max_length": ((int,), 128),
        "restart": ((bool,), False),  # discard an interrupted distillation's checkpoints (kept otherwise, even with --force)
        "quantization_aware": ((bool, _NONE), None),  # train on the bundle's 4-bit grid (None: on for the embedding objective)
        # batch_size / lr None: distill's recipe for the objective (distill.general.RECIPES)
    },
    "export": {
        "format": ((str,), "onnx"), "quantize": ((str,), "auto"), "bundle": ((bool,), True),
        "task": ((str, _NONE), None), "quantize_embeddings": ((bool, _NONE), None), "max_length": ((int, _NONE), None),
        "min_cosine": ((float, int, _NONE), None), "force": ((bool,), False), "measure_latency": ((bool,), True),
        "max_drop": ((float, _NONE), None), "ort": ((bool,), False),
        "tokenizer_in_graph": ((bool,), False),
    },
    "eval": {
        "tasks": ((str, list), DEFAULT_EVAL_TASKS), "min_retention": ((float, int, _NONE), DEFAULT_MIN_RETENTION),
        "max_examples": ((int, _NONE), DEFAULT_MAX_EXAMPLES), "candidates": ((str,), "all"),
        "transfer": ((str,), "auto"), "task_languages": ((dict, _NONE), None),
    },
}
_CHOICES = {("distill", "enabled"): ("auto", True, False), ("distill", "device"): ("auto", "cpu", "cuda"),
            ("distill", "objective"): ("auto", "embedding", "bistil"),
            ("eval", "candidates"): ("all", "final"), ("export", "format"): ("onnx", "tensorrt", "bnb")}


# ---- field checks -----------------------------------------------------------------------------------------------------


def _type_names(types: tuple[type, ...]) -> str:
    names = {str: "a string", list: "a list", dict: "a mapping", bool: "true/false", int: "an integer",
             float: "a number", _NONE: "null"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


def _check_type(where: str, value: Any, types: tuple[type, ...]) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise InputError(f"config: {where} is {value!r} ({type(value).__name__}); it must be {_type_names(types)}",
                         "fix that field in the pipeline config")


def _unknown(where: str, key: str, known: list[str]) -> InputError:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    return InputError(f"config: unknown key {where}{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                      "known keys: " + ", ".join(known))


def _path_of(p: str, base: Path) -> str:
    q = Path(p).expanduser()
    return os.path.normpath(q if q.is_absolute() else (base / q).absolute())


# ---- the top level ----------------------------------------------------------------------------------------------------


def _top_level(raw: Any) -> dict[str, Any]:
    """The top-level keys, type-checked, with their defaults."""
    if not isinstance(raw, dict):
        raise InputError(f"config: the top level must be a mapping, not {type(raw).__name__}",
                         "write `source:`, `languages:`, `stages:` ... at the top of the YAML file")
    for key in raw:
        if key not in _TOP:
            raise _unknown("", str(key), list(_TOP))
    cfg: dict[str, Any] = {}
    for key, (types, default) in _TOP.items():
        value = raw.get(key, default)
        if key == "languages" and value is None:
            raise InputError("config: languages is missing", "add e.g. `languages: [en, de]` (or pass -l en,de)")
        _check_type(key, value, types)
        cfg[key] = value
    return cfg


def _languages(value: str | list[Any]) -> list[str]:
    """Canonical language codes (``mlcompress.languages``), each bad entry named by its position."""
    items = value.split(",") if isinstance(value, str) else value
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise LanguageError(f"config: languages[{i}] is {item!r}; it must be a language code", "e.g. languages: [en, de]")
    if not items:
        raise LanguageError("config: languages is empty", "give at least one, e.g. languages: [en, de]")
    try:
        return parse_languages(items)
    except LanguageError as exc:
        raise LanguageError(f"config: languages: {exc.message}", exc.hint) from exc


def _corpora(corpora: dict[str, Any], languages: list[str], base: Path) -> dict[str, list[str]]:
    """Corpus specs per canonical language; file paths made absolute (relative to the config file)."""
    out = {}
    for lang, spec in corpora.items():
        try:
            code = normalize_language(str(lang))
        except LanguageError as exc:
            raise LanguageError(f"config: corpora: {exc.message}", exc.hint) from exc
        if code not in languages:
            raise LanguageError(f"config: corpora.{lang}: {code} is not among the languages {languages}",
                                "add it to languages, or drop its corpus")
        specs = spec if isinstance(spec, list) else [spec]
        for s in specs:
            _check_type(f"corpora.{lang}", s, (str,))
        out[code] = [s if "://" in s or s.startswith("wordfreq:") else _path_of(s, base) for s in specs]
    return out


def _resolve_paths(cfg: dict[str, Any], base: Path) -> None:
    """Make data, cache_dir, a local source and the corpora absolute (relative to ``base``), in place."""
    for key in ("data", "cache_dir"):
        if cfg[key] is not None:
            cfg[key] = _path_of(cfg[key], base)
    src = cfg["source"]
    if not src.startswith("bundled:") and (src.startswith((".", "/", "~")) or (base / src).exists()):
        cfg["source"] = _path_of(src, base)
    if cfg["corpora"] is not None:
        cfg["corpora"] = _corpora(cfg["corpora"], cfg["languages"], base)


# ---- the stages -------------------------------------------------------------------------------------------------------


def _stage_list(stages_raw: dict[str, Any] | list[Any] | None) -> dict[str, Any]:
    """``stages`` as a mapping of stage -> options (a list names stages with their defaults; none: every stage)."""
    if stages_raw is None:
        return {name: {} for name in STAGES}
    if isinstance(stages_raw, list):
        for i, name in enumerate(stages_raw):
            if not isinstance(name, str):
                raise InputError(f"config: stages[{i}] is {name!r}; it must be a stage name", "stages: " + ", ".join(STAGES))
        return {name: {} for name in stages_raw}
    return stages_raw


def _stage_options(name: str, options: Any) -> dict[str, Any] | None:
    """One stage's options, checked against its schema, defaults filled in; None for a stage turned off (``false``)."""
    if name not in _STAGE_OPTIONS:
        raise InputError(f"config: unknown stage {name!r}", "stages are " + ", ".join(STAGES)
                         + " (export writes the bundle: `export: {bundle: true}`)")
    if options is False:
        return None
    if options is None or options is True:
        options = {}
    _check_type(f"stages.{name}", options, (dict,))
    spec = _STAGE_OPTIONS[name]
    for key in options:
        if key not in spec:
            raise _unknown(f"stages.{name}.", str(key), list(spec))
    checked = {}
    for key, (types, default) in spec.items():
        value = options.get(key, copy.deepcopy(default))
        _check_type(f"stages.{name}.{key}", value, types)
        choices = _CHOICES.get((name, key))
        if choices and value not in choices:
            raise InputError(f"config: stages.{name}.{key} is {value!r}", "choose one of " + ", ".join(map(str, choices)))
        checked[key] = value
    return checked


def _check_eval(ev: dict[str, Any]) -> None:
    from mlcompress.eval import parse_tasks

    try:
        parse_tasks(ev["tasks"])
    except InputError as exc:
        raise InputError(f"config: stages.eval.tasks: {exc.message}", exc.hint) from exc
    if ev["min_retention"] is not None and not 0 < ev["min_retention"] <= 10:
        raise InputError(f"config: stages.eval.min_retention is {ev['min_retention']}", "give a fraction such as 0.95")
    if ev["max_examples"] is not None and ev["max_examples"] < 2:
        raise InputError(f"config: stages.eval.max_examples is {ev['max_examples']}", "give at least 2 (or null for no cap)")


def _check_distill(di: dict[str, Any]) -> None:
    if di["time_budget"] is not None:
        from mlcompress.distill import parse_duration

        try:
            parse_duration(di["time_budget"])
        except InputError as exc:
            raise InputError(f"config: stages.distill.time_budget: {exc.message}", exc.hint) from exc


def _check_export(ex: dict[str, Any]) -> None:
    from mlcompress.export import AUTO, QUANTIZE_CHOICES

    if ex["quantize"] not in (AUTO, *QUANTIZE_CHOICES):
        raise InputError(f"config: stages.export.quantize is {ex['quantize']!r}",
                         "choose one of " + ", ".join((AUTO, *QUANTIZE_CHOICES)))


_STAGE_CHECKS = {"eval": _check_eval, "distill": _check_distill, "export": _check_export}


def _stages(stages_raw: dict[str, Any] | list[Any] | None) -> dict[str, dict[str, Any]]:
    """The stages to run, in pipeline order, each with its checked options; the values each stage's API would refuse."""
    stages = {name: _stage_options(name, options) for name, options in _stage_list(stages_raw).items()}
    if not any(stages.get(s) for s in ("trim", "distill", "export")):
        raise InputError("config: no stage that makes a model (trim, distill or export)", "add at least one, e.g. stages: [trim, export, eval]")
    ordered = {name: stages[name] for name in STAGES if stages.get(name) is not None}
    for name in ("eval", "distill", "export"):
        if name in ordered:
            _STAGE_CHECKS[name](ordered[name])
    return ordered


# ---- public -----------------------------------------------------------------------------------------------------------


def validate_config(raw: dict[str, Any], base_dir: Path | None = None) -> dict[str, Any]:
    """A complete, checked copy of a pipeline config (defaults filled in); InputError names the first bad field."""
    base = base_dir or Path.cwd()
    cfg = _top_level(raw)
    cfg["languages"] = _languages(cfg["languages"])
    _resolve_paths(cfg, base)
    cfg["stages"] = _stages(cfg["stages"])
    return cfg


def with_distillation(cfg: dict[str, Any], distill: bool | None = None,
                      budget: str | float | int | None = None) -> dict[str, Any]:
    """A checked copy of ``cfg`` with distillation asked for (``distill`` true, or a ``budget`` such as "30m": it runs
    on a CPU too, within that time) or turned off (``distill`` false); both None leave the config as it is."""
    if distill is None and budget is None:
        return cfg
    if distill is False and budget is not None:
        raise InputError(f"a distillation budget ({budget!r}) was given, but distillation is turned off",
                         "drop --no-distill (distill=False) to distil within the budget, or drop the budget")
    if budget is not None:
        _check_budget(budget)
    stages = {name: dict(opts) for name, opts in cfg["stages"].items()}
    if distill is False:
        if "distill" in stages:
            stages["distill"]["enabled"] = False
    else:
        stages["distill"] = {**stages.get("distill", {}), "enabled": True}
        if budget is not None:
            stages["distill"]["time_budget"] = budget
    return validate_config({**cfg, "stages": {name: stages[name] for name in STAGES if name in stages}})


def _check_budget(budget: Any) -> None:
    """Refuse a distillation budget that is not a positive duration (``30m``, ``1h30m``, ``900``)."""
    from mlcompress.distill import parse_duration

    if isinstance(budget, bool) or not isinstance(budget, (str, int, float)):
        raise InputError(f"distillation budget {budget!r} is not a duration", "write it as 30m, 1h, 1h30m or 900 (seconds)")
    try:
        parse_duration(budget)
    except InputError as exc:
        raise InputError(f"distillation budget: {exc.message}", exc.hint) from exc
    if isinstance(budget, (int, float)) and budget <= 0:
        raise InputError(f"distillation budget {budget!r} is not positive", "e.g. 30m")


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (or JSON) pipeline config file; relative paths in it are relative to the file."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"config file {p} not found", "pass a YAML file, or run `mlcompress pipeline -l en,de -o OUT` for the built-in default")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"config file {p} is not valid YAML: {exc}", "check its indentation and quoting") from exc
    return validate_config(raw if raw is not None else {}, p.parent.absolute())


def default_config(languages: str | list[str], data: str | os.PathLike[str] | None = None,
                   source: str = DEFAULT_MODEL) -> dict[str, Any]:
    """The built-in job: trim the source to the languages' text in DATA/mono, distill when a GPU is present,
    export an int8-weights ONNX bundle, and evaluate it (and the trimmed model) against the source with a 0.95 gate.

    With no data folder (no ``data``, no $MLCOMPRESS_DATA, no ../shared/data), the trim reads wordfreq's word lists
    and eval the sample packaged with mlcompress (``no_data.sample_config``)."""
    root = Path(data).expanduser().absolute() if data is not None else default_data_dir()
    if root is None:
        from .no_data import sample_config

        return sample_config(languages, source)
    if not root.is_dir():
        raise InputError(f"data folder {root} not found", "pass --data DIR, a folder laid out like ../shared/data")
    return {"source": source, "languages": languages, "data": str(root), "stages": None}
