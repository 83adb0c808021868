"""Token counting: exact against plain tokenization, on real text, for every tokenizer family; cached."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from mlcompress.errors import CorpusError
from mlcompress.corpus import Corpus
from mlcompress.vocab_trim.counting import count_corpus, count_lines, decomposes

from conftest import read_lines


def _plain(tok: Tokenizer, lines: list[str]) -> np.ndarray:
    ids = [i for e in tok.encode_batch(lines, add_special_tokens=False) for i in e.ids]
    return np.bincount(np.asarray(ids, dtype=np.int64), minlength=tok.get_vocab_size())


def _train(kind: str, lines: list[str]) -> Tokenizer:
    if kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=800, special_tokens=["<unk>"], unk_token="<unk>")
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=False)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=800, special_tokens=["[UNK]"])
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    return tok


@pytest.fixture(scope="module")
def text(data_dir: Path) -> list[str]:
    lines = read_lines(data_dir / "mono" / "de.txt.gz", 300) + read_lines(data_dir / "mono" / "el.txt.gz", 100)
    # the awkward cases a corpus can hold: runs of spaces, tabs, leading/trailing blanks, odd spaces
    return lines + ["  zwei  Leerzeichen ", "Tab\tgetrennt  x", "\u00a0nbsp\u3000ideo", " ", "ein Wort"]


@pytest.mark.parametrize("kind", ["unigram", "wordpiece", "bytelevel-bpe"])
def test_counts_equal_plain_tokenization(kind: str, text: list[str]) -> None:
    tok = _train(kind, text[:200])
    counted = count_lines(tok, text, tok.get_vocab_size())
    assert counted.method == "chunks"
    assert np.array_equal(counted.counts, _plain(tok, text))
    assert counted.lines == len(text) and counted.total == int(_plain(tok, text).sum())


def test_tokenizer_that_joins_across_spaces_is_counted_line_by_line(text: list[str]) -> None:
    tok = _train("unigram", text[:200])
    tok.normalizer = normalizers.Replace(" ", "")  # words glue together: chunks alone would tokenize differently
    assert not decomposes(tok)
    counted = count_lines(tok, text, tok.get_vocab_size())
    assert counted.method == "lines"
    assert np.array_equal(counted.counts, _plain(tok, text))


def test_counts_are_cached_per_tokenizer_corpus_language(tmp_path: Path, text: list[str]) -> None:
    tok = _train("wordpiece", text[:200])
    path = tmp_path / "de.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(text) + "\n")
    corpus = Corpus.parse(path)
    first, cached = count_corpus(tok, corpus, "de", tok.get_vocab_size(), tmp_path / "cache")
    assert not cached
    again, cached = count_corpus(tok, corpus, "de", tok.get_vocab_size(), tmp_path / "cache")
    assert cached and np.array_equal(first.counts, again.counts)
    other, cached = count_corpus(tok, corpus, "en", tok.get_vocab_size(), tmp_path / "cache")
    assert not cached  # another language is another cache entry


def test_corpus_specs(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("eins\n\nzwei\n", encoding="utf-8")
    with gzip.open(folder / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("drei\n")
    assert list(Corpus.parse(folder).lines()) == ["eins", "zwei", "drei"]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(CorpusError, match="empty"):
        Corpus.parse(empty)
    with pytest.raises(CorpusError, match="no such file"):
        Corpus.parse(tmp_path / "missing" / "x.txt")
    with pytest.raises(CorpusError, match="unknown option"):
        Corpus.parse("hf://some/dataset?colum=text")
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(CorpusError, match="cannot read"):
        list(Corpus.parse(bad).lines())


def test_datasets_corpus_saved_to_disk_and_by_builder(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"id": [1, 2, 3], "sentence": ["Guten Tag", "Wie geht's?\nGut.", "Danke"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    corpus = Corpus.parse(tmp_path / "ds")
    assert list(corpus.lines()) == ["Guten Tag", "Wie geht's?", "Gut.", "Danke"]
    text = tmp_path / "plain.txt"
    text.write_text("eins\nzwei\ndrei\n", encoding="utf-8")
    builder = Corpus.parse(f"hf://text?data_files={text}&max_lines=2")
    assert list(builder.lines()) == ["eins", "zwei"]


def test_word_list_corpus_counts_words_as_written_after_a_space(text: list[str]) -> None:
    from mlcompress.vocab_trim.counting import count_word_list

    tok = _train("unigram", text[:200])
    corpus = Corpus.parse("wordfreq:de?n=300")
    words = list(corpus.word_counts())
    sharp = [w for w, _ in words if "ß" in w]  # the lists write German ß as ss: both forms are counted
    assert 300 <= len(words) - len(sharp) <= 600 and all(c >= 1 for _, c in words)
    assert ("Der", max(1, dict(words)["der"] // 10)) in words  # the capitalised form, a tenth as often
    assert "weiß" in sharp and dict(words)["weiß"] == dict(words)["weiss"] and "Weiß" in sharp
    assert not any("ß" in w for w, _ in Corpus.parse("wordfreq:en?n=300").word_counts())
    assert Corpus.parse("wordfreq:de?n=300").fingerprint() != Corpus.parse("wordfreq:de?n=301").fingerprint()
    counted = count_word_list(tok, words, tok.get_vocab_size())
    expected = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for word, c in words:
        for i in tok.encode(" " + word, add_special_tokens=False).ids:
            expected[i] += c
    assert np.array_equal(counted.counts, expected)
    with pytest.raises(CorpusError, match="bad word-list spec"):
        Corpus.parse("wordfreq:de?size=3")
    with pytest.raises(CorpusError, match="no 'large' list"):
        Corpus.parse("wordfreq:xx")


def test_word_variants_add_case_and_unmarked_forms() -> None:
    from mlcompress.vocab_trim.policies import word_variants

    pieces = ["<s>", "▁haus", "▁Haus", "Haus", "haus", "▁HAUS", "▁1", "1", "en", "En", "▁Baum"]
    keep = word_variants(pieces, {1, 6, 8}, "▁")
    assert keep == {1, 2, 3, 4, 6, 8, 9}  # digits gain nothing; mid-word 'en' gains 'En' only
    assert word_variants(pieces, {8}, None) == {8, 9}


def _save_many(path: str, value: int, times: int) -> None:
    """One process saving the same cache entry again and again (for the concurrency test)."""
    from mlcompress.vocab_trim.counting import TokenCounts

    for _ in range(times):
        TokenCounts(np.full(5000, value, dtype=np.int64), 1, 0.0, "chunks").save(Path(path))


def test_processes_saving_one_cache_entry_at_once_do_not_collide(tmp_path: Path) -> None:
    """Four processes save the same entry 40 times each at once: none fails, the entry is one whole writer's file,
    and no temporary file is left."""
    import multiprocessing

    from mlcompress.vocab_trim.counting import TokenCounts

    path = tmp_path / "entry.npz"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_save_many, args=(str(path), v, 40)) for v in range(1, 5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    counts = TokenCounts.load(path).counts
    assert len(set(counts.tolist())) == 1 and counts[0] in (1, 2, 3, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.npz"]


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 cut short", b"\x93NUMPY not an npz"], ids=["empty", "truncated", "other"])
def test_a_damaged_cache_file_is_a_miss_that_is_overwritten(tmp_path: Path, text: list[str], damage: bytes) -> None:
    """A cache file cut short or not ours is counted again (with a warning) and overwritten, not a crash."""
    tok = _train("wordpiece", text[:200])
    corpus_file = tmp_path / "de.txt"
    corpus_file.write_text("\n".join(text[:200]) + "\n", encoding="utf-8")
    corpus = Corpus.parse(corpus_file)
    cache = tmp_path / "cache"
    first, _ = count_corpus(tok, corpus, "de", tok.get_vocab_size(), cache)
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(damage)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again, cached = count_corpus(tok, corpus, "de", tok.get_vocab_size(), cache)
    assert not cached and np.array_equal(first.counts, again.counts)
    third, cached = count_corpus(tok, corpus, "de", tok.get_vocab_size(), cache)  # the recount was written back
    assert cached and np.array_equal(first.counts, third.counts)
