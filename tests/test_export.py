"""mlcompress export: parity of each head with PyTorch on tiny models, quantised parity, bundles, torch-free runtime, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import read_lines
from mlcompress.errors import GateError, InputError, OutputExistsError, UnsupportedModelError
from mlcompress.export import BundleError, export, verify
from mlcompress.export.quantize import default_reduce_range

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """A tiny XLM-R-style encoder with each head (same weights and tokenizer), plus a tiny decoder (GPT-2)."""
    import torch
    import transformers
    from tiny_models import build_gpt2, build_xlmr, training_lines

    base = tmp_path_factory.mktemp("tiny-export")
    lines = training_lines(data_dir)
    mlm = build_xlmr(base / "masked-lm", lines)
    tok = transformers.AutoTokenizer.from_pretrained(mlm.path)
    config = transformers.AutoConfig.from_pretrained(mlm.path)
    paths = {"masked-lm": mlm.path}
    for name, cls, extra in (("sentence-embedding", transformers.XLMRobertaModel, {}),
                             ("token-classification", transformers.XLMRobertaForTokenClassification, {"num_labels": 5}),
                             ("sequence-classification", transformers.XLMRobertaForSequenceClassification, {"num_labels": 3})):
        torch.manual_seed(1)
        cfg = transformers.XLMRobertaConfig.from_dict({**config.to_dict(), **extra, "architectures": None})
        model = cls(cfg) if name != "sentence-embedding" else cls(cfg, add_pooling_layer=False)
        model.save_pretrained(base / name)
        tok.save_pretrained(base / name)
        paths[name] = base / name
    paths["gpt2"] = build_gpt2(base / "gpt2", lines).path
    return paths


@pytest.fixture(scope="module")
def texts(data_dir: Path) -> dict[str, str]:
    return {"en": str(data_dir / "mono" / "en.txt.gz"), "de": str(data_dir / "mono" / "de.txt.gz")}


FAST = {"measure_latency": False, "parity_texts": 16, "calibration_texts": 16}


@pytest.mark.parametrize("head", ["sentence-embedding", "token-classification", "sequence-classification", "masked-lm"])
def test_each_head_matches_pytorch_unquantised(tiny, texts, tmp_path, head):
    result = export(tiny[head], tmp_path / "out", quantize="none", texts=texts, **FAST)
    assert result.task == head
    p = result.parity
    assert p["passed"] and p["mean_cosine"] > 0.9999 and p["max_abs_diff"] < 1e-3
    if head != "sentence-embedding":
        assert p["label_agreement"] == 1.0
    assert result.model_file == "onnx/model.onnx"  # transformers.js's fp32 name
    assert (tmp_path / "out" / result.model_file).is_file() and (tmp_path / "out" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "out" / "mlcompress.json").read_text())["stage"] == "export"
    assert not (tmp_path / "out" / "manifest.json").exists()  # only bundles carry a manifest


def test_sentence_embedding_graph_pools_and_normalises_with_dynamic_axes(tiny, texts, tmp_path):
    """The graph itself does mean pooling and L2 normalisation, for any batch size and sequence length."""
    import onnxruntime as ort
    import torch
    import transformers

    result = export(tiny["sentence-embedding"], tmp_path / "out", quantize="none", texts=texts, **FAST)
    layers = transformers.AutoConfig.from_pretrained(tiny["sentence-embedding"]).num_hidden_layers
    assert result.fused_operators.get("Attention") == layers  # the padding mask was rewritten for ORT's fusion
    sess = ort.InferenceSession(str(tmp_path / "out" / result.model_file), providers=["CPUExecutionProvider"])
    tok = transformers.AutoTokenizer.from_pretrained(tiny["sentence-embedding"])
    model = transformers.AutoModel.from_pretrained(tiny["sentence-embedding"]).eval()
    for batch in (["Guten Morgen"], ["a", "Ein deutlich längerer Satz mit vielen Wörtern, damit gepolstert wird.", "Hallo Welt"]):
        enc = tok(batch, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
        got = sess.run(None, {k: enc[k].numpy() for k in ("input_ids", "attention_mask")})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got, ref, atol=1e-4)


# int8 kernels depend on the CPU (VNNI or not: reduce_range's default follows it), so dynamic int8 runs both ways here
@pytest.mark.parametrize("quantize, reduce_range", [("int8-dynamic", None), ("int8-dynamic", True),
                                                    ("int8-dynamic", False), ("int8-static", None), ("int4", None)])
def test_quantised_exports_pass_their_thresholds(tiny, texts, tmp_path, quantize, reduce_range):
    result = export(tiny["sequence-classification"], tmp_path / "q", quantize=quantize, texts=texts,
                    int4_block_size=32, embedding_block_size=32, reduce_range=reduce_range, **FAST)
    p = result.parity
    assert p["passed"], p
    assert p["mean_cosine"] >= p["cosine_threshold"] and p["label_agreement"] >= p["agreement_threshold"]
    assert result.quantization["embeddings"]["op"] == "GatherBlockQuantized"
    if quantize.startswith("int8"):
        assert result.quantization["per_channel"] is True
        assert result.quantization["reduce_range"] == (default_reduce_range() if reduce_range is None else reduce_range)
    import onnx

    assert result.model_file == ("onnx/model_q4.onnx" if quantize == "int4" else "onnx/model_quantized.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q" / result.model_file)).graph.node}
    expected = {"int8-dynamic": "DynamicQuantizeLinear", "int8-static": "QuantizeLinear", "int4": "MatMulNBits"}[quantize]
    assert expected in ops or (quantize == "int8-dynamic" and "MatMulInteger" in ops), ops
    # dynamic int8 quantises fused attention (QAttention); MatMul-only passes fuse only the attention core
    assert ("QAttention" in ops) == (quantize == "int8-dynamic") and "Attention" not in ops, ops
    assert ("MultiHeadAttention" in ops) == (quantize != "int8-dynamic"), ops


def test_int8_weights_is_weight_only_float_compute_folded_at_load(tiny, texts, tmp_path):
    """int8-weights: int8 weights restored by Cast and Mul, float activations, so no batch or platform dependence; a
    plain session with default options folds them into float constants (no session entry needed, no int8 kernels)."""
    import onnx

    from mlcompress.export import runtime

    result = export(tiny["sentence-embedding"], tmp_path / "w", quantize="int8-weights", bundle=True, texts=texts, **FAST)
    assert result.parity["passed"] and result.parity["mean_cosine"] >= 0.99, result.parity
    q = verify(tmp_path / "w")["quantization"]
    assert (q["name"], q["method"], q["weights"]) == ("int8-weights", "weight-only", "int8")
    assert "session_config" not in q and q["embeddings"]["op"] == "GatherBlockQuantized"
    model = onnx.load(str(tmp_path / "w" / result.model_file))
    ops = {n.op_type for n in model.graph.node}
    assert {"Cast", "Mul", "Attention"} <= ops
    assert not ops & {"DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QAttention"}, ops
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) == q["operators"] >= 2 * 3  # per layer: fused q/k/v, attention output, two FFN
    bundle = runtime.load(tmp_path / "w")
    sentences = ["Guten Morgen", "Where is the station?", "Ein viel längerer Satz, der die Auffüllung der anderen erzwingt."]
    alone = np.stack([bundle.encode(s) for s in sentences])
    assert float(np.abs(bundle.encode(sentences) - alone).max()) <= 1e-5  # no dynamic activation scales
    import onnxruntime as ort  # a client's plain session (FastEmbed's, transformers.js's) computes what the runtime does

    plain = ort.InferenceSession(str(tmp_path / "w" / result.model_file), providers=["CPUExecutionProvider"])
    feeds = runtime.tokenize(bundle.tokenizer, sentences, bundle.prefix)
    np.testing.assert_allclose(plain.run(["sentence_embedding"], feeds)[0], bundle.encode(sentences), atol=2e-6)


def test_default_bundle_embeds_a_sentence_the_same_in_any_batch(tiny, texts, data_dir, tmp_path):
    """The default quantisation (export's and the pipeline's) gives each sentence one embedding, whatever else is in its
    batch: an index built in batches and a query embedded alone see the same vectors (within 1e-5)."""
    import inspect

    from mlcompress.export import runtime
    from mlcompress.orchestrate.config import default_config, validate_config

    default = inspect.signature(export).parameters["quantize"].default
    pipeline = validate_config(default_config("en,de", data_dir))
    assert pipeline["stages"]["export"]["quantize"] == default == "auto"  # int8-weights for this (not a student)
    export(tiny["sentence-embedding"], tmp_path / "d", bundle=True, texts=texts, **FAST)
    bundle = runtime.load(tmp_path / "d")
    sentences = read_lines(data_dir / "mono" / "de.txt.gz", 12, skip=500) + ["Hallo", "Where is the station?"] + \
        read_lines(data_dir / "mono" / "en.txt.gz", 12, skip=500)
    alone = np.stack([bundle.encode(s) for s in sentences])
    for size in (2, 5, 32):  # other batch mates, other padding
        assert float(np.abs(bundle.encode(sentences, batch_size=size) - alone).max()) <= 1e-5, size
    reordered = bundle.encode(sentences[::-1], batch_size=7)[::-1]
    assert float(np.abs(reordered - alone).max()) <= 1e-5


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_static_int8_with_histogram_calibration(tiny, texts, tmp_path, method):
    """ORT's histogram calibrators stack every batch, so calibration batches are padded to one length first."""
    import logging

    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)  # the host application's choice, which quantising must leave as it was
    try:
        result = export(tiny["sequence-classification"], tmp_path / "q", quantize="int8-static", calibration=method,
                        texts=texts, **FAST)
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)
    assert result.parity["passed"], result.parity
    assert result.quantization["calibration"] == method


def test_reduce_range_default_follows_vnni():
    assert default_reduce_range({"avx2", "avx512f"}, "x86_64") is True
    assert default_reduce_range({"avx2", "avx512_vnni"}, "x86_64") is False
    assert default_reduce_range({"avx2", "avx_vnni"}, "x86_64") is False
    assert default_reduce_range(set(), "aarch64") is False


def test_parity_gate_refuses_then_force_writes(tiny, texts, tmp_path):
    out = tmp_path / "gated"
    with pytest.raises(GateError, match="parity") as info:
        export(tiny["sentence-embedding"], out, quantize="int8-dynamic", texts=texts, min_cosine=1.5, bundle=True, **FAST)
    assert info.value.exit_code == 1
    assert not out.exists() and not list(tmp_path.iterdir())
    result = export(tiny["sentence-embedding"], out, quantize="int8-dynamic", texts=texts, min_cosine=1.5, bundle=True,
                    force=True, **FAST)
    assert result.parity["passed"] is False and result.parity["forced"] is True
    assert json.loads((out / "manifest.json").read_text())["parity"]["forced"] is True


BLOCK_TORCH = textwrap.dedent("""
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ImportError("blocked for this test: " + name)
            return None
    sys.meta_path.insert(0, _NoTorch())
""")


@pytest.fixture(scope="module")
def bundle_dir(tiny, texts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "emb"
    export(tiny["sentence-embedding"], out, quantize="int8-dynamic", bundle=True, texts=texts, languages="en,de", **FAST)
    return out


def test_bundle_manifest_lists_everything(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert set(manifest["files"]) == {"onnx/model_quantized.onnx", "tokenizer.json", "config.json", "tokenizer_config.json",
                                      "special_tokens_map.json", "mlcompress.json"}
    assert all(len(e["sha256"]) == 64 and e["bytes"] > 0 for e in manifest["files"].values())
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert manifest["outputs"][0]["name"] == "sentence_embedding" and manifest["outputs"][0]["shape"] == ["batch", 32]
    assert manifest["languages"] == ["en", "de"] and manifest["quantization"]["name"] == "int8-dynamic"
    assert manifest["source"]["sha256"] and manifest["parity"]["passed"]
    assert manifest["head"]["pooling"] == "mean" and manifest["head"]["normalize"] is True
    assert manifest["size_bytes"] == sum(e["bytes"] for e in manifest["files"].values())
    assert verify(bundle_dir)["manifest_sha256"] == manifest["manifest_sha256"]


def test_runtime_runs_where_torch_cannot_be_imported(bundle_dir, tmp_path, data_dir):
    from mlcompress.export import runtime

    sentences = read_lines(data_dir / "tatoeba" / "tatoeba.deu-eng.deu.gz", 5)
    expected = runtime.load(bundle_dir).encode(sentences)
    np.save(tmp_path / "expected.npy", expected)
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
    script = textwrap.dedent(f"""
        import json, sys, numpy as np
        try:
            import torch
        except ImportError:
            pass
        else:
            sys.exit("torch was importable")
        from mlcompress.export import runtime
        emb = runtime.load({str(bundle_dir)!r}).encode({json.dumps(sentences)})
        np.testing.assert_allclose(emb, np.load({str(tmp_path / 'expected.npy')!r}), atol=1e-5)
        assert emb.shape == (5, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
        assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_tar_gz_bundle_loads_and_verifies(tiny, texts, tmp_path):
    from mlcompress.export import runtime

    archive = tmp_path / "emb.tar.gz"
    export(tiny["sentence-embedding"], archive, quantize="int4", bundle=True, texts=texts, int4_block_size=32, **FAST)
    assert verify(archive)["quantization"]["name"] == "int4"
    emb = runtime.load(archive).encode(["Hallo Welt", "Hello world"])
    assert emb.shape == (2, 32)
    with pytest.raises(OutputExistsError):
        export(tiny["sentence-embedding"], archive, quantize="int4", bundle=True, texts=texts, **FAST)


def test_classification_bundle_predicts_labels(tiny, texts, tmp_path):
    from mlcompress.export import runtime

    export(tiny["token-classification"], tmp_path / "tok", quantize="none", bundle=True, texts=texts, **FAST)
    labels = runtime.load(tmp_path / "tok").predict(["Hallo Welt", "Guten Morgen allerseits"])
    assert len(labels) == 2 and all(isinstance(row, list) and row for row in labels)
    assert len(labels[1]) > len(labels[0])
    with pytest.raises(BundleError, match="encode"):
        runtime.load(tmp_path / "tok").encode(["x"])


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("victim", ["onnx/model_quantized.onnx", "tokenizer.json", "manifest.json"])
def test_changed_byte_is_refused(bundle_dir, tmp_path, victim):
    from mlcompress.export import runtime

    bad = _copy(bundle_dir, tmp_path / "bad")
    data = bytearray((bad / victim).read_bytes())
    if victim == "manifest.json":
        data = bytearray(bytes(data).replace(b'"en"', b'"fr"', 1))
    else:
        data[len(data) // 2] ^= 0x01
    (bad / victim).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256|changed|digest"):
        runtime.load(bad)
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "mlcompress"), "bundle", "verify", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr
    ok = subprocess.run([str(ROOT / ".venv" / "bin" / "mlcompress"), "bundle", "verify", str(bundle_dir)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "ok" in ok.stdout


def test_missing_file_and_not_a_bundle(bundle_dir, tmp_path):
    bad = _copy(bundle_dir, tmp_path / "bad")
    (bad / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="missing tokenizer.json"):
        verify(bad)
    with pytest.raises(BundleError, match="no manifest.json"):
        verify(tmp_path)
    with pytest.raises(BundleError, match="not found"):
        verify(tmp_path / "nope")


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_other_encoder_families_export_with_fused_attention(family, texts, tmp_path, data_dir):
    """ORT's optimiser lists no roberta or distilbert type: they are optimised as BERT, not returned unfused."""
    import torch
    import transformers
    from tiny_models import build_bert, training_lines

    tok_dir = build_bert(tmp_path / "tok", training_lines(data_dir)).path
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    if family == "distilbert":
        model = transformers.DistilBertModel(transformers.DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2,
                                                                           n_heads=2, hidden_dim=64))
    else:
        cls, cfg = {"bert": (transformers.BertModel, transformers.BertConfig),
                    "roberta": (transformers.RobertaModel, transformers.RobertaConfig)}[family]
        model = cls(cfg(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, pad_token_id=tok.pad_token_id, max_position_embeddings=130))
    model.save_pretrained(tmp_path / family)
    tok.save_pretrained(tmp_path / family)
    result = export(tmp_path / family, tmp_path / "out", quantize="int8-dynamic", texts=texts, **FAST)
    assert result.parity["passed"] and result.fused_operators.get("Attention") == 2, result.fused_operators


def test_unsupported_architecture_is_refused_and_nothing_written(tiny, texts, tmp_path):
    # a causal LM goes to the decoder exporter, which names the families it handles (GPT-2 is not one yet)
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not a decoder-only family the generative export supports"):
        export(tiny["gpt2"], tmp_path / "out", texts=texts, **FAST)
    assert not (tmp_path / "out").exists()


def test_bad_inputs_get_clear_errors(tiny, texts, tmp_path):
    with pytest.raises(InputError, match="unknown quantisation"):
        export(tiny["masked-lm"], tmp_path / "o", quantize="int3", texts=texts)
    with pytest.raises(InputError, match="unknown format"):
        export(tiny["masked-lm"], tmp_path / "o", format="tflite", texts=texts)
    with pytest.raises(InputError, match="unknown calibration method") as info:
        export(tiny["masked-lm"], tmp_path / "o", quantize="int8-static", calibration="kl", texts=texts)
    assert "percentile" in info.value.hint
    with pytest.raises(InputError, match="no target-language text"):
        export(tiny["masked-lm"], tmp_path / "o")
    with pytest.raises(InputError, match="--bundle"):
        export(tiny["masked-lm"], tmp_path / "o.tar.gz", texts=texts)
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputExistsError):
        export(tiny["masked-lm"], tmp_path / "exists", texts=texts, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_tensorrt_and_bitsandbytes_need_their_package_and_a_gpu(tiny, texts, tmp_path):
    import importlib.util

    with pytest.raises(InputError, match="tensorrt") as info:
        export(tiny["sentence-embedding"], tmp_path / "trt", format="tensorrt", quantize="fp16", texts=texts)
    if importlib.util.find_spec("tensorrt") is None:
        assert "mlcompress[tensorrt]" in info.value.hint
    else:
        assert "CUDA GPU" in info.value.message
    with pytest.raises(InputError, match="does not take"):
        export(tiny["sentence-embedding"], tmp_path / "trt", format="tensorrt", quantize="int4", texts=texts)
    with pytest.raises(InputError, match="tensorrt|CUDA GPU") as info:  # the default scheme: fp16, which TensorRT takes
        export(tiny["sentence-embedding"], tmp_path / "trt", format="tensorrt", texts=texts)
    assert "does not take" not in info.value.message
    with pytest.raises(InputError, match="bitsandbytes|CUDA GPU"):
        export(tiny["sentence-embedding"], tmp_path / "bnb", format="bnb", quantize="int4")
    assert not list(tmp_path.iterdir())


def test_cli_export_writes_bundle(tiny, texts, tmp_path):
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "mlcompress"), "export", str(tiny["sentence-embedding"]), "-o",
                           str(tmp_path / "b"), "--format", "onnx", "--quantize", "int8-dynamic", "--bundle",
                           "--text", f"en={texts['en']}", "--text", f"de={texts['de']}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "parity vs PyTorch" in proc.stdout and (tmp_path / "b" / "manifest.json").is_file()
    bad = subprocess.run([str(ROOT / ".venv" / "bin" / "mlcompress"), "export", str(tiny["sentence-embedding"]), "-o",
                          str(tmp_path / "c"), "--text", "de"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "bad --text" in bad.stderr and not (tmp_path / "c").exists()


def test_fp16_export_passes_its_threshold(tiny, texts, tmp_path):
    import onnx

    result = export(tiny["sentence-embedding"], tmp_path / "h", quantize="fp16", texts=texts, **FAST)
    assert result.parity["passed"] and result.quantization["embeddings"] is None
    assert result.model_file == "onnx/model_fp16.onnx"
    model = onnx.load(str(tmp_path / "h" / result.model_file))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_eval_judges_an_export_bundle_like_its_pytorch_source(tiny, texts, tmp_path, data_dir):
    """An unquantised bundle, evaluated by mlcompress eval against its own PyTorch source, keeps everything."""
    from mlcompress.eval import Limits, evaluate

    out = tmp_path / "fp32-bundle"
    export(tiny["sentence-embedding"], out, quantize="none", bundle=True, texts=texts, languages="de", **FAST)
    report = evaluate(tiny["sentence-embedding"], out, "de", tasks="retrieval,fidelity", data_dir=data_dir,
                      limits=Limits().capped(40))
    scores = {(s.task, s.metric): s for s in report.scores}
    assert scores[("fidelity", "embedding_cosine")].candidate > 0.9999
    retrieval = scores[("retrieval", "accuracy")]
    assert retrieval.n == 40 and abs(retrieval.candidate - retrieval.source) <= 1 / 40
    assert any("hidden states" in str(s) for s in report.skipped)  # CKA needs hidden states a bundle does not give


def test_export_reads_text_through_mlcompress_corpus(tiny, tmp_path, data_dir):
    """Export reads its text as trim does: a datasets.save_to_disk folder and a wordfreq list work, languages are normalised."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("wordfreq")
    folder = tmp_path / "de-dataset"
    datasets.Dataset.from_dict({"text": read_lines(data_dir / "mono" / "de.txt.gz", 40)}).save_to_disk(str(folder))
    result = export(tiny["sentence-embedding"], tmp_path / "out", quantize="none", bundle=True, languages="DE,eng",
                    texts={"deu": str(folder), "EN": "wordfreq:en?n=200"}, **FAST)
    assert result.parity["passed"] and result.parity["texts"] > 0
    assert result.manifest["languages"] == ["de", "en"]
    with pytest.raises(InputError, match="unknown language"):
        export(tiny["sentence-embedding"], tmp_path / "o2", languages="en,xx", texts={"en": str(folder)}, **FAST)
    assert not (tmp_path / "o2").exists()


def test_export_reads_corpora_its_trim_recorded(tiny, tmp_path, data_dir):
    """With no --text, export reads the corpora recorded in the model's mlcompress.json (any corpus spec)."""
    import shutil

    from mlcompress.artifacts import write_provenance

    model = tmp_path / "trimmed"
    shutil.copytree(tiny["sentence-embedding"], model)
    text = tmp_path / "de.txt"
    text.write_text("\n".join(read_lines(data_dir / "mono" / "de.txt.gz", 30)) + "\n", encoding="utf-8")
    write_provenance(model, "trim", {"languages": ["de"]}, [{"language": "de", "corpus": str(text)},
                                                             {"language": "fr", "corpus": str(tmp_path / "gone.txt")}], {})
    result = export(model, tmp_path / "out", quantize="none", **FAST)
    assert result.parity["passed"]
    assert json.loads((tmp_path / "out" / "mlcompress.json").read_text())["parameters"]["languages"] == ["de"]


def test_cli_export_exposes_every_api_parameter():
    """`mlcompress export` takes each parameter of export() under the same name and default (--text LANG=SPEC is texts)."""
    import inspect

    from mlcompress.export.cli import export_command

    api = inspect.signature(export).parameters
    cli = inspect.signature(export_command).parameters
    names = {"texts": "text"}
    assert [n for n in api if names.get(n, n) not in cli] == []
    assert {n: (p.default, cli[names.get(n, n)].default) for n, p in api.items()
            if p.default != cli[names.get(n, n)].default} == {}


def test_cli_export_passes_its_options_through(monkeypatch, tmp_path):
    import typer
    from typer.testing import CliRunner

    import mlcompress.export as export_pkg
    from mlcompress.export import ExportResult
    from mlcompress.export.cli import register

    seen: dict = {}

    def fake(model, output, **kwargs):
        seen.update(kwargs, model=model, output=output)
        return ExportResult(Path(output), "onnx", kwargs["quantize"], "sentence-embedding", "model.onnx", 1, None, None)

    monkeypatch.setattr(export_pkg, "export", fake)
    app = typer.Typer()
    register(app)
    args = ["export", "m", "-o", str(tmp_path / "o"), "--pooling", "cls", "--no-normalize", "--max-length", "64",
            "--no-per-channel", "--embedding-block-size", "64", "--int4-block-size", "32", "--no-optimize",
            "--parity-texts", "8", "--calibration-texts", "9", "--min-agreement", "0.5", "--accuracy-texts", "10",
            "--no-measure-latency", "--text", "de=x.txt"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {k: seen[k] for k in ("pooling", "normalize", "max_length", "per_channel", "embedding_block_size",
                                 "int4_block_size", "optimize", "parity_texts", "calibration_texts", "min_agreement",
                                 "accuracy_texts", "measure_latency", "texts")} == {
        "pooling": "cls", "normalize": False, "max_length": 64, "per_channel": False, "embedding_block_size": 64,
        "int4_block_size": 32, "optimize": False, "parity_texts": 8, "calibration_texts": 9, "min_agreement": 0.5,
        "accuracy_texts": 10, "measure_latency": False, "texts": {"de": ["x.txt"]}}


def test_no_export_function_runs_past_80_lines():
    import ast

    long = []
    for path in sorted((ROOT / "export").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


@pytest.fixture(scope="module")
def ort_bundle(tiny, texts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "emb-ort"
    export(tiny["sentence-embedding"], out, quantize="int8-dynamic", bundle=True, ort=True, texts=texts,
           languages="en,de", **FAST)
    return out


def test_ort_bundle_lists_and_verifies_the_mobile_files(ort_bundle):
    """--ort: model.ort and required_operators.config, written by onnxruntime's converter, listed with their sha256."""
    from onnxruntime.tools.reduced_build_config_parser import parse_config

    manifest = verify(ort_bundle)
    assert set(manifest["files"]) == {"onnx/model_quantized.onnx", "tokenizer.json", "config.json", "tokenizer_config.json",
                                      "special_tokens_map.json", "model.ort", "required_operators.config", "mlcompress.json"}
    entry = manifest["ort"]
    assert (entry["model"], entry["operators_config"]) == ("model.ort", "required_operators.config")
    assert (entry["optimization_style"], entry["optimization_level"], entry["target_platform"]) == ("Fixed", "all", "arm")
    assert (ort_bundle / "model.ort").read_bytes()[4:8] == b"ORTM"  # the flatbuffer's file identifier
    required, _ = parse_config(str(ort_bundle / "required_operators.config"))
    assert {d: sorted(o) for d, v in required.items() for o in v.values()} == {
        d: ops for d, v in entry["operators"].items() for ops in v.values()}
    microsoft = {op for ops in entry["operators"]["com.microsoft"].values() for op in ops}
    assert {"GatherBlockQuantized", "QAttention"} <= microsoft, entry["operators"]
    assert str(ort_bundle) not in (ort_bundle / "required_operators.config").read_text()  # no temp-folder path inside


def test_ort_model_loads_in_the_runtime_with_onnx_parity(ort_bundle, bundle_dir, tmp_path, data_dir):
    from mlcompress.export import runtime

    sentences = read_lines(data_dir / "tatoeba" / "tatoeba.deu-eng.deu.gz", 8) + ["Hallo Welt", "a"]
    mobile = runtime.load(ort_bundle, format="ort")
    assert mobile.model_file == "model.ort"
    reference = runtime.load(ort_bundle).encode(sentences)
    got = mobile.encode(sentences)
    assert got.shape == reference.shape == (10, 32)
    assert float(np.abs(got - reference).max()) <= 1e-5
    with pytest.raises(BundleError, match="no .ort model"):
        runtime.load(bundle_dir, format="ort")
    with pytest.raises(BundleError, match="unknown model format"):
        runtime.load(ort_bundle, format="tflite")
    bad = _copy(ort_bundle, tmp_path / "bad")
    data = bytearray((bad / "model.ort").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "model.ort").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.ort does not match its sha256"):
        verify(bad)
    with pytest.raises(BundleError, match="sha256"):
        runtime.load(bad)  # every listed file is verified, whichever model is loaded


def test_ort_needs_an_onnx_bundle(tiny, texts, tmp_path):
    with pytest.raises(InputError, match="--ort without --bundle"):
        export(tiny["sentence-embedding"], tmp_path / "o", ort=True, texts=texts, **FAST)
    for fmt in ("tensorrt", "bnb"):
        with pytest.raises(InputError, match=f"--ort with --format {fmt}") as info:
            export(tiny["sentence-embedding"], tmp_path / "o", format=fmt, quantize="int4", bundle=True, ort=True)
        assert "--format onnx --bundle" in info.value.hint
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "mlcompress"), "export", str(tiny["sentence-embedding"]), "-o",
                           str(tmp_path / "c"), "--ort", "--text", f"de={texts['de']}"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--ort without --bundle" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())
