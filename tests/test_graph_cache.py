"""The opt-in cache of exported graphs (MLCOMPRESS_GRAPH_CACHE): what its key depends on, and hits and misses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import transformers

from mlcompress.export.graph_cache import ENV, cached_export, graph_key


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny BERT saved in two folders."""
    base = tmp_path_factory.mktemp("twins")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    transformers.BertModel(config).save_pretrained(base / "a")
    shutil.copytree(base / "a", base / "b")
    return base / "a", base / "b"


def _key(model: torch.nn.Module, settings: dict | None = None) -> str:
    return graph_key(model, (torch.ones(1, 4, dtype=torch.long),), settings or {"outputs": ["last_hidden_state"]})


def test_the_key_is_the_graph_not_where_the_model_was_loaded_from(twins):
    a, b = (transformers.AutoModel.from_pretrained(p) for p in twins)
    assert _key(a) == _key(b)
    assert _key(a) != _key(a, {"outputs": ["other"]})  # the exporter's settings
    with torch.no_grad():
        b.embeddings.word_embeddings.weight[3, 0] += 1e-3  # one weight
    assert _key(a) != _key(b)
    c = transformers.AutoModel.from_pretrained(twins[0])
    c.config.layer_norm_eps = 1e-5  # a config field that changes forward
    assert _key(a) != _key(c)


def test_hits_copy_the_stored_graph_and_misses_store_it(tmp_path, monkeypatch):
    calls = []

    def export(path: Path) -> None:
        calls.append(path)
        path.write_bytes(b"graph-" + str(len(calls)).encode())

    monkeypatch.delenv(ENV, raising=False)
    assert cached_export(tmp_path / "g0.onnx", lambda: "k", export) is False  # unset: no cache
    monkeypatch.setenv(ENV, str(tmp_path / "cache"))
    assert cached_export(tmp_path / "g1.onnx", lambda: "k", export) is False
    assert cached_export(tmp_path / "g2.onnx", lambda: "k", export) is True
    assert (tmp_path / "g2.onnx").read_bytes() == b"graph-2" and len(calls) == 2
    assert cached_export(tmp_path / "g3.onnx", lambda: "other", export) is False and len(calls) == 3
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary file left behind


def test_a_failed_export_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "cache"))

    def broken(path: Path) -> None:
        raise RuntimeError("exporter failed")

    with pytest.raises(RuntimeError):
        cached_export(tmp_path / "g.onnx", lambda: "k", broken)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
