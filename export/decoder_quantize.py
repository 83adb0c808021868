"""Quantisation of an exported decoder graph, LM head and embedding included.

The LM head of a tied model is ``MatMul(x, Transpose(embedding))``; ORT's quantisers only touch MatMuls whose weight
is a constant, so that head (the largest matrix: 63% of Gemma 3 270M's weights) would stay fp32. It is untied first:
the Transpose is folded into a constant of its own, which the MatMul quantisers then take. The embedding is quantised
too: a tied one shares the head's quantised blocks (below); an untied one gets its own (int4: GatherBlockQuantized,
block 32; int8: int8 rows with a scale per row).

- int4 (``model_q4.onnx``, transformers.js's q4): MatMulNBits, 4 bits, block 32, symmetric (set explicitly: ORT's
  defaults are block 128, asymmetric), as transformers.js's q4 and the ORT-GenAI builder make it.
- int8 (``model_quantized.onnx``, transformers.js's q8 name), ``int8_method``:
  "nbits" (default): MatMulNBits with 8 bits, block 32, symmetric;
  "dynamic": ORT's dynamic int8 (activations quantised per tensor at run time; transformers.js's own q8 recipe);
  "weights": int8 weights per channel (Cast and Mul), folded to fp32 when the session loads.
- A tied model's embedding is then pointed at the head's MatMulNBits blocks (GatherBlockQuantized through a Reshape),
  so the file holds that matrix once.

Measured on Gemma 3 270M (262k vocabulary, dequantised from its Q4_K_M GGUF), 2 CPU threads, batch 1, 64 new tokens,
against PyTorch on 4 sentences (en, de, fr):

| graph | MiB | tokens/s | top-1 agreement | perplexity ratio |
|---|---|---|---|---|
| fp32 | 1026 | 21.5 | 1.000 | 1.000 |
| int8 nbits | 291 | 51.3 | 0.986 | 1.005 |
| int8 dynamic | 422 | 54.7 | 0.736 | 1.403 |
| int8 weights | 422 | 22.2 | 0.944 | 1.058 |
| int4 | 163 | 68.6 | 0.708 | 1.548 |
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mlcompress.errors import InputError

from .quantize import quantize_embeddings, quantize_int8_dynamic, quantize_int8_weights
from .quiet import quiet

DECODER_QUANTIZE = ("none", "int8", "int4")
INT8_METHODS = ("nbits", "dynamic", "weights")
DTYPE = {"none": "fp32", "int8": "q8", "int4": "q4"}  # transformers.js dtype names
FILE = {"fp32": "onnx/model.onnx", "q8": "onnx/model_quantized.onnx", "q4": "onnx/model_q4.onnx"}
BLOCK = 32  # MatMulNBits and GatherBlockQuantized block size
UNTIED = ".untied_transposed"  # suffix of an untied LM head's weight


def untie_head(model: Any) -> list[str]:
    """Replace ``MatMul(x, Transpose(W))`` of a constant ``W`` with ``MatMul(x, Wᵀ)``, ``Wᵀ`` a constant of its own (so
    quantisers see it); return the names of the new constants."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    made: list[str] = []
    for node in graph.node:
        src = producer.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if src is None or src.op_type != "Transpose" or src.input[0] not in inits or len(inits[src.input[0]].dims) != 2:
            continue
        name = src.input[0] + UNTIED
        if name not in inits:
            weight = numpy_helper.to_array(inits[src.input[0]]).T.copy()
            graph.initializer.append(numpy_helper.from_array(weight, name))
            inits[name] = graph.initializer[-1]
            made.append(name)
        node.input[1] = name
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Transpose" and not set(n.output) & used]:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    for weight in [t for t in graph.initializer if t.name not in used]:  # an untied model's head: only the copy is left
        graph.initializer.remove(weight)
    return made


def share_tied_embedding(model: Any, untied: list[str], bits: int) -> list[str]:
    """Point the Gather of each tied embedding at its LM head's MatMulNBits weights: a GatherBlockQuantized (same
    ``bits``, block, symmetric zero point) reading the head's packed blocks through a Reshape, so the file holds the
    matrix once, quantised. Returns the tables shared (skipped where the blocks hold padding: hidden % block != 0)."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    shared: list[str] = []
    for name in untied:
        source = name.removesuffix(UNTIED)
        head = next((n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1].startswith(name)), None)
        gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == source]
        if head is None or not gathers or (len(head.input) > 3 and head.input[3]) or head.input[1] not in inits:
            continue
        rows, blocks, blob = inits[head.input[1]].dims
        width = {a.name: helper.get_attribute_value(a) for a in head.attribute}["K"]
        if width * bits != blocks * blob * 8:
            continue
        # both through a Reshape: one constant each in the file, and no other pass mistakes them for the Gather's own
        for what, tensor, dims in (("packed", head.input[1], [rows, blocks * blob]), ("scales", head.input[2], [rows, blocks])):
            shape = numpy_helper.from_array(np.asarray(dims, dtype=np.int64), f"{source}.{what}_shape")
            graph.initializer.append(shape)
            graph.node.insert(0, helper.make_node("Reshape", [tensor, shape.name], [f"{source}.{what}"],
                                                  name=f"{source}.{what}_reshape"))
        for node in gathers:
            replacement = helper.make_node("GatherBlockQuantized", [f"{source}.packed", node.input[1], f"{source}.scales"],
                                           list(node.output), name=f"{node.name}_shared", domain="com.microsoft",
                                           bits=bits, block_size=BLOCK, gather_axis=0, quantize_axis=1)
            graph.node.insert(list(graph.node).index(node), replacement)
            graph.node.remove(node)
        graph.initializer.remove(inits[source])
        shared.append(source)
    return shared


def quantize_gathers_int8(model: Any) -> int:
    """Store each constant 2-D float Gather table as int8 rows with one fp32 scale per row: ``Gather(q) * Gather(s)``
    in standard operators (only the looked-up rows are dequantised). Returns how many tables."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or table.data_type != TensorProto.FLOAT or len(table.dims) != 2:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(table)
        scale = (np.abs(w).max(axis=1, keepdims=True) / 127).astype(np.float32)
        scale[scale == 0] = 1.0
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(table)
        graph.initializer.extend([numpy_helper.from_array(q, f"{table.name}_int8"), numpy_helper.from_array(scale, f"{table.name}_row_scale")])
        out, ids, tag = node.output[0], node.input[1], node.name or table.name
        nodes += [helper.make_node("Gather", [f"{table.name}_int8", ids], [f"{out}_q"], name=f"{tag}_q", axis=0),
                  helper.make_node("Cast", [f"{out}_q"], [f"{out}_qf"], name=f"{tag}_cast", to=TensorProto.FLOAT),
                  helper.make_node("Gather", [f"{table.name}_row_scale", ids], [f"{out}_s"], name=f"{tag}_scale", axis=0),
                  helper.make_node("Mul", [f"{out}_qf", f"{out}_s"], [out], name=f"{tag}_dequantize")]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def matmul_nbits(src: Path, dst: Path, bits: int, block_size: int = BLOCK) -> dict[str, Any]:
    """Weight-only MatMulNBits (``bits`` 4 or 8, symmetric blocks along the input dimension, int8 compute on CPU) of
    every MatMul with a constant weight, LM head included once untied."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, op_types_to_quantize=("MatMul",),
                                          bits=bits, accuracy_level=4)
    with quiet("", "onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=block_size, is_symmetric=True,
                                         accuracy_level=4, op_types_to_quantize=("MatMul",), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    count = sum(n.op_type == "MatMulNBits" for n in quantizer.model.model.graph.node)
    return {"method": "weight-only", "op": "MatMulNBits", "bits": bits, "block_size": block_size, "symmetric": True,
            "accuracy_level": 4, "operators": count}


def _int8(src: Path, dst: Path, method: str) -> dict[str, Any]:
    """int8 MatMuls by ``method`` (see the module's doc)."""
    if method == "nbits":
        return matmul_nbits(src, dst, 8)
    return (quantize_int8_weights if method == "weights" else quantize_int8_dynamic)(src, dst)


def _vocabulary(model: Any) -> int:
    """The vocabulary size: the ``logits`` output's last axis where the graph states it, else the largest constant
    Gather table (the token embedding; a tied one may already be quantised, so the logits come first)."""
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        if out.name == "logits" and dims and dims[-1].HasField("dim_value"):
            return int(dims[-1].dim_value)
    inits = {t.name: t for t in model.graph.initializer}
    return max((inits[n.input[0]].dims[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits),
               default=0)


def quantize_decoder(src: Path, dst: Path, quantize: str, int8_method: str = "nbits") -> dict[str, Any]:
    """Write ``src`` quantised as ``quantize`` (int8 / int4) to ``dst``, LM head and embedding included; return what
    was done (for the manifest)."""
    import onnx

    if quantize not in ("int8", "int4") or int8_method not in INT8_METHODS:
        raise InputError(f"unknown decoder quantisation {quantize!r} / int8 method {int8_method!r}",
                         f"choose quantize from int8, int4 and int8_method from {', '.join(INT8_METHODS)}")
    work = dst.with_name(dst.stem + ".stage")
    work.mkdir(exist_ok=True)
    try:
        model = onnx.load(str(src))
        untied = untie_head(model)
        onnx.save(model, str(work / "untied.onnx"))
        bits = 4 if quantize == "int4" else 8
        info = matmul_nbits(work / "untied.onnx", work / "matmuls.onnx", 4) if bits == 4 else \
            {**_int8(work / "untied.onnx", work / "matmuls.onnx", int8_method), "int8_method": int8_method}
        model = onnx.load(str(work / "matmuls.onnx"))
        shared = share_tied_embedding(model, untied, bits) if info.get("op") == "MatMulNBits" else []
        embedding: dict[str, Any] = {"shared_with_head": shared}
        if bits == 4:
            onnx.save(model, str(work / "shared.onnx"))
            # token tables only: position tables and T5's relative bias stay float (small, and 4 bits hurt them)
            vocab = _vocabulary(model)
            embedding.update(op="GatherBlockQuantized", bits=4, block_size=BLOCK,
                             tables=quantize_embeddings(work / "shared.onnx", dst, block_size=BLOCK, min_rows=vocab))
        else:
            embedding.update(op="GatherBlockQuantized" if shared else "Gather+Mul", bits=8,
                             tables=len(shared) + quantize_gathers_int8(model))
            onnx.save(model, str(dst))
        return {**info, "untied_head": untied, "embedding": embedding}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def session_config(info: dict[str, Any]) -> dict[str, str]:
    """The session entries a quantised graph asks for (none of today's schemes asks for any)."""
    return dict(info.get("session_config") or {})
