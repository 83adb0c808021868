"""Quantisation-aware distillation: the student trains through its bundle's 4-bit grid and is saved on it, so that the
export's default bundle of it (int4-weights) holds exactly the weights it was evaluated with. Tiny models only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

from conftest import DATA, cpu_train_config, tiny_e5_teacher
from mlcompress.distill import Phase1Losses, TrainConfig, distill_general
from mlcompress.distill.on_grid import INT4_GRID, OnGridLoss, grid_parameters, on_grid, snap, snapped_copy

CORPORA = {"en": str(DATA / "mono" / "en.txt.gz"), "de": str(DATA / "mono" / "de.txt.gz")}


def _onnx_roundtrip(table: np.ndarray, weight: np.ndarray, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A Gather of ``table`` and a MatMul by ``weight`` ([K, N]) through export's int4-weights and 4-bit embedding
    passes (block 32 and 64, as the grid): the rows it gathers and the product it computes."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from mlcompress.export import quantize as q

    nodes = [helper.make_node("Gather", ["E", "ids"], ["rows"]), helper.make_node("MatMul", ["rows", "W"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [None, table.shape[1]]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, weight.shape[1]])],
                              [numpy_helper.from_array(table, "E"), numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "float.onnx")
    q.quantize_int4_weights(tmp_path / "float.onnx", tmp_path / "weights.onnx", block_size=INT4_GRID.block_size)
    q.quantize_embeddings(tmp_path / "weights.onnx", tmp_path / "both.onnx", block_size=INT4_GRID.embedding_block_size)
    session = ort.InferenceSession(str(tmp_path / "both.onnx"), providers=["CPUExecutionProvider"])
    rows, y = session.run(None, {"ids": np.arange(len(table))})
    return rows, y


def test_the_grid_is_what_export_stores(tmp_path: Path) -> None:
    torch.manual_seed(0)
    table, linear = torch.randn(40, 128) * 0.05, torch.randn(96, 128) * 0.03  # Linear weight [out, in]
    table[3] = 0  # a padding row: all-zero blocks stay zero
    linear[5, :32] = 1e-9  # a block too small for an fp16 scale
    e, w = snap(table, 64, fp16_values=True), snap(linear, 32)
    from mlcompress.export.quantize import int4_grid_values  # export's definition of the grid, on [in, out]
    assert np.array_equal(w.T.numpy(), int4_grid_values(linear.T.numpy(), 32))
    assert np.array_equal(snap(linear[:, :100], 32).T.numpy(), int4_grid_values(linear[:, :100].T.numpy(), 32))  # padded
    assert torch.equal(snap(e, 64, fp16_values=True), e) and torch.equal(snap(w, 32), w)  # snapping again: no change
    assert not torch.equal(e, table) and not e[3].any()
    assert len(torch.unique(w[0, :32] / w[0, :32].abs().max())) <= 16  # 4 bits a block
    rows, y = _onnx_roundtrip(e.numpy(), w.T.contiguous().numpy(), tmp_path)
    assert np.array_equal(rows, e.numpy())  # the bundle's embedding rows are the grid's, bit for bit
    np.testing.assert_allclose(y, (e @ w.T).numpy(), rtol=0, atol=1e-6)  # and its weights (float sums' order aside)


def test_gradients_pass_the_rounding_straight_through() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(20, 64), torch.nn.Linear(64, 8))
    ids = torch.randint(0, 20, (4, 5))

    def loss_fn(m, batch):
        return m(batch).pow(2).mean(), {}

    OnGridLoss(loss_fn, INT4_GRID)(model, ids)[0].backward()
    snapped = snapped_copy(model, INT4_GRID)
    loss_fn(snapped, ids)[0].backward()
    for (name, p), q in zip(model.named_parameters(), snapped.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-7), name  # the gradient at the grid point, applied to the latent
    assert set(grid_parameters(model, INT4_GRID)) == {"0.weight", "1.weight"}  # biases stay float
    assert on_grid(snapped, INT4_GRID) and not on_grid(model, INT4_GRID)
    late = OnGridLoss(loss_fn, INT4_GRID, start=0.5)  # full precision for the first half of the planned steps
    late.before_step(4, 10)
    assert torch.equal(late(model, ids)[0], loss_fn(model, ids)[0])
    late.before_step(5, 10)
    assert torch.equal(late(model, ids)[0], loss_fn(snapped, ids)[0])


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return tiny_e5_teacher(tmp_path_factory.mktemp("tiny-e5-grid") / "teacher")


def _cfg(**kw) -> TrainConfig:
    return cpu_train_config(**{"steps": 6, **kw})


def test_an_embedding_student_trains_and_is_saved_on_the_grid(teacher_dir: Path, tmp_path: Path) -> None:
    losses = Phase1Losses(hidden=1.0, attention=0.0, pooled=10.0, relational=10.0, contrastive=1.0, crosslingual=1.0)
    run = dict(objective="embedding", layers="0,3", max_sentences_per_language=200, losses=losses)
    result = distill_general(teacher_dir, "en,de", CORPORA, tmp_path / "grid", train_config=_cfg(), **run)
    student = AutoModel.from_pretrained(tmp_path / "grid")
    assert on_grid(student, INT4_GRID)
    record = json.loads((tmp_path / "grid" / "mlcompress.json").read_text())
    assert record["parameters"]["on_grid"] == {**INT4_GRID.as_dict(), "start": 0.0}
    start = snapped_copy(AutoModel.from_pretrained(teacher_dir), INT4_GRID)  # layer 0 of the teacher, on the grid
    moved = ~torch.isclose(student.encoder.layer[0].output.dense.weight, start.encoder.layer[0].output.dense.weight)
    assert moved.any() and result.steps == 6  # the latent weights crossed grid points: it trained through the grid
    off = distill_general(teacher_dir, "en,de", CORPORA, tmp_path / "off", train_config=_cfg(), quantization_aware=False,
                          **run)
    assert off.steps == 6 and not on_grid(AutoModel.from_pretrained(tmp_path / "off"), INT4_GRID)
    assert json.loads((tmp_path / "off" / "mlcompress.json").read_text())["parameters"]["on_grid"] is None
