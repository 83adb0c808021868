"""bitsandbytes 8-bit and 4-bit (NF4) checkpoints for PyTorch serving on a CUDA GPU."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from mlcompress.errors import InputError

from .writer import Payload

BNB_QUANTIZE = {"int8-weights": 8, "int8-dynamic": 8, "int8-static": 8, "int4": 4}


def require_bnb(quantize: str) -> int:
    """The bit width for ``quantize``, or a clear error when bitsandbytes or a GPU is missing."""
    if quantize not in BNB_QUANTIZE:
        raise InputError(f"--format bnb does not take --quantize {quantize}",
                         "use int8-weights, int8-dynamic or int8-static (LLM.int8, 8-bit) or int4 (NF4)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InputError("--format bnb needs the bitsandbytes package, which is not installed",
                         "install it with: pip install 'mlcompress[gpu]'")
    from .tensorrt import cuda_available

    if not cuda_available():
        raise InputError("--format bnb needs a CUDA GPU, and none is visible here",
                         "bitsandbytes checkpoints are for GPU serving; use --format onnx on CPUs")
    return BNB_QUANTIZE[quantize]


def export_bnb(model: str | os.PathLike[str], quantize: str, cache_dir: str | os.PathLike[str] | None = None) -> Payload:
    """Load MODEL quantised by bitsandbytes; the writer saves it as a save_pretrained checkpoint (weights stay quantised)."""
    bits = require_bnb(quantize)
    import torch
    import transformers

    from mlcompress.errors import ModelSourceError
    from mlcompress.sources import load_config, load_tokenizer, resolve_model

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

    def save(target: Path) -> None:
        loaded.save_pretrained(target)
        load_tokenizer(source.path).save_pretrained(target)

    return Payload(save=save, params={"format": "bnb", "quantize": quantize, "bits": bits}, inputs=[source.describe()],
                   metrics={}, result={"format": "bnb", "quantize": quantize, "task": "checkpoint",
                                       "model_file": "model.safetensors", "parity": None, "latency_ms": None,
                                       "fused_operators": {}, "quantization": {"bits": bits}})
