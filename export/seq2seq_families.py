"""One small description per encoder-decoder family (optimum's pattern, beside `decoder_families`): which model types it
covers and how its language-code tokens are spelled; and the layout of one model's export (`Seq2SeqSpec`), read from
its config, that the graphs, the manifest and the torch-free runtime agree on.

- ``t5``: T5 / mT5 (relative position bias, untied head in mT5; no language codes);
- ``mbart``: mBART / mBART-50 (``de_DE`` codes, ``final_logits_bias``, ``forced_bos_token_id``);
- ``m2m100``: M2M100 (``__de__`` codes) and NLLB-200 (``deu_Latn`` codes; model type ``m2m_100``): scaled embeddings,
  sinusoidal positions.

Imports only the standard library and mlcompress core (the runtime reads the same layout from a manifest).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from mlcompress.errors import InputError, LanguageError, UnsupportedModelError
from mlcompress.languages import normalize_language

# language-code token spellings: mBART-50 "de_DE", NLLB-200 "deu_Latn", M2M100 "__de__" (group 1: the language)
MBART_CODE = r"([a-z]{2})_[A-Z]{2}"
NLLB_CODE = r"([a-z]{3})_[A-Z][a-z]{3}"
M2M_CODE = r"__([a-z]{2,3})__"


@dataclass(frozen=True)
class Family:
    """A family of encoder-decoder models exported the same way."""

    name: str
    model_types: tuple[str, ...]
    code_patterns: tuple[str, ...]  # regexes of its language-code tokens (none: the model is not told a language)
    cross_attention: str  # decoder layer {i}'s cross-attention module (in the ...ForConditionalGeneration model)
    cross_projections: tuple[str, str]  # its key and value projections (nn.Linear, applied to the encoder output)


_BART_CROSS = "model.decoder.layers.{i}.encoder_attn"
FAMILIES = (
    Family("t5", ("t5", "mt5"), (), "decoder.block.{i}.layer.1.EncDecAttention", ("k", "v")),
    Family("mbart", ("mbart",), (MBART_CODE,), _BART_CROSS, ("k_proj", "v_proj")),
    Family("m2m100", ("m2m_100",), (NLLB_CODE, M2M_CODE), _BART_CROSS, ("k_proj", "v_proj")),
)
SUPPORTED = tuple(t for f in FAMILIES for t in f.model_types)


@dataclass(frozen=True)
class Seq2SeqSpec:
    """The I/O and cache layout of one encoder-decoder export (optimum / transformers.js names)."""

    family: str
    model_type: str
    num_layers: int  # decoder layers: one self-attention and one cross-attention cache each
    num_heads: int
    head_dim: int
    hidden_size: int  # the encoder's output width (encoder_hidden_states)
    vocab_size: int
    decoder_start_token_id: int
    max_length: int  # learned/sinusoidal position limit (0: relative positions, no limit)

    def past_names(self, prefix: str = "past_key_values") -> list[str]:
        """Cache names in optimum's order: per layer decoder key, value, then encoder key, value."""
        return [f"{prefix}.{i}.{part}.{kv}" for i in range(self.num_layers) for part in ("decoder", "encoder")
                for kv in ("key", "value")]

    def decoder_inputs(self, past: bool = True) -> list[str]:
        """The decoder graph's inputs in order (the merged graph adds ``use_cache_branch`` last)."""
        return ["input_ids", "encoder_attention_mask", "encoder_hidden_states"] + (self.past_names() if past else [])

    def decoder_outputs(self, encoder_present: bool = True) -> list[str]:
        """The decoder graph's outputs in order: logits, then present.* (the with-past graph has no encoder ones)."""
        names = self.past_names("present")
        return ["logits"] + (names if encoder_present else [n for n in names if ".decoder." in n])

    def io(self) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        """The manifest's inputs and outputs of the encoder and the merged decoder, with axis names as optimum's."""
        def t(name: str, dtype: str, shape: list[Any]) -> dict[str, Any]:
            return {"name": name, "dtype": dtype, "shape": shape}

        enc = ["batch_size", "encoder_sequence_length"]
        encoder = ([t("input_ids", "int64", enc), t("attention_mask", "int64", enc)],
                   [t("last_hidden_state", "float32", [*enc, self.hidden_size])])
        cache = {"decoder": ["batch_size", self.num_heads, "past_decoder_sequence_length", self.head_dim],
                 "encoder": ["batch_size", self.num_heads, "encoder_sequence_length", self.head_dim]}
        present = {"decoder": ["batch_size", self.num_heads, "past_decoder_sequence_length + decoder_sequence_length",
                               self.head_dim], "encoder": cache["encoder"]}
        ins = [t("input_ids", "int64", ["batch_size", "decoder_sequence_length"]), t("encoder_attention_mask", "int64", enc),
               t("encoder_hidden_states", "float32", [*enc, self.hidden_size])]
        ins += [t(n, "float32", cache[n.split(".")[2]]) for n in self.past_names()]
        ins.append(t("use_cache_branch", "bool", [1]))
        outs = [t("logits", "float32", ["batch_size", "decoder_sequence_length", self.vocab_size])]
        outs += [t(n, "float32", present[n.split(".")[2]]) for n in self.past_names("present")]
        return {"encoder": encoder, "decoder": (ins, outs)}

    def as_dict(self) -> dict[str, Any]:
        """The manifest's ``seq2seq.spec`` entry."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Seq2SeqSpec:
        """The spec a manifest's ``seq2seq.spec`` entry describes."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def family_of(model_type: str) -> Family:
    """The family of ``model_type``, or a clear error naming the supported ones."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedModelError(f"model type {model_type!r} is not an encoder-decoder family the export supports",
                                f"supported: {', '.join(SUPPORTED)}")


def describe(config: Any) -> Seq2SeqSpec:
    """The export layout of a transformers encoder-decoder config of a supported family."""
    if not getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{config.model_type} is not an encoder-decoder model",
                                    "decoder-only LMs go through the decoder export (export_decoder)")
    family = family_of(str(config.model_type))
    if family.name == "t5":
        layers, heads, hidden = config.num_decoder_layers or config.num_layers, config.num_heads, config.d_model
        head_dim, limit = config.d_kv, 0
    else:
        layers, heads, hidden = config.decoder_layers, config.decoder_attention_heads, config.d_model
        head_dim, limit = config.d_model // config.decoder_attention_heads, config.max_position_embeddings
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        raise UnsupportedModelError(f"{config.model_type}: config.json has no decoder_start_token_id",
                                    "set it in config.json (T5: the pad id; mBART / M2M100: the eos id)")
    return Seq2SeqSpec(family=family.name, model_type=str(config.model_type), num_layers=int(layers),
                       num_heads=int(heads), head_dim=int(head_dim), hidden_size=int(hidden),
                       vocab_size=int(config.vocab_size), decoder_start_token_id=int(start), max_length=int(limit or 0))


def language_codes(family: str, tokens: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The language-code tokens among ``tokens`` (token -> id: the tokenizer's added tokens) by language:
    ``{"de": {"token": "de_DE", "id": 7}}``; a code of a language mlcompress does not know, or a language's second
    code (NLLB's zho_Hant after zho_Hans), stays under its own name."""
    patterns = next(f.code_patterns for f in FAMILIES if f.name == family)
    found: dict[str, dict[str, Any]] = {}
    for token, idx in sorted(tokens.items(), key=lambda kv: kv[1]):
        match = next((m for p in patterns if (m := re.fullmatch(p, token))), None)
        if match is None:
            continue
        try:
            language = normalize_language(match.group(1))
        except LanguageError:
            language = token
        found[language if language not in found else token] = {"token": token, "id": int(idx)}  # zho_Hant: own name
    return found


def target_token(target: str, codes: dict[str, dict[str, Any]]) -> int:
    """The id of the language-code token that starts a translation into ``target`` (de, deu, de_DE or deu_Latn)."""
    if not codes:
        raise InputError(f"this model has no language-code tokens, so it cannot be told to write {target!r}",
                         "leave out the target language (T5 / mT5 take the task in the input text)")
    direct = next((c["id"] for c in codes.values() if c["token"] == target), None)
    if direct is not None:
        return int(direct)
    kept = ", ".join(f"{lang} ({c['token']})" for lang, c in codes.items())
    try:
        language = normalize_language(target)
    except LanguageError:
        raise InputError(f"unknown target language {target!r}", f"choose one of this model's languages: {kept}") from None
    if language not in codes:
        raise InputError(f"this model cannot write {language!r}: its language code is not in the vocabulary (trimmed "
                         "away, or never there)", f"choose one of this model's languages: {kept}")
    return int(codes[language]["id"])
