"""One small description per decoder-only family (optimum's pattern): which model types it covers, whether its graph
takes ``position_ids``, and the cache layout read from a model's config. The export, quantisation and runtime code
reads these descriptions; it has no per-family branches.

Imports only the standard library and `mlcompress.errors` (the torch-free runtime reads the same layout from a manifest).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mlcompress.errors import UnsupportedModelError

FULL, SLIDING = "full_attention", "sliding_attention"


@dataclass(frozen=True)
class Family:
    """A family of decoder-only models exported the same way."""

    name: str
    model_types: tuple[str, ...]
    # True: the graph takes position_ids [batch, sequence] (0-based, from the attention mask), as optimum's
    # TextDecoderWithPositionIdsOnnxConfig and transformers.js feed them. False: the graph computes them from the
    # attention mask itself (optimum gives Gemma no position_ids input; transformers.js would feed Gemma 3 1-based ones).
    position_ids: bool


FAMILIES = (
    Family("gemma3", ("gemma3_text",), position_ids=False),
    Family("qwen2", ("qwen2",), position_ids=True),
    Family("qwen3", ("qwen3",), position_ids=True),  # Qwen 2 with RMS norms on queries and keys
    Family("llama", ("llama",), position_ids=True),
)
SUPPORTED = tuple(t for f in FAMILIES for t in f.model_types)


@dataclass(frozen=True)
class DecoderSpec:
    """The cache layout and I/O of one model's export: what the graph, the manifest and the runtime agree on."""

    family: str
    model_type: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    layer_types: tuple[str, ...]  # FULL or SLIDING per layer
    sliding_window: int | None
    tied: bool
    position_ids: bool
    max_length: int

    @property
    def sliding(self) -> bool:
        """True when some layer attends only within the sliding window."""
        return SLIDING in self.layer_types

    def input_names(self) -> list[str]:
        """The graph's inputs, in order (optimum / transformers.js names)."""
        head = ["input_ids", "attention_mask"] + (["position_ids"] if self.position_ids else [])
        return head + [f"past_key_values.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    def output_names(self) -> list[str]:
        """The graph's outputs, in order."""
        return ["logits"] + [f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    def io(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The manifest's inputs and outputs with their shapes (names of dynamic axes as optimum writes them)."""
        total = "past_sequence_length + sequence_length"
        cache = ["batch_size", self.num_kv_heads, "past_sequence_length", self.head_dim]
        ins = [{"name": "input_ids", "dtype": "int64", "shape": ["batch_size", "sequence_length"]},
               {"name": "attention_mask", "dtype": "int64", "shape": ["batch_size", total]}]
        if self.position_ids:
            ins.append({"name": "position_ids", "dtype": "int64", "shape": ["batch_size", "sequence_length"]})
        ins += [{"name": n, "dtype": "float32", "shape": cache} for n in self.input_names()[len(ins):]]
        outs = [{"name": "logits", "dtype": "float32", "shape": ["batch_size", "sequence_length", self.vocab_size]}]
        outs += [{"name": n, "dtype": "float32", "shape": [*cache[:2], total, cache[3]]} for n in self.output_names()[1:]]
        return ins, outs

    def as_dict(self) -> dict[str, Any]:
        """The manifest's ``decoder`` entry (the runtime rebuilds the spec from it)."""
        d = asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecoderSpec:
        """The spec a manifest's ``decoder`` entry describes."""
        fields = {k: d[k] for k in cls.__dataclass_fields__}
        fields["layer_types"] = tuple(fields["layer_types"])
        return cls(**fields)


def family_of(model_type: str) -> Family:
    """The family of ``model_type``, or a clear error naming the supported ones."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedModelError(
        f"model type {model_type!r} is not a decoder-only family the generative export supports",
        f"supported: {', '.join(SUPPORTED)}; encoders and seq2seq models go through `mlcompress export` "
        "(mlcompress.export.export)")


def describe(config: Any) -> DecoderSpec:
    """The export layout of a transformers config (a decoder-only causal LM of a supported family)."""
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{config.model_type} is an encoder-decoder model, not a decoder-only one",
                                    "export it with `mlcompress export`; the generative export takes Gemma 3, Qwen 2 "
                                    "and Llama causal LMs")
    family = family_of(str(config.model_type))
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    types = tuple(getattr(config, "layer_types", None) or [FULL] * layers)[:layers]
    window = getattr(config, "sliding_window", None) if SLIDING in types else None
    return DecoderSpec(
        family=family.name, model_type=str(config.model_type), num_layers=layers,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads), head_dim=head_dim,
        vocab_size=int(config.vocab_size), layer_types=types, sliding_window=int(window) if window else None,
        tied=bool(getattr(config, "tie_word_embeddings", False)), position_ids=family.position_ids,
        max_length=int(getattr(config, "max_position_embeddings", 0) or 0))
