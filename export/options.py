"""The export stage's options as small typed, frozen configs, built once by `export()` from its keywords and passed
down in place of a dict of options (onnxruntime.quantization's style: one config per quantisation scheme).

- The quantisation, one config per scheme: `NoQuantConfig`, `Fp16Config`, `Int8DynamicConfig`, `Int8StaticConfig`,
  `Int8WeightsConfig`, `Int4Config`, `Int4WeightsConfig` (``export(model, out, quantize=Int4Config(block_size=32))``
  takes one ready-made); `EmbeddingConfig` for the 4-bit embedding tables beside any of them. ``quantize="auto"``
  (the default) names no scheme: `resolve_auto` picks one by the model (int4-weights on its grid for a student that
  trained on it, else int8-weights), and `embedding_block` the tables' block size (the grid's, else 32).
- `ChecksConfig`: the target-language text an export is checked on, and its gates (parity thresholds, --max-drop,
  --force).
- `OutputsConfig`: what is written (format, bundle and its other forms) and the work on the way (optimisation, timing).
- `EncoderOptions`: the four together, as the encoder exporter (`onnx_backend`, `graph`) takes them.
- Decoders (`decoder_export`): `DecoderQuantConfig` (the schemes of `decoder_quantize`) and `DecoderParityConfig` (the
  fp32 gate's tolerances), beside the same `ChecksConfig`.

Each config refuses what it cannot mean when it is built (`InputError`, with the CLI's option names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union

from mlcompress.errors import InputError

from .accuracy_control import QUANTISED_OPS
from .decoder_quantize import DECODER_QUANTIZE, DTYPE, INT8_METHODS
from .quantize import AUTO, QUANTIZE_CHOICES

FORMATS = ("onnx", "tensorrt", "bnb")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")  # static int8 activation ranges
EMBEDDING_SCHEMES = ("int8-dynamic", "int8-static", "int8-weights", "int4", "int4-weights")  # embedding tables 4-bit by default


def check_calibration(method: str) -> None:
    """Refuse an unknown static-int8 calibration method."""
    if method not in CALIBRATION_METHODS:
        raise InputError(f"unknown calibration method {method!r}", f"choose one of {', '.join(CALIBRATION_METHODS)}")


@dataclass(frozen=True)
class NoQuantConfig:
    """--quantize none: the float32 graph as exported (and optimised)."""

    name: ClassVar[str] = "none"


@dataclass(frozen=True)
class Fp16Config:
    """--quantize fp16: fp16 weights and compute, fp32 inputs and outputs (for GPUs; CPUs run fp16 slowly)."""

    name: ClassVar[str] = "fp16"


@dataclass(frozen=True)
class Int8DynamicConfig:
    """--quantize int8-dynamic: int8 weights, activations quantised at run time; scales per output channel or per
    tensor, 7-bit weights with ``reduce_range`` (None: on for x86 CPUs without VNNI)."""

    per_channel: bool = True
    reduce_range: bool | None = None
    name: ClassVar[str] = "int8-dynamic"


@dataclass(frozen=True)
class Int8StaticConfig:
    """--quantize int8-static: QDQ int8 with activation ranges calibrated on target-language text by ``calibration``
    (minmax, percentile or entropy); ``per_channel`` and ``reduce_range`` as for dynamic int8."""

    per_channel: bool = True
    reduce_range: bool | None = None
    calibration: str = "minmax"
    name: ClassVar[str] = "int8-static"

    def __post_init__(self) -> None:
        check_calibration(self.calibration)


@dataclass(frozen=True)
class Int8WeightsConfig:
    """--quantize int8-weights: int8 weights per output channel (Cast and Mul, folded at load), float compute."""

    name: ClassVar[str] = "int8-weights"


@dataclass(frozen=True)
class Int4Config:
    """--quantize int4: weight-only 4-bit MatMulNBits, symmetric blocks of ``block_size`` along the input dimension."""

    block_size: int = 128
    name: ClassVar[str] = "int4"


@dataclass(frozen=True)
class Int4WeightsConfig:
    """--quantize int4-weights: 4-bit weights in symmetric blocks of ``block_size`` along the input dimension, fp16
    scales, restored by standard operators that every session folds at load: float compute, as int8-weights, so each
    sentence gets the same vector in any batch and any client. ``auto`` for a student that trained on its grid."""

    block_size: int = 32
    name: ClassVar[str] = "int4-weights"

    def __post_init__(self) -> None:
        if not isinstance(self.block_size, int) or self.block_size < 2 or self.block_size % 2:
            raise InputError(f"int4-weights block size {self.block_size!r}", "use an even block size, e.g. 32, 64 or 128")


QuantConfig = Union[NoQuantConfig, Fp16Config, Int8DynamicConfig, Int8StaticConfig, Int8WeightsConfig, Int4Config,
                    Int4WeightsConfig]
SCHEMES: dict[str, type] = {c.name: c for c in (NoQuantConfig, Fp16Config, Int8DynamicConfig, Int8StaticConfig,
                                                Int8WeightsConfig, Int4Config, Int4WeightsConfig)}  # QUANTIZE_CHOICES' order
STUDENT_STAGES = ("distill-general", "distill-task")  # provenance stages of a distilled student
# What ``auto`` gives a model: int8-weights, unless it is a student that trained on the int4-weights grid (its
# provenance's ``on_grid``, `distill general --quantization-aware`, the default of the embedding objective): then
# int4-weights with the grid's blocks, which holds exactly the weights it was evaluated with. int4-weights on a student
# trained off the grid failed the parity check (mean cosine 0.934 < 0.98 after 5 minutes of training).
DEFAULT = "int8-weights"
EMBEDDING_BLOCK = 32  # the 4-bit embedding tables' block size, unless the model trained on a grid of its own
SCHEME_TYPES = tuple(SCHEMES.values())


def scheme_name(quantize: str | QuantConfig) -> str:
    """The --quantize name of a scheme given by name or as a config (an object of no scheme: its repr, refused later)."""
    if isinstance(quantize, SCHEME_TYPES):
        return quantize.name
    return quantize if isinstance(quantize, str) else repr(quantize)


def student_grid(model_dir: Path | None) -> dict[str, Any] | None:
    """The 4-bit grid a distilled student was saved on (its mlcompress.json's ``on_grid``), else None."""
    from mlcompress.artifacts import read_provenance

    record = read_provenance(model_dir) if model_dir is not None else None
    if not record or record.get("stage") not in STUDENT_STAGES:
        return None
    grid = (record.get("parameters") or {}).get("on_grid")
    known = isinstance(grid, dict) and grid.get("scheme") == Int4WeightsConfig.name
    return grid if known and all(isinstance(grid.get(k), int) for k in ("block_size", "embedding_block_size")) else None


def resolve_auto(quantize: str | QuantConfig, model_dir: Path | None, format: str = "onnx") -> str | QuantConfig:
    """``auto`` as the scheme the model gets by default: int4-weights on its grid for a student saved on one,
    int8-weights for any other; a TensorRT engine fp16 (TensorRT builds none of the weight-only schemes, and fp16
    needs no calibration text). Any other value is returned as given."""
    if not (isinstance(quantize, str) and quantize == AUTO):
        return quantize
    if format == "tensorrt":
        return "fp16"
    grid = student_grid(model_dir)
    return Int4WeightsConfig(block_size=grid["block_size"]) if grid else DEFAULT


def embedding_block(quantize: str | QuantConfig, model_dir: Path | None, block_size: int | None) -> int:
    """The embedding tables' block size: as given; else a grid student's own (its tables sit on it), else 32."""
    if block_size is not None:
        return block_size
    grid = student_grid(model_dir)
    return grid["embedding_block_size"] if grid else EMBEDDING_BLOCK


def quantization_config(quantize: str | QuantConfig, *, per_channel: bool = True, reduce_range: bool | None = None,
                        calibration: str = "minmax", int4_block_size: int | None = None) -> QuantConfig:
    """export()'s ``quantize`` and its scheme keywords as that scheme's config (a ready-made config is kept as given);
    ``int4_block_size`` None is the scheme's own default (int4: 128, int4-weights: 32).

    An unknown scheme is refused, and so is an unknown ``calibration`` whatever the scheme (as export() always did)."""
    if isinstance(quantize, SCHEME_TYPES):
        check_calibration(calibration)
        return quantize
    if not isinstance(quantize, str) or quantize not in QUANTIZE_CHOICES:
        raise InputError(f"unknown quantisation {quantize!r}", f"choose one of {', '.join(QUANTIZE_CHOICES)}")
    check_calibration(calibration)
    if quantize == "int8-dynamic":
        return Int8DynamicConfig(per_channel=per_channel, reduce_range=reduce_range)
    if quantize == "int8-static":
        return Int8StaticConfig(per_channel=per_channel, reduce_range=reduce_range, calibration=calibration)
    if quantize in ("int4", "int4-weights"):
        return SCHEMES[quantize]() if int4_block_size is None else SCHEMES[quantize](block_size=int4_block_size)
    return SCHEMES[quantize]()


@dataclass(frozen=True)
class EmbeddingConfig:
    """The embedding tables' own quantisation: 4-bit blocks of ``block_size`` (GatherBlockQuantized); ``quantize``
    None means on with the int8 and int4 schemes. Never with fp16."""

    quantize: bool | None = None
    block_size: int = 32

    def enabled(self, scheme: QuantConfig) -> bool:
        """Whether the tables are quantised beside ``scheme``."""
        on = scheme.name in EMBEDDING_SCHEMES if self.quantize is None else self.quantize
        return bool(on) and scheme.name != "fp16"


@dataclass(frozen=True)
class ChecksConfig:
    """The target-language text an export is checked on and its gates.

    Text, split across the languages and read in this order: ``calibration_texts`` (static int8's calibration and
    --max-drop's ranking), ``parity_texts`` (the parity check against PyTorch), ``accuracy_texts`` (--max-drop's
    held-out set). Gates: ``min_cosine`` / ``min_agreement`` (None: the scheme's defaults), ``max_drop`` (keep the
    most sensitive operators float until the drop against the float graph is within it), ``force`` (write a
    failing export anyway, marked forced)."""

    parity_texts: int = 32
    calibration_texts: int = 64
    accuracy_texts: int = 128
    min_cosine: float | None = None
    min_agreement: float | None = None
    max_drop: float | None = None
    force: bool = False

    def check_max_drop(self, format: str, scheme: QuantConfig) -> None:
        """Refuse --max-drop where its search cannot steer: another format, a scheme with no weight operators to keep
        float, or a target outside (0, 1)."""
        if self.max_drop is not None and (scheme.name not in QUANTISED_OPS or format != "onnx"
                                          or not 0 < self.max_drop < 1):
            raise InputError(f"--max-drop {self.max_drop} with --format {format} --quantize {scheme.name}",
                             "use --max-drop between 0 and 1 (e.g. 0.005) with --format onnx and int8-dynamic, "
                             "int8-static, int8-weights, int4 or int4-weights")


@dataclass(frozen=True)
class OutputsConfig:
    """What an export writes: ``format`` (onnx, tensorrt, bnb), an edge ``bundle``, and a bundle's other forms of
    the ONNX graph (``ort``: model.ort and its operator config; ``tokenizer_in_graph``: model_with_tokenizer.onnx);
    and the work on the way: ORT's graph ``optimize``-ation, ``measure_latency`` on this CPU. An unknown format is
    refused here; the forms against format and bundle by `EncoderOptions` (decoders refuse them all, by name)."""

    format: str = "onnx"
    bundle: bool = False
    ort: bool = False
    tokenizer_in_graph: bool = False
    optimize: bool = True
    measure_latency: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"unknown format {self.format!r}", f"choose one of {', '.join(FORMATS)}")

    def check_forms(self) -> None:
        """Refuse --ort and --tokenizer-in-graph (forms of a bundle's ONNX graph) without --bundle or with another
        format."""
        for flag, given, what in (("--ort", self.ort, "the .ort model and its operator config go"),
                                  ("--tokenizer-in-graph", self.tokenizer_in_graph, "the model with its tokenizer inside goes")):
            if given and self.format != "onnx":
                raise InputError(f"{flag} with --format {self.format}: that form is built from an ONNX graph",
                                 f"use {flag} with --format onnx --bundle")
            if given and not self.bundle:
                raise InputError(f"{flag} without --bundle: {what} into an edge bundle",
                                 "add --bundle (OUT a directory or a .tar.gz)")


@dataclass(frozen=True)
class EncoderOptions:
    """Everything the encoder exporter is asked to do: the scheme, the embedding tables, the checks and the outputs;
    built after its parts, it refuses the combinations they cannot make (--max-drop against the scheme and format,
    then a bundle's other forms without a bundle or ONNX), in the order export() always checked them."""

    quantization: QuantConfig
    embeddings: EmbeddingConfig
    checks: ChecksConfig
    outputs: OutputsConfig

    def __post_init__(self) -> None:
        self.checks.check_max_drop(self.outputs.format, self.quantization)
        self.outputs.check_forms()


@dataclass(frozen=True)
class DecoderQuantConfig:
    """A decoder graph's quantisation (`decoder_quantize`), LM head and embedding included: ``quantize`` none, int8
    or int4 (4-bit MatMulNBits, block 32); int8 by ``int8_method``: nbits (8-bit MatMulNBits), dynamic (ORT's dynamic
    int8) or weights (int8 weights, Cast and Mul folded at load)."""

    quantize: str = "none"
    int8_method: str = "nbits"

    def __post_init__(self) -> None:
        if self.quantize not in DECODER_QUANTIZE:
            raise InputError(f"unknown decoder quantisation {self.quantize!r}", f"choose one of {', '.join(DECODER_QUANTIZE)}")
        if self.int8_method not in INT8_METHODS:
            raise InputError(f"unknown int8 method {self.int8_method!r}", f"choose one of {', '.join(INT8_METHODS)}")

    @property
    def dtype(self) -> str:
        """The transformers.js dtype name of the graph (fp32, q8, q4)."""
        return DTYPE[self.quantize]


@dataclass(frozen=True)
class DecoderParityConfig:
    """The decoder's fp32 gate: logits allclose to PyTorch's (``atol``, ``rtol``), with and without the cache, and
    greedy decoding identical for ``new_tokens`` tokens."""

    new_tokens: int = 24
    atol: float = 1e-4
    rtol: float = 1e-4

    def __post_init__(self) -> None:
        if self.new_tokens < 1 or not self.atol > 0 or not self.rtol >= 0:
            raise InputError(f"new_tokens {self.new_tokens} / atol {self.atol} / rtol {self.rtol}",
                             "new_tokens >= 1, atol > 0, rtol >= 0")
