"""The ONNX graphs of an encoder-decoder with a KV cache, in optimum's / transformers.js's layout:

- ``encoder_model.onnx``: (input_ids, attention_mask) -> last_hidden_state, the model's encoder alone;
- ``decoder_model_merged.onnx``: one ``If`` on ``use_cache_branch`` (BOOL[1]), as optimum's ``merge_decoders`` builds
  it, with the same inputs and outputs. The then-branch (later steps) is the with-past decoder: it reads every layer's
  cross-attention keys/values from ``past_key_values.N.encoder.*`` and passes them through as ``present.N.encoder.*``.
  The else-branch (the first step) computes them from ``encoder_hidden_states`` with each layer's key and value
  projections (`cross_graph`), gives the same decoder body an empty self-attention cache, and returns all of them.

Only two graphs are exported from torch (the encoder and the with-past decoder, each a small wrapper exported with the
dynamo exporter, the cache passed as transformers' own ``EncoderDecoderCache``); optimum exports a third, the no-past
decoder, which holds the same body. The cross projections are written directly (MatMul, Add, Reshape, Transpose).
Weights are stored once, in the outer graph, however many branches read them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .decoder_graph import VERSIONS_HINT, eager_attention, name_axes
from .graph_cache import cached_export, graph_key
from .onnx_export import trace_to_onnx
from .seq2seq_families import FAMILIES, Seq2SeqSpec

ENCODER, WITH_PAST, CROSS = "encoder", "with_past", "cross"


class _Declared:
    """The declared I/O of one graph, in the form `decoder_graph.name_axes` reads (an ``io()`` method)."""

    def __init__(self, ins: list[dict[str, Any]], outs: list[dict[str, Any]]) -> None:
        self.ins, self.outs = ins, outs

    def io(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The inputs and outputs, in order."""
        return self.ins, self.outs


def declared(spec: Seq2SeqSpec, kind: str) -> _Declared:
    """The I/O of the encoder, the with-past decoder or the cross projections (names and axes as in the merged graph)."""
    io = spec.io()
    if kind == ENCODER:
        return _Declared(*io["encoder"])
    ins, outs = io["decoder"]
    if kind == CROSS:
        return _Declared([ins[2]], [o for o in outs if ".encoder." in o["name"]])
    return _Declared(ins[:-1], [o for o in outs if ".encoder." not in o["name"]])


def _wrapper(model: Any, spec: Seq2SeqSpec, kind: str) -> Any:
    """The torch module to export for ``kind`` (the encoder, or the decoder reading a full cache)."""
    import torch
    from transformers.cache_utils import EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model.get_encoder()

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, encoder_attention_mask: Any, encoder_hidden_states: Any, *past: Any) -> Any:
            cache = EncoderDecoderCache([tuple(past[4 * i:4 * i + 4]) for i in range(spec.num_layers)])
            cache.is_updated = dict.fromkeys(range(spec.num_layers), True)  # cross-attention: read, never recomputed
            out = self.model(decoder_input_ids=input_ids, attention_mask=encoder_attention_mask,
                             encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states), cache=cache,
                             use_cache=True)
            own = cache.self_attention_cache.layers
            return (out.logits, *[t for i in range(spec.num_layers) for t in (own[i].keys, own[i].values)])

    return (Encoder() if kind == ENCODER else Decoder()).eval()


def sample_inputs(spec: Seq2SeqSpec, kind: str, batch: int = 2, source: int = 5, target: int = 3, past: int = 4
                  ) -> tuple[Any, ...]:
    """A sample whose dynamic axes all differ and none is 0 or 1 (torch.export would fix such an axis); the second
    row of the source is padded."""
    import torch

    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(batch, source, dtype=torch.long)
    mask[1, -2:] = 0
    if kind == ENCODER:
        return torch.randint(0, spec.vocab_size, (batch, source), generator=gen), mask
    ids = torch.randint(0, spec.vocab_size, (batch, target), generator=gen)
    hidden = torch.randn(batch, source, spec.hidden_size, generator=gen)
    cache = [torch.randn(batch, spec.num_heads, past if part == "decoder" else source, spec.head_dim, generator=gen)
             for _ in range(spec.num_layers) for part in ("decoder", "encoder") for _kv in (0, 1)]
    return (ids, mask, hidden, *cache)


def export_graph(model: Any, spec: Seq2SeqSpec, kind: str, path: Path) -> Path:
    """Write one single-file fp32 graph (``kind``: encoder or with_past) with dynamic batch and lengths."""
    from torch.export import Dim

    args = sample_inputs(spec, kind)
    io = declared(spec, kind)
    dyn = Dim.DYNAMIC
    shapes: tuple[Any, ...] = tuple({0: dyn, 1: dyn} for _ in args[:3])
    if kind == WITH_PAST:
        shapes = (*shapes, tuple({0: dyn, 2: dyn} for _ in args[3:]))
    module = _wrapper(model, spec, kind)

    def run(target: Path) -> None:
        trace_to_onnx(module, args, target, [d["name"] for d in io.ins], [d["name"] for d in io.outs], shapes,
                      f"torch's ONNX exporter could not export the {kind.replace('_', '-')} graph of "
                      f"{type(model).__name__}",
                      VERSIONS_HINT, eager_attention(model))

    settings = {"exporter": f"seq2seq-{kind}", "spec": spec.as_dict(), "shapes": repr(shapes)}
    cached_export(path, lambda: graph_key(module, args, settings), run)  # MLCOMPRESS_GRAPH_CACHE, when set
    name_axes(path, io)  # type: ignore[arg-type]  # reads only io()
    return path


def cross_graph(model: Any, spec: Seq2SeqSpec, path: Path, opset: int) -> Path:
    """Write encoder_hidden_states -> present.N.encoder.{key,value}: each decoder layer's cross-attention key and value
    projections, reshaped to [batch, heads, source, head_dim] as the attention layers reshape them."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    family = next(f for f in FAMILIES if f.name == spec.family)
    shape = numpy_helper.from_array(np.asarray([0, 0, spec.num_heads, spec.head_dim], dtype=np.int64), "cross/shape")
    nodes, weights = [], [shape]
    names = iter(n for n in spec.past_names("present") if ".encoder." in n)
    for i in range(spec.num_layers):
        module = model.get_submodule(family.cross_attention.format(i=i))
        for proj in family.cross_projections:
            linear, out = getattr(module, proj), next(names)
            weights.append(numpy_helper.from_array(linear.weight.detach().float().numpy().T.copy(), f"{out}/weight"))
            x = f"{out}/matmul"
            nodes.append(helper.make_node("MatMul", ["encoder_hidden_states", weights[-1].name], [x], name=x))
            if linear.bias is not None:
                weights.append(numpy_helper.from_array(linear.bias.detach().float().numpy(), f"{out}/bias"))
                nodes.append(helper.make_node("Add", [x, weights[-1].name], [f"{out}/add"], name=f"{out}/add"))
                x = f"{out}/add"
            nodes.append(helper.make_node("Reshape", [x, shape.name], [f"{out}/heads"], name=f"{out}/reshape"))
            nodes.append(helper.make_node("Transpose", [f"{out}/heads"], [out], name=f"{out}/transpose", perm=[0, 2, 1, 3]))
    io = declared(spec, CROSS)
    value = (lambda d: helper.make_tensor_value_info(d["name"], TensorProto.FLOAT, d["shape"]))
    graph = helper.make_graph(nodes, "cross_projections", [value(d) for d in io.ins], [value(d) for d in io.outs],
                              initializer=weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def _digest(tensor: Any) -> tuple[Any, ...]:
    """What makes two initializers the same weight: type, shape and bytes."""
    from onnx import numpy_helper

    data = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
    return tensor.data_type, tuple(tensor.dims), hashlib.sha256(data).hexdigest()


def _hoist(model: Any, outer: dict[tuple[Any, ...], Any]) -> tuple[list[Any], list[Any]]:
    """Move ``model``'s weights into ``outer`` (one per distinct content, renamed ``merged/N/...``) and point its nodes
    at them; return its nodes and the initializers that stay in a branch (scalars and 1-D int shapes, as optimum)."""
    renamed: dict[str, str] = {}
    kept = []
    for tensor in model.graph.initializer:
        if not (len(tensor.dims) > 1 or (len(tensor.dims) == 1 and tensor.data_type not in (6, 7))):
            kept.append(tensor)
            continue
        key, original = _digest(tensor), tensor.name
        if key not in outer:
            tensor.name = f"merged/{len(outer)}/{original}"
            outer[key] = tensor
        renamed[original] = outer[key].name
    for node in model.graph.node:
        for i, value in enumerate(node.input):
            node.input[i] = renamed.get(value, value)
    return list(model.graph.node), kept


def _first_step(spec: Seq2SeqSpec, cross: list[Any], body: list[Any]) -> tuple[list[Any], list[Any]]:
    """The else-branch's nodes and constants: the cross projections, an empty self-attention cache (each decoder past
    sliced to length 0, whatever was fed), then a copy of the decoder body reading them."""
    import numpy as np
    from onnx import NodeProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.asarray([v], dtype=np.int64), f"empty/{n}") for n, v in (("zero", 0), ("axis", 2))]
    nodes = list(cross)
    rename = {}
    for name in spec.past_names():
        if ".encoder." in name:
            rename[name] = name.replace("past_key_values", "present")
            continue
        rename[name] = f"{name}/empty"
        nodes.append(helper.make_node("Slice", [name, "empty/zero", "empty/zero", "empty/axis"], [rename[name]],
                                      name=rename[name]))
    for node in body:
        copy = NodeProto()
        copy.CopyFrom(node)
        for i, value in enumerate(copy.input):
            copy.input[i] = rename.get(value, value)
        nodes.append(copy)
    return nodes, consts


def merge_decoders(cross: Path, with_past: Path, spec: Seq2SeqSpec, path: Path) -> Path:
    """Write ``decoder_model_merged.onnx`` from the cross projections and the with-past decoder (see the module's
    doc): one If on ``use_cache_branch``, its branches reading the weights from the outer graph."""
    import onnx
    from onnx import TensorProto, helper

    projections, later = onnx.load(str(cross)), onnx.load(str(with_past))
    outer: dict[tuple[Any, ...], Any] = {}
    body, small = _hoist(later, outer)
    cross_nodes, cross_small = _hoist(projections, outer)
    first, consts = _first_step(spec, cross_nodes, body)
    passthrough = [helper.make_node("Identity", [n], [n.replace("past_key_values", "present")], name=f"{n}/passthrough")
                   for n in spec.past_names() if ".encoder." in n]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in spec.decoder_outputs()]
    then_branch = helper.make_graph(body + passthrough, WITH_PAST, [], outputs, initializer=small)
    else_branch = helper.make_graph(first, "no_past", [], outputs, initializer=[*small, *cross_small, *consts])
    types = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT, "bool": TensorProto.BOOL}
    ins, outs = ([helper.make_tensor_value_info(d["name"], types[d["dtype"]], d["shape"]) for d in part]
                 for part in spec.io()["decoder"])
    node = helper.make_node("If", ["use_cache_branch"], spec.decoder_outputs(), name="optimum::if",
                            then_branch=then_branch, else_branch=else_branch)
    graph = helper.make_graph([node], "merged", ins, outs, initializer=list(outer.values()))
    opsets = {o.domain: o for o in [*projections.opset_import, *later.opset_import]}
    merged = helper.make_model(graph, opset_imports=list(opsets.values()), producer_name="mlcompress")
    merged.ir_version = later.ir_version
    merged.functions.extend(later.functions)
    onnx.save(merged, str(path))
    name_axes(path, _Declared(*spec.io()["decoder"]))  # type: ignore[arg-type]
    return path
