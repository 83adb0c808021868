"""The sentence-transformers layout that trim, distill and the pipeline write, checked with the real library on tiny
models: ``SentenceTransformer(out)``, ``encode_query`` and ``encode_document`` give the bundle runtime's vectors in fp32,
and a source's Dense modules are kept by trim, export, eval and the distilled student."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, read_lines
from mlcompress.errors import UnsupportedModelError
from mlcompress.st_layout import E5_PROMPTS, read_layout, st_pooling, write_layout, SentenceLayout
from tiny_models import build_bert_teacher, training_lines

sentence_transformers = pytest.importorskip("sentence_transformers")
TEXTS = ["Wo ist der Bahnhof?", "The cat sleeps on the sofa.", "Guten Morgen, wie geht es dir heute?"]
FAST = {"measure_latency": False, "parity_texts": 8, "calibration_texts": 8}


def _load_st(path: Path):
    return sentence_transformers.SentenceTransformer(str(path), device="cpu")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("corpora")
    out = {}
    for lang in ("en", "de"):
        (base / f"{lang}.txt").write_text("\n".join(read_lines(DATA / "mono" / f"{lang}.txt.gz", 200)) + "\n", encoding="utf-8")
        out[lang] = str(base / f"{lang}.txt")
    return out


@pytest.fixture(scope="module")
def e5_source(tmp_path_factory) -> Path:
    """A tiny encoder that is an E5 model by provenance only (no sentence-transformers files), as bundled:multilingual-e5-small."""
    out = build_bert_teacher(tmp_path_factory.mktemp("e5") / "source", training_lines(DATA), initializer_range=0.5)
    (out / "mlcompress.json").write_text(json.dumps({"stage": "bundled", "parameters": {"name": "multilingual-e5-small"},
                                                     "inputs": [], "metrics": {}}), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def dense_source(tmp_path_factory, e5_source: Path) -> Path:
    """A LaBSE-style model saved by sentence-transformers 6 itself: CLS pooling, a Dense 32 -> 16 (tanh), Normalize."""
    import torch
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    plain = tmp_path_factory.mktemp("dense") / "plain"
    plain.mkdir()
    for f in e5_source.iterdir():
        if f.name != "mlcompress.json":
            (plain / f.name).write_bytes(f.read_bytes())
    torch.manual_seed(0)
    model = sentence_transformers.SentenceTransformer(
        modules=[Transformer(str(plain)), Pooling(32, pooling_mode="cls"), Dense(32, 16), Normalize()], device="cpu")
    out = plain.parent / "source"
    model.save(str(out))
    return out


@pytest.fixture(scope="module")
def e5_trim(e5_source: Path, corpora, tmp_path_factory) -> Path:
    from mlcompress.vocab_trim import trim

    out = tmp_path_factory.mktemp("e5-trim") / "trimmed"
    trim(e5_source, "en,de", corpora, out, frequent_words=0)
    return out


def _bundle(model: Path, out: Path, texts) -> Path:
    from mlcompress.export import export

    export(model, out, quantize="none", bundle=True, texts={"en": texts["en"]}, **FAST)
    return out


def test_an_e5_trim_is_a_sentence_transformers_model_with_its_prompts(e5_trim: Path) -> None:
    pooling = json.loads((e5_trim / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32 and pooling["pooling_mode_mean_tokens"] is True
    st = json.loads((e5_trim / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == {"query": "query: ", "document": "passage: "} and st["default_prompt_name"] == "query"
    assert [m["path"] for m in json.loads((e5_trim / "modules.json").read_text())] == ["", "1_Pooling", "2_Normalize"]
    assert (e5_trim / "2_Normalize").is_dir() and json.loads((e5_trim / "sentence_bert_config.json").read_text())["max_seq_length"] == 512
    model = _load_st(e5_trim)
    assert model.prompts == E5_PROMPTS and model.default_prompt_name == "query"


def test_sentence_transformers_gives_the_bundle_runtimes_vectors(e5_trim: Path, corpora, tmp_path: Path) -> None:
    from mlcompress.export import runtime

    bundle = runtime.load(_bundle(e5_trim, tmp_path / "bundle", corpora))
    model = _load_st(e5_trim)
    plain, query, document = model.encode(TEXTS), model.encode_query(TEXTS), model.encode_document(TEXTS)
    np.testing.assert_allclose(plain, bundle.encode(TEXTS), atol=1e-5)  # the default prompt is "query: " on both sides
    np.testing.assert_allclose(query, bundle.encode(TEXTS, prompt_name="query"), atol=1e-5)
    np.testing.assert_allclose(document, bundle.encode(TEXTS, prompt_name="document"), atol=1e-5)
    assert np.abs(query - document).max() > 1e-3  # "passage: " is really used
    np.testing.assert_allclose(np.linalg.norm(plain, axis=1), 1.0, atol=1e-5)


def test_both_pooling_key_styles_are_read_and_the_legacy_one_is_written(tmp_path: Path) -> None:
    for config, mode in (({"embedding_dimension": 8, "pooling_mode": "cls", "include_prompt": True}, "cls"),
                         ({"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True}, "mean"),
                         ({"embedding_dimension": 8, "pooling_mode": ["max"]}, "max")):
        (tmp_path / "1_Pooling").mkdir(exist_ok=True)
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
        assert st_pooling(tmp_path, [{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]) == mode


def test_older_prompt_names_become_sentence_transformers_6_names(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "q: ", "passage": "p: "}, "default_prompt_name": None}))
    layout = read_layout(model)
    assert layout.prompts == {"query": "q: ", "document": "p: "} and layout.default_prompt_name == "query"
    (model / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "", "document": ""}}))
    assert read_layout(model, "intfloat/multilingual-e5-small").prompts == E5_PROMPTS  # empty prompts: the name decides
    assert read_layout(model).prompts == {} and read_layout(model).default_prompt_name is None


def test_an_unknown_module_is_refused_by_name(e5_trim: Path, tmp_path: Path) -> None:
    from mlcompress.vocab_trim import trim

    model = tmp_path / "odd"
    model.mkdir()
    for f in e5_trim.iterdir():
        if f.is_file() and f.name not in ("mlcompress.json", "README.md"):
            (model / f.name).write_bytes(f.read_bytes())
    modules = json.loads((model / "modules.json").read_text()) + [
        {"idx": 9, "name": "9", "path": "9_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}]
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModelError, match="LayerNorm"):
        trim(model, "en,de", None, tmp_path / "out", scripts=True)
    assert not (tmp_path / "out").exists()


def test_dense_modules_are_kept_by_trim_export_and_eval(dense_source: Path, corpora, tmp_path: Path) -> None:
    from mlcompress.eval import load_encoder
    from mlcompress.export import runtime
    from mlcompress.vocab_trim import trim

    trimmed = tmp_path / "trimmed"
    trim(dense_source, "en,de", corpora, trimmed, frequent_words=0)
    assert json.loads((trimmed / "2_Dense" / "config.json").read_text())["out_features"] == 16
    source_vectors = _load_st(dense_source).encode(TEXTS)
    assert source_vectors.shape == (3, 16)
    np.testing.assert_allclose(_load_st(trimmed).encode(TEXTS), source_vectors, atol=1e-6)
    bundle_dir = _bundle(trimmed, tmp_path / "bundle", corpora)
    head = json.loads((bundle_dir / "manifest.json").read_text())["head"]
    assert head["pooling"] == "cls" and head["dense"] == [{"in_features": 32, "out_features": 16, "bias": True, "activation": "Tanh"}]
    np.testing.assert_allclose(runtime.load(bundle_dir).encode(TEXTS), source_vectors, atol=1e-5)
    torch_vectors = load_encoder(str(trimmed)).embed(TEXTS)  # eval's PyTorch side runs the Dense module too
    np.testing.assert_allclose(torch_vectors / np.linalg.norm(torch_vectors, axis=1, keepdims=True), source_vectors, atol=1e-5)


def test_a_narrower_student_keeps_the_dense_module_through_its_basis(dense_source: Path, corpora, tmp_path: Path) -> None:
    from mlcompress.distill import TrainConfig, distill_general
    from mlcompress.eval import load_encoder

    config = TrainConfig(steps=2, batch_size=8, lr=1e-3, checkpoint_every=2, progress=False, device="cpu", mixed_precision="no")
    out = tmp_path / "student"
    distill_general(dense_source, "en,de", corpora, out, objective="embedding", layers="0,3", hidden_size=16,
                    max_sentences_per_language=40, train_config=config)
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 16
    assert json.loads((out / "2_Dense" / "config.json").read_text())["in_features"] == 16
    vectors = _load_st(out).encode(TEXTS)
    assert vectors.shape == (3, 16)
    ours = load_encoder(str(out)).embed(TEXTS)
    np.testing.assert_allclose(ours / np.linalg.norm(ours, axis=1, keepdims=True), vectors, atol=1e-5)
    from mlcompress.card_lineage import front_matter

    meta, body = front_matter((out / "README.md").read_text())  # the student's card, from its records
    assert "distillation" in meta["tags"] and meta["library_name"] == "sentence-transformers"
    assert "mlcompress distill general" in body and "--corpus en=" in body and "--hidden-size 16" in body


def test_a_layout_written_and_read_again_is_the_same(tmp_path: Path, e5_trim: Path) -> None:
    """A layout read from an output and written again is the same layout (one writer, one reader)."""
    layout = read_layout(e5_trim)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.json").write_text((e5_trim / "config.json").read_text())
    write_layout(copy, layout, 32)
    again = read_layout(copy)
    assert isinstance(again, SentenceLayout) and again.prompts == layout.prompts and again.pooling == layout.pooling
    assert again.normalize and again.default_prompt_name == "query"
