"""TensorRT engines (fp16, int8 from a QDQ graph) built from the exported ONNX, where TensorRT and a CUDA GPU exist."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mlcompress.errors import InputError

ENGINE_QUANTIZE = ("none", "fp16", "int8-static")


def cuda_available() -> bool:
    """Whether a CUDA GPU is visible (through torch, which mlcompress installs)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def require_tensorrt(quantize: str) -> None:
    """Refuse early, with what to do, when TensorRT, a GPU, or a fitting precision is missing."""
    if quantize not in ENGINE_QUANTIZE:
        raise InputError(f"--format tensorrt does not take --quantize {quantize}",
                         "use fp16, int8-static (calibrated QDQ graph, built as an int8 engine) or none")
    if importlib.util.find_spec("tensorrt") is None:
        raise InputError("--format tensorrt needs the tensorrt package, which is not installed",
                         "install it with: pip install 'mlcompress[tensorrt]' (needs an NVIDIA GPU and driver)")
    if not cuda_available():
        raise InputError("--format tensorrt needs a CUDA GPU, and none is visible here",
                         "run the export on a machine with an NVIDIA GPU, or use --format onnx for CPUs")


def build_engine(onnx_path: Path, engine_path: Path, quantize: str, max_batch: int = 64, max_seq: int = 512) -> Path:
    """Parse the ONNX graph and serialise a TensorRT engine with a dynamic (batch, sequence) profile."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"TensorRT could not parse the exported graph: {errors}",
                         "try --quantize none or fp16 (contrib operators such as GatherBlockQuantized are ORT-only)")
    config = builder.create_builder_config()
    if quantize == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if quantize == "int8-static":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantisation: scales come from the QDQ nodes
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name in ("input_ids", "attention_mask"):
        profile.set_shape(name, (1, 1), (8, 128), (max_batch, max_seq))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InputError("TensorRT failed to build an engine from the exported graph", "see TensorRT's log above")
    engine_path.write_bytes(bytes(serialized))
    return engine_path
