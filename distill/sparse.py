"""Lottery-ticket sparse fine-tuning (Ansell et al. 2022): train dense, keep the entries that moved most, retrain only those."""

from __future__ import annotations

import torch

from mlcompress.errors import InputError


def select_by_movement(initial: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], density: float,
                       always: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Boolean masks of the ``density`` fraction of entries with the largest |trained - initial| (global ranking).

    Parameters whose name starts with one of ``always`` (a new task head) are fully selected.
    """
    if not 0 < density <= 1:
        raise InputError(f"density must be in (0, 1], got {density}", "e.g. --density 0.08")
    ranked = {k: (trained[k].float() - initial[k].float()).abs() for k in initial if not k.startswith(always)}
    flat = torch.cat([v.flatten() for v in ranked.values()]) if ranked else torch.zeros(0)
    keep = max(1, int(round(density * flat.numel()))) if flat.numel() else 0
    threshold = torch.topk(flat, keep).values.min() if keep else torch.tensor(float("inf"))
    masks = {}
    # ties at the threshold are broken by order so that exactly `keep` entries are chosen: every entry above the
    # threshold is kept first (in any tensor), then ties fill what is left, tensor by tensor
    room = keep - sum(int((v > threshold).sum()) for v in ranked.values())
    for k, v in ranked.items():
        above = v > threshold
        at = (v == threshold) & ~above
        if room > 0 and at.any():
            idx = torch.nonzero(at.flatten()).flatten()[:room]
            flat_at = torch.zeros(v.numel(), dtype=torch.bool)
            flat_at[idx] = True
            above = above | flat_at.view_as(v)
            room -= len(idx)
        masks[k] = above
    for k in initial:
        if k.startswith(always):
            masks[k] = torch.ones_like(initial[k], dtype=torch.bool)
    return masks


class SparseUpdate:
    """After each optimizer step, put every unselected entry back to its initial value (AdamW's decay included)."""

    def __init__(self, model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
        self.initial = {k: v.detach().clone() for k, v in model.state_dict().items() if k in masks}
        self.masks = masks

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, mask in self.masks.items():
            p = params.get(name)
            if p is not None:
                p.copy_(torch.where(mask.to(p.device), p, self.initial[name].to(p.device)))

    def freeze_unselected(self, model: torch.nn.Module) -> None:
        """Stop gradients of parameters with nothing selected (saves optimizer state and time)."""
        for name, p in model.named_parameters():
            if name in self.masks and not self.masks[name].any():
                p.requires_grad_(False)
