"""`mlcompress inspect` tells which clients load an output (`mlcompress.clients`, read from the files alone), and the
result objects of the Python API print their key figures (TrimResult, DistillResult, ExportResult, EvalReport;
PipelineResult in test_pipeline_no_data.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mlcompress.clients import clients


def _write(folder: Path, files: dict[str, object]) -> Path:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return folder


def _loading(folder: Path) -> list[str]:
    return [c.name for c in clients(folder) if c.loads]


def _refusing(folder: Path) -> dict[str, str]:
    return {c.name: c.how for c in clients(folder) if not c.loads}


EMBEDDING_HEAD = {"task": "sentence-embedding", "pooling": "mean", "normalize": True, "output": "sentence_embedding"}


def test_model_folders(tmp_path: Path) -> None:
    st = _write(tmp_path / "st", {"config.json": {"architectures": ["XLMRobertaModel"]}, "model.safetensors": "",
                                  "modules.json": [{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"}]})
    assert _loading(st) == ["sentence-transformers", "transformers"]
    assert "AutoModel.from_pretrained" in clients(st)[1].how and "mlcompress export DIR --bundle" in _refusing(st)["FastEmbed, transformers.js"]
    mlm = _write(tmp_path / "mlm", {"config.json": {"architectures": ["XLMRobertaForMaskedLM"]}, "model.safetensors": ""})
    assert _loading(mlm) == ["transformers"] and clients(mlm)[0].how.startswith("AutoModelForMaskedLM.from_pretrained")
    lm = _write(tmp_path / "lm", {"config.json": {"architectures": ["Gemma3ForCausalLM"]}, "model.safetensors": ""})
    assert _loading(lm) == ["transformers"] and set(_refusing(lm)) == {"onnxruntime-genai", "llama.cpp"}
    assert clients(_write(tmp_path / "no-weights", {"config.json": {}})) == []  # a config alone loads nowhere
    assert clients(_write(tmp_path / "report", {"report.json": {}})) == []  # an eval report is no model


def test_bundles(tmp_path: Path) -> None:
    layout = {"onnx/model_quantized.onnx": "", "config.json": {"model_type": "xlm-roberta"}, "tokenizer_config.json": {},
              "tokenizer.json": {}}
    new = _write(tmp_path / "new", {**layout, "manifest.json": {"model": "onnx/model_quantized.onnx", "head": EMBEDDING_HEAD}})
    assert _loading(new) == ["mlcompress runtime", "FastEmbed", "transformers.js"]
    assert set(_refusing(new)) == {"sentence-transformers"}
    how = {c.name: c.how for c in clients(new)}
    assert 'model_file="onnx/model_quantized.onnx"' in how["FastEmbed"] and "mlcompress bundle encode DIR" in how["mlcompress runtime"]
    flat = _write(tmp_path / "flat", {"model.onnx": "", "tokenizer.json": {},
                                      "manifest.json": {"model": "model.onnx", "head": EMBEDDING_HEAD}})
    assert _loading(flat) == ["mlcompress runtime"]
    assert "missing a graph under onnx/, config.json, tokenizer_config.json" in _refusing(flat)["FastEmbed"]
    dense = _write(tmp_path / "dense", {**layout, "manifest.json": {"model": "onnx/model_quantized.onnx",
                                                                    "head": {**EMBEDDING_HEAD, "dense": [{"in": 32, "out": 16}]}}})
    assert _loading(dense) == ["mlcompress runtime", "FastEmbed"] and "Dense" in _refusing(dense)["transformers.js"]
    tagger = _write(tmp_path / "tagger", {**layout, "manifest.json": {"model": "onnx/model_quantized.onnx",
                                                                      "head": {"task": "token-classification"}}})
    assert _loading(tagger) == ["mlcompress runtime"] and _refusing(tagger) == {}
    decoder = _write(tmp_path / "decoder", {**layout, "generation_config.json": {},
                                            "manifest.json": {"model": "onnx/model_quantized.onnx", "head": {"task": "text-generation"}}})
    assert _loading(decoder) == ["mlcompress runtime"] and "mlcompress bundle generate DIR" in clients(decoder)[0].how
    assert set(_refusing(decoder)) == {"onnxruntime-genai", "llama.cpp"}
    archive = tmp_path / "bundle.tar.gz"
    archive.write_bytes(gzip.compress(b""))
    assert _loading(archive) == ["mlcompress runtime"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A tiny E5-like encoder, its trim (word lists), its bundle and the bundle's eval on the packaged sample."""
    from bundle_models import build_encoder
    from mlcompress.eval import evaluate, sample_data_dir
    from mlcompress.export import export
    from mlcompress.vocab_trim import trim

    base = tmp_path_factory.mktemp("summaries")
    with gzip.open(sample_data_dir() / "tatoeba" / "tatoeba.deu-eng.deu.gz", "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    with gzip.open(sample_data_dir() / "tatoeba" / "tatoeba.deu-eng.eng.gz", "rt", encoding="utf-8") as handle:
        lines += handle.read().splitlines()
    source = build_encoder(base / "e5", lines, e5_prompts=True)
    trimmed = trim(source, "en,de", {"en": "wordfreq:en?n=3000", "de": "wordfreq:de?n=3000"}, base / "trim")
    texts = {"de": lines[:40], "en": lines[200:240]}
    exported = export(trimmed.output, base / "bundle", bundle=True, texts=[*texts["de"], *texts["en"]],
                      measure_latency=False)
    report = evaluate(source, exported.output, "en,de", "retrieval,fidelity", sample_data_dir(), min_retention=0.5)
    return {"trim": trimmed, "export": exported, "eval": report}


def test_results_print_their_key_figures(made: dict[str, object]) -> None:
    trimmed = str(made["trim"])
    assert trimmed.startswith("trim to en, de -> ") and "vocabulary" in trimmed and "parameters" in trimmed
    assert f"{made['trim'].vocab_before:,} -> {made['trim'].vocab_after:,}" in trimmed and "MB ->" in trimmed
    assert "word lists only" in trimmed  # its notes
    assert made["trim"].summary() == trimmed
    exported = str(made["export"])
    assert exported.startswith("export onnx int8-weights (sentence-embedding) -> ") and "a bundle (manifest.json)" in exported
    assert "mean cosine 0.99" in exported and ": passed" in exported and "onnx/model_quantized.onnx" in exported
    evaluated = str(made["eval"])
    assert evaluated.startswith("eval ") and "retrieval" in evaluated and "min retention" in evaluated
    assert "lowest" in evaluated and "retention" in evaluated and "gate" in evaluated and "scores checked" in evaluated
    assert "parameters" in evaluated and "bytes on disk" in evaluated
    assert all(len(text.splitlines()) <= 12 for text in (trimmed, exported, evaluated))


def test_distill_and_decoder_results_print_their_key_figures(tmp_path: Path) -> None:
    from mlcompress.distill import DistillResult
    from mlcompress.export.result import parity_line

    result = DistillResult(tmp_path / "student", [1, 3, 5], 2000, 1200, 3600.0, 12345.0, {"loss": 0.123456},
                           117_653_760, 21_000_000, "embedding", 10**8)
    text = str(result)
    assert text.startswith(f"distill (embedding) -> {tmp_path / 'student'}")
    assert "117.7M -> 21.0M (17.8%)" in text and "1, 3, 5" in text and "2000 (resumed from step 1200)" in text
    assert "loss 0.1235" in text and "12.3k tokens/s" in text
    assert str(DistillResult(tmp_path / "t", [], 10, None, 1.0, 5.0, {}, 100, 100)).startswith("fine-tune ->")
    decoder = {"fp32": {"passed": True, "atol": 1e-4}, "q8": {"top1_agreement": 0.911, "perplexity_ratio": 0.9924, "passed": True}}
    assert parity_line(decoder) == "fp32 passed; q8 top-1 agreement 0.911, perplexity ratio 0.9924, passed"
