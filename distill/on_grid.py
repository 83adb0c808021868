"""Quantisation-aware distillation: the student trains through the 4-bit grid its edge bundle stores.

Every forward of the student reads its Linear weights and embedding tables quantised-dequantised exactly as
``mlcompress export``'s ``int4-weights`` scheme and 4-bit embedding tables store them (blocks along the last
dimension, the signed peak of a block maps to -8, fp16 scales, codes in [-8, 7]); gradients pass the rounding
straight through to full-precision weights. The student is saved on the grid, so its 4-bit bundle holds the very
weights that were evaluated (a 6-layer en+el student: 14-15 MiB instead of int8's 19.6) and re-quantising them is exact.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class GridSpec:
    """The grid a student trains on: ``scheme`` as export names it, its Linear blocks and its embedding blocks."""

    scheme: str = "int4-weights"
    block_size: int = 32  # Linear weights [out, in]: blocks along the input dimension (export's K-blocks)
    embedding_block_size: int = 64  # embedding tables [rows, hidden]: blocks along the hidden dimension

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


INT4_GRID = GridSpec()
QAT_START = 0.0  # share of the planned steps after which the student trains on the grid (distill general's default)


def snap(weight: torch.Tensor, block_size: int, fp16_values: bool = False) -> torch.Tensor:
    """``weight`` quantised-dequantised in 4-bit blocks of ``block_size`` along its last dimension, as export stores
    it: scale = fp16(signed peak / -8) (1 for an all-zero block), codes round(w / scale) clipped to [-8, 7];
    ``fp16_values``: the values rounded to fp16 too, as the bundle's embedding tables give their rows.

    Snapping a snapped tensor returns it unchanged, which is what makes the export of a student on the grid exact."""
    shape, k = weight.shape, weight.shape[-1]
    pad = (-k) % block_size
    blocks = torch.nn.functional.pad(weight.detach().float(), (0, pad)).reshape(*shape[:-1], -1, block_size)
    peak = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    scale = (peak / -8).half().float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = torch.clamp(torch.round(blocks / scale), -8, 7)
    values = codes * scale
    if fp16_values:
        values = values.half().float()
    return values.reshape(*shape[:-1], -1)[..., :k].to(weight.dtype)


def grid_parameters(model: torch.nn.Module, grid: GridSpec) -> dict[str, tuple[int, bool]]:
    """The parameters that go on the grid, each with its block size and whether its values are fp16: every Linear
    weight, and every embedding table (fp16 rows; a weight tied to a table takes the table's grid)."""
    by_id: dict[int, tuple[int, bool]] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            by_id[id(module.weight)] = (grid.embedding_block_size, True)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            by_id.setdefault(id(module.weight), (grid.block_size, False))
    return {name: by_id[id(p)] for name, p in model.named_parameters(remove_duplicate=True) if id(p) in by_id}


class _OnGrid:
    """The student as the loss sees it: called like the model, computed with its weights on the grid."""

    def __init__(self, model: torch.nn.Module, blocks: dict[str, tuple[int, bool]]) -> None:
        self._model, self._blocks = model, blocks

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        params = dict(self._model.named_parameters())
        on_grid = {name: _straight_through(params[name], *grid) for name, grid in self._blocks.items()}
        return torch.func.functional_call(self._model, on_grid, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _straight_through(weight: torch.Tensor, block_size: int, fp16_values: bool) -> torch.Tensor:
    """The snapped weight in the forward pass; the identity for the gradient."""
    return weight + (snap(weight, block_size, fp16_values) - weight).detach()


class OnGridLoss:
    """``loss_fn(model, batch)`` with the model's weights on ``grid`` in its forward passes, from ``start`` (a share
    of the planned steps; 0: from the first) on: the student first learns in full precision, then settles on the grid.
    ``before_step`` (the training loop's hook) switches it on."""

    def __init__(self, loss_fn: Callable[..., Any], grid: GridSpec, start: float = 0.0) -> None:
        self.loss_fn, self.grid, self.start, self.active = loss_fn, grid, start, start <= 0
        self._blocks: dict[int, dict[str, tuple[int, bool]]] = {}

    def before_step(self, done: int, planned: int) -> None:
        self.active = done >= round(self.start * planned)

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        if not self.active:
            return self.loss_fn(model, batch)
        if id(model) not in self._blocks:
            self._blocks[id(model)] = grid_parameters(model, self.grid)
        return self.loss_fn(_OnGrid(model, self._blocks[id(model)]), batch)


@torch.no_grad()
def snapped_copy(model: torch.nn.Module, grid: GridSpec) -> torch.nn.Module:
    """A copy of ``model`` with its weights on ``grid``: what a quantisation-aware run saves."""
    copied = copy.deepcopy(model)
    params = dict(copied.named_parameters())
    for name, (block, fp16_values) in grid_parameters(copied, grid).items():
        params[name].copy_(snap(params[name], block, fp16_values))
    return copied


def on_grid(model: torch.nn.Module, grid: GridSpec, atol: float = 0.0) -> bool:
    """Whether every grid parameter of ``model`` already sits on ``grid``."""
    params = dict(model.named_parameters())
    return all(torch.allclose(params[n], snap(params[n], *g), rtol=0.0, atol=atol)
               for n, g in grid_parameters(model, grid).items())
