"""Latency figures that compare: models timed together in interleaved, rotated rounds (structure only, never timings),
eval and the pipeline using that one method, and the pipeline's summary fitting an 80-column terminal."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mlcompress.eval.efficiency import measure, measure_together, paired_ratio, rotation
from mlcompress.eval.encoders import Encoder

FIGURE_FIELDS = ("latency_ms_p50", "latency_ms_p95", "latency_ms_p50_min", "latency_ms_p50_q1", "latency_ms_p50_q3",
                 "latency_ms_p50_max", "latency_ms_p50_rounds", "latency_runs", "throughput_per_s_batch32", "throughput_per_s",
                 "throughput_per_s_min", "throughput_per_s_max", "throughput_per_s_rounds", "throughput_batch", "rounds",
                 "method", "peak_memory_bytes", "peak_memory_kind", "parameters", "bytes_on_disk", "device")


class _Recorder(Encoder):
    """An encoder that computes nothing and writes each call (its name and the texts) into a shared log."""

    kind = "fake"
    capabilities = frozenset({"embed"})

    def __init__(self, name: str, log: list[tuple[str, tuple[str, ...]]]) -> None:
        super().__init__(name, Path(name))
        self.name, self.log = name, log

    def _embed(self, texts: list[str]) -> np.ndarray:
        self.log.append((self.name, tuple(texts)))
        return np.zeros((len(texts), 4), dtype=np.float32)

    def size(self) -> dict[str, Any]:
        return {"parameters": 10, "weight_file_bytes": 40, "bytes_on_disk": 50}


TEXTS = [f"sentence {i}" for i in range(40)]


def _rounds(log: list[tuple[str, tuple[str, ...]]], warm_calls: int, per_model: int) -> list[list[str]]:
    """The models' order in each round, read from the call log after the warm-up calls."""
    timed = log[warm_calls:]
    blocks = [timed[i : i + per_model] for i in range(0, len(timed), per_model)]
    assert all(len({name for name, _ in b}) == 1 for b in blocks), "a model's block was interrupted by another model"
    names = [b[0][0] for b in blocks]
    k = len({n for n in names})
    return [names[i : i + k] for i in range(0, len(names), k)]


def test_rounds_interleave_the_models_in_rotated_order() -> None:
    log: list[tuple[str, tuple[str, ...]]] = []
    encs = {n: _Recorder(n, log) for n in ("a", "b", "c")}
    res = measure_together(encs, TEXTS, runs=6, rounds=3, warmup=2, batch=4, batches=3, prefix="p: ")
    # warm-up: each model alone, 2 sentences and one batch, before any timed round
    assert [n for n, _ in log[:9]] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    per_model = 2 + 1  # per round: 2 sentences one at a time, then 1 batch of 4
    assert _rounds(log, 9, per_model) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]] == res["order"]
    timed = log[9:]
    for r in range(3):  # in a round every model gets the same sentences and the same batch
        blocks = [tuple(t for _, t in timed[(r * 3 + m) * per_model : (r * 3 + m + 1) * per_model]) for m in range(3)]
        assert len(set(blocks)) == 1
        assert [len(t) for t in blocks[0]] == [1, 1, 4] and all(s.startswith("p: ") for t in blocks[0] for s in t)
    assert len({t for _, t in timed[::per_model]}) == 3  # another sentence each round
    for name, fig in res["models"].items():
        assert set(FIGURE_FIELDS) <= set(fig), name
        assert fig["rounds"] == 3 and fig["latency_runs"] == 6 and len(fig["latency_ms_p50_rounds"]) == 3
        assert len(fig["throughput_per_s_rounds"]) == 3 and fig["throughput_batch"] == 4
        assert fig["throughput_per_s_batch32"] is None  # named for batch 32 only
        assert fig["latency_ms_p50_min"] <= fig["latency_ms_p50_q1"] <= fig["latency_ms_p50_q3"] <= fig["latency_ms_p50_max"]
        assert "interleaved rounds" in fig["method"] and fig["method"] == res["method"]


def test_rotation_puts_each_model_in_each_place_equally() -> None:
    order = rotation(["s", "t", "b"], 6)
    for place in range(3):
        assert sorted(r[place] for r in order) == ["b", "b", "s", "s", "t", "t"]
    assert rotation(["s", "t"], 3) == [["s", "t"], ["t", "s"], ["s", "t"]]


def test_one_model_keeps_the_old_fields() -> None:
    log: list[tuple[str, tuple[str, ...]]] = []
    fig = measure(_Recorder("m", log), TEXTS, runs=4, warmup=1, batch=32, batches=2, rounds=2)
    assert set(FIGURE_FIELDS) <= set(fig) and fig["throughput_per_s_batch32"] == fig["throughput_per_s"]
    assert fig["latency_ms_p95"] >= fig["latency_ms_p50"] >= 0 and fig["latency_runs"] == 4
    with pytest.raises(ValueError, match="sample sentences"):
        measure(_Recorder("m", log), [])


def test_paired_ratio_is_taken_round_by_round() -> None:
    together = {"models": {"source": {"latency_ms_p50_rounds": [10.0, 20.0, 10.0]},
                           "trim": {"latency_ms_p50_rounds": [9.0, 19.0, 11.0]}}}
    r = paired_ratio(together, "source", "trim")
    assert r["rounds"] == [0.9, 0.95, 1.1] and r["median"] == pytest.approx(0.95)
    assert r["min"] == pytest.approx(0.9) and r["max"] == pytest.approx(1.1)


def test_eval_times_source_and_candidate_together(data_dir: Path) -> None:
    from mlcompress.eval import Limits, evaluate

    log: list[tuple[str, tuple[str, ...]]] = []
    src, cand = _Recorder("src", log), _Recorder("cand", log)
    limits = Limits(latency_runs=4, throughput_batches=2, efficiency_rounds=2)
    r = evaluate("src", "cand", "de", "efficiency", data_dir, limits=limits, prefix="", encoders=(src, cand))
    assert _rounds(log, 2 * (3 + 1), 2 + 1) == [["src", "cand"], ["cand", "src"]]
    names = [n for n, _ in log[8:]]
    assert names == ["src"] * 3 + ["cand"] * 3 + ["cand"] * 3 + ["src"] * 3  # round 1: source first; round 2: candidate first
    e = r.efficiency
    assert e["order"] == [["source", "candidate"], ["candidate", "source"]] and e["measured_with"] == ["source", "candidate"]
    assert "interleaved rounds" in e["method"] and len(e["latency_ratio_per_round"]["rounds"]) == 2
    assert e["candidate_over_source"]["parameters"] == 1.0


def test_several_candidates_share_one_measurement_with_the_source(data_dir: Path) -> None:
    """What the pipeline needs: the trimmed model and the bundle timed in the same rounds as the source, each candidate's
    eval reporting that one measurement (not timing again)."""
    from mlcompress.eval import Limits, evaluate
    from mlcompress.eval.run import compare_efficiency

    log: list[tuple[str, tuple[str, ...]]] = []
    src, trim, bundle = (_Recorder(n, log) for n in ("src", "trim", "bundle"))
    limits = Limits(latency_runs=3, throughput_batches=3, efficiency_rounds=3)
    joint = compare_efficiency(src, {"trim": trim, "export": bundle}, "de,en", data_dir, limits, prefix="")
    assert joint["trim"]["order"] == [["source", "trim", "export"], ["trim", "export", "source"], ["export", "source", "trim"]]
    assert joint["trim"]["source"] is joint["export"]["source"]  # one source figure for both
    calls = len(log)
    r = evaluate("src", "trim", "de,en", "efficiency", data_dir, limits=limits, prefix="", encoders=(src, trim),
                 efficiency=joint["trim"])
    assert len(log) == calls and r.efficiency is joint["trim"]
    with pytest.raises(Exception, match="cannot be named 'source'"):
        compare_efficiency(src, {"source": trim}, "de", data_dir, limits, prefix="")


def test_pipeline_eval_times_source_and_every_candidate_in_one_measurement(data_dir: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's eval stage times the source, the trimmed model and the bundle in the same rounds, and each
    candidate's report carries that one measurement (the source's figure is the same for both)."""
    import mlcompress.eval
    from mlcompress.orchestrate import stages
    from mlcompress.orchestrate.config import default_config, validate_config

    log: list[tuple[str, tuple[str, ...]]] = []
    made: dict[str, _Recorder] = {}
    monkeypatch.setattr(mlcompress.eval, "load_encoder",
                        lambda spec, cache_dir=None: made.setdefault(str(spec), _Recorder(Path(spec).name, log)))
    cfg = validate_config(default_config("de,en", data_dir))
    cfg["stages"]["eval"].update(tasks="efficiency", max_examples=3)
    cands = [{"name": "trim", "path": str(tmp_path / "m-trim")}, {"name": "export", "path": str(tmp_path / "m-export")}]
    source_dir = tmp_path / "source"  # the resolved source the runner passes: its config.json says what family it is
    source_dir.mkdir()
    (source_dir / "config.json").write_text('{"architectures": ["BertModel"]}')
    res = stages.eval_stage(tmp_path / "eval", cfg, source_dir, cands, lambda m: None)["results"]
    src_name = Path(cfg["source"]).name
    timed = [name for name, _ in log]
    assert set(timed) == {src_name, "m-trim", "m-export"}
    rounds = res["trim"]["efficiency"]["order"]
    assert len(rounds) >= 2 and rounds[0] == ["source", "trim", "export"] and rounds[1] == ["trim", "export", "source"]
    assert res["trim"]["efficiency"]["source"] == res["export"]["efficiency"]["source"]
    assert res["trim"]["efficiency"]["measured_with"] == ["source", "trim", "export"]
    from collections import Counter

    calls = Counter(timed)  # each candidate's eval reused the joint timing: the source was timed once, not per candidate
    assert calls[src_name] == calls["m-trim"] == calls["m-export"]


# ---- the pipeline's summary in 80 columns -------------------------------------------------------------------------------


def _fig(ms: float) -> dict[str, Any]:
    return {"latency_ms_p50": ms, "latency_ms_p50_min": ms - 0.4, "latency_ms_p50_max": ms + 0.7, "throughput_per_s": 1234.5}


def _fake_result(tmp_path: Path, one_run: bool) -> Any:
    """A pipeline result: the candidates timed with the source in one measurement, or each in its own."""
    effs = {name: {"source": _fig(14.3 if one_run or name == "trim" else 14.6), "candidate": _fig(ms),
                   "latency_ratio_per_round": {"median": ms / 14.3}} for name, ms in (("trim", 14.1), ("export", 5.2))}
    retention = {"retrieval": 0.9983, "sts": 0.9951, "fidelity": 0.9874}
    artifacts = [{"stage": "source", "bytes": 470_912_345, "parameters": 117_653_760, "vocab_size": 250_037, "latency_ms_p50": 14.3},
                 {"stage": "trim", "bytes": 153_123_456, "parameters": 38_400_123, "vocab_size": 36_641, "latency_ms_p50": 14.1,
                  "retention": retention, "gate": True},
                 {"stage": "export", "bytes": 31_234_567, "parameters": 38_400_123, "vocab_size": 36_641, "latency_ms_p50": 5.2,
                  "retention": retention, "gate": True}]
    stages = [{"name": "trim", "action": "ran", "seconds": 61.27}, {"name": "distill", "action": "skipped", "note": "no GPU: " + "x " * 60},
              {"name": "export", "action": "reused", "seconds": 123.4},
              {"name": "eval", "action": "ran", "seconds": 215.0, "metrics": {"results": {k: {"efficiency": v} for k, v in effs.items()}}}]
    out = tmp_path / "a-fairly-long-output-folder-name" / "pipe-latency"
    return SimpleNamespace(output=out, stages=stages, report={"artifacts": artifacts}, passed=True,
                           gate={"min_retention": 0.95, "checked": 12})


@pytest.mark.parametrize("one_run", [True, False])
def test_pipeline_summary_fits_80_columns(tmp_path: Path, one_run: bool) -> None:
    from rich.console import Console

    from mlcompress.orchestrate.pipeline_cli import _print_pipeline_result, compact

    console = Console(width=80, record=True, color_system=None)
    _print_pipeline_result(_fake_result(tmp_path, one_run), console)
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for shown in ("117.7M", "250.0k", "36.6k", "14.30", "13.90..15.00", "0.986", "0.364", "0.998", "PASSED", "report.html"):
        assert shown in text, shown
    # one source row when all were timed together; else each candidate beside the source of its own rounds
    assert ("source (trim run)" in text and "source (export run)" in text) is not one_run
    assert (compact(512), compact(38_400_123), compact(None)) == ("512", "38.4M", "—")
