"""Generative export: decoder-only LMs (Gemma 3, Qwen 2, Llama) to ONNX with a KV cache in the optimum /
transformers.js layout, and torch-free generation from the exported folder.

Tiny random models with real-format tokenizers (tests/decoder_models.py), each exported once per session: Gemma 3
with int4 (sliding window 8, shorter than the texts), Qwen 2 with int8, Llama fp32 only; every export also writes and
checks the fp32 graph, which the exact comparisons use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import read_lines
from decoder_models import FAMILIES, build
from mlcompress.errors import InputError, ModelSourceError, UnsupportedModelError
from mlcompress.export import BundleError, export_decoder, generate, runtime, verify

QUANTIZE = {"gemma3": "int4", "qwen2": "int8", "qwen3": "int4", "llama": "none"}
DTYPE = {"none": "fp32", "int8": "q8", "int4": "q4"}
QFILE = {"q4": "onnx/model_q4.onnx", "q8": "onnx/model_quantized.onnx"}
TEXTS = ["Die Bundesregierung hat am Mittwoch einen neuen Plan für die Energiewende vorgestellt, der bis 2030 gilt.",
         "The weather in Berlin is"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Callable[[str], tuple[Path, Path, object]]:
    """family -> (model dir, bundle dir, ExportResult), built and exported on first use."""
    lines = read_lines(data_dir / "mono" / "en.txt.gz", 150) + read_lines(data_dir / "mono" / "de.txt.gz", 150)
    done: dict[str, tuple[Path, Path, object]] = {}

    def get(family: str) -> tuple[Path, Path, object]:
        if family not in done:
            root = tmp_path_factory.mktemp(family)
            model_dir = build(family, root / "model", lines)
            result = export_decoder(model_dir, root / "bundle", quantize=QUANTIZE[family])
            done[family] = (model_dir, root / "bundle", result)
        return done[family]

    return get


def _hf(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_io_names_and_static_cache_dims(family: str, exported) -> None:
    import onnx

    model_dir, bundle, result = exported(family)
    dtype = DTYPE[QUANTIZE[family]]
    manifest = verify(bundle)  # every file's sha256
    assert manifest["model"] == (QFILE.get(dtype) or "onnx/model.onnx") and manifest["head"]["task"] == "text-generation"
    assert {"onnx/model.onnx", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])
    config = json.loads((bundle / "config.json").read_text())
    assert config["transformers.js_config"]["dtype"] == dtype
    assert json.loads((bundle / "tokenizer_config.json").read_text())["chat_template"]
    graph = onnx.load(str(bundle / "onnx" / "model.onnx")).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]}
    kv, hd, layers = config["num_key_value_heads"], config.get("head_dim") or 16, config["num_hidden_layers"]
    head = ["input_ids", "attention_mask"] + (["position_ids"] if family != "gemma3" else [])  # Gemma: computed inside
    assert [v.name for v in graph.input] == head + [f"past_key_values.{i}.{t}" for i in range(layers) for t in ("key", "value")]
    assert [v.name for v in graph.output] == ["logits"] + [f"present.{i}.{t}" for i in range(layers) for t in ("key", "value")]
    assert dims["attention_mask"] == ["batch_size", "past_sequence_length + sequence_length"]
    assert dims["past_key_values.1.value"] == ["batch_size", kv, "past_sequence_length", hd]
    assert dims["present.0.key"] == ["batch_size", kv, "past_sequence_length + sequence_length", hd]
    assert dims["logits"] == ["batch_size", "sequence_length", config["vocab_size"]]
    if dtype != "fp32":  # the LM head (untied) and the embedding are quantised too: no float vocab-sized matrix is left
        q = onnx.load(str(bundle / QFILE[dtype])).graph
        size = config["vocab_size"] * config["hidden_size"]
        big = [t.name for t in q.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= size // 4]
        assert not big and result.quantization["untied_head"], (big, result.quantization)
        ops = {n.op_type for n in q.node}
        assert {"MatMulNBits", "GatherBlockQuantized"} <= ops  # tied: the embedding reads the head's quantised blocks
        assert len(result.quantization["embedding"]["shared_with_head"]) == 1


def _steps(gen: generate.Generator, ids: np.ndarray, mask: np.ndarray, cuts: list[int]) -> np.ndarray:
    """Logits of the batch fed in pieces ending at ``cuts``, each reading the previous pieces' cache."""
    past, parts, start = gen.runner.empty_past(len(ids)), [], 0
    for end in [*cuts, ids.shape[1]]:
        logits, past = gen.runner.step(ids[:, start:end], mask[:, :end], past)
        parts.append(logits)
        start = end
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_logits_match_pytorch_with_and_without_cache(family: str, exported) -> None:
    from mlcompress.export.decoding import left_pad, position_ids

    model_dir, bundle, result = exported(family)
    assert result.parity["fp32"]["passed"] and result.parity["fp32"]["logits"]["max_abs_diff_cache"] <= 1e-4
    gen = generate.load(bundle, dtype="fp32")
    model, _ = _hf(model_dir)
    ids, mask = left_pad([gen.encode(t) for t in TEXTS], gen.pad_id)
    assert ids.shape[1] > 16 and mask[1, 0] == 0  # longer than twice Gemma's window; the second row left-padded
    with torch.inference_mode():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(position_ids(mask, ids.shape[1]))).logits.numpy()
    real = mask.astype(bool)
    for cuts in ([], [ids.shape[1] // 2], list(range(1, ids.shape[1]))):  # no cache; prefill + rest; token by token
        assert np.abs(_steps(gen, ids, mask, cuts) - ref)[real].max() <= 1e-4, cuts


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_transformers_generate(family: str, exported) -> None:
    from transformers import GenerationConfig

    model_dir, bundle, result = exported(family)
    assert result.parity["fp32"]["greedy"]["identical"] == result.parity["fp32"]["greedy"]["prompts"]
    gen = runtime.load(bundle) if QUANTIZE[family] == "none" else generate.load(bundle, dtype="fp32")
    assert isinstance(gen, generate.Generator) and gen.dtype == "fp32"
    model, tok = _hf(model_dir)
    n = 28
    for text in TEXTS:
        ids = tok(text, return_tensors="pt").input_ids
        assert ids[0].tolist() == gen.encode(text)
        config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=gen.stop_ids,
                                  pad_token_id=gen.pad_id)
        with torch.inference_mode():
            want = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)[0, ids.shape[1]:]
        got = gen.generate_ids([gen.encode(text)], max_new_tokens=n, min_new_tokens=n)[0]
        assert got == want.tolist(), (family, text)


def test_left_padded_batch_equals_each_prompt_alone(exported) -> None:
    gen = generate.load(exported("gemma3")[1], dtype="fp32")
    rows = [gen.encode(t) for t in TEXTS]
    assert len(rows[0]) - len(rows[1]) > 8  # the short prompt is padded by more than the sliding window
    batch = gen.generate_ids(rows, max_new_tokens=20, min_new_tokens=20)
    assert batch == [gen.generate_ids([r], max_new_tokens=20, min_new_tokens=20)[0] for r in rows]
    assert gen.generate(TEXTS, max_new_tokens=12) == [gen.generate(t, max_new_tokens=12) for t in TEXTS]


def test_sampling_is_reproducible_with_a_seed(exported) -> None:
    gen = runtime.load(exported("qwen2")[1])  # the int8 default
    kw = {"max_new_tokens": 16, "min_new_tokens": 16, "do_sample": True, "temperature": 1.3, "top_k": 50, "top_p": 0.95}
    rows = [gen.encode(TEXTS[1])]
    first = gen.generate_ids(rows, seed=7, **kw)
    assert first == gen.generate_ids(rows, seed=7, **kw)
    assert first != gen.generate_ids(rows, seed=8, **kw)
    greedy = gen.generate_ids(rows, max_new_tokens=16, min_new_tokens=16)
    assert gen.generate_ids(rows, seed=3, **{**kw, "top_k": 1}) == greedy  # top-k 1 sampling is greedy
    assert gen.generate([TEXTS[1], TEXTS[0]], do_sample=True, seed=1, max_new_tokens=8) == \
        gen.generate([TEXTS[1], TEXTS[0]], do_sample=True, seed=1, max_new_tokens=8)


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_streaming_chat_template_and_stop_ids(family: str, exported) -> None:
    model_dir, bundle, _ = exported(family)
    gen = generate.load(bundle)
    _, tok = _hf(model_dir)
    messages = [{"role": "user", "content": "Wie spät ist es?"}]
    assert gen.encode(messages) == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert set(gen.stop_ids) == {tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>" if family == "gemma3" else "<|endoftext|>")}
    pieces: list[str] = []
    text = gen.generate(messages, max_new_tokens=20, stream=pieces.append)
    assert pieces and "".join(pieces) == text
    with pytest.raises(InputError, match="one prompt"):
        gen.generate(TEXTS, stream=print)


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_quantized_exports_load_and_report_agreement(family: str, exported, record_property) -> None:
    _, bundle, result = exported(family)
    dtype = DTYPE[QUANTIZE[family]]
    q = result.parity[dtype]
    assert q["finite"] and q["passed"] and 0 <= q["top1_agreement"] <= 1 and np.isfinite(q["perplexity_ratio"])
    record_property(f"{family}_{dtype}", {k: q[k] for k in ("top1_agreement", "perplexity_ratio", "max_abs_diff")})
    gen = runtime.load(bundle)
    assert gen.dtype == dtype and gen.model_file == QFILE[dtype]
    ids = np.asarray([gen.encode(TEXTS[1])], dtype=np.int64)
    logits, present = gen.runner.step(ids, np.ones_like(ids), gen.runner.empty_past(1))
    assert np.isfinite(logits).all() and present[0].shape[2] == ids.shape[1]
    assert len(gen.generate_ids(ids.tolist(), max_new_tokens=8, min_new_tokens=8)[0]) == 8


def test_runtime_imports_no_torch(exported) -> None:
    bundle = exported("llama")[1]
    code = ("import sys; from mlcompress.export import generate; g = generate.load(sys.argv[1]); "
            "print(len(g.generate_ids([g.encode('Guten Tag')], max_new_tokens=6, min_new_tokens=6)[0])); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch or transformers imported'")
    out = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "6", out.stderr[-2000:]


def test_bad_input_gives_clear_errors(exported, tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    with pytest.raises(ModelSourceError, match="not found"):
        export_decoder(tmp_path / "nowhere", tmp_path / "out")
    encoder = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(encoder)
    with pytest.raises(UnsupportedModelError, match="'bert' is not a decoder-only family"):
        export_decoder(encoder, tmp_path / "out")
    with pytest.raises(InputError, match="unknown decoder quantisation"):
        export_decoder(encoder, tmp_path / "out", quantize="int2")
    assert not (tmp_path / "out").exists()
    bundle = tmp_path / "copy"
    shutil.copytree(exported("llama")[1], bundle)
    with open(bundle / "tokenizer.json", "a", encoding="utf-8") as handle:
        handle.write(" ")
    with pytest.raises(BundleError, match="does not match its sha256"):
        generate.load(bundle)
    with pytest.raises(BundleError, match="not found"):
        runtime.load(tmp_path / "missing")


def test_export_and_its_cli_dispatch_a_decoder(exported, tmp_path: Path) -> None:
    """`export()` (and `mlcompress export`) take a causal LM through the decoder exporter: --quantize int8-weights (the
    default) is 8-bit MatMulNBits; encoder-only options are refused before any work, naming what is wrong."""
    from typer.testing import CliRunner

    from mlcompress.export import export
    from mlcompress.orchestrate.cli import app

    model_dir = exported("llama")[0]
    result = export(model_dir, tmp_path / "default", texts=TEXTS)
    manifest = verify(tmp_path / "default")
    assert manifest["head"]["task"] == "text-generation" and "onnx/model_quantized.onnx" in manifest["files"]
    assert result.parity["q8"]["passed"]
    for bad, message in ((dict(ort=True), "--ort"), (dict(max_drop=0.01), "--max-drop"),
                         (dict(quantize="int8-static"), "int8-static is not available for decoder")):
        with pytest.raises(InputError, match=message):
            export(model_dir, tmp_path / "refused", texts=TEXTS, **bad)
    assert not (tmp_path / "refused").exists()
    cli = CliRunner().invoke(app, ["export", str(model_dir), "-o", str(tmp_path / "cli"), "--quantize", "none"])
    assert cli.exit_code == 0, cli.output
    assert "onnx/model.onnx" in verify(tmp_path / "cli")["files"] and "greedy 2/2 prompts identical" in cli.output


def test_bundle_generate_streams_the_greedy_continuation(exported) -> None:
    from typer.testing import CliRunner

    from mlcompress.orchestrate.cli import app

    bundle = exported("qwen2")[1]
    want = generate.load(bundle).generate(TEXTS[1], max_new_tokens=12)
    cli = CliRunner().invoke(app, ["bundle", "generate", str(bundle), TEXTS[1], "-n", "12"])
    assert cli.exit_code == 0, cli.output
    assert cli.output == TEXTS[1] + want + "\n"
    fp32 = CliRunner().invoke(app, ["bundle", "generate", str(bundle), TEXTS[1], "-n", "4", "--dtype", "fp32"])
    assert fp32.exit_code == 0 and fp32.output.startswith(TEXTS[1]), fp32.output
    missing = CliRunner().invoke(app, ["bundle", "generate", str(bundle / "nowhere"), "x"])
    assert isinstance(missing.exception, BundleError) and "not found" in str(missing.exception)


def test_fp32_gate_tolerates_torch_own_noise_but_refuses_beyond_it() -> None:
    """The fp32 gate's atol rises to twice PyTorch's own eager-vs-default noise on the batch, never below atol."""
    from mlcompress.errors import GateError
    from mlcompress.export.decoder_parity import gate_fp32

    def logits(excess: float, noise: float) -> dict:
        return {"max_abs_diff_no_cache": excess, "max_abs_diff_cache": excess, "rtol": 1e-4, "excess": excess,
                "torch_noise": noise}

    clean = {"mismatches": [], "ties": []}
    assert gate_fp32(logits(1.4e-4, 1e-4), clean, 1e-4, False)["passed"]  # within twice the noise (2e-4)
    assert gate_fp32(logits(5e-5, 0.0), clean, 1e-4, False)["tolerance"] == 1e-4  # atol is the floor
    with pytest.raises(GateError, match="eager-vs-default noise"):
        gate_fp32(logits(3e-4, 1e-4), clean, 1e-4, False)
    with pytest.raises(GateError, match="greedy divergences"):
        gate_fp32(logits(1e-5, 0.0), {"mismatches": [{"prompt": 0, "step": 3}], "ties": []}, 1e-4, False)
    assert not gate_fp32(logits(3e-4, 1e-4), clean, 1e-4, True)["passed"]  # forced: written, marked
