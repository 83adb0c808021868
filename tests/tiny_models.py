"""Tiny, seeded models of the five multilingual families `trim` supports, with real tokenizers trained on real text.

Each builder writes a `save_pretrained` directory: a tokenizer trained here with the `tokenizers` trainers
(or, for mT5, a real SentencePiece model converted by transformers) and a randomly initialised 2-layer model
of the family's class whose vocabulary-sized biases are random too (so trimming them is visible in the outputs).

- ``bert``:  mBERT-style WordPiece (cased, ``vocab.txt`` beside ``tokenizer.json``), ``BertForMaskedLM``.
- ``xlmr``:  XLM-R-style Unigram (Metaspace, ``<s> $A </s>``, specials ``<s> <pad> </s> <unk>`` first, ``<mask>`` last),
             ``XLMRobertaForMaskedLM`` whose embedding matrix has more rows than the tokenizer has tokens
             (as multilingual-e5: 250037 rows for 250002 tokens).
- ``mt5``:   a SentencePiece Unigram model (``spiece.model``) converted by ``T5Tokenizer``, ``MT5ForConditionalGeneration``
             with an untied ``lm_head`` and rows padded to a multiple of 64 (mT5: 250112 rows for 250100 pieces).
- ``mbart``: Unigram with language-code special tokens (``de_DE``, ``en_XX`` ...) and ``<mask>`` after the pieces,
             ``MBartForConditionalGeneration`` with a random ``final_logits_bias`` and ``forced_bos_token_id`` = ``de_DE``.
- ``gpt2``:  byte-level BPE (``vocab.json``/``merges.txt`` beside ``tokenizer.json``), ``<|endoftext|>`` as the last id,
             ``GPT2LMHeadModel`` with a tied head.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

FAMILIES = ("bert", "xlmr", "mt5", "mbart", "gpt2")
VOCAB_SIZE = 2000
# A folder (conftest sets it for the run) where trained tokenizers are kept, so that the workers and processes of
# one run train each only once (the tiny XLM-R's Unigram takes about 20 s on a 2-core CPU).
TOKENIZER_CACHE_ENV = "MLCOMPRESS_TEST_TOKENIZERS"


def _trained(kind: str, lines: list[str], train: Callable[[], bytes]) -> bytes:
    """``train()``'s bytes for ``kind`` on ``lines``, from the run's tokenizer cache when it has them."""
    folder = os.environ.get(TOKENIZER_CACHE_ENV)
    if not folder:
        return train()
    key = hashlib.sha256(json.dumps([kind, VOCAB_SIZE, lines]).encode()).hexdigest()
    entry = Path(folder) / f"{kind}-{key}"
    if entry.is_file():
        return entry.read_bytes()
    data = train()
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    os.replace(tmp, entry)
    return data
MBART_CODES = ("ar_AR", "de_DE", "en_XX", "ro_RO", "ru_RU")
TRAIN_LANGS = {"en": 500, "de": 500, "el": 150, "ru": 150}  # lines of mono/<lang>.txt.gz (from the start)


@dataclass(frozen=True)
class TinyModel:
    """A built model directory and how to load it with plain transformers."""

    family: str
    path: Path
    auto_class: str  # AutoModelForMaskedLM, AutoModelForSeq2SeqLM or AutoModelForCausalLM
    tokens: int  # len(tokenizer)
    rows: int  # rows of the input embedding matrix (>= tokens)

    @property
    def kind(self) -> str:
        return {"AutoModelForMaskedLM": "mlm", "AutoModelForSeq2SeqLM": "seq2seq", "AutoModelForCausalLM": "causal"}[self.auto_class]


def training_lines(data_dir: Path) -> list[str]:
    """English and German paragraphs plus some Greek and Russian, so that an en,de trim has tokens to drop."""
    from conftest import read_lines

    return [line for lang, n in TRAIN_LANGS.items() for line in read_lines(data_dir / "mono" / f"{lang}.txt.gz", n)]


def _randomize_vocab_biases(model: torch.nn.Module, rows: int) -> None:
    """MLM-head biases and ``final_logits_bias`` start at zero; make them random so that a wrong trim shows."""
    gen = torch.Generator().manual_seed(1)
    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            for attr in ("bias", "final_logits_bias"):
                t = getattr(module, attr, None)
                if isinstance(t, torch.Tensor) and t.shape[-1] == rows and id(t) not in seen:
                    seen.add(id(t))
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.5)


def _save(model: torch.nn.Module, tokenizer, out: Path) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _wrap(tok: Tokenizer, **specials):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


# --------------------------------------------------------------------------------------------- BERT / WordPiece
def build_bert(out: Path, lines: list[str]) -> TinyModel:
    from transformers import BertConfig, BertForMaskedLM

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = _wrap(tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=512, pad_token_id=0))
    _randomize_vocab_biases(model, len(fast))
    _save(model, fast, out)
    tok.model.save(str(out))  # vocab.txt, as mBERT's repository has it
    return TinyModel("bert", out, "AutoModelForMaskedLM", len(fast), len(fast))


# ---------------------------------------------------------------------------------- Unigram (XLM-R and mBART)
_UNIGRAM_CACHE: dict[int, str] = {}


def _unigram(lines: list[str]) -> Tokenizer:
    """The XLM-R pipeline: NFKC + collapsed spaces, Metaspace, specials <s> <pad> </s> <unk> at ids 0-3.

    Trained once per process and text (XLM-R and mBART share it, as mBART-cc25 shares XLM-R's model).
    """
    key = hash(tuple(lines))
    if key not in _UNIGRAM_CACHE:
        _UNIGRAM_CACHE[key] = _trained("unigram", lines, lambda: _train_unigram(lines).to_str().encode()).decode()
    return Tokenizer.from_str(_UNIGRAM_CACHE[key])


def _train_unigram(lines: list[str]) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      max_piece_length=12, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


def build_xlmr(out: Path, lines: list[str], extra_rows: int = 35) -> TinyModel:
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    tok = _unigram(lines)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])  # last id, as in XLM-R
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = _wrap(tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                 pad_token="<pad>", mask_token="<mask>")
    rows = len(fast) + extra_rows
    torch.manual_seed(0)
    model = XLMRobertaForMaskedLM(XLMRobertaConfig(
        vocab_size=rows, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2))
    _randomize_vocab_biases(model, rows)
    _save(model, fast, out)
    return TinyModel("xlmr", out, "AutoModelForMaskedLM", len(fast), rows)


def build_mbart(out: Path, lines: list[str]) -> TinyModel:
    from transformers import GenerationConfig, MBartConfig, MBartForConditionalGeneration

    tok = _unigram(lines)
    tok.add_special_tokens([AddedToken(code, special=True) for code in MBART_CODES])
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    tok.post_processor = processors.TemplateProcessing(  # mBART source side: tokens </s> src_lang_code
        single="$A </s> en_XX", pair="$A $B </s> en_XX",
        special_tokens=[("</s>", 2), ("en_XX", tok.token_to_id("en_XX"))])
    fast = _wrap(tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                 pad_token="<pad>", mask_token="<mask>", extra_special_tokens=list(MBART_CODES))
    de = fast.convert_tokens_to_ids("de_DE")
    torch.manual_seed(0)
    config = MBartConfig(
        vocab_size=len(fast), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512,
        scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        forced_eos_token_id=2)
    model = MBartForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, decoder_start_token_id=2, forced_bos_token_id=de,
        forced_eos_token_id=2, max_length=64)
    _randomize_vocab_biases(model, len(fast))
    _save(model, fast, out)
    return TinyModel("mbart", out, "AutoModelForSeq2SeqLM", len(fast), len(fast))


# ------------------------------------------------------------------------------------ mT5 / SentencePiece
def train_sentencepiece(lines: list[str]) -> bytes:
    """A real SentencePiece Unigram model with T5's ids: <pad>=0, </s>=1, <unk>=2, no <s>."""
    return _trained("sentencepiece", lines, lambda: _train_sentencepiece(lines))


def _train_sentencepiece(lines: list[str]) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=VOCAB_SIZE, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=0.9995, max_sentence_length=1 << 15,
        num_threads=2, minloglevel=2)
    return buf.getvalue()


def build_mt5(out: Path, lines: list[str], multiple: int = 64) -> TinyModel:
    from transformers import MT5Config, MT5ForConditionalGeneration, T5Tokenizer

    out.mkdir(parents=True, exist_ok=True)
    (out / "spiece.model").write_bytes(train_sentencepiece(lines))
    fast = T5Tokenizer.from_pretrained(out, extra_ids=0)  # transformers converts the .model to a tokenizers Unigram
    rows = -(-len(fast) // multiple) * multiple
    torch.manual_seed(0)
    model = MT5ForConditionalGeneration(MT5Config(
        vocab_size=rows, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
        relative_attention_num_buckets=8, tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    # mT5's lm_head is its own matrix (transformers 5 ties it at construction; the checkpoint decides at load)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(rows, 32, generator=torch.Generator().manual_seed(2)))
    assert model.lm_head.weight is not model.shared.weight
    _save(model, fast, out)
    return TinyModel("mt5", out, "AutoModelForSeq2SeqLM", len(fast), rows)


# --------------------------------------------------------------------------------------- GPT-2 / byte-level BPE
def build_gpt2(out: Path, lines: list[str]) -> TinyModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])  # last id, as in GPT-2
    fast = _wrap(tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    eot = fast.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(fast), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                                       bos_token_id=eot, eos_token_id=eot))
    _save(model, fast, out)
    tok.model.save(str(out))  # vocab.json + merges.txt, as GPT-2's repository has them
    return TinyModel("gpt2", out, "AutoModelForCausalLM", len(fast), len(fast))


BUILDERS = {"bert": build_bert, "xlmr": build_xlmr, "mt5": build_mt5, "mbart": build_mbart, "gpt2": build_gpt2}


def build(family: str, out: Path, lines: list[str]) -> TinyModel:
    """Build ``family``'s tiny model into ``out`` (a new or empty directory)."""
    return BUILDERS[family](out, lines)


def tokenizer_json(path: Path) -> dict:
    """The tokenizers-library JSON of a model directory."""
    return json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))


def build_bert_teacher(out: Path, lines: list[str], initializer_range: float = 0.02) -> Path:
    """A 4-layer BERT encoder (no dropout, so runs compare exactly) with a real WordPiece tokenizer, saved to ``out``."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tiny = build_bert(out.parent / f"{out.name}-tok", lines)
    tok = AutoTokenizer.from_pretrained(tiny.path)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                 intermediate_size=64, pad_token_id=0, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0, initializer_range=initializer_range))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
