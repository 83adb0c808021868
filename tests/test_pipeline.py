"""`mlcompress pipeline` and `mlcompress inspect` with a tiny XLM-R source on slices of ../shared/data: config errors that
name the bad field, stage reuse on rerun, resume after an interrupted stage, option changes that rerun only what they
touch, the pipeline report and gate, and what inspect shows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import pipeline_app, tiny_pipeline_data
from tiny_models import build_xlmr, training_lines

from mlcompress.errors import GateError, InputError, LanguageError, OutputExistsError
from mlcompress.orchestrate.config import default_config, load_config, validate_config
from mlcompress.orchestrate.runner import Pipeline




@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """A tiny XLM-R MLM and a data folder laid out like ../shared/data (mono/en, mono/de, Tatoeba deu-eng)."""
    base = tmp_path_factory.mktemp("pipe")
    src = build_xlmr(base / "src", training_lines(data_dir)).path
    data = tiny_pipeline_data(base, data_dir)
    return {"src": src, "data": data}


def _config(tiny: dict[str, Path], **export: object) -> dict:
    return {
        "source": str(tiny["src"]), "languages": "en,de", "data": str(tiny["data"]),
        "stages": {
            "trim": {"scripts": True},  # lossless on German/English text: the gate can be checked exactly
            "distill": {"enabled": False},
            "export": {"quantize": "none", "task": "sentence-embedding", "measure_latency": False, **export},
            "eval": {"tasks": "retrieval,fidelity", "max_examples": 40, "min_retention": 0.97},
        },
    }


# ---- config errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, error, message", [
    ({"langauges": "en"}, InputError, r"unknown key 'langauges' \(did you mean 'languages'\?\)"),
    ({"languages": None}, InputError, "languages is missing"),
    ({"languages": "en,xx"}, LanguageError, "config: languages: unknown language 'xx'"),
    ({"languages": 5}, InputError, "languages is 5 .*a string or a list"),
    ({"stages": {"prune": {}}}, InputError, "unknown stage 'prune'"),
    ({"stages": {"trim": {"top_k": "ten"}}}, InputError, r"stages\.trim\.top_k is 'ten' .*an integer"),
    ({"stages": {"trim": {"scripts": 1}}}, InputError, r"stages\.trim\.scripts is 1 .*true/false"),
    ({"stages": {"trim": {"topk": 5}}}, InputError, r"unknown key stages\.trim\.'topk' \(did you mean 'top_k'\?\)"),
    ({"stages": {"export": {"quantize": "int3"}}}, InputError, r"stages\.export\.quantize is 'int3'"),
    ({"stages": {"export": {"ort": "yes"}}}, InputError, r"stages\.export\.ort is 'yes'"),
    ({"stages": {"distill": {"enabled": "sometimes"}}}, InputError, r"stages\.distill\.enabled is 'sometimes'"),
    ({"stages": {"trim": {}, "eval": {"tasks": "retrieval,vibes"}}}, InputError, r"stages\.eval\.tasks"),
    ({"stages": {"trim": {}, "eval": {"min_retention": -1}}}, InputError, r"stages\.eval\.min_retention"),
    ({"stages": ["eval"]}, InputError, "no stage that makes a model"),
    ({"corpora": {"el": "x.txt"}}, LanguageError, r"corpora\.el: el is not among the languages"),
])
def test_config_errors_name_the_field(tiny: dict[str, Path], change: dict, error: type, message: str) -> None:
    cfg = {"source": str(tiny["src"]), "languages": "en,de", "data": str(tiny["data"])} | change
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with pytest.raises(error, match=message):
        validate_config(cfg)


def test_config_file_errors_and_defaults(tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("languages: [en, de\nstages: {", encoding="utf-8")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "sub" / "pipe.yaml"
    good.parent.mkdir()
    good.write_text("languages: en,de\ndata: ../data\nstages: [trim, export]\n", encoding="utf-8")
    cfg = load_config(good)
    assert cfg["data"] == str(tmp_path / "data")  # relative to the file
    assert list(cfg["stages"]) == ["trim", "export"] and cfg["stages"]["export"]["quantize"] == "auto"
    assert cfg["source"] == "bundled:multilingual-e5-small"
    full = validate_config({"languages": ["EN", "deu"]})
    assert full["languages"] == ["en", "de"] and list(full["stages"]) == ["trim", "distill", "export", "eval"]
    assert full["stages"]["eval"]["min_retention"] == 0.95
    # without a data folder, the built-in job reads word lists and the packaged eval sample (test_pipeline_no_data.py)
    monkeypatch.setattr("mlcompress.orchestrate.config.default_data_dir", lambda: None)
    assert default_config("en,de")["corpora"]["de"] == ["wordfreq:de?wordlist=best&n=50000"]
    with pytest.raises(InputError, match=r"(?s)no text for sw.*--data"):
        default_config("en,sw")
    with pytest.raises(InputError, match="not found"):
        default_config("en,de", tmp_path / "nowhere")
    assert default_config("en,de", tiny["data"])["data"] == str(tiny["data"])


def test_asking_for_cuda_without_a_gpu_is_a_clear_error(tiny: dict[str, Path], tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = _config(tiny)
    cfg["stages"]["distill"] = {"device": "cuda"}
    with pytest.raises(InputError, match="device is cuda, but no CUDA GPU"):
        Pipeline(cfg).run(tmp_path / "out")
    assert not (tmp_path / "out" / "01-trim").exists()


def test_refuses_a_folder_that_is_not_a_pipeline(tiny: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not a pipeline folder"):
        Pipeline(_config(tiny)).run(tmp_path / "taken")
    assert (tmp_path / "taken" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("damage", ['{"stages": {"trim": ', "[1, 2]", "\xff\xfe"])
def test_a_damaged_pipeline_json_is_a_clear_error(tiny: dict[str, Path], tmp_path: Path, damage: str) -> None:
    """A damaged pipeline.json is refused with a hint and left as it was; --force discards it and reruns."""
    out = tmp_path / "pipe"
    out.mkdir()
    (out / "pipeline.json").write_text(damage, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(InputError, match="pipeline.json is damaged") as info:
        Pipeline(_config(tiny)).run(out)
    assert "--force" in info.value.hint
    assert (out / "pipeline.json").read_text(encoding="utf-8", errors="surrogateescape") == damage
    assert sorted(p.name for p in out.iterdir()) == ["pipeline.json"]
    if damage.startswith("{"):  # one rerun with --force is enough to show it recovers
        assert Pipeline(_config(tiny)).run(out, force=True).passed


def test_a_second_run_into_the_same_output_is_refused_while_one_runs(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Two runs on one output: the second is refused at once (a lock), and the first's folder is untouched."""
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "pipe"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys, time
        h = open({str(tmp_path / '.pipe.lock')!r}, "a+b")
        fcntl.flock(h, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match="another mlcompress pipeline is running"):
            Pipeline(_config(tiny)).run(out)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


# ---- running, reuse, resume ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run 1 is interrupted inside export; run 2 resumes; run 3 changes nothing; run 4 changes export's quantisation."""
    import mlcompress.export as ex

    out = tmp_path_factory.mktemp("chain") / "out"
    real = ex.export

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C half-way through the export

    ex.export = boom
    try:
        with pytest.raises(KeyboardInterrupt):
            Pipeline(_config(tiny)).run(out)
    finally:
        ex.export = real
    after_interrupt = {"state": json.loads((out / "pipeline.json").read_text()), "dirs": sorted(p.name for p in out.iterdir()),
                       "trim_mtime": (out / "01-trim" / "mlcompress.json").stat().st_mtime_ns}
    r2 = Pipeline(_config(tiny)).run(out)
    report_2 = json.loads((out / "report.json").read_text())
    html_2 = (out / "report.html").read_text()
    trim_mtime_2 = (out / "01-trim" / "mlcompress.json").stat().st_mtime_ns
    export_mtime_2 = (out / "03-export" / "manifest.json").stat().st_mtime_ns
    r3 = Pipeline(_config(tiny)).run(out)
    export_mtime_3 = (out / "03-export" / "manifest.json").stat().st_mtime_ns
    r4 = Pipeline(_config(tiny, quantize="int8-dynamic")).run(out)
    return {"out": out, "interrupted": after_interrupt, "r2": r2, "r3": r3, "r4": r4, "trim_mtime_2": trim_mtime_2,
            "export_mtime_2": export_mtime_2, "export_mtime_3": export_mtime_3,
            "report_2": report_2, "html_2": html_2}


def test_interrupted_stage_leaves_no_artifact(chain: dict) -> None:
    i = chain["interrupted"]
    assert "01-trim" in i["dirs"] and "03-export" not in i["dirs"] and "04-eval" not in i["dirs"]
    assert i["state"]["stages"]["trim"]["status"] == "done"
    assert i["state"]["stages"]["export"]["status"] == "running"


def test_rerun_resumes_after_the_interrupted_stage(chain: dict) -> None:
    r2 = chain["r2"]
    assert [(s["name"], s["action"]) for s in r2.stages] == [("trim", "reused"), ("distill", "skipped"), ("export", "ran"), ("eval", "ran")]
    assert chain["trim_mtime_2"] == chain["interrupted"]["trim_mtime"]  # trim was not redone
    assert "disabled in the config" in r2.stage("distill")["note"]
    assert r2.passed is True and r2.gate["checked"] >= 3
    rep = chain["report_2"]
    assert rep["passed"] is True and [a["stage"] for a in rep["artifacts"]] == ["source", "trim", "export"]
    assert set(rep["evaluations"]) == {"trim", "export"}
    # scripts trim + fp32 export of the same network: embeddings, and so retrieval, are kept
    assert all(s["retention"] > 0.99 for s in rep["evaluations"]["export"]["scores"])
    assert rep["artifacts"][1]["vocab_size"] < rep["artifacts"][0]["vocab_size"]
    html = chain["html_2"]
    assert "PASSED" in html and "data:image/png;base64," in html and "http" not in html.split("<body>")[1].split("data:")[0]
    for stage in ("01-trim", "03-export", "04-eval"):
        assert (chain["out"] / stage / "mlcompress.json").is_file()


def test_unchanged_rerun_reuses_every_stage(chain: dict) -> None:
    assert [(s["name"], s["action"]) for s in chain["r3"].stages] == [("trim", "reused"), ("distill", "skipped"),
                                                                       ("export", "reused"), ("eval", "reused")]
    assert chain["export_mtime_3"] == chain["export_mtime_2"]
    assert chain["r3"].passed is True


def test_changed_option_reruns_that_stage_and_what_follows(chain: dict) -> None:
    r4 = chain["r4"]
    assert [(s["name"], s["action"]) for s in r4.stages] == [("trim", "reused"), ("distill", "skipped"), ("export", "ran"), ("eval", "ran")]
    manifest = json.loads((chain["out"] / "03-export" / "manifest.json").read_text())
    assert manifest["quantization"]["name"] == "int8-dynamic"
    assert r4.passed is not None


def test_changed_upstream_artifact_is_noticed(chain: dict, tiny: dict[str, Path]) -> None:
    """A stage's input is fingerprinted by content: touching the trimmed model reruns everything after it."""
    out = chain["out"]
    with open(out / "01-trim" / "id_map.json", "a", encoding="utf-8") as handle:
        handle.write(" ")
    r = Pipeline(_config(tiny, quantize="int8-dynamic")).run(out)
    assert [(s["name"], s["action"]) for s in r.stages][0] == ("trim", "ran")  # its own artifact no longer matches its record


def test_changed_stage_code_reruns_that_stage(chain: dict, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """After an upgrade that changed the export code, a rerun redoes export (and eval after it), not trim."""
    import mlcompress.orchestrate.runner as pl

    out = chain["out"]
    Pipeline(_config(tiny, quantize="int8-dynamic")).run(out)  # settle after the tests before
    real = pl.code_digest
    monkeypatch.setattr(pl, "code_digest", lambda stage: real(stage) + ("-upgraded" if stage == "export" else ""))
    r = Pipeline(_config(tiny, quantize="int8-dynamic")).run(out)
    assert [(s["name"], s["action"]) for s in r.stages] == [("trim", "reused"), ("distill", "skipped"), ("export", "ran"), ("eval", "ran")]
    assert len(real("export")) == 64 and real("export") != real("trim")
    monkeypatch.undo()  # back to the installed code: export is redone once more, and the tests after see a settled folder
    assert Pipeline(_config(tiny, quantize="int8-dynamic")).run(out).stage("export")["action"] == "ran"


def test_failed_gate_is_reported_and_raised(tiny: dict[str, Path], chain: dict, tmp_path: Path) -> None:
    cfg = _config(tiny)
    cfg["stages"]["eval"]["min_retention"] = 1.5  # no candidate keeps 150 %
    with pytest.raises(GateError, match="retention gate failed"):
        Pipeline(cfg).run(tmp_path / "out", raise_on_fail=True)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["passed"] is False


# ---- CLI and inspect -------------------------------------------------------------------------------------------------




def test_cli_pipeline_with_a_config_file(chain: dict, tiny: dict[str, Path], tmp_path: Path) -> None:
    import yaml

    cfg = _config(tiny, quantize="int8-dynamic")
    cfg["stages"]["eval"]["min_retention"] = 0.01  # only eval's options change: it alone reruns
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    res = CliRunner().invoke(pipeline_app(), ["pipeline", str(path), "-o", str(chain["out"]), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout[res.stdout.index("{"):])
    assert data["passed"] is True
    assert {s["name"]: s["action"] for s in data["stages"]} == {"trim": "reused", "distill": "skipped", "export": "reused", "eval": "ran"}
    res = CliRunner().invoke(pipeline_app(), ["pipeline", "-o", str(tmp_path / "x")])
    assert isinstance(res.exception, InputError) and "no config and no languages" in res.exception.message


def test_inspect_bundle_model_and_pipeline(chain: dict, tiny: dict[str, Path]) -> None:
    from mlcompress.orchestrate.inspect import inspect

    out = chain["out"]
    b = inspect(out / "03-export")
    assert b["kind"] == "export bundle" and b["quantization"] == "int8-dynamic" and b["languages"] == ["en", "de"]
    assert b["parameters"] > 0 and b["bytes"] > b["weight_bytes"] > 0
    assert [s["stage"] for s in b["provenance"]][:2] == ["export", "trim"]
    assert b["provenance"][-1]["stage"] == "source"
    m = inspect(out / "01-trim")
    assert m["kind"] == "model" and m["model_type"] == "xlm-roberta" and m["languages"] == ["en", "de"]
    src = inspect(tiny["src"])
    assert m["vocab_size"] < src["vocab_size"] and m["parameters"] < src["parameters"]
    assert src["provenance"] == [{"path": str(tiny["src"]), "stage": None, "record": False}]
    p = inspect(out)
    assert p["kind"] == "pipeline" and p["stages"]["trim"]["status"] == "done" and p["passed"] is not None

    res = CliRunner().invoke(pipeline_app(), ["inspect", str(out / "03-export")])
    assert res.exit_code == 0, res.output
    for word in ("export bundle", "vocabulary", "parameters", "int8-dynamic", "provenance", "trim"):
        assert word in res.stdout
    res = CliRunner().invoke(pipeline_app(), ["inspect", str(out), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["kind"] == "pipeline"
    res = CliRunner().invoke(pipeline_app(), ["inspect", str(tiny["data"])])
    assert isinstance(res.exception, InputError) and "not an mlcompress artifact" in res.exception.message


def test_import_is_light() -> None:
    code = ("import sys, mlcompress, mlcompress.orchestrate.runner, mlcompress.orchestrate.pipeline_cli, mlcompress.orchestrate.inspect, "
            "mlcompress.orchestrate.cli; mlcompress.Pipeline; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


# ---- the distill stage, and a SIGKILL in every stage ------------------------------------------------------------------


def _kill_run(kill: str, config: Path, out: Path) -> subprocess.CompletedProcess:
    """``mlcompress pipeline CONFIG -o OUT`` in a child process that SIGKILLs itself at ``kill`` (see fault_child.py)."""
    tests = Path(__file__).parent
    return subprocess.run([sys.executable, str(tests / "fault_child.py"), "--kill", kill, "--", "pipeline", str(config),
                           "-o", str(out)], capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "PYTHONPATH": str(tests)})


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_distill_stage_runs_and_survives_a_sigkill_in_every_stage(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The pipeline with its distill stage on the CPU (tiny XLM-R, four steps), killed (SIGKILL: no cleanup) in each
    stage in turn: finished stages stay as they were, the killed stage leaves no artifact, and the last run reuses
    what was done, resumes the distillation from its last complete checkpoint and completes the pipeline."""
    from mlcompress.orchestrate.runner import STAGE_DIRS

    cfg = _config(tiny)
    cfg["stages"]["distill"] = {"enabled": True, "device": "cpu", "steps": 4, "batch_size": 4, "block_size": 32,
                                "max_blocks_per_language": 8, "checkpoint_every": 1, "mixed_precision": "no"}
    config = tmp_path / "pipe.json"
    config.write_text(json.dumps(cfg), encoding="utf-8")
    out = tmp_path / "out"
    # where each run dies: half-way through a file of the stage's new artifact (distill: its second checkpoint,
    # after the work dir's settings and the first checkpoint)
    kills = {"trim": "write:.01-trim.tmp-", "distill": "write:.02-distill.work:3", "export": "write:.03-export.tmp-",
             "eval": "write:.04-eval.tmp-"}
    finished: dict[str, dict[str, bytes]] = {}  # each done stage's files, as the run that finished it left them
    for i, (stage, kill) in enumerate(kills.items()):
        run = _kill_run(kill, config, out)
        assert run.returncode == -9, run.stderr[-3000:]
        state = json.loads((out / "pipeline.json").read_text())
        assert state["stages"][stage]["status"] == "running"
        assert not (out / STAGE_DIRS[stage]).exists()  # no half artifact under the stage's name
        for name, files in finished.items():  # stages finished by earlier runs: reused, untouched
            assert _files(out / STAGE_DIRS[name]) == files
        for name in list(kills)[:i]:
            assert state["stages"][name]["status"] == "done"
            finished.setdefault(name, _files(out / STAGE_DIRS[name]))  # the stage this run finished
    r = Pipeline(cfg).run(out)
    assert [(s["name"], s["action"]) for s in r.stages] == [("trim", "reused"), ("distill", "reused"),
                                                            ("export", "reused"), ("eval", "ran")]
    state = json.loads((out / "pipeline.json").read_text())
    distill = state["stages"]["distill"]["metrics"]
    assert distill["steps"] == 4 and distill["resumed_from"] == 1  # the run killed at step 2 resumed from step 1
    assert (out / "02-distill" / "model.safetensors").is_file() and not (out / ".02-distill.work").exists()
    assert (out / "report.json").is_file() and not [p for p in out.iterdir() if ".tmp-" in p.name]
