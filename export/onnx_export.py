"""Export a wrapped encoder to ONNX with torch's (dynamo) exporter, with dynamic batch and sequence axes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mlcompress.errors import UnsupportedModelError

from .graph_cache import cached_export, graph_key
from .heads import INPUT_NAMES
from .quiet import quiet


def export_onnx(module: Any, output_name: str | list[str], path: Path, pad_id: int = 0, vocab: int = 100) -> Path:
    """Write ``module`` (input_ids, attention_mask) -> ``output_name`` (one name, or a name per output) to ``path`` as
    one self-contained .onnx file."""
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = pad_id
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=1, max=8192)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    names = [output_name] if isinstance(output_name, str) else list(output_name)

    def run(target: Path) -> None:
        try:
            with warnings.catch_warnings(), quiet("torch"):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(module, (ids, mask), dynamo=True, input_names=INPUT_NAMES,
                                            output_names=names, dynamic_shapes=shapes, optimize=True,
                                            external_data=False, report=False, verbose=False)
        except Exception as exc:
            raise UnsupportedModelError(
                f"torch's ONNX exporter could not export {type(module.model).__name__}: {type(exc).__name__}: "
                f"{str(exc)[:400]}",
                "the model may use an operation the exporter does not support; check torch and onnxscript versions"
            ) from exc
        with quiet("torch"):
            program.save(str(target), external_data=False)  # a failed write is a disk's error, not the exporter's

    settings = {"exporter": "encoder", "inputs": INPUT_NAMES, "outputs": names, "shapes": shapes}
    cached_export(path, lambda: graph_key(module, (ids, mask), settings), run)
    return path
