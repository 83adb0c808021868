"""Trimming decoders for generation, on tiny decoders built here with real-format tokenizers trained on real text.

- ``gemma``: Gemma-style byte-fallback BPE (``▁`` for spaces, ``<0x00>``..``<0xFF>``) with ``<unusedN>`` placeholders,
  ``[multimodal]`` / ``<start_of_image>`` / ``<end_of_image>`` (non-special, as Gemma 3 writes them), ``<strong>``
  markup, a chat template; ``Gemma3ForCausalLM`` (tied head), eos ids ``[<eos>, <end_of_turn>, <unused3>]``.
- ``qwen``: Qwen-style byte-level BPE with ChatML, ``<|vision_start|>`` / ``<|image_pad|>`` / reserved specials;
  ``Qwen2ForCausalLM`` with an untied head biased to emit one Cyrillic token that the en/de corpora never use.

Checked: unused placeholders dropped by default and every named id kept (configs, generation config, tokenizer
config, chat template, corpus, --keep-token); the chat template gives the same text and remapped ids; any text stays
encodable (byte fallback and byte-level); ``generated=N`` keeps what the source emits; ``dropped_mass`` and
``greedy_identity`` see the cost of removing a token the model predicts.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

from conftest import read_lines
from decoder_models import byte_fallback_bpe
from mlcompress.errors import InputError
from mlcompress.vocab_trim import dropped_mass, dropped_masses, greedy_identity, kept_ids, trim

UNUSED = [f"<unused{i}>" for i in range(12)]
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
                  "m['role'] }}\n{% if m['role'] == 'tool' %}<unused2>{% endif %}{{ m['content'] }}<end_of_turn>\n"
                  "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>",
                 *(f"<|reserved_special_token_{i}|>" for i in range(4))]
HARD_TEXTS = ["🦜🧬 und 👍🏽 ok", "東京は日本の首都です。", "Η πρωτεύουσα της Ελλάδας", "Привет, мир!",
              "∮ E⋅da = Q, ﬁ ẞ 𓀀\u200b\ttab\n\nnew", "  leading and trailing  "]


@dataclass
class Tiny:
    path: Path
    tok: Any


def _train_text(data_dir: Path) -> list[str]:
    return [line for lang, n in (("en", 250), ("de", 250), ("el", 80), ("ru", 80))
            for line in read_lines(data_dir / "mono" / f"{lang}.txt.gz", n)]


def _gemma_tokenizer(lines: list[str]) -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE with byte fallback: specials and placeholders, 256 byte pieces, then merges."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *UNUSED[:6], "<start_of_turn>", "<end_of_turn>", *UNUSED[6:]]
    tok = byte_fallback_bpe(lines, specials, vocab_size=420, limit_alphabet=80)
    tok.add_tokens([AddedToken(s, special=False, normalized=False)
                    for s in ("[multimodal]", "<start_of_image>", "<end_of_image>", "<strong>", "</strong>")])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", extra_special_tokens=["<unused1>"])
    fast.chat_template = GEMMA_TEMPLATE
    return fast


def _qwen_tokenizer(lines: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=520, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def _save(model: torch.nn.Module, fast: PreTrainedTokenizerFast, out: Path, eos: list[int], pad: int, bos: int | None) -> Tiny:
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return Tiny(out, AutoTokenizer.from_pretrained(out))


def _cyrillic_token(fast: PreTrainedTokenizerFast, corpus_ids: set[int]) -> int:
    """A whole-word Cyrillic token (two letters or more) that the en/de corpora never use."""
    for tid in range(len(fast)):
        text = fast.decode([tid])
        if tid not in corpus_ids and len(text.strip()) >= 2 and all("\u0400" <= ch <= "\u04ff" for ch in text.strip()):
            return tid
    raise AssertionError("no Cyrillic token in the tiny vocabulary")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """en/de mono lines after the training lines; one German line writes the placeholder <unused5> literally."""
    root = tmp_path_factory.mktemp("gen-corpora")
    out = {}
    for lang in ("en", "de"):
        lines = read_lines(data_dir / "mono" / f"{lang}.txt.gz", 200, skip=600)
        if lang == "de":
            lines.append("Ein Platzhalter <unused5> steht hier.")
        out[lang] = root / f"{lang}.txt"
        out[lang].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Tiny:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    fast = _gemma_tokenizer(_train_text(data_dir))
    ids = fast.convert_tokens_to_ids
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256,
                              tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                              boi_token_id=ids("<unused4>"))  # a config naming a placeholder
    model = Gemma3ForCausalLM(config).eval()
    return _save(model, fast, tmp_path_factory.mktemp("gemma") / "src", [1, ids("<end_of_turn>"), ids("<unused3>")], 0, 2)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, corpora: dict[str, Path]) -> tuple[Tiny, int]:
    """The byte-level model, and the Cyrillic token its head is biased to emit (absent from the corpora)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fast = _qwen_tokenizer(_train_text(data_dir))
    ids = fast.convert_tokens_to_ids
    used = {i for path in corpora.values() for line in read_lines(path) for i in fast(line)["input_ids"]}
    target = _cyrillic_token(fast, used)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=False,
                         eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # every input carries +1 on dimension 0, which only the target's head row reads
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[target, 0] = 0.6
    tiny = _save(model, fast, tmp_path_factory.mktemp("qwen") / "src", [ids("<|im_end|>"), ids("<|endoftext|>")],
                 ids("<|endoftext|>"), None)
    return tiny, target


def _trim(src: Tiny, corpora: dict[str, Path], out: Path, **kwargs: Any) -> tuple[Any, Tiny, dict[int, int]]:
    result = trim(src.path, "en,de", corpora, out, **kwargs)
    old_to_new = {old: new for new, old in enumerate(kept_ids(out))}
    return result, Tiny(out, AutoTokenizer.from_pretrained(out)), old_to_new


@pytest.fixture(scope="module")
def gemma_trimmed(gemma: Tiny, corpora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Tiny, dict[int, int]]:
    return _trim(gemma, corpora, tmp_path_factory.mktemp("gemma-trim") / "out", keep_tokens=["<unused6>"])


# ------------------------------------------------------------------------------------ placeholders
def test_unused_placeholders_are_dropped_and_named_ones_kept(gemma: Tiny, gemma_trimmed: tuple[Any, Tiny, dict[int, int]],
                                                             corpora: dict[str, Path], tmp_path: Path) -> None:
    result, new, old_to_new = gemma_trimmed
    vocab = new.tok.get_vocab()
    # named: tokenizer config (extra special), chat template, generation config eos, config, corpus, --keep-token
    named = ["<unused1>", "<unused2>", "<unused3>", "<unused4>", "<unused5>", "<unused6>"]
    unnamed = [u for u in UNUSED if u not in named] + ["[multimodal]", "<start_of_image>", "<end_of_image>"]
    assert all(t in vocab for t in named + ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"])
    assert not [t for t in unnamed if t in vocab]
    assert "<strong>" in vocab and "</strong>" in vocab  # markup text tokens are no placeholders: kept as before
    assert result.specials_dropped == len(unnamed) and any("unused special" in n for n in result.notes)
    old = gemma.tok
    gen = GenerationConfig.from_pretrained(new.path)
    assert new.tok.convert_ids_to_tokens(gen.eos_token_id) == ["<eos>", "<end_of_turn>", "<unused3>"]
    assert new.tok.convert_ids_to_tokens(json.loads((new.path / "config.json").read_text())["boi_token_id"]) == "<unused4>"
    assert set(new.tok.added_tokens_encoder) == set(old.added_tokens_encoder) - set(unnamed)
    record = json.loads((new.path / "mlcompress.json").read_text())
    assert record["parameters"]["drop_unused_specials"] is True and record["metrics"]["specials_dropped"] == len(unnamed)
    # --keep-unused-specials: today's behaviour, every added token kept
    kept_all, new_all, _ = _trim(gemma, corpora, tmp_path / "all", drop_unused_specials=False)
    assert set(old.added_tokens_encoder) <= set(new_all.tok.get_vocab()) and kept_all.specials_dropped == 0
    assert kept_all.vocab_after == result.vocab_after + len(unnamed)  # the same trim otherwise


def test_chat_template_gives_the_same_text_and_remapped_ids(gemma: Tiny, gemma_trimmed: tuple[Any, Tiny, dict[int, int]]) -> None:
    _, new, old_to_new = gemma_trimmed
    chats = [[{"role": "user", "content": "Wie geht es dir?"}, {"role": "assistant", "content": "Gut, danke."},
              {"role": "user", "content": "And you?"}],
             [{"role": "tool", "content": "Die Stadt hat viele Einwohner."}]]
    for chat in chats:
        for prompt in (False, True):
            text_a = gemma.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt)
            assert new.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt) == text_a
            ids_a = gemma.tok(text_a, add_special_tokens=False)["input_ids"]
            assert all(i in old_to_new for i in ids_a), gemma.tok.convert_ids_to_tokens(ids_a)
            ids_b = new.tok(text_a, add_special_tokens=False)["input_ids"]
            assert ids_b == [old_to_new[i] for i in ids_a]
    assert "<unused2>" in text_a  # the tool turn's literal placeholder survived (the template names it)


# ------------------------------------------------------------------------------------- encodability
def _roundtrip(src: Tiny, new: Tiny, text: str) -> list[int]:
    ids = new.tok(text, add_special_tokens=False)["input_ids"]
    assert new.tok.unk_token_id not in ids or new.tok.unk_token_id is None, (text, ids)
    assert new.tok.decode(ids) == src.tok.decode(src.tok(text, add_special_tokens=False)["input_ids"]) == text, text
    return ids


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="▁<\r"), min_size=1, max_size=24))
def test_any_text_stays_encodable_byte_fallback_and_byte_level(text: str, gemma: Tiny, qwen: tuple[Tiny, int],
                                                               gemma_trimmed: tuple[Any, Tiny, dict[int, int]],
                                                               qwen_trimmed: tuple[Any, Tiny, dict[int, int]]) -> None:
    _roundtrip(gemma, gemma_trimmed[1], text)
    _roundtrip(qwen[0], qwen_trimmed[1], text)


@pytest.fixture(scope="module")
def qwen_trimmed(qwen: tuple[Tiny, int], corpora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Tiny, dict[int, int]]:
    return _trim(qwen[0], corpora, tmp_path_factory.mktemp("qwen-trim") / "out")


def test_emoji_cjk_and_dropped_scripts_fall_back_to_bytes(gemma: Tiny, qwen: tuple[Tiny, int],
                                                          gemma_trimmed: tuple[Any, Tiny, dict[int, int]],
                                                          qwen_trimmed: tuple[Any, Tiny, dict[int, int]]) -> None:
    for src, (_, new, old_to_new) in ((gemma, gemma_trimmed), (qwen[0], qwen_trimmed)):
        for text in HARD_TEXTS:
            _roundtrip(src, new, text)
        greek = "Η πρωτεύουσα της Ελλάδας"
        before = src.tok(greek, add_special_tokens=False)["input_ids"]
        assert not all(i in old_to_new for i in before)  # the trim dropped Greek pieces the source had
        assert len(_roundtrip(src, new, greek)) > len(before)  # so the trimmed tokenizer spells it in bytes
    vocab = gemma_trimmed[1].tok.get_vocab()
    assert all(f"<0x{b:02X}>" in vocab for b in range(256))
    assert qwen_trimmed[0].specials_dropped == 6  # vision, image pad, four reserved; <tool_call> is text: kept
    assert "<tool_call>" in qwen_trimmed[1].tok.get_vocab() and "<|im_start|>" in qwen_trimmed[1].tok.get_vocab()


# ---------------------------------------------------------------------------- generation-aware coverage
def test_generated_keeps_what_the_source_emits(qwen: tuple[Tiny, int], qwen_trimmed: tuple[Any, Tiny, dict[int, int]],
                                               corpora: dict[str, Path], tmp_path: Path) -> None:
    src, target = qwen
    _, _, plain = qwen_trimmed
    assert target not in plain  # the corpora never use it
    result, new, old_to_new = _trim(src, corpora, tmp_path / "gen", generated=12)
    assert target in old_to_new and result.vocab_after > len(plain)
    gen = result.generation
    assert gen["continuations"] == 12 and gen["prompts_per_language"] == {"en": 6, "de": 6} and gen["seed"] == 0
    assert gen["ids_not_in_corpora"] >= 1 and gen["tokens_emitted"] > 12
    record = json.loads((new.path / "mlcompress.json").read_text())
    assert record["parameters"]["generated"] == 12 and record["metrics"]["generation"]["distinct_ids"] == gen["distinct_ids"]
    again = trim(src.path, "en,de", corpora, tmp_path / "again", generated=12)  # seeded, and cached
    assert kept_ids(tmp_path / "again") == kept_ids(new.path) and again.generation["cached"] is True


def test_dropped_mass_and_greedy_identity(qwen: tuple[Tiny, int], qwen_trimmed: tuple[Any, Tiny, dict[int, int]],
                                          data_dir: Path, tmp_path: Path) -> None:
    src, target = qwen
    _, plain, old_to_new = qwen_trimmed
    texts = read_lines(data_dir / "tatoeba" / "tatoeba.deu-eng.deu.gz", 12) + read_lines(data_dir / "tatoeba" / "tatoeba.deu-eng.eng.gz", 12)
    rows = AutoModelForCausalLM.from_pretrained(src.path).get_output_embeddings().weight.shape[0]
    masses = dropped_masses(src.path, texts, {"all": range(rows), "trim": list(old_to_new),
                                              "all-but-target": set(range(rows)) - {target}})
    assert masses["all"].mean == 0.0 and masses["all"].top1_dropped == 0.0 and masses["all"].positions > 100
    assert masses["trim"].mean >= masses["all-but-target"].mean > 0.02  # ~5% on the target, the rest near uniform
    assert masses["trim"].top1_dropped >= masses["all-but-target"].top1_dropped > 0.5  # the target is the top prediction
    assert dropped_mass(src.path, texts, kept_ids(plain.path)).mean == pytest.approx(masses["trim"].mean, rel=1e-5)
    prompts = texts[:6]
    copy = tmp_path / "copy"
    shutil.copytree(src.path, copy)
    assert greedy_identity(src.path, copy, prompts, new_tokens=8).identical == 1.0
    same = greedy_identity(src.path, plain.path, prompts, new_tokens=8)
    assert same.identical < 1.0 and same.differing[0]["source"] != same.differing[0]["trimmed"]


def test_bad_generated_values_are_clear_errors(gemma: Tiny, corpora: dict[str, Path], tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(InputError, match="whole number"):
        trim(gemma.path, "en,de", corpora, tmp_path / "neg", generated=-1)
    with pytest.raises(InputError, match="text lines"):
        trim(gemma.path, "en,de", {"en": "wordfreq:en?n=200", "de": "wordfreq:de?n=200"}, tmp_path / "words", generated=4)
    from tiny_models import build_bert

    bert = build_bert(tmp_path / "bert", _train_text(data_dir)[:200])
    with pytest.raises(InputError, match="generates text"):
        trim(bert.path, "en,de", corpora, tmp_path / "enc", generated=4)
    kept = trim(bert.path, "en,de", corpora, tmp_path / "enc-ok")  # an encoder keeps its added tokens by default
    assert kept.specials_dropped == 0


def test_sentencepiece_model_drops_the_same_placeholders(tmp_path: Path, data_dir: Path) -> None:
    """A .model beside tokenizer.json (Gemma ships tokenizer.model) loses the dropped placeholders too, while other
    user-defined and control pieces stay, as before."""
    import io

    import sentencepiece as spm

    from mlcompress.vocab_trim.spm_model import trim_spm_model

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_train_text(data_dir)[:300]), model_writer=buf, vocab_size=300,
                                   user_defined_symbols=["<unused0>", "<unused1>", "<start_of_turn>"], minloglevel=2)
    (tmp_path / "src.model").write_bytes(buf.getvalue())
    trim_spm_model(tmp_path / "src.model", tmp_path / "dst.model", {"▁the"}, {"<unused0>"})
    pieces = {spm.SentencePieceProcessor(model_file=str(tmp_path / "dst.model")).id_to_piece(i) for i in range(5)}
    assert "<unused0>" not in pieces and {"<unused1>", "<start_of_turn>", "<unk>", "<s>", "</s>"} <= pieces
