"""Export a wrapped encoder to ONNX with torch's (dynamo) exporter, with dynamic batch and sequence axes; and the one
call of that exporter that every graph (encoder, decoder, encoder-decoder parts) goes through."""

from __future__ import annotations

import contextlib
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
        trace_to_onnx(module, (ids, mask), target, INPUT_NAMES, names, shapes,
                      f"torch's ONNX exporter could not export {type(module.model).__name__}",
                      "the model may use an operation the exporter does not support; "
                      "check torch and onnxscript versions")

    settings = {"exporter": "encoder", "inputs": INPUT_NAMES, "outputs": names, "shapes": shapes}
    cached_export(path, lambda: graph_key(module, (ids, mask), settings), run)
    return path


def trace_to_onnx(module: Any, args: tuple[Any, ...], target: Path, input_names: list[str], output_names: list[str],
                  shapes: Any, failure: str, hint: str, context: Any = None) -> None:
    """Trace ``module`` on ``args`` with torch's dynamo exporter (optimised, one self-contained file) into ``target``;
    an exporter failure is an UnsupportedModelError (``failure``: what could not be exported, ``hint``), a failed
    write the disk's error. ``context``: entered around the trace (e.g. eager attention)."""
    import torch

    try:
        with context or contextlib.nullcontext(), warnings.catch_warnings(), quiet("torch"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=output_names,
                                        dynamic_shapes=shapes, optimize=True, external_data=False, report=False,
                                        verbose=False)
    except Exception as exc:
        raise UnsupportedModelError(f"{failure}: {type(exc).__name__}: {str(exc)[:400]}", hint) from exc
    with quiet("torch"):
        program.save(str(target), external_data=False)
