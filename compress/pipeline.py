"""`mlcompress.Pipeline`: trim -> distill (GPU) -> export (bundle) -> eval against the source, from one validated config.

Each stage writes its artifact under ``OUT/<nn-stage>/`` (with ``mlcompress.json``); ``OUT/pipeline.json`` records, per
stage, a fingerprint of its options, of the content of its inputs and of the stage's code. A rerun skips a stage whose fingerprint is
unchanged and whose artifact is still there; an interrupted stage left no artifact (stages write atomically) and is
redone (distill resumes from its own checkpoints). The run ends with ``OUT/report.json`` (the gate's verdict) and
``OUT/report.html`` (sizes, speed and retention at every stage).

Importing this module is light: no torch, no transformers.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import check_output, json_digest
from .errors import GateError, InputError, LanguageError, OutputExistsError
from .sources import DEFAULT_MODEL

STATE_FILE = "pipeline.json"
STAGES = ("trim", "distill", "export", "eval")
STAGE_DIRS = {"trim": "01-trim", "distill": "02-distill", "export": "03-export", "eval": "04-eval"}
STAGE_PACKAGES = {"trim": "vocab_trim", "distill": "distill", "export": "export", "eval": "eval"}

REPO_ROOT = Path(__file__).resolve().parents[1]

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
        "max_blocks_per_language": ((int, _NONE), None), "steps": ((int,), 2000), "batch_size": ((int,), 32),
        "grad_accum": ((int,), 1), "lr": ((float, int), 1e-4), "mixed_precision": ((str,), "auto"),
        "checkpoint_every": ((int,), 200), "seed": ((int,), 0), "time_budget": ((str, int, float, _NONE), None),
        "objective": ((str,), "auto"), "layers": ((str, list, _NONE), None), "max_length": ((int,), 128),
    },
    "export": {
        "format": ((str,), "onnx"), "quantize": ((str,), "int8-dynamic"), "bundle": ((bool,), True),
        "task": ((str, _NONE), None), "quantize_embeddings": ((bool, _NONE), None), "max_length": ((int, _NONE), None),
        "min_cosine": ((float, int, _NONE), None), "force": ((bool,), False), "measure_latency": ((bool,), True),
        "max_drop": ((float, _NONE), None),
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


def code_digest(stage: str) -> str:
    """sha256 of the stage package's source files: after an upgrade that changed a stage, a rerun redoes it."""
    import importlib.util

    spec = importlib.util.find_spec(f"mlcompress.{STAGE_PACKAGES[stage]}")
    if spec is None or spec.origin is None:
        return "unknown"
    root = Path(spec.origin).parent
    h = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        h.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
    return h.hexdigest()


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


def validate_config(raw: dict[str, Any], base_dir: Path | None = None) -> dict[str, Any]:
    """A complete, checked copy of a pipeline config (defaults filled in); InputError names the first bad field."""
    from mlcompress.languages import normalize_language

    if not isinstance(raw, dict):
        raise InputError(f"config: the top level must be a mapping, not {type(raw).__name__}",
                         "write `source:`, `languages:`, `stages:` ... at the top of the YAML file")
    base = base_dir or Path.cwd()
    cfg: dict[str, Any] = {}
    for key in raw:
        if key not in _TOP:
            raise _unknown("", str(key), list(_TOP))
    for key, (types, default) in _TOP.items():
        value = raw.get(key, default)
        if key == "languages" and value is None:
            raise InputError("config: languages is missing", "add e.g. `languages: [en, de]` (or pass -l en,de)")
        _check_type(key, value, types)
        cfg[key] = value
    items = cfg["languages"].split(",") if isinstance(cfg["languages"], str) else cfg["languages"]
    langs = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise LanguageError(f"config: languages[{i}] is {item!r}; it must be a language code", "e.g. languages: [en, de]")
        try:
            langs.append(normalize_language(item))
        except LanguageError as exc:
            raise LanguageError(f"config: languages: {exc.message}", exc.hint) from exc
    if not langs:
        raise LanguageError("config: languages is empty", "give at least one, e.g. languages: [en, de]")
    cfg["languages"] = list(dict.fromkeys(langs))

    def path_of(p: str) -> str:
        q = Path(p).expanduser()
        return os.path.normpath(q if q.is_absolute() else (base / q).absolute())

    if cfg["data"] is not None:
        cfg["data"] = path_of(cfg["data"])
    if cfg["cache_dir"] is not None:
        cfg["cache_dir"] = path_of(cfg["cache_dir"])
    src = cfg["source"]
    if not src.startswith("bundled:") and (src.startswith((".", "/", "~")) or (base / src).exists()):
        cfg["source"] = path_of(src)
    if cfg["corpora"] is not None:
        corpora = {}
        for lang, spec in cfg["corpora"].items():
            try:
                code = normalize_language(str(lang))
            except LanguageError as exc:
                raise LanguageError(f"config: corpora: {exc.message}", exc.hint) from exc
            if code not in cfg["languages"]:
                raise LanguageError(f"config: corpora.{lang}: {code} is not among the languages {cfg['languages']}",
                                    "add it to languages, or drop its corpus")
            specs = spec if isinstance(spec, list) else [spec]
            for s in specs:
                _check_type(f"corpora.{lang}", s, (str,))
            corpora[code] = [s if "://" in s or s.startswith("wordfreq:") else path_of(s) for s in specs]
        cfg["corpora"] = corpora

    stages_raw = cfg["stages"]
    if stages_raw is None:
        stages_raw = {name: {} for name in STAGES}
    elif isinstance(stages_raw, list):
        for i, name in enumerate(stages_raw):
            if not isinstance(name, str):
                raise InputError(f"config: stages[{i}] is {name!r}; it must be a stage name", "stages: " + ", ".join(STAGES))
        stages_raw = {name: {} for name in stages_raw}
    stages: dict[str, Any] = {}
    for name, options in stages_raw.items():
        if name not in _STAGE_OPTIONS:
            raise InputError(f"config: unknown stage {name!r}", "stages are " + ", ".join(STAGES)
                             + " (export writes the bundle: `export: {bundle: true}`)")
        if options is False:
            continue
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
        stages[name] = checked
    if not any(stages.get(s) for s in ("trim", "distill", "export")):
        raise InputError("config: no stage that makes a model (trim, distill or export)", "add at least one, e.g. stages: [trim, export, eval]")
    cfg["stages"] = {name: stages[name] for name in STAGES if stages.get(name) is not None}
    ev = cfg["stages"].get("eval")
    if ev is not None:
        from mlcompress.eval.data import parse_tasks

        try:
            parse_tasks(ev["tasks"])
        except InputError as exc:
            raise InputError(f"config: stages.eval.tasks: {exc.message}", exc.hint) from exc
        if ev["min_retention"] is not None and not 0 < ev["min_retention"] <= 10:
            raise InputError(f"config: stages.eval.min_retention is {ev['min_retention']}", "give a fraction such as 0.95")
        if ev["max_examples"] is not None and ev["max_examples"] < 2:
            raise InputError(f"config: stages.eval.max_examples is {ev['max_examples']}", "give at least 2 (or null for no cap)")
    di = cfg["stages"].get("distill")
    if di is not None and di["time_budget"] is not None:
        from mlcompress.distill import parse_duration

        try:
            parse_duration(di["time_budget"])
        except InputError as exc:
            raise InputError(f"config: stages.distill.time_budget: {exc.message}", exc.hint) from exc
    ex = cfg["stages"].get("export")
    if ex is not None:
        from mlcompress.export.quantize import QUANTIZE_CHOICES

        if ex["quantize"] not in QUANTIZE_CHOICES:
            raise InputError(f"config: stages.export.quantize is {ex['quantize']!r}", "choose one of " + ", ".join(QUANTIZE_CHOICES))
    return cfg


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


def default_data_dir() -> Path | None:
    """$MLCOMPRESS_DATA, else ../shared/data beside the repository (or the working directory), when present."""
    env = os.environ.get("MLCOMPRESS_DATA")
    for cand in ([Path(env)] if env else []) + [REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
                                                 Path.cwd() / "shared" / "data"]:
        if cand.is_dir():
            return cand.absolute()
    return None


def default_config(languages: str | list[str], data: str | os.PathLike[str] | None = None,
                   source: str = DEFAULT_MODEL) -> dict[str, Any]:
    """The built-in job: trim the source to the languages' text in DATA/mono, distill when a GPU is present,
    export an int8-dynamic ONNX bundle, and evaluate it (and the trimmed model) against the source with a 0.95 gate."""
    root = Path(data).expanduser().absolute() if data is not None else default_data_dir()
    if root is None:
        raise InputError("no data folder: --data was not given and ../shared/data is not present",
                         "pass --data DIR, a folder laid out like ../shared/data (mono/<lang>.txt.gz, tatoeba/, sts/), or set MLCOMPRESS_DATA")
    if not root.is_dir():
        raise InputError(f"data folder {root} not found", "pass --data DIR, a folder laid out like ../shared/data")
    return {"source": source, "languages": languages, "data": str(root), "stages": None}


@contextlib.contextmanager
def _output_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on ``out`` (a hidden sibling file, held with flock, freed by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise InputError(f"another mlcompress pipeline is running into {out}",
                             "wait for it to finish (a rerun then reuses its stages), or choose another -o") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(path: Path, discard_damaged: bool = False) -> dict[str, Any]:
    """The pipeline folder's state (empty when new); a damaged one is a clear error (or, with --force, discarded)."""
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        problem = None if isinstance(state, dict) and isinstance(state.get("stages", {}), dict) else "no 'stages' mapping"
    except (OSError, ValueError) as exc:
        problem = str(exc)
    if problem is None:
        return state
    if discard_damaged:
        return {}
    raise InputError(f"{path} is damaged ({problem})",
                     "rerun with --force to redo every stage (the file is rewritten), or use a new output folder")


def in_scope(language: str, languages: list[str]) -> bool:
    """Whether a score's language field ("de", "de-en", "es-en (4a)") involves only the target languages."""
    import re

    codes = re.findall(r"[a-z]{2,3}", language.split("(")[0].lower())
    return bool(codes) and all(c in languages for c in codes)


class _Digests:
    """Content digests of artifact directories, cached by (size, mtime) of every file so that a rerun does not rehash."""

    def __init__(self, cache: dict[str, Any]) -> None:
        self.cache = cache

    def __call__(self, path: Path) -> str:
        from .artifacts import sha256_file

        path = Path(path).absolute()
        files = sorted(p for p in (path.rglob("*") if path.is_dir() else [path]) if p.is_file())
        sig = json_digest([(str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
        hit = self.cache.get(str(path))
        if hit and hit.get("signature") == sig:
            return hit["sha256"]
        digest = hashlib.sha256()
        for p in files:
            digest.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
            digest.update(sha256_file(p).encode())
        value = digest.hexdigest()
        self.cache[str(path)] = {"signature": sig, "sha256": value}
        return value


@dataclass
class PipelineResult:
    """What a pipeline run did: per stage ran / reused / skipped (with why), the gate's verdict, the reports."""

    output: Path
    stages: list[dict[str, Any]]
    passed: bool | None
    gate: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def stage(self, name: str) -> dict[str, Any]:
        return next(s for s in self.stages if s["name"] == name)

    def as_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "passed": self.passed, "gate": self.gate, "stages": self.stages,
                "seconds": self.seconds, "report_json": str(self.output / "report.json"),
                "report_html": str(self.output / "report.html")}


class Pipeline:
    """A validated pipeline config and the code that runs it; see the module docstring."""

    def __init__(self, config: dict[str, Any] | str | os.PathLike[str], *, base_dir: str | os.PathLike[str] | None = None) -> None:
        if isinstance(config, (str, os.PathLike)):
            self.config = load_config(config)
        else:
            self.config = validate_config(config, Path(base_dir) if base_dir else None)

    @classmethod
    def default(cls, languages: str | list[str], data: str | os.PathLike[str] | None = None, source: str = DEFAULT_MODEL) -> Pipeline:
        """The built-in job (see ``default_config``)."""
        return cls(default_config(languages, data, source))

    # ---- planning -------------------------------------------------------------------------------------------------

    def _corpora(self) -> tuple[dict[str, list[str]], list[str]]:
        """Corpora per language (the config's, else DATA/mono/<lang>.txt.gz), and the languages that have none."""
        cfg = self.config
        if cfg["corpora"] is not None:
            corpora = dict(cfg["corpora"])
        else:
            corpora = {}
            if cfg["data"]:
                for lang in cfg["languages"]:
                    p = Path(cfg["data"]) / "mono" / f"{lang}.txt.gz"
                    if p.is_file():
                        corpora[lang] = [str(p)]
        missing = [lang for lang in cfg["languages"] if lang not in corpora]
        return corpora, missing

    def _distill_decision(self) -> tuple[bool, str]:
        opts = self.config["stages"].get("distill")
        if opts is None:
            return False, "not in the config"
        if opts["enabled"] is False:
            return False, "disabled in the config (enabled: false)"
        import torch

        has_gpu = torch.cuda.is_available()
        if opts["device"] == "cuda" and not has_gpu:
            raise InputError("config: stages.distill.device is cuda, but no CUDA GPU is available here",
                             "run on a machine with an NVIDIA GPU, or set stages.distill.enabled: false (or device: cpu with enabled: true)")
        if opts["enabled"] is True:
            return True, "enabled in the config"
        if opts["device"] == "cuda" or (has_gpu and opts["device"] != "cpu"):
            return True, "a CUDA GPU is present"
        return False, "no CUDA GPU on this machine: distillation (BiStil phase 1) needs one for useful speed; " \
                      "set stages.distill.enabled: true to run it on the CPU anyway"

    # ---- running --------------------------------------------------------------------------------------------------

    def run(self, output: str | os.PathLike[str], *, force: bool = False, raise_on_fail: bool = False,
            progress: Callable[[str], None] | None = None) -> PipelineResult:
        """Run (or resume) the pipeline into ``output``; stages whose inputs and options are unchanged are reused.

        One run at a time per output: a second run into the same folder is refused while the first holds its lock.
        """
        with _output_lock(Path(output).expanduser().absolute()):
            return self._run(output, force=force, raise_on_fail=raise_on_fail, progress=progress)

    def _run(self, output: str | os.PathLike[str], *, force: bool, raise_on_fail: bool,
             progress: Callable[[str], None] | None) -> PipelineResult:
        say = progress or (lambda _msg: None)
        cfg = self.config
        out = Path(output).expanduser().absolute()
        state_path = out / STATE_FILE
        if out.exists() and not out.is_dir():
            raise OutputExistsError(f"output {out} exists and is not a directory", "choose another -o")
        if out.is_dir() and any(out.iterdir()) and not state_path.is_file():
            raise OutputExistsError(f"output {out} exists and is not a pipeline folder (no {STATE_FILE})",
                                    "choose another -o (a pipeline folder is reused: unchanged stages are skipped)")
        check_output(state_path, overwrite=True, what="pipeline folder")
        state = _read_state(state_path, discard_damaged=force)
        state.setdefault("stages", {})
        state.setdefault("digests", {})
        digest = _Digests(state["digests"])
        out.mkdir(parents=True, exist_ok=True)
        t_start = time.perf_counter()

        def save_state() -> None:
            state["config"] = cfg
            tmp = state_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(state, indent=2, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, state_path)

        from .sources import resolve_model

        if cfg["data"] is None and "eval" in cfg["stages"]:
            raise InputError("config: stages.eval needs a data folder, and `data` is not set",
                             "add `data: ../shared/data` (a folder laid out like it) to the config, or pass --data")
        run_distill, distill_why = self._distill_decision()
        corpora, missing = self._corpora()
        say(f"source {cfg['source']}")
        source = resolve_model(cfg["source"], cfg["cache_dir"])
        current = {"path": source.path, "digest": digest(source.path), "stage": "source"}
        corpus_fp = self._corpus_fingerprints(corpora)
        records: list[dict[str, Any]] = []
        artifacts: list[dict[str, Any]] = [{"name": "source", "path": str(source.path), "spec": cfg["source"]}]

        def do_stage(name: str, options: dict[str, Any], inputs: dict[str, Any], body: Callable[[Path, dict[str, Any]], dict[str, Any]],
                     note: str | None = None) -> dict[str, Any]:
            target = out / STAGE_DIRS[name]
            fp = json_digest({"stage": name, "options": options, "inputs": inputs, "code": code_digest(name)})
            prev = state["stages"].get(name) or {}
            marker = "mlcompress.json"
            if (not force and prev.get("status") == "done" and prev.get("fingerprint") == fp and (target / marker).is_file()
                    and prev.get("output_digest") == digest(target)):
                say(f"{name}: unchanged, reusing {target}")
                rec = {**prev, "name": name, "action": "reused"}
                records.append(rec)
                return rec
            say(f"{name}: running -> {target}" + (f" ({note})" if note else ""))
            resume = prev.get("status") == "running" and prev.get("fingerprint") == fp and not force
            state["stages"][name] = {"status": "running", "fingerprint": fp, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            save_state()
            t = time.perf_counter()
            metrics = body(target, {"resume": resume})
            rec = {"name": name, "status": "done", "action": "ran", "fingerprint": fp, "output": str(target),
                   "output_digest": digest(target), "options": options, "inputs": inputs,
                   "seconds": round(time.perf_counter() - t, 2), "metrics": metrics, "note": note}
            state["stages"][name] = rec
            save_state()
            records.append(rec)
            return rec

        # 1. trim
        if "trim" in cfg["stages"]:
            opts = cfg["stages"]["trim"]
            scripts = opts["scripts"] or bool(missing)
            note = (f"no text for {', '.join(missing)} (no corpus in the config, no DATA/mono/<lang>.txt.gz): "
                    "trimmed by script instead (every piece written in the languages' scripts)") if missing and not opts["scripts"] else None

            def trim_body(target: Path, _ctx: dict[str, Any]) -> dict[str, Any]:
                from mlcompress.vocab_trim import trim

                r = trim(source.path, cfg["languages"], None if scripts else corpora, target, top_k=opts["top_k"], min_count=opts["min_count"],
                         coverage=opts["coverage"], quotas=opts["quotas"], scripts=scripts, keep_tokens=opts["keep_tokens"],
                         word_variants=opts["word_variants"], frequent_words=opts["frequent_words"], overwrite=True, cache_dir=cfg["cache_dir"],
                         **({"max_vocab": opts["max_vocab"]} if opts["max_vocab"] is not None else {}))  # None: trim's budget
                return {k: v for k, v in r.as_dict().items() if k != "output"}

            rec = do_stage("trim", {**opts, "scripts": scripts, "languages": cfg["languages"]},
                           {"model": current["digest"], "corpora": None if scripts else corpus_fp}, trim_body, note)
            current = {"path": Path(rec["output"]), "digest": rec["output_digest"], "stage": "trim"}
            artifacts.append({"name": "trim", "path": rec["output"]})

        # 2. distill
        if "distill" in cfg["stages"] and run_distill and missing:
            run_distill, distill_why = False, f"no text for {', '.join(missing)}: distillation needs a corpus per language"
        if "distill" in cfg["stages"] and run_distill:
            opts = cfg["stages"]["distill"]

            def distill_body(target: Path, ctx: dict[str, Any]) -> dict[str, Any]:
                from mlcompress.distill import distill_general
                from mlcompress.distill import TrainConfig, parse_duration

                tc = TrainConfig(steps=opts["steps"], batch_size=opts["batch_size"], grad_accum=opts["grad_accum"], lr=float(opts["lr"]),
                                 device=opts["device"], mixed_precision=opts["mixed_precision"],
                                 checkpoint_every=opts["checkpoint_every"], seed=opts["seed"],
                                 time_budget=parse_duration(opts["time_budget"]), progress=False)
                r = distill_general(current["path"], cfg["languages"], corpora, target, every_k=opts["every_k"],
                                    layers=opts["layers"], objective=opts["objective"], max_length=opts["max_length"],
                                    block_size=opts["block_size"], max_blocks_per_language=opts["max_blocks_per_language"],
                                    train_config=tc, overwrite=True, restart=not ctx["resume"], cache_dir=cfg["cache_dir"])
                return r.as_dict() if hasattr(r, "as_dict") else {}

            rec = do_stage("distill", {**opts, "languages": cfg["languages"]}, {"model": current["digest"], "corpora": corpus_fp},
                           distill_body, distill_why)
            current = {"path": Path(rec["output"]), "digest": rec["output_digest"], "stage": "distill"}
            artifacts.append({"name": "distill", "path": rec["output"]})
        else:
            records.append({"name": "distill", "action": "skipped", "note": distill_why})
            state["stages"].pop("distill", None)
            say(f"distill: skipped ({distill_why})")

        # 3. export (+ bundle)
        if "export" in cfg["stages"]:
            opts = cfg["stages"]["export"]

            def export_body(target: Path, _ctx: dict[str, Any]) -> dict[str, Any]:
                import mlcompress.export as ex

                r = ex.export(current["path"], target, format=opts["format"], quantize=opts["quantize"], bundle=opts["bundle"],
                              languages=cfg["languages"], texts=dict(corpora) or None, task=opts["task"],
                              quantize_embeddings=opts["quantize_embeddings"], max_length=opts["max_length"],
                              min_cosine=opts["min_cosine"], force=opts["force"], measure_latency=opts["measure_latency"],
                              max_drop=opts["max_drop"], overwrite=True, cache_dir=cfg["cache_dir"])
                return {k: v for k, v in r.as_dict().items() if k not in ("output", "manifest")}

            rec = do_stage("export", {**opts, "languages": cfg["languages"]}, {"model": current["digest"], "texts": corpus_fp}, export_body)
            current = {"path": Path(rec["output"]), "digest": rec["output_digest"], "stage": "export"}
            artifacts.append({"name": "export", "path": rec["output"]})
        else:
            records.append({"name": "export", "action": "skipped", "note": "not in the config"})

        # 4. eval against the source
        gate: dict[str, Any] = {"min_retention": None, "passed": None, "failures": [], "checked": 0}
        evaluations: dict[str, Any] = {}
        if "eval" in cfg["stages"]:
            opts = cfg["stages"]["eval"]
            cands = [a for a in artifacts[1:]] if opts["candidates"] == "all" else artifacts[-1:]
            cand_inputs = {a["name"]: digest(Path(a["path"])) for a in cands}

            def eval_body(target: Path, _ctx: dict[str, Any]) -> dict[str, Any]:
                from .artifacts import atomic_output_dir, write_provenance
                from mlcompress.eval import Limits, evaluate, load_encoder
                from mlcompress.eval.retention import gate as gate_of
                from mlcompress.eval.retention import summary as summary_of

                limits = Limits().capped(opts["max_examples"]) if opts["max_examples"] else Limits()
                results = {}
                with atomic_output_dir(target, overwrite=True) as tmp:
                    src_enc = load_encoder(cfg["source"], cfg["cache_dir"])  # named as the user did (E5 prefix detection)
                    for a in cands:
                        say(f"eval: {a['name']} against the source")
                        final = a is cands[-1]
                        rep = evaluate(cfg["source"], a["path"], cfg["languages"], opts["tasks"], cfg["data"], tmp / a["name"],
                                       None, task_languages=opts["task_languages"],
                                       limits=limits, transfer=opts["transfer"], cache_dir=cfg["cache_dir"],
                                       encoders=(src_enc, load_encoder(a["path"], cfg["cache_dir"])), within_languages=True,
                                       progress=lambda m: say(f"eval {a['name']}: {m}"))
                        d = rep.as_dict()
                        # the gate judges the target languages: a cross-lingual set pairing one with another language
                        # (e.g. STS17 ar-en for an en,de model) is reported but not gated, since the trim dropped that language
                        scope = [sc for sc in rep.scores if in_scope(sc.language, cfg["languages"])]
                        outside = sorted({sc.language for sc in rep.scores if not in_scope(sc.language, cfg["languages"])})
                        results[a["name"]] = {"gate": gate_of(scope, opts["min_retention"]), "summary": summary_of(scope),
                                              "summary_all_languages": d["summary"], "outside_target_languages": outside,
                                              "efficiency": d["efficiency"], "scores": d["scores"], "skipped": d["skipped"], "final": final}
                    write_provenance(tmp, "pipeline-eval", {**opts, "languages": cfg["languages"], "data": cfg["data"]},
                                     [{"role": "source", "source": cfg["source"], "path": str(source.path)}]
                                     + [{"role": "candidate", "stage": a["name"], "path": a["path"]} for a in cands],
                                     {"results": {k: {"gate": v["gate"], "summary": v["summary"]} for k, v in results.items()}})
                return {"results": results}

            rec = do_stage("eval", {**opts, "languages": cfg["languages"], "data": cfg["data"]},
                           {"source": artifacts[0]["path"], "source_digest": digest(source.path), "candidates": cand_inputs}, eval_body)
            evaluations = rec["metrics"]["results"]
            outside = sorted({x for v in evaluations.values() for x in v.get("outside_target_languages", [])})
            if outside:
                rec["note"] = (f"scores on {', '.join(outside)} pair a target language with one outside {cfg['languages']}: "
                               "reported, not gated (the trim dropped that language's tokens)")
            final = next((v for v in evaluations.values() if v.get("final")), None)
            if final:
                gate = final["gate"]
        result = PipelineResult(out, records, gate.get("passed"), gate, seconds=round(time.perf_counter() - t_start, 2))
        result.report = write_pipeline_report(out, cfg, records, artifacts, evaluations, gate, missing)
        say(f"report: {out / 'report.json'}, {out / 'report.html'}")
        if raise_on_fail and gate.get("passed") is False:
            from mlcompress.eval.retention import gate_error

            raise gate_error(gate, str(out))
        return result

    @staticmethod
    def _corpus_fingerprints(corpora: dict[str, list[str]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for lang, specs in corpora.items():
            fps = []
            for s in specs:
                p = Path(s)
                if p.is_file():
                    st = p.stat()
                    fps.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
                elif p.is_dir():
                    fps.append(json_digest([(str(q), q.stat().st_size, q.stat().st_mtime_ns) for q in sorted(p.rglob("*")) if q.is_file()]))
                else:
                    fps.append(s)
            out[lang] = fps
        return out


# ---- the pipeline report ----------------------------------------------------------------------------------------------


def _stage_rows(artifacts: list[dict[str, Any]], evaluations: dict[str, Any]) -> list[dict[str, Any]]:
    """Per artifact: bytes, parameters, vocabulary, latency and retention (from eval's figures where it measured them)."""
    from .inspect import describe

    rows = []
    src_eff = next((v["efficiency"].get("source") for v in evaluations.values() if v.get("efficiency")), None)
    for a in artifacts:
        info = describe(Path(a["path"]))
        row = {"stage": a["name"], "path": a["path"], "kind": info.get("kind"), "bytes": info.get("bytes"),
               "weight_bytes": info.get("weight_bytes"), "parameters": info.get("parameters"), "vocab_size": info.get("vocab_size")}
        eff = (src_eff if a["name"] == "source" else (evaluations.get(a["name"], {}).get("efficiency") or {}).get("candidate"))
        if eff:
            row["latency_ms_p50"] = eff.get("latency_ms_p50")
            row["throughput_per_s"] = eff.get("throughput_per_s")
            row["peak_memory_bytes"] = eff.get("peak_memory_bytes")
        ev = evaluations.get(a["name"])
        if ev:
            row["retention"] = {t: v["min_retention"] for t, v in ev["summary"].items()}
            row["gate"] = ev["gate"].get("passed")
        rows.append(row)
    return rows


def write_pipeline_report(out: Path, cfg: dict[str, Any], records: list[dict[str, Any]], artifacts: list[dict[str, Any]],
                          evaluations: dict[str, Any], gate: dict[str, Any], missing: list[str]) -> dict[str, Any]:
    """OUT/report.json (the gate's verdict, every stage) and OUT/report.html (one page, plots embedded, opens offline)."""
    rows = _stage_rows(artifacts, evaluations)
    notes = [f"{r['name']}: {r['note']}" for r in records if r.get("note")]
    report = {
        "passed": gate.get("passed"), "gate": gate, "source": cfg["source"], "languages": cfg["languages"], "data": cfg["data"],
        "stages": [{k: v for k, v in r.items() if k not in ("metrics",)} for r in records],
        "artifacts": rows, "evaluations": {k: {"gate": v["gate"], "summary": v["summary"], "scores": v["scores"], "skipped": v["skipped"]}
                                           for k, v in evaluations.items()},
        "notes": notes, "languages_without_text": missing,
    }
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, out / "report.json")
    html = _html(report)
    tmp = out / "report.html.tmp"
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out / "report.html")
    return report


def _png(fig: Any) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(report: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["artifacts"]
    names = [r["stage"] for r in rows]
    figs = []
    for key, label, scale in (("bytes", "size on disk (MB)", 1e6), ("parameters", "parameters (M)", 1e6),
                              ("latency_ms_p50", "latency, batch 1, p50 (ms)", 1.0), ("throughput_per_s", "throughput, batch 32 (sentences/s)", 1.0)):
        vals = [(n, r.get(key)) for n, r in zip(names, rows) if isinstance(r.get(key), (int, float))]
        if len(vals) < 1:
            continue
        fig, ax = plt.subplots(figsize=(5, 2.8))
        bars = ax.bar([n for n, _ in vals], [v / scale for _, v in vals], color="#4c72b0")
        ax.bar_label(bars, fmt="%.1f" if scale != 1.0 or key.startswith("lat") else "%.0f", fontsize=8)
        ax.set_title(label)
        figs.append((label, _png(fig)))
    tasks = sorted({t for r in rows for t in (r.get("retention") or {})})
    evald = [r for r in rows if r.get("retention")]
    if tasks and evald:
        import numpy as np

        fig, ax = plt.subplots(figsize=(6, 3))
        width = 0.8 / len(evald)
        x = np.arange(len(tasks))
        for i, r in enumerate(evald):
            ax.bar(x + i * width, [r["retention"].get(t, np.nan) for t in tasks], width, label=r["stage"])
        if report["gate"].get("min_retention"):
            ax.axhline(report["gate"]["min_retention"], color="red", linestyle="--", linewidth=1, label="gate")
        ax.set_xticks(x + width * (len(evald) - 1) / 2, tasks)
        ax.set_ylim(max(0.0, min([r["retention"].get(t, 1.0) for r in evald for t in tasks] + [0.9]) - 0.05), 1.02)
        ax.set_title("minimum retention per task (candidate / source)")
        ax.legend(fontsize=8)
        figs.append(("retention", _png(fig)))
    return figs


def _html(report: dict[str, Any]) -> str:
    from html import escape as e

    def mb(x: Any) -> str:
        return f"{x / 1e6:,.1f}" if isinstance(x, (int, float)) else "—"

    def num(x: Any, fmt: str = "{:,.2f}") -> str:
        return fmt.format(x) if isinstance(x, (int, float)) else "—"

    verdict = {True: "<b style='color:#1a7f37'>PASSED</b>", False: "<b style='color:#cf222e'>FAILED</b>", None: "no gate"}[report["passed"]]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>mlcompress pipeline report</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}"
             ".muted{color:#666;font-size:90%}</style></head><body>",
             f"<h1>mlcompress pipeline: {e(report['source'])} → {e(', '.join(report['languages']))}</h1>",
             f"<p>Gate: {verdict}" + (f" (every gated score of the final artifact keeps ≥ {report['gate']['min_retention']} of the source's;"
                                       f" {report['gate'].get('checked', 0)} checked)" if report["gate"].get("min_retention") else "") + "</p>",
             f"<p class='muted'>Gate rule: {e(report['gate'].get('rule') or '')}</p>"]
    if report["gate"].get("failures"):
        parts.append("<ul>" + "".join(f"<li>{e(f['task'])} {e(f['language'])} {e(f['metric'])}: {f['retention']:.3f}</li>"
                                      for f in report["gate"]["failures"]) + "</ul>")
    parts.append("<h2>Stages</h2><table><tr><th>stage</th><th>action</th><th>seconds</th><th>note</th></tr>")
    for s in report["stages"]:
        parts.append(f"<tr><td>{e(s['name'])}</td><td>{e(s.get('action', ''))}</td><td>{num(s.get('seconds'), '{:.1f}')}</td>"
                     f"<td style='text-align:left'>{e(s.get('note') or '')}</td></tr>")
    parts.append("</table><h2>Artifacts</h2><table><tr><th>stage</th><th>kind</th><th>MB on disk</th><th>parameters</th><th>vocabulary</th>"
                 "<th>latency p50 ms</th><th>sentences/s</th><th>min retention per task</th></tr>")
    for r in report["artifacts"]:
        ret = ", ".join(f"{t} {v:.3f}" for t, v in (r.get("retention") or {}).items())
        parts.append(f"<tr><td>{e(r['stage'])}</td><td>{e(str(r.get('kind')))}</td><td>{mb(r.get('bytes'))}</td>"
                     f"<td>{num(r.get('parameters'), '{:,}')}</td><td>{num(r.get('vocab_size'), '{:,}')}</td>"
                     f"<td>{num(r.get('latency_ms_p50'))}</td><td>{num(r.get('throughput_per_s'), '{:,.1f}')}</td><td>{e(ret)}</td></tr>")
    parts.append("</table>")
    for label, png in _plots(report):
        parts.append(f"<div style='display:inline-block'><img alt='{e(label)}' src='data:image/png;base64,{png}'></div>")
    for name, ev in report["evaluations"].items():
        parts.append(f"<h2>Retention of {e(name)}</h2><table><tr><th>task</th><th>language</th><th>metric</th><th>source</th>"
                     "<th>candidate</th><th>retention</th><th>95% interval</th><th>gated</th></tr>")
        for s in ev["scores"]:
            iv = s.get("interval") or {}
            span = f"{num(iv.get('retention_low'), '{:.3f}')}..{num(iv.get('retention_high'), '{:.3f}')}" if iv else "—"
            parts.append(f"<tr><td>{e(s['task'])}</td><td>{e(s['language'])}</td><td>{e(s['metric'])}</td><td>{num(s.get('source'), '{:.4f}')}</td>"
                         f"<td>{num(s.get('candidate'), '{:.4f}')}</td><td>{num(s.get('retention'), '{:.4f}')}</td><td>{span}</td>"
                         f"<td title='{e(s.get('note') or '')}'>{'yes' if s.get('gated') else 'no'}</td></tr>")
        parts.append("</table>")
        if ev["skipped"]:
            parts.append("<p class='muted'>skipped: " + "; ".join(e(f"{s['task']} {s['language']}: {s['reason']}") for s in ev["skipped"]) + "</p>")
    if report["notes"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in report["notes"]) + "</ul>")
    parts.append(f"<p class='muted'>data: {e(str(report['data']))}</p></body></html>")
    return "\n".join(parts)


def run_pipeline(config: dict[str, Any] | str | os.PathLike[str], output: str | os.PathLike[str], **kwargs: Any) -> PipelineResult:
    """``Pipeline(config).run(output, **kwargs)``."""
    return Pipeline(config).run(output, **kwargs)


__all__ = ["DEFAULT_EVAL_TASKS", "DEFAULT_MIN_RETENTION", "GateError", "Pipeline", "PipelineResult", "default_config",
           "load_config", "run_pipeline", "validate_config"]
