"""ONNX Runtime's mobile form of a bundle's model (`--ort`): the `.ort` flatbuffer model and the operator
configuration for a reduced-size ONNX Runtime build, both written by onnxruntime's own
`onnxruntime.tools.convert_onnx_models_to_ort` (what `python -m onnxruntime.tools.convert_onnx_models_to_ort` runs).

Conversion settings, as ONNX Runtime's docs advise for a model run by the CPU execution provider on a phone:
- optimisation style "Fixed": the graph optimisations are applied before saving and baked into the .ort file (the
  "Runtime" style is for compiling execution providers, NNAPI and CoreML, that take an unknown share of the nodes);
- optimisation level "all", the converter's default (its NCHWc layout transform, x86-only, left out);
- target platform "arm" (phones): QDQ nodes with int8 activations may fuse into integer operators there.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

ORT_MODEL = "model.ort"
OPERATORS_CONFIG = "required_operators.config"
SETTINGS = {"optimization_style": "Fixed", "optimization_level": "all", "target_platform": "arm"}


def convert(model: Path, scratch: Path) -> dict[str, Any]:
    """Convert the ONNX graph ``model`` to ``scratch/model.ort`` and ``scratch/required_operators.config``; return the
    manifest's ``ort`` entry (file names, settings, onnxruntime version, the operators per domain and opset)."""
    import onnxruntime
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from .quiet import quiet
    from .step import step

    work = scratch / "ort-convert"
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    with step("repacking the 4-bit embedding tables for the .ort format", "export without --ort"):
        repacked = _repack_int4(model, work / "in" / "model.onnx")  # a folder with this one graph: the config's plain name
    with step("converting the model to ONNX Runtime's .ort format", "update onnxruntime, or export without --ort"), \
            quiet("onnxruntime", "ort_format_model.utils"):
        convert_onnx_models_to_ort(work / "in", output_dir=work / "out", optimization_styles=[OptimizationStyle.Fixed],
                                   target_platform=SETTINGS["target_platform"])
    config = work / "out" / OPERATORS_CONFIG
    _drop_scratch_path(config)
    shutil.move(work / "out" / ORT_MODEL, scratch / ORT_MODEL)
    shutil.move(config, scratch / OPERATORS_CONFIG)
    shutil.rmtree(work, ignore_errors=True)
    return {"model": ORT_MODEL, "operators_config": OPERATORS_CONFIG, **SETTINGS, "repacked_int4_tables": repacked,
            "onnxruntime": onnxruntime.__version__, "operators": operators(scratch / OPERATORS_CONFIG)}


def _int8_weights_as_dequantize(model: Any) -> int:
    """Turn each int8-weights pair ``Mul(Cast(int8 W), scale)`` back into one DequantizeLinear: the converter's "Fixed"
    optimisation would fold the pair into a float constant (four times the bytes in the .ort file), whereas a
    DequantizeLinear stays int8 there. Returns how many weights were rewritten."""
    from onnx import TensorProto, helper

    inits = {t.name: t for t in model.graph.initializer}
    casts = {n.output[0]: n for n in model.graph.node if n.op_type == "Cast" and n.input[0] in inits
             and inits[n.input[0]].data_type == TensorProto.INT8}
    nodes, dropped, count = [], set(), 0
    for node in model.graph.node:
        cast = casts.get(node.input[0]) if node.op_type == "Mul" else None
        if cast is not None and node.input[1] in inits:
            node = helper.make_node("DequantizeLinear", [cast.input[0], node.input[1]], list(node.output),
                                    name=node.name, axis=len(inits[cast.input[0]].dims) - 1)
            dropped.add(cast.output[0])
            count += 1
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(n for n in nodes if not (n.op_type == "Cast" and n.output[0] in dropped))
    return count


def _repack_int4(src: Path, dst: Path) -> int:
    """Copy the graph ``src`` to ``dst`` (int8 weights as DequantizeLinear) with each int4 GatherBlockQuantized table
    stored as uint8, two values a byte (low nibble first, offset by 8) with ``bits=4``: the .ort flatbuffer has no
    4-bit tensor type, and the operator's uint8 form (default zero point 2^(bits-1) = 8) dequantises to the same values.
    Return how many tables were repacked."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "GatherBlockQuantized" else None
        if table is None or table.data_type != TensorProto.INT4:
            continue
        values = numpy_helper.to_array(table).astype(np.int16) + 8  # int4 [-8, 7] -> [0, 15]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (len(node.input) > 3 and node.input[3]) or values.shape[-1] % 2 or \
                attrs.get("quantize_axis", 1) % values.ndim != values.ndim - 1 or attrs.get("gather_axis", 0) != 0:
            raise ValueError(f"{table.name}: an int4 table with zero points, an odd last dimension or other axes")
        packed = (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)
        table.CopyFrom(numpy_helper.from_array(packed, table.name))
        kept = [a for a in node.attribute if a.name != "bits"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("bits", 4)])
        count += 1
    _int8_weights_as_dequantize(model)
    left = [t.name for t in model.graph.initializer if t.data_type in (TensorProto.INT4, TensorProto.UINT4)]
    if left:
        raise ValueError(f"the .ort format cannot hold 4-bit tensors, and these are not GatherBlockQuantized tables: {left}")
    onnx.save(model, str(dst))
    return count


def _drop_scratch_path(config: Path) -> None:
    """The converter's comment naming the model it read gives its absolute path in the export's temp folder; name
    only the file (a comment: the operator lines are the converter's, unchanged)."""
    lines = config.read_text(encoding="utf-8").splitlines(keepends=True)
    config.write_text("".join(f"# - {ORT_MODEL}\n" if line.startswith("# - ") else line for line in lines),
                      encoding="utf-8")


def operators(config: Path) -> dict[str, dict[str, list[str]]]:
    """The operators a required_operators.config lists, per domain and opset, read by onnxruntime's own parser."""
    from onnxruntime.tools.reduced_build_config_parser import parse_config

    required, _ = parse_config(str(config))
    return {domain: {str(opset): sorted(ops) for opset, ops in sorted(opsets.items())}
            for domain, opsets in sorted(required.items())}
