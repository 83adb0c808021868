"""A distilled student's default bundle: for a student saved on the int4-weights grid (quantisation-aware distillation)
`quantize="auto"` resolves to int4-weights on that grid (4-bit weights restored by standard operators that ONNX Runtime
folds at load, float compute), which holds exactly the student's weights, embeds a sentence the same in any batch and
is smaller than int8-weights; any other model, a student off the grid included, keeps int8-weights. Tiny models built
here; never a timing."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import read_lines
from mlcompress.distill.on_grid import INT4_GRID, snapped_copy
from mlcompress.errors import InputError
from mlcompress.export import AUTO, Int4WeightsConfig, export, verify

FAST = {"measure_latency": False, "parity_texts": 16, "calibration_texts": 16}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """A tiny XLM-R sentence encoder ("plain", no record), the same weights as a distilled student ("student":
    mlcompress.json says distill-general), so both export through one cached graph, and those weights on the grid as a
    quantisation-aware student saves them ("grid")."""
    import torch
    import transformers
    from tiny_models import build_xlmr, training_lines

    from mlcompress.artifacts import write_provenance

    base = tmp_path_factory.mktemp("student-bundle")
    mlm = build_xlmr(base / "mlm", training_lines(data_dir))
    config = transformers.AutoConfig.from_pretrained(mlm.path)
    torch.manual_seed(1)
    cfg = transformers.XLMRobertaConfig.from_dict({**config.to_dict(), "architectures": None})
    transformers.XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(base / "plain")
    transformers.AutoTokenizer.from_pretrained(mlm.path).save_pretrained(base / "plain")
    shutil.copytree(base / "plain", base / "student")
    write_provenance(base / "student", "distill-general", {"every_k": 2}, [], {})
    snapped_copy(transformers.AutoModel.from_pretrained(base / "plain"), INT4_GRID).save_pretrained(base / "grid")
    transformers.AutoTokenizer.from_pretrained(mlm.path).save_pretrained(base / "grid")
    write_provenance(base / "grid", "distill-general", {"every_k": 2, "on_grid": INT4_GRID.as_dict()}, [], {})
    return {"plain": base / "plain", "student": base / "student", "grid": base / "grid"}


@pytest.fixture(scope="module")
def texts(data_dir: Path) -> dict[str, str]:
    return {"en": str(data_dir / "mono" / "en.txt.gz"), "de": str(data_dir / "mono" / "de.txt.gz")}


def test_auto_is_the_default_and_resolves_by_the_models_record(models: dict[str, Path], tmp_path: Path) -> None:
    from mlcompress.artifacts import write_provenance
    from mlcompress.export.cli import export_command
    from mlcompress.export.options import embedding_block, resolve_auto

    assert inspect.signature(export).parameters["quantize"].default == AUTO == "auto"
    assert inspect.signature(export_command).parameters["quantize"].default == AUTO
    assert resolve_auto(AUTO, models["grid"]) == Int4WeightsConfig(INT4_GRID.block_size)
    assert embedding_block(AUTO, models["grid"], None) == INT4_GRID.embedding_block_size == 64
    assert resolve_auto(AUTO, models["student"]) == "int8-weights"  # off the grid, int4-weights failed a trained one
    assert resolve_auto(AUTO, models["plain"]) == "int8-weights" and resolve_auto(AUTO, None) == "int8-weights"
    assert resolve_auto(AUTO, models["grid"], "tensorrt") == "fp16" == resolve_auto(AUTO, None, "tensorrt")
    write_provenance(tmp_path, "distill-task", {"on_grid": INT4_GRID.as_dict()}, [], {})
    assert resolve_auto(AUTO, tmp_path) == Int4WeightsConfig(32)
    write_provenance(tmp_path, "distill-task", {"on_grid": {"scheme": "int3"}}, [], {})  # a grid export does not know
    assert resolve_auto(AUTO, tmp_path) == "int8-weights"
    write_provenance(tmp_path, "trim", {"on_grid": INT4_GRID.as_dict()}, [], {})  # only a student's record counts
    assert resolve_auto(AUTO, tmp_path) == "int8-weights"
    for explicit in ("int8-weights", "int4", "none", Int4WeightsConfig(64)):  # an explicit choice is kept for a student
        assert resolve_auto(explicit, models["grid"]) == explicit
        assert embedding_block(explicit, models["student"], None) == 32
        assert embedding_block(explicit, models["grid"], None) == 64  # its tables sit on 64-wide blocks
    assert embedding_block(AUTO, models["student"], None) == 32
    assert embedding_block(AUTO, models["plain"], None) == 32
    assert embedding_block(AUTO, models["grid"], 16) == 16


def test_int4_weights_bundle_is_batch_independent_and_smaller(
        models: dict[str, Path], texts: dict[str, str], data_dir: Path, tmp_path: Path) -> None:
    """A grid student's default bundle is int4-weights and exact: the PyTorch student's embeddings to float precision;
    each sentence the same alone and in any batch (within 1e-5), the same in a client's plain session, and smaller
    than its int8-weights bundle."""
    import onnx

    from mlcompress.export import runtime

    result = export(models["grid"], tmp_path / "auto", bundle=True, texts=texts, **FAST)
    assert result.quantize == "int4-weights" and result.model_file == "onnx/model_q4.onnx"
    assert result.parity["passed"] and result.parity["mean_cosine"] >= 0.99999, result.parity
    q = verify(tmp_path / "auto")["quantization"]
    assert (q["name"], q["weights"], q["block_size"], q["scales"]) == ("int4-weights", "int4", 32, "fp16")
    assert q["operators"] >= 2 * 3 and q["embeddings"]["op"] == "GatherBlockQuantized"
    assert q["embeddings"]["block_size"] == 64
    ops = {n.op_type for n in onnx.load(str(tmp_path / "auto" / result.model_file)).graph.node}
    assert not ops & {"MatMulNBits", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QAttention"}, ops
    int8 = export(models["student"], tmp_path / "int8", bundle=True, texts=texts, **FAST)
    assert int8.quantize == "int8-weights"  # the default of a student off the grid
    size = (tmp_path / "auto" / result.model_file).stat().st_size
    assert size < (tmp_path / "int8" / int8.model_file).stat().st_size
    bundle = runtime.load(tmp_path / "auto")
    sentences = read_lines(data_dir / "mono" / "de.txt.gz", 12, skip=500) + ["Hallo", "Where is the station?"] + \
        read_lines(data_dir / "mono" / "en.txt.gz", 12, skip=500)
    alone = np.stack([bundle.encode(s) for s in sentences])
    for size in (2, 5, 32):  # other batch mates, other padding
        assert float(np.abs(bundle.encode(sentences, batch_size=size) - alone).max()) <= 1e-5, size
    _check_folded_at_load(tmp_path / "auto" / result.model_file, bundle, sentences[:6])


def _check_folded_at_load(graph: Path, bundle: object, sentences: list[str]) -> None:
    """A plain session with default options computes what the runtime does, and its optimised graph holds no unpacking
    operator any more: the 4-bit weights became float constants when it loaded."""
    import onnx
    import onnxruntime as ort

    from mlcompress.export import runtime

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(graph.with_name("optimized-check.onnx"))
    plain = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    feeds = runtime.tokenize(bundle.tokenizer, sentences, bundle.prefix)
    np.testing.assert_allclose(plain.run(["sentence_embedding"], feeds)[0], bundle.encode(sentences), atol=2e-6)
    folded = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert "Floor" not in folded, folded


def test_a_model_that_is_not_a_student_keeps_int8_weights(models: dict[str, Path], texts: dict[str, str],
                                                          tmp_path: Path) -> None:
    result = export(models["plain"], tmp_path / "plain", bundle=True, texts=texts, **FAST)
    q = verify(tmp_path / "plain")["quantization"]
    assert result.quantize == q["name"] == "int8-weights" and q["embeddings"]["block_size"] == 32


@pytest.mark.parametrize("k, block", [(64, 32), (40, 32), (6, 4)])
def test_int4_weights_restore_each_block_in_standard_operators(tmp_path: Path, k: int, block: int) -> None:
    """The packed nibbles and fp16 scales come back, through ONNX Runtime, as the blocks numpy dequantises (a last
    block padded when K is not a multiple), within a step of the float weight."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from mlcompress.export.quantize import pack_int4_blocks, quantize_int4_weights

    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, 8)).astype(np.float32)
    w[:, 0] = 0  # an all-zero column: scale 1, zeros back
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "f.onnx"))
    info = quantize_int4_weights(tmp_path / "f.onnx", tmp_path / "q.onnx", block_size=block)
    assert info["operators"] == 1
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    restored = session.run(["y"], {"x": np.eye(k, dtype=np.float32)})[0]
    packed, scale = pack_int4_blocks(w, block)
    assert packed.dtype == np.uint8 and packed.shape == (-(-k // block) * block // 2, 8) and scale.dtype == np.float16
    nibbles = np.concatenate([packed & 15, packed >> 4]).astype(np.float32) - 8
    expected = (nibbles.reshape(-1, block, 8) * scale.astype(np.float32)).reshape(-1, 8)[:k]
    np.testing.assert_allclose(restored, expected, rtol=1e-6, atol=1e-7)
    steps = np.repeat(np.abs(scale.astype(np.float32))[:, 0, :], block, axis=0)[:k]
    assert np.all(np.abs(restored - w) <= steps * 1.001) and np.all(restored[:, 0] == 0)  # the peak's opposite clips at 7


def test_bad_int4_weights_block_sizes_are_refused(models: dict[str, Path], tmp_path: Path) -> None:
    for bad in (0, 3, -2):
        with pytest.raises(InputError, match="int4-weights block size"):
            Int4WeightsConfig(block_size=bad)
    with pytest.raises(InputError, match="int4-weights block size 7"):
        export(models["student"], tmp_path / "bad", quantize="int4-weights", int4_block_size=7)
    assert not (tmp_path / "bad").exists()
