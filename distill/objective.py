"""What both phases compute: teacher and student on the same inputs, and their hidden-state and attention terms."""

from __future__ import annotations

from typing import Any

import torch

from .attention import capture_attention
from .losses import attention_loss, hidden_mse


def paired_forward(teacher: torch.nn.Module, student: torch.nn.Module, inputs: dict[str, torch.Tensor],
                   mapping: list[int], with_attention: bool) -> tuple[Any, Any, list[list], list[list]]:
    """Teacher (no grad) and student outputs with hidden states; Q/K of the mapped layers when attention is distilled."""
    with torch.no_grad(), capture_attention(teacher, mapping if with_attention else []) as t_att:
        t_out = teacher(**inputs, output_hidden_states=True)
    with capture_attention(student, list(range(len(mapping))) if with_attention else []) as s_att:
        s_out = student(**inputs, output_hidden_states=True)
    return t_out, s_out, t_att, s_att


def add_representation_terms(total: torch.Tensor, parts: dict[str, torch.Tensor], s_out: Any, t_out: Any,
                             s_att: list[list], t_att: list[list], pairs: list[tuple[int, int]], hidden_weight: float,
                             attention_weight: float, attention_kind: str,
                             mask: torch.Tensor | None = None, basis: torch.Tensor | None = None) -> torch.Tensor:
    """Add the weighted hidden-state MSE and attention loss to ``total`` (and their detached values to ``parts``).

    ``basis`` (teacher width x student width) maps a narrower student's hidden states into the teacher's space.
    """
    if hidden_weight:
        projection = None if basis is None else (lambda h: h @ basis.to(h.device, h.dtype).T)
        h = hidden_mse(s_out.hidden_states, t_out.hidden_states, pairs, mask, projection)
        total = total + hidden_weight * h
        parts["hidden"] = h.detach()
    if attention_weight:
        a = attention_loss(s_att, t_att, attention_kind)
        total = total + attention_weight * a
        parts["attention"] = a.detach()
    return total
