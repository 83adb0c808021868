"""`trim` on tiny models of every supported family, with real tokenizers trained on real text.

Families (see tiny_models.py): mBERT-style WordPiece, XLM-R-style Unigram (embedding rows > tokens, as
multilingual-e5), mT5 (a real SentencePiece model, untied lm_head), mBART (language codes, final_logits_bias,
forced_bos_token_id) and GPT-2-style byte-level BPE (tied head). Each is trimmed to en,de from mono text that
was used neither for training its tokenizer nor as held-out text, and checked on held-out sentences whose
original tokens are all kept: same tokens, remapped ids, bit-identical model outputs and greedy generations.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from mlcompress.vocab_trim import TrimResult, trim

from conftest import read_lines
from tiny_models import FAMILIES, MBART_CODES, TinyModel, build, tokenizer_json, training_lines

GENERATORS = ("mt5", "mbart", "gpt2")
COUNT_SKIP, COUNT_LINES = 600, 300  # mono lines used for counting (training uses the first 500 / 150)
HELDOUT_SKIP, HELDOUT_LINES = 2000, 40  # mono lines used as held-out text


# ------------------------------------------------------------------------------------------------ fixtures
class _Lazy(dict):
    """A dict that builds a missing entry on first use (so a -k run builds only what it needs)."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key: Any) -> Any:
        self[key] = value = self._make(key)
        return value


@dataclass
class Trimmed:
    """A source tiny model, its trimmed directory and the id map."""

    src: TinyModel
    out: Path
    result: TrimResult
    old_ids: list[int] = field(init=False)
    old_to_new: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.id_map = json.loads((self.out / "id_map.json").read_text(encoding="utf-8"))
        self.old_ids = self.id_map["old_ids"]
        self.old_to_new = {old: new for new, old in enumerate(self.old_ids)}

    def covers(self, ids: list[int]) -> bool:
        return all(i in self.old_to_new for i in ids)

    def map(self, ids: list[int]) -> list[int]:
        return [self.old_to_new[i] for i in ids]


@lru_cache(maxsize=None)
def _tok(path: str) -> Any:
    return AutoTokenizer.from_pretrained(path)


def old_tok(t: Trimmed) -> Any:
    return _tok(str(t.src.path))


def new_tok(t: Trimmed) -> Any:
    return _tok(str(t.out))


def load_model(path: Path, auto_class: str) -> torch.nn.Module:
    return getattr(transformers, auto_class).from_pretrained(path).eval()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> _Lazy:
    lines = training_lines(data_dir)
    root = tmp_path_factory.mktemp("families")
    return _Lazy(lambda family: build(family, root / family, lines))


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """English as plain text, German gzipped: mono lines that neither the tokenizers nor the held-out text use."""
    root = tmp_path_factory.mktemp("corpora")
    paths = {"en": root / "en.txt", "de": root / "de.txt.gz"}
    for lang, path in paths.items():
        text = "\n".join(read_lines(data_dir / "mono" / f"{lang}.txt.gz", COUNT_LINES, skip=COUNT_SKIP)) + "\n"
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    return paths


@pytest.fixture(scope="module")
def heldout(data_dir: Path) -> dict[str, list[str]]:
    """Held-out sentences: later mono paragraphs split into sentences, Tatoeba deu-eng pairs; Greek and Russian too."""
    out: dict[str, list[str]] = {}
    for lang in ("en", "de"):
        paragraphs = read_lines(data_dir / "mono" / f"{lang}.txt.gz", HELDOUT_LINES, skip=HELDOUT_SKIP)
        out[lang] = [s for p in paragraphs for s in re.split(r"(?<=[.!?])\s+", p) if len(s) > 3]
    tatoeba = data_dir / "tatoeba"
    out["de"] += read_lines(tatoeba / "tatoeba.deu-eng.deu.gz", 150)
    out["en"] += read_lines(tatoeba / "tatoeba.deu-eng.eng.gz", 150)
    out["el"] = read_lines(tatoeba / "tatoeba.ell-eng.ell.gz", 60)
    out["ru"] = read_lines(tatoeba / "tatoeba.rus-eng.rus.gz", 60)
    return out


@pytest.fixture(scope="module")
def trimmed(zoo: _Lazy, corpora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> _Lazy:
    """Each family trimmed to en,de with the default policy (every token the corpora use)."""
    root = tmp_path_factory.mktemp("trimmed")

    def make(family: str) -> Trimmed:
        src = zoo[family]
        result = trim(src.path, "en,de", {"en": corpora["en"], "de": str(corpora["de"])}, root / family)
        return Trimmed(src, root / family, result)

    return _Lazy(make)


def _covered(t: Trimmed, sentences: list[str]) -> tuple[list[str], list[str]]:
    """(sentences whose original tokens are all kept, the others)."""
    tok = old_tok(t)
    yes, no = [], []
    for s in sentences:
        (yes if t.covers(tok(s)["input_ids"]) else no).append(s)
    return yes, no


def _short_covered(t: Trimmed, heldout: dict[str, list[str]], per_lang: int = 4, max_tokens: int = 48) -> list[str]:
    tok = old_tok(t)
    picked = []
    for lang in ("en", "de"):
        yes, _ = _covered(t, heldout[lang])
        picked += [s for s in yes if len(tok(s)["input_ids"]) <= max_tokens][:per_lang]
    assert len(picked) == 2 * per_lang
    return picked


# ------------------------------------------------------------------------------------- the trim itself
@pytest.mark.parametrize("family", FAMILIES)
def test_trim_shrinks_vocab_and_writes_a_consistent_id_map(family: str, trimmed: _Lazy) -> None:
    t = trimmed[family]
    src, result = t.src, t.result
    assert result.vocab_before == src.tokens and result.vocab_after == len(t.old_ids) < src.tokens
    assert t.id_map["source_vocab_size"] == src.tokens and t.id_map["source_rows"] == src.rows
    assert t.old_ids == sorted(set(t.old_ids)) and t.old_ids[-1] < src.tokens
    assert result.params_after < result.params_before and result.bytes_after < result.bytes_before
    assert result.coverage == {"en": 1.0, "de": 1.0}  # min count 1: every token the corpora use is kept
    new = new_tok(t)
    assert len(new) == len(t.old_ids)
    dropped_codes = set((result.translation.get("dropped_codes") or {}).values())  # mbart: codes of languages not kept
    assert set(old_tok(t).all_special_tokens) - dropped_codes <= set(new.get_vocab())
    config = AutoConfig.from_pretrained(t.out)
    assert config.vocab_size == len(t.old_ids)
    model = load_model(t.out, src.auto_class)
    assert model.get_input_embeddings().weight.shape[0] == len(t.old_ids)
    assert model.get_output_embeddings().weight.shape[0] == len(t.old_ids)
    assert (t.out / "mlcompress.json").is_file() and (t.out / "token_counts.npz").is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_trimmed_tokenizer_gives_the_same_tokens_on_covered_heldout_text(family: str, trimmed: _Lazy,
                                                                          heldout: dict[str, list[str]]) -> None:
    t = trimmed[family]
    old, new = old_tok(t), new_tok(t)
    en_de = heldout["en"] + heldout["de"]
    covered, uncovered = _covered(t, en_de)
    assert len(covered) >= 0.6 * len(en_de), "too few held-out sentences fully covered to test anything"
    assert uncovered, "every held-out sentence is covered: the trim dropped nothing that matters"
    _, foreign = _covered(t, heldout["el"] + heldout["ru"])
    assert len(foreign) >= 0.9 * (len(heldout["el"]) + len(heldout["ru"]))  # Greek and Russian lost their pieces
    for s in covered:
        a, b = old(s), new(s)
        assert b["input_ids"] == t.map(a["input_ids"]), s
        assert new.convert_ids_to_tokens(b["input_ids"]) == old.convert_ids_to_tokens(a["input_ids"]), s
        assert b["attention_mask"] == a["attention_mask"]
        assert new.decode(b["input_ids"]) == old.decode(a["input_ids"])
        plain_a = old(s, add_special_tokens=False)["input_ids"]
        assert new(s, add_special_tokens=False)["input_ids"] == t.map(plain_a)
    if old.mask_token is not None:  # the mask token (XLM-R's strips the space before it)
        for s in covered[:20]:
            masked = s.rsplit(" ", 1)[0] + f" {old.mask_token}."
            assert new(masked)["input_ids"] == t.map(old(masked)["input_ids"]), masked
    for first, second in zip(covered[:40:2], covered[1:40:2]):  # sentence pairs (post-processor templates)
        a, b = old(first, second), new(first, second)
        assert b["input_ids"] == t.map(a["input_ids"])
        assert b.get("token_type_ids") == a.get("token_type_ids")


# ------------------------------------------------------------------------------------------- the model
def _identical(a: Any, b: Any, what: str) -> None:
    assert torch.equal(a, b), f"{what} differ (max abs diff {(a - b).abs().max().item()})"


@pytest.mark.parametrize("family", FAMILIES)
def test_trimmed_model_outputs_are_bit_identical(family: str, trimmed: _Lazy, heldout: dict[str, list[str]]) -> None:
    t = trimmed[family]
    old_model, new_model = load_model(t.src.path, t.src.auto_class), load_model(t.out, t.src.auto_class)
    old, new = old_tok(t), new_tok(t)
    sentences = _short_covered(t, heldout)
    pad = old.pad_token is not None
    batches = [sentences] if pad else [[s] for s in sentences]  # GPT-2 has no pad token: one at a time
    keep = torch.tensor(t.old_ids)
    for batch in batches:
        a = old(batch, padding=pad, return_tensors="pt")
        b = new(batch, padding=pad, return_tensors="pt")
        assert b["input_ids"].tolist() == [t.map(row) for row in a["input_ids"].tolist()]
        kwargs_a: dict[str, Any] = dict(a, output_hidden_states=True)
        kwargs_b: dict[str, Any] = dict(b, output_hidden_states=True)
        if t.src.kind == "seq2seq":  # teacher-force a decoder prefix: the start token and the first input tokens
            start = old_model.config.decoder_start_token_id
            prefix = torch.cat([torch.full((len(batch), 1), start), a["input_ids"][:, :5]], dim=1)
            kwargs_a["decoder_input_ids"] = prefix
            kwargs_b["decoder_input_ids"] = torch.tensor([t.map(row) for row in prefix.tolist()])
        with torch.no_grad():
            out_a, out_b = old_model(**kwargs_a), new_model(**kwargs_b)
        names = ("encoder_hidden_states", "decoder_hidden_states") if t.src.kind == "seq2seq" else ("hidden_states",)
        for name in names:
            for layer, (x, y) in enumerate(zip(getattr(out_a, name), getattr(out_b, name), strict=True)):
                _identical(x, y, f"{name}[{layer}]")
        # The head is one GEMM over a narrower weight: the hidden states above are bit-identical, but the GEMM may
        # block (and so sum) differently for another output width on some CPUs (7.5e-9 seen on AVX2, 0 on AVX512).
        kept = out_a.logits.index_select(-1, keep)
        assert (kept - out_b.logits).abs().max().item() <= 1e-6 * max(1.0, kept.abs().max().item()), "logits of kept ids"


@pytest.mark.parametrize("family", GENERATORS)
def test_greedy_generation_is_identical(family: str, trimmed: _Lazy, heldout: dict[str, list[str]]) -> None:
    t = trimmed[family]
    old_model, new_model = load_model(t.src.path, t.src.auto_class), load_model(t.out, t.src.auto_class)
    old, new = old_tok(t), new_tok(t)
    dropped = sorted(set(range(t.src.rows)) - set(t.old_ids))
    unrestricted_compared = 0
    for s in _short_covered(t, heldout, per_lang=3):
        a, b = old(s, return_tensors="pt"), new(s, return_tensors="pt")
        common = dict(do_sample=False, num_beams=1, max_new_tokens=6)
        if t.src.kind == "causal":
            common["pad_token_id"] = old_model.generation_config.eos_token_id
        with torch.no_grad():
            # the original model, kept from choosing a dropped token, must generate what the trimmed one does
            gen_a = old_model.generate(**a, **common, suppress_tokens=dropped)
            common_b = dict(common, pad_token_id=new_model.generation_config.eos_token_id) if t.src.kind == "causal" else common
            gen_b = new_model.generate(**b, **common_b)
            assert gen_b.tolist() == [t.map(row) for row in gen_a.tolist()], s
            free = old_model.generate(**a, **common)  # unrestricted: the same whenever it chose kept tokens only
        if t.covers(free[0].tolist()):
            unrestricted_compared += 1
            assert gen_b.tolist() == [t.map(row) for row in free.tolist()]
    assert unrestricted_compared  # (seeded models: some sentences generate kept tokens only)


# ----------------------------------------------------------------------------------- configs and heads
def _id_values(cfg: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in cfg.items() if k.endswith("_token_id") and isinstance(v, int) and not isinstance(v, bool) and v >= 0}


@pytest.mark.parametrize("family", FAMILIES)
def test_config_and_generation_config_token_ids_are_reindexed(family: str, trimmed: _Lazy) -> None:
    t = trimmed[family]
    old, new = old_tok(t), new_tok(t)
    pairs = [(AutoConfig.from_pretrained(t.src.path).to_dict(), AutoConfig.from_pretrained(t.out).to_dict())]
    if (t.src.path / "generation_config.json").is_file():
        pairs.append((GenerationConfig.from_pretrained(t.src.path).to_dict(), GenerationConfig.from_pretrained(t.out).to_dict()))
    checked = 0
    for before, after in pairs:
        ids = _id_values(before)
        assert set(_id_values(after)) == set(ids)
        for key, value in ids.items():
            assert after[key] == t.old_to_new[value], key
            assert new.convert_ids_to_tokens(after[key]) == old.convert_ids_to_tokens(value), key
            checked += 1
    assert checked
    if family == "mbart":
        gen = GenerationConfig.from_pretrained(t.out)
        assert new.convert_ids_to_tokens(gen.forced_bos_token_id) == "de_DE"
        assert new.convert_ids_to_tokens(gen.decoder_start_token_id) == "</s>"
        assert gen.forced_bos_token_id != GenerationConfig.from_pretrained(t.src.path).forced_bos_token_id  # really moved
    if family == "gpt2":
        config = AutoConfig.from_pretrained(t.out)
        assert new.convert_ids_to_tokens(config.eos_token_id) == "<|endoftext|>" and config.eos_token_id == len(new) - 1


def test_mbart_language_codes_and_final_logits_bias(trimmed: _Lazy) -> None:
    t = trimmed["mbart"]
    old, new = old_tok(t), new_tok(t)
    for code in ("de_DE", "en_XX", "<mask>"):  # the codes of the target languages survive (test_trim_translation.py)
        assert new.convert_tokens_to_ids(code) == t.old_to_new[old.convert_tokens_to_ids(code)]
    for code in set(MBART_CODES) - {"de_DE", "en_XX"}:  # those of other languages go (unless keep_language_codes="all")
        assert old.convert_tokens_to_ids(code) not in t.old_to_new and code not in new.get_vocab()
    ids = new("Guten Morgen")["input_ids"]
    assert new.convert_ids_to_tokens(ids[-2:]) == ["</s>", "en_XX"]  # the post-processor's language code re-indexed
    old_model, new_model = load_model(t.src.path, t.src.auto_class), load_model(t.out, t.src.auto_class)
    bias = old_model.final_logits_bias
    assert bias.abs().sum() > 0
    assert torch.equal(new_model.final_logits_bias, bias[:, t.old_ids])
    assert new_model.get_output_embeddings().weight is new_model.get_input_embeddings().weight  # still tied


def test_untied_mt5_head_and_padded_rows(trimmed: _Lazy) -> None:
    t = trimmed["mt5"]
    assert t.src.rows > t.src.tokens  # mT5 pads its embedding matrix beyond the tokenizer
    old_model, new_model = load_model(t.src.path, t.src.auto_class), load_model(t.out, t.src.auto_class)
    assert not torch.equal(old_model.lm_head.weight, old_model.shared.weight)
    assert torch.equal(new_model.lm_head.weight, old_model.lm_head.weight[t.old_ids])
    assert torch.equal(new_model.shared.weight, old_model.shared.weight[t.old_ids])
    assert new_model.lm_head.weight is not new_model.shared.weight
    assert new_model.config.vocab_size == len(t.old_ids)


def test_extra_embedding_rows_are_dropped(trimmed: _Lazy) -> None:
    t = trimmed["xlmr"]
    assert t.src.rows == t.src.tokens + 35  # like multilingual-e5: 250037 rows for 250002 tokens
    old_model, new_model = load_model(t.src.path, t.src.auto_class), load_model(t.out, t.src.auto_class)
    emb = old_model.get_input_embeddings().weight
    assert torch.equal(new_model.get_input_embeddings().weight, emb[t.old_ids])
    assert torch.equal(new_model.lm_head.bias, old_model.lm_head.bias[t.old_ids])
    assert new_model.get_input_embeddings().padding_idx == 1


# ----------------------------------------------------------------------- tokenizer files beside tokenizer.json
def test_byte_level_bpe_merge_closure_and_byte_alphabet(trimmed: _Lazy) -> None:
    t = trimmed["gpt2"]
    _check_bpe_files(t)
    merges_before = tokenizer_json(t.src.path)["model"]["merges"]
    assert len(tokenizer_json(t.out)["model"]["merges"]) < len(merges_before)


def _check_bpe_files(t: Trimmed) -> None:
    tj = tokenizer_json(t.out)
    vocab = tj["model"]["vocab"]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in tj["model"]["merges"]]
    for a, b in merges:
        assert a in vocab and b in vocab and a + b in vocab, (a, b)
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    assert len(alphabet) == 256 and alphabet <= set(vocab)
    assert json.loads((t.out / "vocab.json").read_text(encoding="utf-8")) == {**vocab, "<|endoftext|>": len(vocab)}
    lines = (t.out / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version") and [tuple(x.split(" ")) for x in lines[1:]] == merges


def test_byte_level_bpe_top_k_keeps_what_merges_need(zoo: _Lazy, corpora: dict[str, Path], tmp_path: Path,
                                                      heldout: dict[str, list[str]]) -> None:
    """A small top-k keeps few whole words; the merge closure must add every token their merges pass through."""
    src = zoo["gpt2"]
    out = tmp_path / "gpt2-top"
    result = trim(src.path, "en,de", corpora, out, top_k=150)
    t = Trimmed(src, out, result)
    _check_bpe_files(t)
    counts = _counts(src, corpora)
    top = set(_ranked(sum(c / c.sum() for c in counts.values()))[:150])
    vocab = tokenizer_json(src.path)["model"]["vocab"]
    base = top | {vocab[ch] for ch in pre_tokenizers.ByteLevel.alphabet()} | _always_kept(src)
    assert base < set(t.old_ids)  # the merge closure added the intermediate tokens that build the top 150
    covered, _ = _covered(t, heldout["en"] + heldout["de"])
    assert covered  # short Tatoeba sentences
    old, new = old_tok(t), new_tok(t)
    for s in covered:
        assert new(s)["input_ids"] == t.map(old(s)["input_ids"])


def test_wordpiece_vocab_txt_matches_tokenizer_json(trimmed: _Lazy) -> None:
    t = trimmed["bert"]
    vocab = tokenizer_json(t.out)["model"]["vocab"]
    lines = (t.out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [p for p, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert len(lines) == len(t.old_ids)


def test_sentencepiece_model_is_trimmed_in_step(trimmed: _Lazy, heldout: dict[str, list[str]], tmp_path: Path) -> None:
    import sentencepiece as spm
    from transformers import T5Tokenizer

    t = trimmed["mt5"]
    sp_old = spm.SentencePieceProcessor(model_file=str(t.src.path / "spiece.model"))
    sp_new = spm.SentencePieceProcessor(model_file=str(t.out / "spiece.model"))
    pieces = [sp_new.id_to_piece(i) for i in range(sp_new.get_piece_size())]
    vocab = [p for p, _ in tokenizer_json(t.out)["model"]["vocab"]]
    assert pieces == vocab  # T5 has no added tokens beyond <pad> </s> <unk>, which the .model holds too
    assert sp_new.get_piece_size() == len(t.old_ids) < sp_old.get_piece_size()
    assert [sp_new.get_score(i) for i in range(len(pieces))] == [sp_old.get_score(i) for i in t.old_ids]
    assert (sp_new.pad_id(), sp_new.eos_id(), sp_new.unk_id()) == (0, 1, 2)
    covered, _ = _covered(t, heldout["en"] + heldout["de"])
    for s in covered:
        assert sp_new.encode(s, out_type=str) == sp_old.encode(s, out_type=str)
        assert sp_new.encode(s) == t.map(sp_old.encode(s))
    # converting the trimmed .model alone (as transformers does without tokenizer.json) gives the same tokenizer
    alone = tmp_path / "spm-only"
    alone.mkdir()
    shutil.copy(t.out / "spiece.model", alone / "spiece.model")
    converted, new = T5Tokenizer.from_pretrained(alone, extra_ids=0), new_tok(t)
    assert converted.get_vocab() == new.get_vocab()
    for s in covered[:100]:
        assert converted(s)["input_ids"] == new(s)["input_ids"]


# ------------------------------------------------------------------------------------------------ policies
def _counts(t: TinyModel, corpora: dict[str, Path]) -> dict[str, np.ndarray]:
    """Token counts by plain tokenization of every corpus line (independent of mlcompress's counting)."""
    backend = Tokenizer.from_file(str(t.path / "tokenizer.json"))  # fresh: a used one may still have padding on
    out = {}
    for lang, path in corpora.items():
        ids = [i for e in backend.encode_batch(read_lines(path), add_special_tokens=False) for i in e.ids]
        out[lang] = np.bincount(np.asarray(ids), minlength=t.tokens).astype(np.int64)
    return out


def _ranked(c: np.ndarray) -> list[int]:
    """Ids seen, most frequent first, ties by id."""
    return sorted(np.flatnonzero(c).tolist(), key=lambda i: (-c[i], i))


def _always_kept(t: TinyModel) -> set[int]:
    tj = tokenizer_json(t.path)
    kept = {a["id"] for a in tj["added_tokens"]}
    config = AutoConfig.from_pretrained(t.path).to_dict()
    return kept | set(_id_values(config).values())


def test_top_k_keeps_k_plus_the_always_kept(zoo: _Lazy, corpora: dict[str, Path], tmp_path: Path) -> None:
    src = zoo["xlmr"]
    counts = _counts(src, corpora)
    mixed = sum(c / c.sum() for c in counts.values())
    top = set(_ranked(mixed)[:300])
    result = trim(src.path, "en,de", corpora, tmp_path / "top", top_k=300)
    kept = Trimmed(src, tmp_path / "top", result).old_ids
    assert kept == sorted(top | _always_kept(src))
    assert 300 <= result.vocab_after <= 300 + len(_always_kept(src))


def test_coverage_keeps_fewer_tokens_than_min_count(zoo: _Lazy, corpora: dict[str, Path], trimmed: _Lazy, tmp_path: Path) -> None:
    src = zoo["xlmr"]
    every = trimmed["xlmr"].result
    result = trim(src.path, "en,de", corpora, tmp_path / "cov", coverage=0.9)
    assert result.vocab_after < every.vocab_after
    kept = set(Trimmed(src, tmp_path / "cov", result).old_ids)
    for lang, c in _counts(src, corpora).items():
        share = c[sorted(kept)].sum() / c.sum()
        assert share >= 0.9 and result.coverage[lang] == pytest.approx(share)
        assert set(_ranked(c)[:20]) <= kept  # the most frequent tokens are the ones kept


def test_quotas_per_language(zoo: _Lazy, corpora: dict[str, Path], tmp_path: Path) -> None:
    src = zoo["xlmr"]
    counts = _counts(src, corpora)
    result = trim(src.path, "en,de", corpora, tmp_path / "quota", quotas={"en": 400, "deu": 150})
    kept = Trimmed(src, tmp_path / "quota", result).old_ids
    expected = set(_ranked(counts["en"])[:400]) | set(_ranked(counts["de"])[:150]) | _always_kept(src)
    assert kept == sorted(expected)
    assert result.coverage["en"] > result.coverage["de"]


def _latin_or_common(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "NPSZ" or unicodedata.name(ch, "").startswith("LATIN")


def _letters_of(text: str, script: str) -> bool:
    """Whether ``text`` has a letter of ``script`` (symbols such as GREEK TONOS are common to all scripts)."""
    return any(unicodedata.category(ch)[0] == "L" and unicodedata.name(ch, "").startswith(script) for ch in text)


@pytest.mark.parametrize("family", FAMILIES)
def test_scripts_policy_keeps_latin_and_is_lossless(family: str, zoo: _Lazy, tmp_path: Path,
                                                    heldout: dict[str, list[str]]) -> None:
    src = zoo[family]
    result = trim(src.path, "en,de", None, tmp_path / "scripts", scripts=True)
    t = Trimmed(src, tmp_path / "scripts", result)
    assert result.tokens_counted == {} and result.vocab_after < result.vocab_before
    old = old_tok(t)
    specials = {a["id"] for a in tokenizer_json(src.path)["added_tokens"]}
    texts = {i: old.convert_tokens_to_string([old.convert_ids_to_tokens(i)]) for i in range(src.tokens) if i not in specials}
    greek_or_cyrillic = {i for i, text in texts.items() if _letters_of(text, "GREEK") or _letters_of(text, "CYRILLIC")}
    assert greek_or_cyrillic and not greek_or_cyrillic & set(t.old_ids)
    dropped = set(texts) - set(t.old_ids)
    assert all(not all(_latin_or_common(ch) for ch in texts[i]) for i in dropped)  # only non-Latin pieces went
    assert all(not _letters_of(texts[i], "GREEK") and not _letters_of(texts[i], "CYRILLIC") for i in set(t.old_ids) - specials)
    new = new_tok(t)
    latin = [s for s in heldout["en"] + heldout["de"] if all(_latin_or_common(ch) for ch in s)]
    assert len(latin) >= 0.9 * len(heldout["en"] + heldout["de"])
    for s in latin:  # lossless: no corpus, yet every Latin sentence keeps all its tokens
        a = old(s)["input_ids"]
        assert t.covers(a), (s, [old.convert_ids_to_tokens(i) for i in a if i not in t.old_to_new])
        assert new(s)["input_ids"] == t.map(a)


# -------------------------------------------------------------------------------------------- property test
@pytest.fixture(scope="module")
def xlmr_pieces(trimmed: _Lazy) -> list[str]:
    t = trimmed["xlmr"]
    specials = {a["content"] for a in tokenizer_json(t.out)["added_tokens"]}
    return [p for p, _ in tokenizer_json(t.out)["model"]["vocab"] if p not in specials]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_text_from_kept_pieces_tokenizes_identically(data: st.DataObject, trimmed: _Lazy, xlmr_pieces: list[str]) -> None:
    t = trimmed["xlmr"]
    parts = data.draw(st.lists(st.sampled_from(xlmr_pieces), min_size=1, max_size=12), label="pieces")
    glue = data.draw(st.lists(st.sampled_from(["", "", " "]), min_size=len(parts), max_size=len(parts)), label="glue")
    text = "".join(g + p.replace("▁", " ") for g, p in zip(glue, parts)).strip() or parts[0]
    old, new = old_tok(t), new_tok(t)
    a = old(text)["input_ids"]
    if t.covers(a):
        b = new(text)["input_ids"]
        assert b == t.map(a)
        assert new.convert_ids_to_tokens(b) == old.convert_ids_to_tokens(a)


# -------------------------------------------------------------- tokenizer directories as the Hub has them
HUB_CLASSES = {
    "bert": ("BertTokenizer", {"do_lower_case": False, "strip_accents": None}),
    "xlmr": ("XLMRobertaTokenizer", {}),
    "gpt2": ("GPT2Tokenizer", {"add_prefix_space": False}),
}


def _hub_style(src: TinyModel, dst: Path) -> Path:
    """A copy of ``src`` whose tokenizer_config.json names the model's own tokenizer class and lists
    ``added_tokens_decoder`` by id, as the Hub's checkpoints of these families do."""
    shutil.copytree(src.path, dst)
    cls, extra = HUB_CLASSES[src.family]
    config = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("backend", None)
    added = {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
             for a in tokenizer_json(dst)["added_tokens"]}
    config.update({"tokenizer_class": cls, "added_tokens_decoder": added, "model_max_length": 512, **extra})
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return dst


@pytest.mark.parametrize("family", sorted(HUB_CLASSES))
def test_hub_style_tokenizer_class_and_added_tokens_decoder(family: str, zoo: _Lazy, corpora: dict[str, Path],
                                                            tmp_path: Path, heldout: dict[str, list[str]]) -> None:
    src = zoo[family]
    hub = TinyModel(family, _hub_style(src, tmp_path / "hub"), src.auto_class, src.tokens, src.rows)
    t = Trimmed(hub, tmp_path / "out", trim(hub.path, "en,de", corpora, tmp_path / "out"))
    old, new = old_tok(t), new_tok(t)
    assert type(old).__name__ == type(new).__name__ == HUB_CLASSES[family][0]
    decoder = json.loads((t.out / "tokenizer_config.json").read_text(encoding="utf-8"))["added_tokens_decoder"]
    assert len(decoder) == len(tokenizer_json(hub.path)["added_tokens"])
    for new_id, token in decoder.items():
        assert new.convert_ids_to_tokens(int(new_id)) == token["content"]
        assert int(new_id) == t.old_to_new[old.convert_tokens_to_ids(token["content"])]
    covered, _ = _covered(t, heldout["en"] + heldout["de"])
    assert len(covered) > 200
    for s in covered + [f"{s} {old.mask_token}" for s in covered[:10] if old.mask_token]:
        assert new(s)["input_ids"] == t.map(old(s)["input_ids"]), s


# ------------------------------------------------------------------------ inputs the trim must not mangle
def test_keep_tokens_adds_pieces_the_corpora_never_use(zoo: _Lazy, corpora: dict[str, Path], tmp_path: Path) -> None:
    from mlcompress.errors import InputError

    src = zoo["xlmr"]
    counts = _counts(src, corpora)
    vocab = [p for p, _ in tokenizer_json(src.path)["model"]["vocab"]]
    unused = [p for i, p in enumerate(vocab) if counts["en"][i] == counts["de"][i] == 0 and _letters_of(p, "GREEK")][:3]
    assert len(unused) == 3
    result = trim(src.path, "en,de", corpora, tmp_path / "keep", keep_tokens=unused)
    t = Trimmed(src, tmp_path / "keep", result)
    assert {vocab.index(p) for p in unused} <= set(t.old_ids)
    assert all(p in new_tok(t).get_vocab() for p in unused)
    with pytest.raises(InputError, match="not in the tokenizer's vocabulary"):
        trim(src.path, "en,de", corpora, tmp_path / "keep2", keep_tokens=["▁surely-not-a-piece"])
    assert not (tmp_path / "keep2").exists()


def test_legacy_added_tokens_json_is_reindexed(zoo: _Lazy, corpora: dict[str, Path], tmp_path: Path) -> None:
    """Checkpoints saved by older transformers keep added tokens in added_tokens.json (token -> id), which
    transformers 5 still reads when tokenizer_config.json has no added_tokens_decoder. Copied unchanged, its
    stale ids make the trimmed tokenizer re-add "<mask>" as a different token (and tokenize differently)."""
    src = zoo["mbart"]
    legacy = tmp_path / "legacy"
    shutil.copytree(src.path, legacy)
    tj = tokenizer_json(legacy)
    assert "added_tokens_decoder" not in json.loads((legacy / "tokenizer_config.json").read_text(encoding="utf-8"))
    model_vocab = len(tj["model"]["vocab"])
    added = {a["content"]: a["id"] for a in tj["added_tokens"] if a["id"] >= model_vocab}
    assert "<mask>" in added and "de_DE" in added
    (legacy / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    t = Trimmed(TinyModel("mbart", legacy, src.auto_class, src.tokens, src.rows), tmp_path / "out",
                trim(legacy, "en,de", corpora, tmp_path / "out"))
    old, new = old_tok(t), new_tok(t)
    for text in ("Guten Tag <mask>", "Das ist <mask> Haus.", "de_DE Hallo"):
        assert new.convert_ids_to_tokens(new(text)["input_ids"]) == old.convert_ids_to_tokens(old(text)["input_ids"]), text
        assert new(text)["input_ids"] == t.map(old(text)["input_ids"]), text
    if (t.out / "added_tokens.json").is_file():
        written = json.loads((t.out / "added_tokens.json").read_text(encoding="utf-8"))
        assert written == {token: t.old_to_new[i] for token, i in added.items() if i in t.old_to_new}, \
            "added_tokens.json keeps the source's ids"  # (the codes of languages other than en, de are dropped)


def test_tokenizer_larger_than_the_embedding_matrix_fails_clearly(zoo: _Lazy, corpora: dict[str, Path], tmp_path: Path) -> None:
    """A tokenizer with special tokens beyond the model's embedding rows (added without resizing the model) cannot
    be trimmed as it is: trim must say so (an InputError naming the rows), not crash with a KeyError."""
    from mlcompress.errors import InputError

    src = zoo["bert"]
    bigger = tmp_path / "bigger"
    shutil.copytree(src.path, bigger)
    tok = AutoTokenizer.from_pretrained(bigger)
    tok.add_special_tokens({"additional_special_tokens": ["[ENT]", "[/ENT]"]})
    tok.save_pretrained(bigger)
    assert len(AutoTokenizer.from_pretrained(bigger)) == src.rows + 2
    try:
        result = trim(bigger, "en,de", corpora, tmp_path / "out")
    except InputError as exc:
        assert "row" in str(exc) and exc.hint
        assert not (tmp_path / "out").exists()
    else:  # or it trims consistently: every token of the trimmed tokenizer has an embedding row
        new = AutoTokenizer.from_pretrained(tmp_path / "out")
        assert len(new) == result.vocab_after == load_model(tmp_path / "out", src.auto_class).get_input_embeddings().weight.shape[0]
