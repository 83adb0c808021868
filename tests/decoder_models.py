"""Tiny decoder-only models of the four families the generative export supports, with real-format tokenizers trained
here on real text (random weights, 2 layers, a few hundred tokens).

- ``gemma3``: Gemma-style byte-fallback BPE (``▁`` for spaces, ``<0x00>``..``<0xFF>`` byte pieces, ``<bos>`` added),
  ``Gemma3ForCausalLM`` with a sliding layer (window 8) and a global one, a tied head, eos ids ``[<eos>, <end_of_turn>]``.
- ``qwen2``: byte-level BPE with ChatML specials, ``Qwen2ForCausalLM`` with a tied head and grouped KV heads;
- ``qwen3``: the same tokenizer, ``Qwen3ForCausalLM`` (RMS norms on queries and keys, its own head_dim).
- ``llama``: byte-level BPE with ``<|begin_of_text|>`` added, ``LlamaForCausalLM`` with an untied head.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

FAMILIES = ("gemma3", "qwen2", "qwen3", "llama")
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
                  "m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}"
                  "<start_of_turn>model\n{% endif %}")
# Qwen 2's pre-tokenizer split (transformers 5 rebuilds a Qwen2 tokenizer with it, whatever tokenizer.json says)
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
         r"\s+(?!\S)|\s+")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _fast(tok: Tokenizer, template: str, **specials: str):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    fast.chat_template = template
    return fast


def byte_fallback_bpe(lines: list[str], specials: list[str], vocab_size: int = 300, limit_alphabet: int = 60) -> Tokenizer:
    """SentencePiece-style BPE with byte fallback (Gemma, Llama 2), trained on ``lines``: ``specials`` first (added as
    special tokens), 256 byte pieces, then the merges; <bos> prepended."""
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=vocab_size, limit_alphabet=limit_alphabet,
                                                               show_progress=False))
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return tok


def gemma_tokenizer(lines: list[str]):
    """Gemma 3's tokenizer format in miniature: byte-fallback BPE with its specials and turn template."""
    tok = byte_fallback_bpe(lines, ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"])
    return _fast(tok, GEMMA_TEMPLATE, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def byte_level_tokenizer(lines: list[str], specials: list[str], bos: str | None, template: str, **names: str):
    """Qwen / Llama 3-style byte-level BPE (NFC, regex split, bytes) trained on ``lines``, ``specials`` after the merges."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return _fast(tok, template, **names)


def build(family: str, out: Path, lines: list[str]) -> Path:
    """Write ``family``'s tiny model with its tokenizer to ``out`` (save_pretrained) and return ``out``."""
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig, LlamaConfig, LlamaForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

    common = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "max_position_embeddings": 256}
    if family == "gemma3":
        fast = gemma_tokenizer(lines)
        ids = fast.convert_tokens_to_ids
        config = Gemma3TextConfig(vocab_size=len(fast), num_key_value_heads=1, head_dim=16, sliding_window=8,
                                  layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
                                  pad_token_id=0, eos_token_id=1, bos_token_id=2, **common)
        cls, eos = Gemma3ForCausalLM, [1, ids("<end_of_turn>")]
    elif family in ("qwen2", "qwen3"):
        fast = byte_level_tokenizer(lines, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, CHATML,
                                    eos_token="<|im_end|>", pad_token="<|endoftext|>")
        ids = fast.convert_tokens_to_ids
        qwen3 = {"head_dim": 16} if family == "qwen3" else {}  # Qwen 3: its own head_dim, q/k RMS norms
        config = (Qwen3Config if qwen3 else Qwen2Config)(vocab_size=len(fast), num_key_value_heads=2, tie_word_embeddings=True,
                                                         eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
                                                         **common, **qwen3)
        cls, eos = (Qwen3ForCausalLM if qwen3 else Qwen2ForCausalLM), [ids("<|im_end|>"), ids("<|endoftext|>")]
    else:
        fast = byte_level_tokenizer(lines, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], "<|begin_of_text|>",
                                    CHATML.replace("<|im_start|>", "<|begin_of_text|>").replace("<|im_end|>", "<|eot_id|>"),
                                    bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
        ids = fast.convert_tokens_to_ids
        config = LlamaConfig(vocab_size=len(fast), num_key_value_heads=2, tie_word_embeddings=False,
                             bos_token_id=ids("<|begin_of_text|>"), eos_token_id=ids("<|end_of_text|>"), **common)
        cls, eos = LlamaForCausalLM, ids("<|end_of_text|>")
    torch.manual_seed(0)
    model = cls(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=eos,
                                               pad_token_id=config.pad_token_id)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out
