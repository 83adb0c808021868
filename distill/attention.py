"""Attention distributions for distillation without giving up fused attention kernels.

Fused SDPA kernels never materialise attention probabilities. We register an attention backend
that runs transformers' own SDPA function and, for the layers being distilled only, keeps the
projected queries and keys; the probabilities of those layers alone are then recomputed from them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

BACKEND = "mlcompress_sdpa_capture"
_registered = False


def _capturing_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, **kwargs: Any):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    store = getattr(module, "_mlcompress_capture", None)
    if store is not None:
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        store.append((query, key, attention_mask, scaling))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register_backend() -> str:
    """Register the capturing backend (and SDPA's mask builder for it) with transformers, once."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(BACKEND, _capturing_sdpa)
        AttentionMaskInterface.register(BACKEND, sdpa_mask)
        _registered = True
    return BACKEND


def self_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module of each encoder layer, in depth order (modules that own query/key)."""
    found = [m for m in model.modules() if hasattr(m, "query") and hasattr(m, "key") and hasattr(m, "scaling")]
    if not found:
        from mlcompress.errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"{type(model).__name__} has no BERT-style self-attention modules to distil attention from",
            "use a BERT/XLM-R-family encoder, or set the attention loss weight to 0",
        )
    return found


def use_capture_backend(model: torch.nn.Module) -> None:
    """Switch a transformers model to the capturing SDPA backend."""
    model.set_attn_implementation(register_backend())


@contextlib.contextmanager
def capture_attention(model: torch.nn.Module, layers: Sequence[int]) -> Iterator[list[list]]:
    """Within the block, record (query, key, mask, scaling) of the given layers; yields one list per layer."""
    modules = self_attention_modules(model)
    stores: list[list] = []
    try:
        for i in layers:
            store: list = []
            modules[i]._mlcompress_capture = store
            stores.append(store)
        yield stores
    finally:
        for i in layers:
            modules[i]._mlcompress_capture = None


def attention_log_probs(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """Log attention probabilities (batch, heads, q, k) in float32, masked like SDPA would mask them."""
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask.float()
    return torch.log_softmax(scores, dim=-1)
