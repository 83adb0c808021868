"""Accuracy-aware quantisation (--max-drop): the search keeps float the operator a test makes fragile, and records it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlcompress.errors import InputError
from mlcompress.export import export
from mlcompress.export.accuracy_control import Operator, search

FAST = {"measure_latency": False, "parity_texts": 16, "calibration_texts": 16, "accuracy_texts": 32}
FRAGILE_LAYER = 1


@pytest.fixture(scope="module")
def fragile(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny sentence encoder whose layer-1 FFN down-projection gets one input channel near 1e4 that it ignores.

    That channel's weights are zero, so the float model does not see it; but a per-tensor uint8 range stretched
    to 1e4 rounds every other activation of that MatMul's input to zero: quantising that one operator (whose
    output this model weights up) ruins the embeddings, and keeping it float restores them.
    """
    import torch
    import transformers
    from tiny_models import build_xlmr, training_lines

    base = tmp_path_factory.mktemp("fragile")
    src = build_xlmr(base / "mlm", training_lines(data_dir)).path
    config = transformers.AutoConfig.from_pretrained(src)
    torch.manual_seed(3)
    model = transformers.XLMRobertaModel(transformers.XLMRobertaConfig.from_dict({**config.to_dict(), "architectures": None}),
                                         add_pooling_layer=False)
    layer = model.encoder.layer[FRAGILE_LAYER]
    with torch.no_grad():
        layer.intermediate.dense.bias[0] = 1e4
        layer.output.dense.weight.mul_(20)  # this layer's FFN dominates its residual stream...
        layer.output.dense.weight[:, 0] = 0.0  # ...and ignores the outlier channel
    model.save_pretrained(base / "enc")
    transformers.AutoTokenizer.from_pretrained(src).save_pretrained(base / "enc")
    return base / "enc"


@pytest.fixture(scope="module")
def texts(data_dir: Path) -> dict[str, str]:
    return {"en": str(data_dir / "mono" / "en.txt.gz"), "de": str(data_dir / "mono" / "de.txt.gz")}


def test_search_keeps_the_fragile_operator_float(fragile: Path, texts: dict[str, str], tmp_path: Path) -> None:
    result = export(fragile, tmp_path / "b", quantize="int8-dynamic", texts=texts, max_drop=0.01, bundle=True, **FAST)
    control = result.quantization["accuracy_control"]
    assert control["plain_drop"] > 0.01, control  # the plain int8 graph misses the target...
    assert control["reached"] and control["drop"] <= 0.01, control  # ...the kept graph meets it
    kept = [k["name"] for k in control["kept_float"]]
    assert control["kept_float"][0]["label"] == f"encoder.layer.{FRAGILE_LAYER}.output.dense", control["kept_float"]
    assert kept[0] == max(control["kept_float"], key=lambda k: k["error"])["name"]  # ranked most sensitive first
    assert control["extra_bytes"] == sum(k["extra_bytes"] for k in control["kept_float"]) > 0
    assert control["bytes"] > control["plain_bytes"]
    # the manifest records what was kept, and the written graph holds that operator as a float MatMul
    assert result.manifest["quantization"]["accuracy_control"]["kept_float"] == control["kept_float"]
    import onnx

    graph = onnx.load(str(tmp_path / "b" / result.model_file)).graph
    nodes = {n.name: n for n in graph.node}
    assert all(nodes[name].op_type in ("MatMul", "Attention") for name in kept), {k: nodes[k].op_type for k in kept}
    halves = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    casts = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Cast"}
    assert all(casts.get(nodes[name].input[1]) in halves for name in kept)  # stored fp16, computed fp32
    assert result.parity["passed"]


def test_a_target_plain_quantisation_meets_keeps_nothing(fragile: Path, texts: dict[str, str], tmp_path: Path) -> None:
    result = export(fragile, tmp_path / "b", quantize="int4", texts=texts, max_drop=0.9, int4_block_size=32, **FAST)
    control = result.quantization["accuracy_control"]
    assert control["kept_float"] == [] and control["trials"] == [{"kept_float": 0, "drop": control["plain_drop"]}]


def test_max_drop_needs_a_quantisation_it_can_steer(fragile: Path, texts: dict[str, str], tmp_path: Path) -> None:
    for quantize in ("none", "fp16"):
        with pytest.raises(InputError, match="max-drop"):
            export(fragile, tmp_path / quantize, quantize=quantize, texts=texts, max_drop=0.01, **FAST)
    with pytest.raises(InputError, match="max-drop"):
        export(fragile, tmp_path / "neg", quantize="int8-dynamic", texts=texts, max_drop=-0.1, **FAST)
    assert not any(tmp_path.iterdir())


def test_search_bisects_to_the_fewest_operators(tmp_path: Path) -> None:
    """With drops that fall as operators are kept, the search tries 0, 1, 2, 4, 8 and bisects to the first that holds."""
    ranked = [Operator(f"op{i}", "MatMul", (4, 4), 1.0 / (i + 1)) for i in range(10)]
    drops = {k: 0.1 - 0.01 * k for k in range(11)}  # holds (<= 0.045) from k = 6
    built: list[int] = []

    def build(exclude: list[str]) -> Path:
        built.append(len(exclude))
        return tmp_path / f"{len(exclude)}"

    path, result = search(ranked, build, lambda p: drops[int(p.name)], 0.045, "test")
    assert path.name == "6" and [op.name for op in result.kept] == [f"op{i}" for i in range(6)]
    assert built == [0, 1, 2, 4, 8, 6, 5] and result.reached
    assert np.isclose(result.drop, 0.04) and np.isclose(result.plain_drop, 0.1)
    _, unreachable = search(ranked, build, lambda p: 0.5, 0.045, "test")
    assert not unreachable.reached and len(unreachable.kept) == 10


def test_rerank_puts_first_the_operator_whose_revert_helps_most(tmp_path: Path) -> None:
    """Local error can mislead (op0 changes most locally but its error does not reach the output): re-ranked by the
    measured drop with each kept float alone, op1 goes first, and one kept operator meets the target."""
    ranked = [Operator(f"op{i}", "MatMul", (4, 4), 1.0 / (i + 1)) for i in range(6)]
    # drop of a graph with the named operators kept float: op1 removes most of it, op0 nothing
    effect = {"op0": 0.0, "op1": 0.07, "op2": 0.01, "op3": 0.02}

    def build(exclude: list[str]) -> Path:
        path = tmp_path / ("+".join(exclude) or "plain")
        path.write_text(str(max(0.0, 0.1 - sum(effect.get(name, 0.0) for name in exclude))))
        return path

    path, result = search(ranked, build, lambda p: float(p.read_text()), 0.035, "test", rerank_top=4)
    assert [op.name for op in result.kept] == ["op1"] and path.name == "op1" and result.reached
    assert [op.gain for op in result.kept] == [0.07]
    # without the re-rank, local error order needs op0 and op1 (two float operators) for the same target
    _, plain_order = search(ranked, build, lambda p: float(p.read_text()), 0.035, "test")
    assert [op.name for op in plain_order.kept] == ["op0", "op1"]


@pytest.mark.parametrize("scheme", ["int4", "int4-weights"])
def test_the_search_simulates_int4_as_the_quantised_graph_computes(tmp_path: Path, scheme: str) -> None:
    """The local error that ranks operators comes from the grid the graph stores (the signed peak of a block maps to
    -8): ONNX Runtime's MatMulNBits for int4 (fp32 scales), the restored blocks for int4-weights (fp16 scales)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from mlcompress.export.accuracy_control import _fake_weight
    from mlcompress.export.quantize import quantize_int4_weights

    k, n, block = 72, 16, 32  # a padded last block
    w = np.random.default_rng(1).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if scheme == "int4":
        quantizer = MatMulNBitsQuantizer(model, block_size=block, is_symmetric=True)
        quantizer.process()
        onnx.save(quantizer.model.model, str(tmp_path / "q.onnx"))
    else:
        onnx.save(model, str(tmp_path / "f.onnx"))
        quantize_int4_weights(tmp_path / "f.onnx", tmp_path / "q.onnx", block_size=block)
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    computed = session.run(["y"], {"x": np.eye(k, dtype=np.float32)})[0]
    simulated = _fake_weight(w, scheme, reduce_range=False, block_size=block)
    np.testing.assert_allclose(simulated, computed, rtol=1e-6, atol=1e-6)
    assert np.abs(simulated - w).max() > 0.01  # it is a 4-bit grid, not the float weight
