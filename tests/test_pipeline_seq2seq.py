"""The pipeline on an encoder-decoder (issue 24 item 5): trim (no vocabulary budget) -> export (ONNX encoder + merged
decoder with a KV cache, 8-bit weights) -> the seq2seq eval of the trim and of the bundle against the source, with the
gate, resumable like the other families; and the torch-free bundle scorer (`Seq2SeqBundleLM`), which scores the
export's fp32 graphs as PyTorch scores the model they came from. Tiny NLLB-style model built in code
(tests/seq2seq_models.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import DATA
from seq2seq_models import build
from tiny_models import training_lines

CONFIG: dict[str, Any] = {"languages": "en,de", "data": str(DATA),
                          "stages": {"trim": {}, "distill": {"enabled": "auto"}, "export": {},
                                     "eval": {"max_examples": 3, "min_retention": 0.5}}}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny NLLB, and one pipeline run of it (the tests below read its folder)."""
    from mlcompress import Pipeline

    base = tmp_path_factory.mktemp("nllb")
    source = build("nllb", base / "model", training_lines(DATA))
    cfg = {**CONFIG, "source": str(source)}
    out = base / "pipe"
    return {"source": source, "cfg": cfg, "out": out, "result": Pipeline(cfg).run(out)}


def test_pipeline_trims_exports_and_gates_an_encoder_decoder(run: dict[str, Any]) -> None:
    from rich.console import Console

    from mlcompress import Pipeline
    from mlcompress.orchestrate.pipeline_cli import _print_pipeline_result

    result, out = run["result"], run["out"]
    assert {s["name"]: s["action"] for s in result.stages} == \
        {"trim": "ran", "distill": "skipped", "export": "ran", "eval": "ran"}
    assert json.loads((out / "01-trim" / "mlcompress.json").read_text())["parameters"]["max_vocab"] is None
    manifest = json.loads((out / "03-export" / "manifest.json").read_text())
    assert manifest["head"]["task"] == "text2text-generation" and manifest["seq2seq"]["default_dtype"] == "q8"
    assert {"onnx/encoder_model_quantized.onnx", "onnx/decoder_model_merged_quantized.onnx"} <= set(manifest["files"])
    report = json.loads((out / "report.json").read_text())
    for name in ("trim", "export"):
        scores = report["evaluations"][name]["scores"]
        assert {s["task"] for s in scores} >= {"perplexity", "next_token", "greedy"}
        assert {s["language"] for s in scores} == {"en-de", "de-en"}
    gate = report["evaluations"]["export"]["gate"]
    assert result.passed is gate["passed"] is not None and result.gate["checked"] > 0
    assert (out / "report.html").is_file()
    console = Console(width=100, record=True, color_system=None)
    _print_pipeline_result(result, console)
    assert "export" in console.export_text()
    again = Pipeline(run["cfg"]).run(out)  # unchanged: every stage reused
    assert {s["name"]: s["action"] for s in again.stages if s["name"] != "distill"} == \
        {"trim": "reused", "export": "reused", "eval": "reused"}
    assert again.passed is result.passed


def test_bundle_scorer_matches_pytorch_on_the_fp32_graphs(run: dict[str, Any]) -> None:
    from mlcompress.eval import Seq2SeqLimits, evaluate, evaluate_seq2seq, load_seq2seq
    from mlcompress.eval.seq2seq_scorer import Seq2SeqBundleLM
    from mlcompress.export import generate

    out = run["out"]
    bundle = out / "03-export"
    scorer = load_seq2seq(bundle)
    assert isinstance(scorer, Seq2SeqBundleLM) and scorer.generator.dtype == "q8" and scorer.translates
    fp32 = Seq2SeqBundleLM(str(bundle), bundle, generator=generate.load(bundle, dtype="fp32"))
    trimmed = load_seq2seq(out / "01-trim")
    limits = Seq2SeqLimits(pairs=12, prompts=4, new_tokens=12)
    rep = evaluate_seq2seq(out / "01-trim", bundle, "de", "perplexity,next_token,greedy", DATA, limits=limits,
                           models=(trimmed, fp32))
    assert rep.candidate["backend"] == "export-bundle" and rep.candidate["dtype"] == "fp32"
    assert rep.parameters["id_map"]["how"] == "identity"
    scores = {(s.language, s.metric): s for s in rep.scores}
    for way in ("en-de", "de-en"):
        assert scores[(way, "top1_agreement")].candidate == 1.0
        assert scores[(way, "bits_per_byte")].details["nll_ratio_candidate_over_source"] == pytest.approx(1.0, abs=1e-4)
        assert scores[(way, "identical_text")].candidate == 1.0
    # a bundle as the candidate of `evaluate` (what the pipeline's eval does) picks the bundle scorer by itself
    direct = evaluate(run["source"], bundle, "de", "perplexity", DATA, seq2seq_limits=Seq2SeqLimits(pairs=4, prompts=2))
    assert direct.candidate["backend"] == "export-bundle" and direct.candidate["size"]["weight_file_bytes"] > 0
