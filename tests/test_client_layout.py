"""The bundle layout other clients load as it is: the graph under onnx/ by its transformers.js dtype name, with
``last_hidden_state`` beside ``sentence_embedding``; config.json, tokenizer_config.json, special_tokens_map.json; and
the real clients on it: FastEmbed (the pip package) and transformers.js (the npm package, run by node), offline."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import read_lines
from mlcompress.export import export, runtime, verify
from mlcompress.export.bundle import write_manifest

ROOT = Path(__file__).resolve().parents[1]
NODE_PREFIX = Path(os.environ.get("MLCOMPRESS_NODE_PREFIX", ROOT / ".cache" / "node"))  # setup.sh --dev installs there
FAST = {"measure_latency": False, "parity_texts": 16, "calibration_texts": 16}
CLIENT_FILES = {"config.json", "tokenizer_config.json", "special_tokens_map.json"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """An int8 (q8) bundle of a tiny encoder with E5's prompts."""
    from bundle_models import build_encoder
    from tiny_models import training_lines

    base = tmp_path_factory.mktemp("client-layout")
    model = build_encoder(base / "e5ish", training_lines(data_dir), e5_prompts=True)
    texts = {"en": str(data_dir / "mono" / "en.txt.gz"), "de": str(data_dir / "mono" / "de.txt.gz")}
    export(model, base / "bundle", bundle=True, texts=texts, languages="en,de", **FAST)
    return base / "bundle"


@pytest.fixture(scope="module")
def sentences(data_dir: Path) -> list[str]:
    english = ["a", "The quick brown fox jumps over the lazy dog."]
    return read_lines(data_dir / "tatoeba" / "tatoeba.deu-eng.deu.gz", 6) + english


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_graph_config_and_tokenizer_files_sit_where_clients_look(bundle):
    manifest = verify(bundle)
    assert manifest["model"] == "onnx/model_quantized.onnx"  # int8 -> transformers.js's q8 name
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert files == {"onnx/model_quantized.onnx", "tokenizer.json", *CLIENT_FILES, "manifest.json", "mlcompress.json",
                     "README.md"}
    # every client file verified too, none written twice; the model card is not checksummed (the pipeline rewrites it)
    assert set(manifest["files"]) == files - {"manifest.json", "README.md"}
    config = json.loads((bundle / "config.json").read_text())
    assert config["model_type"] == "xlm-roberta" and config["transformers.js_config"] == {"dtype": "q8"}
    assert manifest["layout"]["dtype"] == "q8"
    tok_config = json.loads((bundle / "tokenizer_config.json").read_text())
    assert tok_config["model_max_length"] == manifest["tokenizer"]["max_length"]
    assert tok_config["pad_token"] == manifest["tokenizer"]["pad_token"] == "<pad>"
    assert not {"is_local", "local_files_only"} & set(tok_config)
    special = json.loads((bundle / "special_tokens_map.json").read_text())
    assert special["mask_token"] == {"content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False,
                                     "single_word": False}  # as tokenizer.json declares it
    assert [o["name"] for o in manifest["outputs"]] == ["sentence_embedding", "last_hidden_state"]


def test_names_follow_the_quantisation():
    from mlcompress.export.layout import graph_file

    q8 = "onnx/model_quantized.onnx"
    assert {q: graph_file(q) for q in ("none", "fp16", "int8-dynamic", "int8-static", "int8-weights", "int4")} == {
        "none": "onnx/model.onnx", "fp16": "onnx/model_fp16.onnx", "int8-dynamic": q8, "int8-static": q8,
        "int8-weights": q8, "int4": "onnx/model_q4.onnx"}


def test_last_hidden_state_mean_pooled_is_the_sentence_embedding(bundle, sentences):
    """What transformers.js and FastEmbed's mean pooling compute from last_hidden_state is the bundle's embedding."""
    import onnxruntime as ort

    model = runtime.load(bundle)
    feeds = runtime.tokenize(model.tokenizer, sentences, "query: ")
    options = runtime.session_options(config=model.manifest["quantization"].get("session_config"))
    session = ort.InferenceSession(str(bundle / model.model_file), options, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["sentence_embedding", "last_hidden_state"]
    emb, hidden = session.run(None, feeds)
    mask = feeds["attention_mask"][..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, emb, atol=1e-5)
    np.testing.assert_allclose(model.encode(sentences), emb, atol=1e-5)


def test_fastembed_loads_the_bundle_offline(bundle, sentences, monkeypatch):
    """FastEmbed, as the README tells users to call it, on the local folder with no network: the embeddings of the
    runtime (the prompt is the user's to add)."""
    pytest.importorskip("fastembed", reason="pip install fastembed (in the dev extra)")
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    def no_network(*args, **kwargs):
        raise AssertionError("FastEmbed tried the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manifest = verify(bundle)
    name = f"local/{bundle.name}-{os.getpid()}"  # registered once per process
    TextEmbedding.add_custom_model(model=name, pooling=PoolingType.DISABLED, normalization=False,
                                   sources=ModelSource(hf=name), dim=manifest["outputs"][0]["shape"][-1],
                                   model_file=manifest["model"], output_name="sentence_embedding")
    model = TextEmbedding(model_name=name, specific_model_path=str(bundle))
    got = np.stack(list(model.embed(["query: " + s for s in sentences], batch_size=4)))
    assert _cosines(got, runtime.load(bundle).encode(sentences)).min() >= 0.99999


def _transformers_js() -> bool:
    return shutil.which("node") is not None and (NODE_PREFIX / "node_modules" / "@huggingface" / "transformers").is_dir()


@pytest.mark.skipif(not _transformers_js(), reason=f"node or @huggingface/transformers under {NODE_PREFIX} missing "
                                                  "(./setup.sh --dev installs it)")
def test_transformers_js_loads_the_bundle_offline(bundle, sentences, tmp_path):
    """transformers.js's pipeline('feature-extraction', DIR) with mean pooling and normalisation, local files only,
    reading config.json's default dtype (q8: the int8 graph and its com.microsoft operators in onnxruntime-node), with
    no session options, as the README shows."""
    (tmp_path / "texts.json").write_text(json.dumps(["query: " + s for s in sentences]), encoding="utf-8")
    proc = subprocess.run(["node", str(ROOT / "tests" / "transformers_js_embed.mjs"), str(NODE_PREFIX), str(bundle),
                           str(tmp_path / "texts.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["dtype"] == "q8" and out["session_config"] == {}  # int8-weights needs no session entry
    got = np.asarray(out["embeddings"], dtype=np.float32)
    assert _cosines(got, runtime.load(bundle).encode(sentences)).min() >= 0.99999


def test_a_bundle_of_the_flat_layout_still_loads(bundle, sentences, tmp_path):
    """A bundle written before the client layout (model.onnx beside the manifest, no prompts) loads and runs."""
    old = tmp_path / "old"
    old.mkdir()
    manifest = verify(bundle)
    shutil.copyfile(bundle / manifest["model"], old / "model.onnx")
    for name in ("tokenizer.json", "mlcompress.json"):
        shutil.copyfile(bundle / name, old / name)
    skip = {"files", "size_bytes", "manifest_sha256", "format", "layout", "prompts", "default_prompt_name"}
    fields = {k: v for k, v in manifest.items() if k not in skip}
    write_manifest(old, {**fields, "model": "model.onnx"}, ["model.onnx", "tokenizer.json", "mlcompress.json"])
    model = runtime.load(old)
    assert (model.prompts, model.default_prompt_name) == ({"query": "query: "}, "query")  # its one prefix
    np.testing.assert_allclose(model.encode(sentences), runtime.load(bundle).encode(sentences), atol=1e-6)
