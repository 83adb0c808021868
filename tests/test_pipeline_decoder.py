"""The pipeline on a causal LM: trim (no vocabulary budget) -> export (ONNX with a KV cache, 8-bit weights) -> the
generative eval and gate, resumable like the encoder pipeline; tiny Gemma-3-style model built in code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DATA, read_lines
from decoder_models import build


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = read_lines(DATA / "mono" / "en.txt.gz", 150) + read_lines(DATA / "mono" / "de.txt.gz", 150)
    return build("gemma3", tmp_path_factory.mktemp("gemma") / "model", lines)


def test_pipeline_trims_exports_and_gates_a_decoder(gemma: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from mlcompress import Pipeline
    from mlcompress.orchestrate.pipeline_cli import _print_pipeline_result

    cfg = {"source": str(gemma), "languages": "en,de", "data": str(DATA),
           "stages": {"trim": {}, "distill": {"enabled": "auto"}, "export": {},
                      "eval": {"max_examples": 6, "min_retention": 0.5}}}
    out = tmp_path / "pipe"
    result = Pipeline(cfg).run(out)
    actions = {s["name"]: s["action"] for s in result.stages}
    assert actions == {"trim": "ran", "distill": "skipped", "export": "ran", "eval": "ran"}, actions
    manifest = json.loads((out / "03-export" / "manifest.json").read_text())
    assert manifest["head"]["task"] == "text-generation" and "onnx/model_quantized.onnx" in manifest["files"]
    trimmed = json.loads((out / "01-trim" / "mlcompress.json").read_text())
    assert trimmed["parameters"]["max_vocab"] is None  # decoders: no budget
    report = json.loads((out / "report.json").read_text())
    scores = report["evaluations"]["export"]["scores"]
    assert {s["task"] for s in scores} >= {"perplexity", "next_token", "greedy"}
    assert result.passed is not None and result.gate["checked"] > 0
    console = Console(width=80, record=True, color_system=None)
    _print_pipeline_result(result, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "decode: tokens/s" in text and "prefill" in text and "source (export)" in text and "…" not in text
    again = Pipeline(cfg).run(out)  # unchanged: every stage reused
    assert {s["name"]: s["action"] for s in again.stages if s["name"] != "distill"} == \
        {"trim": "reused", "export": "reused", "eval": "reused"}
