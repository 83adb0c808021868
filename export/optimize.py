"""ONNX Runtime graph optimisation (fused LayerNorm, GELU, attention where the pattern matches) and graph cleanup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .quiet import quiet


def strip_metadata(model: Any) -> Any:
    """Drop exporter stack traces and doc strings from nodes (they take ~0.8 MB on a 12-layer model, and tell a device nothing)."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    model.graph.doc_string = ""
    return model


def padding_mask_for_fusion(model: Any) -> bool:
    """Rewrite a transformers-5 encoder graph's attention so that ORT's BERT attention fusion recognises it.

    torch's exporter turns transformers 5's padding mask into a Where/GatherND subgraph and scales scores
    with a Mul; ORT's fusion looks for the classic ``(1 - mask[:, None, None, :]) * -10000`` and a Div. Both
    are rewritten (the same attention up to float rounding, padding keys still get zero weight). Returns
    False, leaving the graph as it was, when the graph does not have the expected shape.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if "attention_mask" not in {i.name for i in graph.input}:
        return False
    producer = {o: n for n in graph.node for o in n.output}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    sites = []
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        add = producer.get(node.input[0])
        scale = producer.get(add.input[0]) if add is not None and add.op_type == "Add" else None
        if scale is None or scale.op_type != "Mul" or scale.input[1] not in constants or \
                getattr(producer.get(scale.input[0]), "op_type", None) != "MatMul":
            return False
        sites.append((add, scale))
    if not sites or len({add.input[1] for add, _ in sites}) != 1:
        return False
    new_nodes = [
        helper.make_node("Unsqueeze", ["attention_mask", "mlc_axis_1"], ["mlc_mask_3d"]),
        helper.make_node("Unsqueeze", ["mlc_mask_3d", "mlc_axis_2"], ["mlc_mask_4d"]),
        helper.make_node("Cast", ["mlc_mask_4d"], ["mlc_mask_float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["mlc_one", "mlc_mask_float"], ["mlc_mask_inverted"]),
        helper.make_node("Mul", ["mlc_mask_inverted", "mlc_mask_value"], ["mlc_additive_mask"]),
    ]
    graph.initializer.extend([numpy_helper.from_array(np.array([1], dtype=np.int64), "mlc_axis_1"),
                              numpy_helper.from_array(np.array([2], dtype=np.int64), "mlc_axis_2"),
                              numpy_helper.from_array(np.array(1.0, dtype=np.float32), "mlc_one"),
                              numpy_helper.from_array(np.array(-10000.0, dtype=np.float32), "mlc_mask_value")])
    for i, (add, scale) in enumerate(sites):
        add.input[1] = "mlc_additive_mask"
        factor = constants[scale.input[1]]
        graph.initializer.append(numpy_helper.from_array((1.0 / factor).astype(factor.dtype), f"mlc_score_divisor_{i}"))
        scale.op_type, scale.input[1] = "Div", f"mlc_score_divisor_{i}"
    nodes, outputs = new_nodes + list(graph.node), {o.name for o in graph.output}
    while True:  # drop the old mask subgraph, now unused
        used = {name for n in nodes for name in n.input} | outputs
        kept = [n for n in nodes if any(o in used for o in n.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del graph.node[:]
    graph.node.extend(nodes)
    return True


def optimize_graph(src: Path, dst: Path, model_type: str, num_heads: int, hidden_size: int,
                   attention: str = "fused") -> dict[str, int]:
    """Run ORT's transformer fusions on ``src`` and write ``dst``; return the count of each fused operator.

    ``attention``: "fused" folds each layer's attention, Q/K/V projections included, into one ``Attention``
    op (fp32, or QAttention under dynamic int8); "mha" fuses only the attention core (``MultiHeadAttention``)
    and keeps the projections as MatMuls for MatMul-only quantisers (static int8, int4); "none" leaves it.
    """
    if attention not in ("fused", "mha", "none"):
        raise ValueError(f"attention must be fused, mha or none, not {attention!r}")
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    fuse_attention = attention != "none"
    if fuse_attention:
        model = onnx.load(str(src))
        if padding_mask_for_fusion(model):
            src = dst.with_name(dst.stem + ".mask.onnx")
            onnx.save(model, str(src))
    # ORT's optimiser knows encoders as "bert" (its list has no roberta or distilbert: those would come back unfused)
    ort_type = model_type if model_type in MODEL_TYPES and model_type != "bart" else "bert"
    with quiet("onnxruntime.transformers", "onnx_model", "fusion_base", "onnxruntime"):
        options = FusionOptions(ort_type)
        options.enable_attention = fuse_attention
        options.use_multi_head_attention = attention == "mha"
        optimized = optimize_model(str(src), model_type=ort_type, num_heads=num_heads, hidden_size=hidden_size,
                                   opt_level=0, optimization_options=options)
    statistics = getattr(optimized, "get_fused_operator_statistics", dict)
    stats = {k: int(v) for k, v in statistics().items() if v}
    strip_metadata(optimized.model)
    optimized.save_model_to_file(str(dst), use_external_data_format=False)  # adds the com.microsoft opset import
    return stats
