"""The pipeline with a distilled student (tiny XLM-R, on the CPU, within a few seconds' budget): asked for by
``distill_budget`` / ``--distill-budget``, the student's bundle is gated like any candidate, and the report, the printed
summary and the card show the student's score beside the trimmed model's on every eval score."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import pipeline_app, tiny_pipeline_data
from tiny_models import build_xlmr, training_lines

from mlcompress.errors import InputError
from mlcompress.orchestrate.config import validate_config, with_distillation
from mlcompress.orchestrate.runner import Pipeline, eval_candidates




@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """A tiny XLM-R MLM and a data folder laid out like ../shared/data (mono/en, mono/de, Tatoeba deu-eng)."""
    base = tmp_path_factory.mktemp("student")
    src = build_xlmr(base / "src", training_lines(data_dir)).path
    data = tiny_pipeline_data(base, data_dir)
    return {"src": src, "data": data, "base": base}


def _config(tiny: dict[str, Path], min_retention: float = 0.01, candidates: str = "final") -> dict:
    """Distillation left at ``auto`` (off on a CPU) unless asked for; eval of the final candidate only (by default)."""
    return {
        "source": str(tiny["src"]), "languages": "en,de", "data": str(tiny["data"]),
        "stages": {
            "trim": {"scripts": True},
            "distill": {"device": "cpu", "mixed_precision": "no", "batch_size": 4, "block_size": 32,
                        "max_blocks_per_language": 8, "every_k": 2},
            "export": {"quantize": "none", "task": "sentence-embedding", "measure_latency": False},
            "eval": {"tasks": "retrieval,fidelity,efficiency", "max_examples": 40, "min_retention": min_retention,
                     "candidates": candidates},
        },
    }


# ---- asking for distillation (no runs) --------------------------------------------------------------------------------


def test_distill_and_budget_map_to_the_distill_stage(tiny: dict[str, Path]) -> None:
    cfg = _config(tiny)
    assert Pipeline(cfg).config["stages"]["distill"]["enabled"] == "auto"
    assert Pipeline(cfg, distill=True).config["stages"]["distill"]["enabled"] is True
    budgeted = Pipeline(cfg, distill_budget="30m").config["stages"]["distill"]
    assert budgeted["enabled"] is True and budgeted["time_budget"] == "30m" and budgeted["batch_size"] == 4
    assert Pipeline(cfg, distill=False).config["stages"]["distill"]["enabled"] is False
    no_stage = validate_config({**cfg, "stages": ["trim", "export", "eval"]})
    added = with_distillation(no_stage, budget=900)
    assert list(added["stages"]) == ["trim", "distill", "export", "eval"] and added["stages"]["distill"]["time_budget"] == 900
    assert with_distillation(no_stage, distill=False) == no_stage
    for bad, message in ((dict(distill_budget="soon"), "distillation budget: cannot read the duration 'soon'"),
                         (dict(distill_budget=-5), "not positive"),
                         (dict(distill=False, distill_budget="5m"), "distillation is turned off")):
        with pytest.raises(InputError, match=message):
            Pipeline(cfg, **bad)


def test_a_time_budget_in_the_config_asks_for_distillation(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # on a CPU, whatever this machine has
    cfg = _config(tiny)
    run, why = Pipeline(cfg)._distill_decision()  # auto: no student, and the note says how to get one on this CPU
    assert run is False and "--distill-budget" in why
    cfg["stages"]["distill"]["time_budget"] = "20m"
    assert Pipeline(cfg)._distill_decision() == (True, "a time budget is set (20m)")


def test_trim_is_evaluated_beside_a_student() -> None:
    made = [{"name": n, "path": n} for n in ("source", "trim", "distill", "export")]
    assert [a["name"] for a in eval_candidates(made, "final")] == ["trim", "export"]
    assert [a["name"] for a in eval_candidates(made, "all")] == ["trim", "distill", "export"]
    no_student = [a for a in made if a["name"] != "distill"]
    assert [a["name"] for a in eval_candidates(no_student, "final")] == ["export"]




def test_cli_flags_reach_the_config(tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--distill / --no-distill / --distill-budget set stages.distill (the run itself is stubbed out)."""
    import yaml

    from mlcompress.orchestrate import pipeline_cli

    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(_config(tiny)), encoding="utf-8")
    made = pipeline_cli._pipeline_of(path, None, None, None, None, None, "45m")
    assert made.config["stages"]["distill"]["enabled"] is True and made.config["stages"]["distill"]["time_budget"] == "45m"
    assert pipeline_cli._pipeline_of(path, None, None, None, None, False, None).config["stages"]["distill"]["enabled"] is False
    seen = []

    def stub(self: Pipeline, *args: object, **kwargs: object) -> None:
        seen.append(self.config)
        raise RuntimeError("stubbed run")

    monkeypatch.setattr(Pipeline, "run", stub)
    res = CliRunner().invoke(pipeline_app(), ["pipeline", str(path), "-o", str(tmp_path / "o"), "--distill"])
    assert isinstance(res.exception, RuntimeError) and seen[0]["stages"]["distill"]["enabled"] is True, res.output
    res = CliRunner().invoke(pipeline_app(), ["pipeline", str(path), "-o", str(tmp_path / "o"), "--distill-budget", "soon"])
    assert isinstance(res.exception, InputError) and "cannot read the duration" in res.exception.message


# ---- a run with a student ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def student_run(tiny: dict[str, Path]) -> dict:
    """Run 1: a budgeted distillation, gate at 0.01, the final candidate; run 2: every candidate, the gate set between
    the student's and the trim's worst gated retention, so that only the student's scores can fail it (eval reruns)."""
    out = tiny["base"] / "out"
    r1 = Pipeline(_config(tiny), distill_budget="6s").run(out)
    rep1 = json.loads((out / "report.json").read_text())
    worst = {name: min(s["retention"] for s in ev["scores"] if s["gated"]) for name, ev in rep1["evaluations"].items()}
    bar = (worst["export"] + worst["trim"]) / 2 if worst["export"] < worst["trim"] else worst["export"] + 0.01
    r2 = Pipeline(_config(tiny, bar, "all"), distill_budget="6s").run(out)
    return {"out": out, "r1": r1, "rep1": rep1, "r2": r2, "rep2": json.loads((out / "report.json").read_text()),
            "worst": worst, "bar": bar}


def test_the_report_shows_student_and_trim_on_every_score(student_run: dict) -> None:
    r1, rep = student_run["r1"], student_run["rep1"]
    assert [(s["name"], s["action"]) for s in r1.stages] == [("trim", "ran"), ("distill", "ran"), ("export", "ran"), ("eval", "ran")]
    assert r1.stage("distill")["note"] == "enabled in the config"
    assert set(rep["evaluations"]) == {"trim", "export"}  # candidates: final, and the trim beside the student
    cmp = rep["student_vs_trim"]
    assert cmp["student"] == "export" and cmp["student_path"].endswith("03-export") and cmp["trim_path"].endswith("01-trim")
    keys = {name: {(s["task"], s["language"], s["metric"]) for s in rep["evaluations"][name]["scores"]} for name in ("export", "trim")}
    rows = [(r["task"], r["language"], r["metric"]) for r in cmp["rows"]]
    assert len(rows) == len(set(rows)) and set(rows) == keys["export"] | keys["trim"]  # every score of either, once
    assert {r["task"] for r in cmp["rows"]} == {"retrieval", "fidelity"}
    both = [r for r in cmp["rows"] if r["student"] is not None]
    assert {(r["task"], r["language"], r["metric"]) for r in both} == keys["export"] and len(both) >= 3
    for r in both:
        assert all(isinstance(r[k], float) for k in ("source", "trim", "student", "trim_retention", "student_retention"))
        assert r["retention_change"] == pytest.approx(r["student_retention"] - r["trim_retention"])
    for r in cmp["rows"]:  # a score the bundle does not give (the MLM head's agreement): the trim's alone
        assert r in both or (r["student_retention"] is None and isinstance(r["trim_retention"], float))
    assert cmp["parameters"]["student"] < cmp["parameters"]["trim"]  # every second layer: a smaller model
    assert cmp["student_speedup"] is None  # the distilled PyTorch model was not evaluated: no like-for-like speed
    assert any(n.startswith("student (export) vs trim") for n in rep["notes"])
    assert "student vs trim" in r1.summary()
    rep2 = student_run["rep2"]  # every candidate: the distilled model beside the trim, both PyTorch, timed together
    assert set(rep2["evaluations"]) == {"trim", "distill", "export"}
    assert isinstance(rep2["student_vs_trim"]["student_speedup"], float)  # measured; no figure asserted
    assert any(isinstance(r["distilled_retention"], float) for r in rep2["student_vs_trim"]["rows"])


def test_the_student_is_gated_like_any_candidate(student_run: dict) -> None:
    r1, r2, rep2 = student_run["r1"], student_run["r2"], student_run["rep2"]
    assert r1.passed is True and r1.gate == student_run["rep1"]["evaluations"]["export"]["gate"] and r1.gate["checked"] > 0
    assert [(s["name"], s["action"]) for s in r2.stages] == [("trim", "reused"), ("distill", "reused"), ("export", "reused"),
                                                            ("eval", "ran")]
    assert r2.passed is False and rep2["passed"] is False and rep2["gate"] == rep2["evaluations"]["export"]["gate"]
    assert rep2["student_vs_trim"]["gate"]["student"] is False
    if student_run["worst"]["export"] < student_run["worst"]["trim"]:  # the usual case: the trim keeps more
        assert rep2["student_vs_trim"]["gate"]["trim"] is True


def test_the_printed_result_and_the_card_show_the_comparison(student_run: dict) -> None:
    from rich.console import Console

    from mlcompress.orchestrate.pipeline_cli import _print_pipeline_result

    console = Console(file=io.StringIO(), width=80, record=True, color_system=None)
    _print_pipeline_result(student_run["r2"], console)
    text = console.export_text()
    assert "student (export) vs trim" in text and "fidelity" in text and "retrieval" in text and "failed" in text
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    out = student_run["out"]
    card = next(p for p in (out / "README.md", out / "03-export" / "README.md") if p.is_file())
    body = card.read_text(encoding="utf-8")
    assert "## Student against the trimmed model" in body and body.index("## Student against") < body.index("## How to use it")


def test_inspect_shows_the_student_against_the_trim(student_run: dict) -> None:
    from mlcompress.orchestrate.inspect import inspect

    info = inspect(student_run["out"])
    assert info["kind"] == "pipeline" and info["student_vs_trim"] == student_run["rep2"]["student_vs_trim"]
    res = CliRunner().invoke(pipeline_app(), ["inspect", str(student_run["out"])], terminal_width=120)
    assert res.exit_code == 0, res.output
    assert "student (export) vs trim" in res.output and "retrieval" in res.output
