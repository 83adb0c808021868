"""The outputs of an encoder graph: the head's own output, and for sentence embeddings the encoder's
``last_hidden_state`` too, the token vectors that transformers.js and FastEmbed pool themselves."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HIDDEN_STATE = "last_hidden_state"


def graph_outputs(spec: Any) -> list[str]:
    """The graph's output names, the head's first (the runtime reads it; a client that takes the first output gets it)."""
    return [spec.output_name, HIDDEN_STATE] if spec.task == "sentence-embedding" else [spec.output_name]


@contextmanager
def exportable(module: Any, spec: Any) -> Iterator[tuple[Any, list[str]]]:
    """The module to export and its output names: for sentence embeddings, ``module`` (a `heads.wrap` module, its
    encoder ``module.model``) returning ``(embedding, last_hidden_state)``, the hidden state taken from the same
    forward pass by a hook (removed on exit), so the graph holds the encoder once."""
    names = graph_outputs(spec)
    if len(names) == 1:
        yield module, names
        return
    import torch

    seen: dict[str, Any] = {}

    class WithHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = module
            self.model = module.model  # what the exporter's error names

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.head(input_ids, attention_mask)
            return out, seen.pop(HIDDEN_STATE)

    hook = module.model.register_forward_hook(lambda _m, _a, out: seen.__setitem__(HIDDEN_STATE, out.last_hidden_state))
    try:
        yield WithHiddenState().eval(), names
    finally:
        hook.remove()
