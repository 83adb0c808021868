"""Negative controls for the gate: a copy of a model with its input-embedding rows shuffled."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def shuffled_embeddings(model_dir: str | os.PathLike[str], output: str | os.PathLike[str], seed: int = 0) -> Path:
    """Copy ``model_dir`` to ``output`` with the rows of its input embedding matrix permuted (a broken model of the same size)."""
    import torch

    from mlcompress.artifacts import atomic_output_dir
    from mlcompress.sources import load_model

    src = Path(model_dir)
    model = load_model(src)
    emb = model.get_input_embeddings().weight
    perm = torch.randperm(emb.shape[0], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        emb.copy_(emb[perm].clone())
    with atomic_output_dir(output, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        for f in src.iterdir():
            if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "vocab", "sentencepiece", "spiece"))
                                or f.suffix in (".model", ".txt") and f.name != "README.txt"):
                shutil.copy2(f, tmp / f.name)
    return Path(output).absolute()
