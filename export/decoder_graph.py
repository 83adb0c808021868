"""The ONNX graph of a decoder-only LM with a KV cache: a small torch wrapper (input_ids, attention_mask[, position_ids],
past...) -> (logits, present...) exported with torch's dynamo exporter, its dynamic axes named as optimum names them.

Why a wrapper rather than transformers' experimental `OnnxExporter`: that exporter drops the attention_mask input for
Gemma 3 (so left-padded batches cannot work) and adds `_sliding_window_tensor` inputs. Here the wrapper builds the
attention masks itself (causal, padding, and the sliding window for local layers) and hands them to the model as
prepared 4-D masks, so the graph always takes attention_mask and has the optimum / transformers.js I/O. Every layer
keeps a full cache (a sliding layer's mask hides what lies outside its window), so the outputs equal PyTorch's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlcompress.errors import UnsupportedModelError

from .decoder_families import DecoderSpec
from .graph_cache import cached_export, graph_key
from .onnx_export import trace_to_onnx

VERSIONS_HINT = "check the torch, transformers and onnxscript versions (tested: torch 2.13, transformers 5.25)"


class _PastCache:
    """The cache object the model's attention layers update: the past tensors in, the present ones out."""

    def __init__(self, past: tuple[Any, ...]) -> None:
        self.keys = list(past[0::2])
        self.values = list(past[1::2])

    def update(self, key: Any, value: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Append this step's keys and values to layer ``layer_idx``; return the whole (past + new) states."""
        import torch

        self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key], dim=-2)
        self.values[layer_idx] = torch.cat([self.values[layer_idx], value], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]


def masks(attention_mask: Any, seq: int, spec: DecoderSpec) -> Any:
    """Additive float masks [batch, 1, seq, past + seq]: causal, padding, and (sliding layers) the window; a dict by
    layer type when the model has sliding layers, else one tensor.

    Each query position always sees itself, so a padding row is never fully masked (no NaN reaches the cache); real
    tokens see themselves anyway, so their outputs are unchanged.
    """
    import torch

    total = attention_mask.shape[1]
    q = torch.arange(seq, device=attention_mask.device) + (total - seq)
    k = torch.arange(total, device=attention_mask.device)
    causal = k[None, :] <= q[:, None]
    allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
    itself = (k[None, :] == q[:, None])[None, None]
    low = torch.finfo(torch.float32).min
    full = torch.where(allowed | itself, 0.0, low)
    if not spec.sliding:
        return full
    inside = (k[None, :] > q[:, None] - int(spec.sliding_window or 0))[None, None]
    return {"full_attention": full, "sliding_attention": torch.where((allowed & inside) | itself, 0.0, low)}


def positions(attention_mask: Any, seq: int) -> Any:
    """Position ids of the last ``seq`` tokens, counted over real tokens (transformers' generate does the same)."""
    full = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return full[:, attention_mask.shape[1] - seq:]


def _wrapper(model: Any, spec: DecoderSpec) -> Any:
    """The torch module to export: the model with its cache flattened into tensors."""
    import torch

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def run(self, input_ids: Any, attention_mask: Any, position_ids: Any, past: tuple[Any, ...]) -> tuple[Any, ...]:
            seq = input_ids.shape[1]
            pos = positions(attention_mask, seq) if position_ids is None else position_ids
            cache = _PastCache(past)
            out = self.model(input_ids=input_ids, attention_mask=masks(attention_mask, seq, spec), position_ids=pos,
                             cache=cache, use_cache=True)
            present = [t for pair in zip(cache.keys, cache.values) for t in pair]
            return (out.logits, *present)

    class WithPositions(Decoder):
        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> tuple[Any, ...]:
            return self.run(input_ids, attention_mask, position_ids, past)

    class WithoutPositions(Decoder):
        def forward(self, input_ids: Any, attention_mask: Any, *past: Any) -> tuple[Any, ...]:
            return self.run(input_ids, attention_mask, None, past)

    return (WithPositions if spec.position_ids else WithoutPositions)().eval()


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Export with transformers' eager attention (plain MatMul/Softmax ops, the additive masks above); restore after."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def sample_inputs(spec: DecoderSpec, batch: int = 2, seq: int = 3, past: int = 4) -> tuple[Any, ...]:
    """A left-padded sample with a non-empty past: no dynamic axis of size 0 or 1, which torch.export would fix."""
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    mask[1, :2] = 0
    cache = [torch.randn(batch, spec.num_kv_heads, past, spec.head_dim, generator=gen) for _ in range(2 * spec.num_layers)]
    head = (ids, mask, positions(mask, seq)) if spec.position_ids else (ids, mask)
    return (*head, *cache)


def export_graph(model: Any, spec: DecoderSpec, path: Path) -> Path:
    """Write the decoder's single-file fp32 ONNX graph to ``path`` (dynamic batch, sequence and past axes)."""
    from torch.export import Dim

    args = sample_inputs(spec)
    n_head = 3 if spec.position_ids else 2
    dyn = Dim.DYNAMIC
    shapes = (*[{0: dyn, 1: dyn}] * n_head, tuple({0: dyn, 2: dyn} for _ in args[n_head:]))

    def run(target: Path) -> None:
        trace_to_onnx(_wrapper(model, spec), args, target, spec.input_names(), spec.output_names(), shapes,
                      f"torch's ONNX exporter could not export {type(model).__name__} with a KV cache", VERSIONS_HINT,
                      eager_attention(model))

    settings = {"exporter": "decoder", "spec": asdict(spec), "shapes": repr(shapes)}
    cached_export(path, lambda: graph_key(model, args, settings), run)
    name_axes(path, spec)
    return path


def name_axes(path: Path, spec: DecoderSpec) -> None:
    """Name the dynamic axes as optimum does (batch_size, sequence_length, past_sequence_length, ...), keep the cache's
    kv-head and head-dim axes static (transformers.js sizes an empty first-step cache from them), and drop the
    exporter's intermediate shape annotations (their symbols would not match the new names)."""
    import onnx

    model = onnx.load(str(path))
    ins, outs = spec.io()
    for value, declared in [*zip(model.graph.input, ins), *zip(model.graph.output, outs)]:
        if value.name != declared["name"]:
            raise UnsupportedModelError(f"the exported graph has {value.name!r} where {declared['name']!r} belongs",
                                        "report it: the exporter changed the graph's I/O")
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, declared["shape"]):
            if isinstance(size, str):
                dim.Clear()
                dim.dim_param = size
            elif dim.HasField("dim_param") or dim.dim_value != size:
                raise UnsupportedModelError(f"{value.name}: axis of size {size} is not static in the exported graph",
                                            "report it: transformers.js needs static kv-head and head-dim axes")
    del model.graph.value_info[:]
    onnx.save(model, str(path))

