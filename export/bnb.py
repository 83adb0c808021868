"""bitsandbytes 8-bit and 4-bit (NF4) checkpoints for PyTorch serving on a CUDA GPU."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from mlcompress.errors import InputError

BNB_QUANTIZE = {"int8-dynamic": 8, "int8-static": 8, "int4": 4}


def require_bnb(quantize: str) -> int:
    """The bit width for ``quantize``, or a clear error when bitsandbytes or a GPU is missing."""
    if quantize not in BNB_QUANTIZE:
        raise InputError(f"--format bnb does not take --quantize {quantize}", "use int8-dynamic (8-bit) or int4 (NF4)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InputError("--format bnb needs the bitsandbytes package, which is not installed",
                         "install it with: pip install 'mlcompress[gpu]'")
    from .tensorrt import cuda_available

    if not cuda_available():
        raise InputError("--format bnb needs a CUDA GPU, and none is visible here",
                         "bitsandbytes checkpoints are for GPU serving; use --format onnx on CPUs")
    return BNB_QUANTIZE[quantize]


def export_bnb(model: str | os.PathLike[str], output: Path, quantize: str, overwrite: bool = False,
               cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """Load MODEL quantised by bitsandbytes and save it as a save_pretrained checkpoint (weights stay quantised)."""
    bits = require_bnb(quantize)
    import torch
    import transformers

    from mlcompress.artifacts import atomic_output_dir, write_provenance
    from mlcompress.errors import ModelSourceError
    from mlcompress.sources import load_config, load_tokenizer, resolve_model

    from .api import ExportResult

    source = resolve_model(model, cache_dir)
    config = load_config(source.path)
    arch = (config.architectures or ["AutoModel"])[0]
    cls = getattr(transformers, arch, transformers.AutoModel)
    qconfig = (transformers.BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
               transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16))
    try:
        loaded = cls.from_pretrained(source.path, quantization_config=qconfig, device_map="cuda")
    except Exception as exc:
        raise ModelSourceError(f"{source.path}: could not load it quantised by bitsandbytes ({type(exc).__name__}: {exc})",
                               "the weights may be corrupt, or bitsandbytes does not support this GPU") from exc
    with atomic_output_dir(output, overwrite=overwrite) as target:
        loaded.save_pretrained(target)
        load_tokenizer(source.path).save_pretrained(target)
        write_provenance(target, "export", {"format": "bnb", "quantize": quantize, "bits": bits}, [source.describe()], {})
    size = sum(p.stat().st_size for p in output.iterdir() if p.is_file())
    return ExportResult(output, "bnb", quantize, "checkpoint", "model.safetensors", size, None, None, {}, {"bits": bits})
