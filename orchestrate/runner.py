"""`Pipeline`: trim -> distill (GPU) -> export (bundle) -> eval against the source, from one validated config.

Each stage writes its artifact under ``OUT/<nn-stage>/`` (with ``mlcompress.json``); ``OUT/pipeline.json`` records, per
stage, a fingerprint of its options, of the content of its inputs and of the stage's code. A rerun skips a stage whose fingerprint is
unchanged and whose artifact is still there; an interrupted stage left no artifact (stages write atomically) and is
redone (distill resumes from its own checkpoints). The run ends with ``OUT/report.json`` (the gate's verdict) and
``OUT/report.html`` (sizes, speed and retention at every stage).

This module owns the run: its state, the output lock, the fingerprints and the generic per-stage step. What each stage
does is in ``stages``; the config in ``config``; the report in ``report``. Importing it is light: no torch, no transformers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcompress.artifacts import check_output, json_digest, sha256_file
from mlcompress.errors import InputError, OutputExistsError
from mlcompress.sources import DEFAULT_MODEL

from . import stages
from .config import default_config, load_config, validate_config, with_distillation
from .card import write_pipeline_card
from .no_data import export_texts, sample_announcement, word_list_only
from .report import write_pipeline_report

STATE_FILE = "pipeline.json"
STAGE_DIRS = {"trim": "01-trim", "distill": "02-distill", "export": "03-export", "eval": "04-eval"}
STAGE_PACKAGES = {"trim": "vocab_trim", "distill": "distill", "export": "export", "eval": "eval"}
_NO_GATE: dict[str, Any] = {"min_retention": None, "passed": None, "failures": [], "checked": 0}

Say = Callable[[str], None]
# a stage's work: (its output folder, whether an interrupted run of it may be resumed) -> the metrics it measured
Body = Callable[[Path, bool], dict[str, Any]]


# ---- fingerprints -----------------------------------------------------------------------------------------------------


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


_RECORD_SUFFIXES = (".npz", ".jsonl")  # a stage's statistics beside a model (token counts, metrics)
_CARD = "README.md"  # a model card describes an artifact and is rewritten after eval (card.py): never part of a digest


class _Digests:
    """Content digests of artifact directories, cached by (size, mtime) of every file so that a rerun does not rehash."""

    def __init__(self, cache: dict[str, Any]) -> None:
        self.cache = cache

    def __call__(self, path: Path, model_only: bool = False) -> str:
        """The digest of every file under ``path``; ``model_only``: of the model's files alone, without the records a
        stage writes beside them (mlcompress.json, statistics), which differ each time the same model is remade."""
        path = Path(path).absolute()
        files = sorted(p for p in (path.rglob("*") if path.is_dir() else [path]) if p.is_file() and p.name != _CARD
                       and not (model_only and (p.name == "mlcompress.json" or p.suffix in _RECORD_SUFFIXES)))
        sig = json_digest([(str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
        key = str(path) + ("#model" if model_only else "")
        hit = self.cache.get(key)
        if hit and hit.get("signature") == sig:
            return hit["sha256"]
        digest = hashlib.sha256()
        for p in files:
            digest.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
            digest.update(sha256_file(p).encode())
        value = digest.hexdigest()
        self.cache[key] = {"signature": sig, "sha256": value}
        return value


def corpus_fingerprints(corpora: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per language, each corpus as path:size:mtime (a file), a digest of its files' (a folder), or its spec (anything else)."""
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


# ---- the output folder: lock and state ----------------------------------------------------------------------------------


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
                     "rerun with --force to redo every stage (the file is rewritten; an interrupted distillation "
                     "resumes from its checkpoints), or use a new output folder")


class _Run:
    """One run into a pipeline folder: its state (pipeline.json), the digests, and what the stages did so far."""

    def __init__(self, config: dict[str, Any], out: Path, force: bool, say: Say) -> None:
        self.config, self.out, self.force, self.say = config, out, force, say
        self.state_path = out / STATE_FILE
        if out.exists() and not out.is_dir():
            raise OutputExistsError(f"output {out} exists and is not a directory", "choose another -o")
        if out.is_dir() and any(out.iterdir()) and not self.state_path.is_file():
            raise OutputExistsError(f"output {out} exists and is not a pipeline folder (no {STATE_FILE})",
                                    "choose another -o (a pipeline folder is reused: unchanged stages are skipped)")
        check_output(self.state_path, overwrite=True, what="pipeline folder")
        self.state = _read_state(self.state_path, discard_damaged=force)
        self.state.setdefault("stages", {})
        self.state.setdefault("digests", {})
        self.digest = _Digests(self.state["digests"])
        out.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        self.artifacts: list[dict[str, Any]] = []
        self.current: dict[str, Any] = {}  # the artifact the next stage starts from: path, digest, stage

    def save_state(self) -> None:
        self.state["config"] = self.config
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.state_path)

    def _reusable(self, name: str, fp: str, target: Path) -> dict[str, Any] | None:
        prev = self.state["stages"].get(name) or {}
        if (not self.force and prev.get("status") == "done" and prev.get("fingerprint") == fp
                and (target / "mlcompress.json").is_file() and prev.get("output_digest") == self.digest(target)):
            return prev
        return None

    def stage(self, name: str, options: dict[str, Any], inputs: dict[str, Any], body: Body, note: str | None = None,
              check: Callable[[Path, bool], None] | None = None, resume_key: Any = None) -> dict[str, Any]:
        """Reuse the stage's artifact when its fingerprint (options, inputs, code) is unchanged, else run ``body`` (after
        ``check``, which may refuse before the run's state changes); record it. ``resume_key`` (default: the inputs)
        says whether an interrupted attempt worked on the same inputs."""
        target = self.out / STAGE_DIRS[name]
        fp = json_digest({"stage": name, "options": options, "inputs": inputs, "code": code_digest(name)})
        prev = self._reusable(name, fp, target)
        if prev is not None:
            self.say(f"{name}: unchanged, reusing {target}")
            rec = {**prev, "name": name, "action": "reused"}
            self.records.append(rec)
            return rec
        self.say(f"{name}: running -> {target}" + (f" ({note})" if note else ""))
        prev = self.state["stages"].get(name) or {}
        inputs_digest = json_digest(inputs if resume_key is None else resume_key)
        # False only when the interrupted attempt is known to have started from other inputs (--force redoes a stage,
        # but an interrupted distillation of the same inputs resumes: its checkpoints are hours of training)
        resume = not (prev.get("status") == "running" and prev.get("inputs_digest", inputs_digest) != inputs_digest)
        if check is not None:
            check(target, resume)
        self.state["stages"][name] = {"status": "running", "fingerprint": fp, "inputs_digest": inputs_digest,
                                      "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.save_state()
        t = time.perf_counter()
        metrics = body(target, resume)
        rec = {"name": name, "status": "done", "action": "ran", "fingerprint": fp, "output": str(target),
               "output_digest": self.digest(target), "options": options, "inputs": inputs,
               "seconds": round(time.perf_counter() - t, 2), "metrics": metrics, "note": note}
        self.state["stages"][name] = rec
        self.save_state()
        self.records.append(rec)
        return rec

    def made(self, rec: dict[str, Any]) -> None:
        """The stage's artifact is the next stage's input."""
        self.current = {"path": Path(rec["output"]), "digest": rec["output_digest"], "stage": rec["name"]}
        self.artifacts.append({"name": rec["name"], "path": rec["output"]})


# ---- the pipeline -------------------------------------------------------------------------------------------------------


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
        """One stage's record (ran, reused or skipped, with its note)."""
        return next(s for s in self.stages if s["name"] == name)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `mlcompress pipeline --json` prints)."""
        return {"output": str(self.output), "passed": self.passed, "gate": self.gate, "stages": self.stages,
                "seconds": self.seconds, "student_vs_trim": self.report.get("student_vs_trim"),
                "report_json": str(self.output / "report.json"),
                "report_html": str(self.output / "report.html")}

    def summary(self) -> str:
        """A few lines: each stage's action, each artifact's size and retention, the gate's verdict, the reports."""
        from .report import pipeline_summary

        return pipeline_summary(self)

    def __str__(self) -> str:
        return self.summary()


class Pipeline:
    """A validated pipeline config and the code that runs it; see the module docstring."""

    def __init__(self, config: dict[str, Any] | str | os.PathLike[str], *, base_dir: str | os.PathLike[str] | None = None,
                 distill: bool | None = None, distill_budget: str | float | None = None) -> None:
        """``distill``: True distils (on a CPU too), False never; ``distill_budget`` ("30m", seconds) distils within that
        time (``stages.distill.enabled`` / ``time_budget``; ``mlcompress pipeline --distill --distill-budget 30m``)."""
        if isinstance(config, (str, os.PathLike)):
            self.config = load_config(config)
        else:
            self.config = validate_config(config, Path(base_dir) if base_dir else None)
        self.config = with_distillation(self.config, distill, distill_budget)

    @classmethod
    def default(cls, languages: str | list[str], data: str | os.PathLike[str] | None = None, source: str = DEFAULT_MODEL, *,
                distill: bool | None = None, distill_budget: str | float | None = None) -> Pipeline:
        """The built-in job (see ``default_config``), with distillation asked for or turned off as in ``__init__``."""
        return cls(default_config(languages, data, source), distill=distill, distill_budget=distill_budget)

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
        """Whether to distil, and why: asked for (``enabled: true`` or a time budget), or ``auto`` and a GPU is here."""
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
        if opts["time_budget"] is not None:  # a budget asks for a student within that time, on whatever device is here
            return True, f"a time budget is set ({opts['time_budget']})"
        if opts["device"] == "cuda" or (has_gpu and opts["device"] != "cpu"):
            return True, "a CUDA GPU is present"
        return False, "no CUDA GPU on this machine, so no student was distilled (the trim is the model); " \
                      "--distill-budget 30m (stages.distill.time_budget) distils one on this CPU within 30 minutes"

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
        t_start = time.perf_counter()
        from mlcompress.sources import resolve_model

        if cfg["data"] is None and "eval" in cfg["stages"]:
            raise InputError("config: stages.eval needs a data folder, and `data` is not set",
                             "add `data: ../shared/data` (a folder laid out like it) to the config, or pass --data")
        distill_decision = self._distill_decision()
        corpora, missing = self._corpora()
        say(f"source {cfg['source']}")
        announcement = sample_announcement(cfg)
        if announcement:
            say(announcement)
        source = resolve_model(cfg["source"], cfg["cache_dir"])
        distill_decision = self._check_family(source.path, distill_decision)  # before anything is written
        run = _Run(cfg, Path(output).expanduser().absolute(), force, say)
        run.current = {"path": source.path, "digest": run.digest(source.path), "stage": "source"}
        run.artifacts.append({"name": "source", "path": str(source.path), "spec": cfg["source"]})
        corpus_fp = corpus_fingerprints(corpora)
        self._trim(run, corpora, corpus_fp, missing)
        self._distill(run, corpora, corpus_fp, missing, distill_decision)
        self._export(run, corpora, corpus_fp)
        gate, evaluations = self._eval(run, source.path)
        result = PipelineResult(run.out, run.records, gate.get("passed"), gate, seconds=round(time.perf_counter() - t_start, 2))
        result.report = write_pipeline_report(run.out, cfg, run.records, run.artifacts, evaluations, gate, missing)
        card = write_pipeline_card(run.out, cfg, run.artifacts, evaluations, result.report.get("student_vs_trim"))
        if card is not None:
            say(f"model card: {card}")
        say(f"report: {run.out / 'report.json'}, {run.out / 'report.html'}")
        if raise_on_fail and gate.get("passed") is False:
            from mlcompress.eval import gate_error

            raise gate_error(gate, str(run.out))
        return result

    def _check_family(self, source_path: Path, distill: tuple[bool, str]) -> tuple[bool, str]:
        """Refuse, before any stage runs, a source whose family the pipeline or one of its stages does not handle; an
        automatic distillation (``enabled: auto``) is skipped for such a family instead. Returns the distill decision."""
        from mlcompress.families import SUPPORT, check_supported, model_family

        family = model_family(source_path)
        check_supported(family, "pipeline", self.config["source"])
        if distill[0] and not SUPPORT[family]["distill"] and self.config["stages"]["distill"]["enabled"] == "auto":
            distill = (False, f"{family} models are not distilled yet")
        for stage in self.config["stages"]:
            if stage != "distill" or distill[0]:
                check_supported(family, stage, self.config["source"])
        return distill

    def _trim(self, run: _Run, corpora: dict[str, list[str]], corpus_fp: dict[str, list[str]], missing: list[str]) -> None:
        """1. trim: by the corpora, or by script when a language has no text."""
        cfg = self.config
        if "trim" not in cfg["stages"]:
            return
        opts = cfg["stages"]["trim"]
        scripts = opts["scripts"] or bool(missing)
        note = (f"no text for {', '.join(missing)} (no corpus in the config, no DATA/mono/<lang>.txt.gz): "
                "trimmed by script instead (every piece written in the languages' scripts)") if missing and not opts["scripts"] else None
        model = run.current["path"]
        rec = run.stage("trim", {**opts, "scripts": scripts, "languages": cfg["languages"]},
                        {"model": run.current["digest"], "corpora": None if scripts else corpus_fp},
                        lambda target, _resume: stages.trim_stage(model, target, cfg, None if scripts else corpora, scripts), note)
        run.made(rec)

    def _distill(self, run: _Run, corpora: dict[str, list[str]], corpus_fp: dict[str, list[str]], missing: list[str],
                 decision: tuple[bool, str]) -> None:
        """2. distill, when the config asks for it and a GPU is present (or it is forced on), and every language has text."""
        cfg = self.config
        run_distill, why = decision
        if "distill" in cfg["stages"] and run_distill and missing:
            run_distill, why = False, f"no text for {', '.join(missing)}: distillation needs a corpus per language"
        lists = word_list_only(corpora)
        if run_distill and lists and cfg["stages"]["distill"]["enabled"] == "auto":
            run_distill, why = False, (f"the corpora of {', '.join(lists)} are word lists, not running text: distillation "
                                       "needs text (pass --data DIR, or corpora per language)")
        if not ("distill" in cfg["stages"] and run_distill):
            run.records.append({"name": "distill", "action": "skipped", "note": why})
            run.state["stages"].pop("distill", None)
            run.say(f"distill: skipped ({why})")
            return
        model = run.current["path"]
        options = {k: v for k, v in cfg["stages"]["distill"].items() if k != "restart"}  # what to do, not what to make
        rec = run.stage("distill", {**options, "languages": cfg["languages"]},
                        {"model": run.current["digest"], "corpora": corpus_fp},
                        lambda target, resume: stages.distill_stage(model, target, cfg, corpora, resume), why,
                        check=lambda target, resume: stages.check_distill_resume(target, cfg, resume),
                        resume_key={"model": run.digest(model, model_only=True), "corpora": corpus_fp})
        run.made(rec)

    def _export(self, run: _Run, corpora: dict[str, list[str]], corpus_fp: dict[str, list[str]]) -> None:
        """3. export (+ bundle), calibrated and checked on the corpora."""
        cfg = self.config
        if "export" not in cfg["stages"]:
            run.records.append({"name": "export", "action": "skipped", "note": "not in the config"})
            return
        model = run.current["path"]
        texts = export_texts(cfg, corpora)  # the corpora (on the packaged sample: its sentences for word lists)
        rec = run.stage("export", {**cfg["stages"]["export"], "languages": cfg["languages"]},
                        {"model": run.current["digest"], "texts": corpus_fp if texts is corpora else corpus_fingerprints(texts)},
                        lambda target, _resume: stages.export_stage(model, target, cfg, texts))
        run.made(rec)

    def _eval(self, run: _Run, source_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """4. eval of every candidate (or the final one) against the source; the final candidate's gate is the run's."""
        cfg = self.config
        if "eval" not in cfg["stages"]:
            return dict(_NO_GATE, failures=[]), {}
        from mlcompress.eval import is_sample_data, sample_note

        opts = cfg["stages"]["eval"]
        cands = eval_candidates(run.artifacts, opts["candidates"])
        cand_inputs = {a["name"]: run.digest(Path(a["path"])) for a in cands}
        rec = run.stage("eval", {**opts, "languages": cfg["languages"], "data": cfg["data"]},
                        {"source": run.artifacts[0]["path"], "source_digest": run.digest(source_path), "candidates": cand_inputs},
                        lambda target, _resume: stages.eval_stage(target, cfg, source_path, cands, run.say))
        evaluations = rec["metrics"]["results"]
        outside = sorted({x for v in evaluations.values() for x in v.get("outside_target_languages", [])})
        ran = list(dict.fromkeys([s["task"] for v in evaluations.values() for s in v.get("scores", [])]
                                 + ["efficiency"] * any(v.get("efficiency") for v in evaluations.values())))
        notes = [sample_note(cfg["languages"], ran)] if is_sample_data(cfg["data"]) else []
        if outside:
            notes.append(f"scores on {', '.join(outside)} pair a target language with one outside {cfg['languages']}: "
                         "reported, not gated (the trim dropped that language's tokens)")
        if notes:
            rec["note"] = "; ".join(notes)
        final = next((v for v in evaluations.values() if v.get("final")), None)
        return (final["gate"] if final else dict(_NO_GATE, failures=[])), evaluations


def eval_candidates(artifacts: list[dict[str, Any]], which: str) -> list[dict[str, Any]]:
    """The artifacts eval scores (the last one is final and decides the gate): every one made, or the final alone; when
    a student was distilled, the trimmed model too, so the report can show what the student's speed costs."""
    made = artifacts[1:]
    cands = list(made) if which == "all" else made[-1:]
    names = [a["name"] for a in made]
    if "distill" in names and "trim" in names and not any(a["name"] == "trim" for a in cands):
        cands.insert(0, next(a for a in made if a["name"] == "trim"))
    return cands


def run_pipeline(config: dict[str, Any] | str | os.PathLike[str], output: str | os.PathLike[str], **kwargs: Any) -> PipelineResult:
    """``Pipeline(config).run(output, **kwargs)``."""
    return Pipeline(config).run(output, **kwargs)
