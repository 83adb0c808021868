"""`mlcompress eval` on causal LMs: generative tasks on held-out text, with tiny Qwen-2-style decoders built here.

A model against itself keeps everything; its exact vocabulary trim scores the same per-token NLL as the source
renormalised over the kept ids (and says how much probability the trim dropped); a copy with noised weights fails the
gate, through the API and through the CLI (exit 1, the HTML report showing the generative scores).
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import read_lines
from decoder_models import build
from tiny_models import training_lines

from mlcompress.errors import GateError, InputError, UnsupportedModelError
from mlcompress.eval import LMLimits, evaluate

ROOT = Path(__file__).resolve().parents[1]
TINY = LMLimits(texts=12, prompts=6, new_tokens=8, prefill_tokens=16, decode_tokens=4, latency_runs=4, efficiency_rounds=2)


def _write_gz(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A folder laid out like ../shared/data: the first XNLI dev rows of German (premises: the held-out text)."""
    root = tmp_path_factory.mktemp("data")
    _write_gz(root / "xnli/dev-de.tsv.gz", read_lines(data_dir / "xnli/dev-de.tsv.gz", 60))
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """A tiny Qwen-2-style decoder, its en+de trim (drops the Greek and Russian pieces), and a copy with noised weights."""
    from transformers import AutoModelForCausalLM

    from mlcompress.vocab_trim import trim

    base = tmp_path_factory.mktemp("lms")
    src = build("qwen2", base / "src", training_lines(data_dir))
    corpora = {}
    for lang in ("en", "de"):
        corpora[lang] = base / f"{lang}.txt"
        corpora[lang].write_text("\n".join(read_lines(data_dir / "mono" / f"{lang}.txt.gz", 300, skip=600)) + "\n")
    trim(src, "en,de", {k: str(v) for k, v in corpora.items()}, base / "trim", frequent_words=0, word_variants=False)
    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(base / "damaged")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (src / name).is_file():
            shutil.copy(src / name, base / "damaged" / name)
    return {"src": src, "trim": base / "trim", "damaged": base / "damaged"}


def _by_metric(report: object) -> dict[str, object]:
    return {s.metric: s for s in report.scores}


def test_model_against_itself_keeps_everything(models: dict[str, Path], small_data: Path) -> None:
    r = evaluate(models["src"], models["src"], "de", data_dir=small_data, lm_limits=TINY, min_retention=0.99)
    assert r.tasks == ["perplexity", "next_token", "greedy", "efficiency"] and r.passed is True
    m = _by_metric(r)
    assert set(m) == {"bits_per_byte", "nll_per_token_same_tokens", "top1_agreement", "kl_nats", "dropped_mass",
                      "identical_text"}
    for s in r.scores:
        assert s.retention == pytest.approx(1.0, abs=1e-9), s
        assert s.interval["retention_low"] == pytest.approx(1.0, abs=1e-9) and s.interval["above_chance"], s
    assert m["dropped_mass"].candidate == 0.0 and abs(m["kl_nats"].candidate) < 1e-9
    assert m["identical_text"].candidate == 1.0 and m["identical_text"].n == TINY.prompts
    assert m["bits_per_byte"].n == TINY.texts and "xnli/dev-de.tsv.gz premises" in m["bits_per_byte"].dataset
    assert r.parameters["id_map"]["how"] == "identity"
    e = r.efficiency
    assert e["kind"] == "generative" and e["prefill_tokens"] == 16 and e["new_tokens"] == 4
    for side in ("source", "candidate"):
        assert e[side]["prefill_ms_p50"] > 0 and e[side]["decode_tokens_per_s"] > 0 and e[side]["parameters"] > 0


def _bits_per_byte_by_hand(path: Path, texts: list[str], start: int) -> float:
    """Teacher-forced NLL with plain transformers, one text at a time, over the texts' UTF-8 bytes (no eval code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    nll = 0.0
    with torch.inference_mode():
        for t in texts:
            ids = torch.tensor([[start] + tok(t, add_special_tokens=False)["input_ids"]])
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            nll -= logp.gather(1, ids[0, 1:, None]).sum().item()
    return nll / math.log(2) / sum(len(t.encode("utf-8")) for t in texts)


def test_trimmed_copy_has_the_same_nll_and_reports_dropped_mass(models: dict[str, Path], small_data: Path) -> None:
    from mlcompress.eval.lm_data import lm_texts
    from mlcompress.eval.data import DataSource

    r = evaluate(models["src"], models["trim"], "de", "perplexity,next_token", small_data, lm_limits=TINY, min_retention=0.99)
    m = _by_metric(r)
    assert r.parameters["id_map"]["how"] == "id_map.json" and r.passed is True  # an exact trim passes the gate
    same = m["nll_per_token_same_tokens"]
    assert same.n >= 3 and not same.gated  # covered texts exist
    assert same.details["max_abs_token_diff_vs_kept"] <= 1e-4  # per token, against the source renormalised over kept ids
    assert abs(same.candidate - same.details["source_over_kept_ids"]) <= 1e-4
    assert same.candidate < same.source  # the source spends probability on ids the trim removed
    assert m["dropped_mass"].candidate > 0 and m["dropped_mass"].retention == pytest.approx(1 - m["dropped_mass"].candidate)
    assert m["top1_agreement"].candidate == 1.0 and abs(m["kl_nats"].candidate) < 1e-6  # the kept logits are the source's
    texts, _ = lm_texts(DataSource.open(small_data), "de", TINY.texts)
    qwen_start = json.loads((models["src"] / "generation_config.json").read_text())["eos_token_id"][0]
    assert r.source["start_ids"] == [qwen_start]  # no BOS: the first stop id separates documents
    assert m["bits_per_byte"].source == pytest.approx(_bits_per_byte_by_hand(models["src"], texts, qwen_start), rel=1e-6)


def test_greedy_loop_makes_what_transformers_generate_makes(models: dict[str, Path]) -> None:
    from transformers import GenerationConfig

    from mlcompress.eval.lm_scorer import load_causal_lm

    lm = load_causal_lm(models["damaged"], device="cpu")
    for prompt in ("Die Bundesregierung hat am Mittwoch", "Er konnte nicht"):
        ids = lm.encode(prompt)
        config = GenerationConfig(do_sample=False, max_new_tokens=12, eos_token_id=lm.stop_ids, pad_token_id=lm.pad_id)
        x = torch.tensor([ids])
        ref = lm.model.generate(x, attention_mask=torch.ones_like(x), generation_config=config)[0, len(ids):].tolist()
        assert lm.greedy(ids, 12) == ref


def test_id_map_falls_back_to_token_strings(models: dict[str, Path], tmp_path: Path) -> None:
    from mlcompress.eval.lm_scorer import id_map, load_causal_lm

    copy = tmp_path / "trim-no-map"
    shutil.copytree(models["trim"], copy)
    (copy / "id_map.json").unlink()
    src = load_causal_lm(models["src"], device="cpu")
    with_map, by_strings = id_map(src, load_causal_lm(models["trim"], device="cpu")), id_map(src, load_causal_lm(copy, device="cpu"))
    assert (with_map.how, by_strings.how) == ("id_map.json", "token strings")
    np.testing.assert_array_equal(with_map.to_source, by_strings.to_source)
    assert (with_map.to_source >= 0).all() and len(with_map.to_source) < src.vocab_size


def test_decoder_bundle_candidate_runs_without_torch_and_matches(models: dict[str, Path], small_data: Path,
                                                                 tmp_path: Path) -> None:
    """The trim exported as an ONNX decoder bundle: its ids are found through the trim's id_map.json (the manifest names
    the folder it came from), and its fp32 graph scores as the trim does."""
    import mlcompress.export as export

    if not hasattr(export, "export_decoder"):
        pytest.skip("this mlcompress has no decoder export")
    export.export_decoder(models["trim"], tmp_path / "bundle")
    r = evaluate(models["src"], tmp_path / "bundle", "de", data_dir=small_data, lm_limits=TINY)
    m = _by_metric(r)
    assert r.candidate["backend"] == "export-bundle" and r.parameters["id_map"]["how"] == "id_map.json"
    same = m["nll_per_token_same_tokens"]
    assert same.n >= 3 and same.details["max_abs_token_diff_vs_kept"] <= 1e-4
    assert m["top1_agreement"].candidate == 1.0 and abs(m["kl_nats"].candidate) < 1e-6 and m["dropped_mass"].candidate > 0
    assert r.efficiency["candidate"]["decode_tokens_per_s"] > 0 and r.candidate["size"]["parameters"] > 0


def test_damaged_candidate_fails_the_gate_with_a_clear_report(models: dict[str, Path], small_data: Path, tmp_path: Path) -> None:
    with pytest.raises(GateError) as info:
        evaluate(models["src"], models["damaged"], "de", "perplexity,next_token,greedy", small_data, tmp_path / "rep",
                 min_retention=0.99, lm_limits=TINY, raise_on_fail=True)
    assert info.value.exit_code == 1
    assert "next_token de top1_agreement" in info.value.message and "perplexity de bits_per_byte" in info.value.message
    report = json.loads((tmp_path / "rep/report.json").read_text())
    assert report["gate"]["passed"] is False and report["parameters"]["model_kind"] == "causal-lm"
    assert {(f["task"], f["metric"]) for f in report["gate"]["failures"]} == {("next_token", "top1_agreement"),
                                                                            ("perplexity", "bits_per_byte")}
    assert report["gate"]["checked"] == 2  # the diagnostics (same-token NLL, KL, dropped mass, greedy) are not gated
    greedy = next(s for s in report["scores"] if s["metric"] == "identical_text")
    assert greedy["candidate"] < 1 and greedy["details"]["examples"][0]["source"] != greedy["details"]["examples"][0]["candidate"]
    md = (tmp_path / "rep/report.md").read_text()
    assert "Gate: FAILED" in md and "| next_token | de | top1_agreement |" in md and "Greedy continuations that differ" in md


def test_cli_gates_a_damaged_candidate_and_writes_the_html_report(models: dict[str, Path], small_data: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run([str(ROOT / ".venv/bin/mlcompress"), "eval", str(models["src"]), str(models["damaged"]), "-l", "de",
                           "--data", str(small_data), "-o", str(out), "--min-retention", "0.9", "--max-examples", "6"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "error: retention gate failed" in proc.stderr and "hint:" in proc.stderr and "Traceback" not in proc.stderr
    assert "decode" in proc.stdout and "tokens/s" in proc.stdout
    html = (out / "report.html").read_text()
    for needle in ("bits_per_byte", "top1_agreement", "dropped_mass", "identical_text", "Gate: FAILED", "prefill_ms_p50",
                   "decode_tokens_per_s", "Greedy continuations that differ"):
        assert needle in html, needle
    assert html.count("data:image/png;base64,") == 3  # retention, size, prefill/decode
    data = json.loads((out / "report.json").read_text())
    assert data["parameters"]["lm_limits"]["texts"] == 6 and data["efficiency"]["kind"] == "generative"


def test_bad_requests_are_refused_before_work(models: dict[str, Path], small_data: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="measure encoders, and the source is a causal LM"):
        evaluate(models["src"], models["trim"], "de", "retrieval,perplexity", small_data)
    with pytest.raises(InputError, match="unknown task"):
        evaluate(models["src"], models["trim"], "de", "perplexity,bleu", small_data)
    with pytest.raises(InputError, match="no held-out text for any requested language"):
        evaluate(models["src"], models["trim"], "ja", "perplexity", small_data)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    (encoder / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match="not a causal LM"):
        evaluate(models["src"], encoder, "de", "perplexity", small_data, lm_limits=TINY)
