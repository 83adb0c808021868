"""Tiny encoder-decoders of the three families the seq2seq export supports, with real-format tokenizers trained here on
real text (random weights, 2 layers each side):

- ``mt5``: tests/tiny_models.py's mT5 (SentencePiece Unigram, untied head, rows padded to a multiple of 64);
- ``mbart``: tests/tiny_models.py's mBART (``de_DE`` ... codes, random ``final_logits_bias``, forced_bos = de_DE);
- ``nllb``: NLLB-200 in miniature: ``M2M100ForConditionalGeneration`` (scaled embeddings, sinusoidal positions, tied
  head) with a Unigram tokenizer whose language codes are NLLB's (``eng_Latn``, ``deu_Latn``, ``rus_Cyrl``; no French:
  a language "trimmed away"), the source written ``eng_Latn tokens </s>`` as NLLB's tokenizer does; no forced BOS in
  its generation config (the target language is chosen per call, as with the real model).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, processors

from tiny_models import _randomize_vocab_biases, _save, _unigram, _wrap, build_mbart, build_mt5

FAMILIES = ("mt5", "mbart", "nllb")
NLLB_CODES = ("eng_Latn", "deu_Latn", "rus_Cyrl")


def build_nllb(out: Path, lines: list[str]) -> Path:
    """NLLB-style M2M100 with its language codes (see the module's doc), saved to ``out``."""
    from transformers import GenerationConfig, M2M100Config, M2M100ForConditionalGeneration

    tok = _unigram(lines)
    tok.add_special_tokens([AddedToken(code, special=True) for code in NLLB_CODES])
    eng = tok.token_to_id("eng_Latn")
    tok.post_processor = processors.TemplateProcessing(single="eng_Latn $A </s>", pair="eng_Latn $A $B </s>",
                                                       special_tokens=[("eng_Latn", eng), ("</s>", 2)])
    fast = _wrap(tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                 pad_token="<pad>", extra_special_tokens=list(NLLB_CODES))
    torch.manual_seed(0)
    config = M2M100Config(vocab_size=len(fast), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                          scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                          dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = M2M100ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, decoder_start_token_id=2,
                                               max_length=64)
    _randomize_vocab_biases(model, len(fast))
    _save(model, fast, out)
    return out


def build(family: str, out: Path, lines: list[str]) -> Path:
    """Write ``family``'s tiny encoder-decoder with its tokenizer to ``out`` and return ``out``."""
    if family == "nllb":
        return build_nllb(out, lines)
    return (build_mt5 if family == "mt5" else build_mbart)(out, lines).path
