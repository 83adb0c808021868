"""The default trim recipe: corpus tokens + each language's most frequent words (wordfreq) + word variants, within a
vocabulary budget, with a held-out coverage estimate in mlcompress.json and `mlcompress inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from conftest import read_lines
from mlcompress.vocab_trim import trim
from mlcompress.vocab_trim.frequent_words import top_words

COUNT_LINES = 40  # a small corpus: it misses many common words, as a few MB of text misses many word forms


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    from tiny_models import build_xlmr, training_lines

    return build_xlmr(tmp_path_factory.mktemp("recipe") / "xlmr", training_lines(data_dir)).path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipe-corpora")
    out = {}
    for lang in ("en", "de"):
        out[lang] = root / f"{lang}.txt"
        out[lang].write_text("\n".join(read_lines(data_dir / "mono" / f"{lang}.txt.gz", COUNT_LINES, skip=600)) + "\n",
                             encoding="utf-8")
    return out


def _kept(out: Path) -> set[int]:
    return set(json.loads((out / "id_map.json").read_text())["old_ids"])


def test_default_trim_covers_held_out_words_a_mono_only_trim_drops(model: Path, corpora: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    default = trim(model, "en,de", corpora, tmp_path / "default")
    mono = trim(model, "en,de", corpora, tmp_path / "mono", frequent_words=0, word_variants=False)
    corpus_text = " ".join(p.read_text(encoding="utf-8") for p in corpora.values())
    # held-out words: frequent words the corpus never wrote
    unseen = sorted({w for lang in ("en", "de") for w in top_words(lang, 300) if f" {w} " not in f" {corpus_text} "})
    assert len(unseen) > 50
    src = AutoTokenizer.from_pretrained(model)
    pieces = {w: src(" " + w, add_special_tokens=False)["input_ids"] for w in unseen}
    by_default, by_mono = _kept(tmp_path / "default"), _kept(tmp_path / "mono")
    covered_default = [w for w, ids in pieces.items() if set(ids) <= by_default]
    covered_mono = [w for w, ids in pieces.items() if set(ids) <= by_mono]
    assert len(covered_default) == len(unseen), sorted(set(unseen) - set(covered_default))[:10]
    assert len(covered_mono) < len(unseen) * 0.8, (len(covered_mono), len(unseen))
    # and the trimmed tokenizer writes those words with the source's tokens
    new = AutoTokenizer.from_pretrained(tmp_path / "default")
    old_ids = json.loads((tmp_path / "default" / "id_map.json").read_text())["old_ids"]
    for w, ids in list(pieces.items())[:50]:
        assert [old_ids[i] for i in new(" " + w, add_special_tokens=False)["input_ids"]] == ids, w
    assert default.vocab_after > mono.vocab_after
    assert default.frequent_words == {"en": 20_000, "de": 20_000} and mono.frequent_words == {}


def test_held_out_coverage_is_estimated_and_recorded(model: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    from mlcompress.orchestrate.inspect import inspect

    default = trim(model, "en,de", corpora, tmp_path / "default")
    mono = trim(model, "en,de", corpora, tmp_path / "mono", frequent_words=0, word_variants=False)
    for lang in ("en", "de"):
        assert 0.5 < mono.heldout_coverage[lang] < default.heldout_coverage[lang] <= 1.0
    record = json.loads((tmp_path / "default" / "mlcompress.json").read_text())
    assert record["metrics"]["heldout_coverage"] == default.heldout_coverage
    assert record["parameters"]["frequent_words"] == 20_000 and record["parameters"]["word_variants"] is True
    assert inspect(tmp_path / "default")["heldout_coverage"] == default.heldout_coverage


def test_budget_cuts_the_rarest_words_first(model: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    full = trim(model, "en,de", corpora, tmp_path / "full")
    mono = trim(model, "en,de", corpora, tmp_path / "mono", frequent_words=0)
    budget = (full.vocab_after + mono.vocab_after) // 2
    cut = trim(model, "en,de", corpora, tmp_path / "cut", max_vocab=budget)
    assert mono.vocab_after < cut.vocab_after <= budget < full.vocab_after
    kept_words = cut.frequent_words["en"]
    assert 0 < kept_words < 20_000 and cut.frequent_words["de"] == kept_words
    assert any("budget" in note for note in cut.notes)
    # the top words made it, the rarest did not
    src = AutoTokenizer.from_pretrained(model)
    kept = _kept(tmp_path / "cut")
    top = top_words("en", 20)
    assert all(set(src(" " + w, add_special_tokens=False)["input_ids"]) <= kept for w in top)


def test_a_language_without_a_word_list_says_so(model: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    """Swahili has no wordfreq list: the trim keeps what its corpus uses and says so."""
    result = trim(model, "en,sw", {"en": corpora["en"], "sw": corpora["de"]}, tmp_path / "sw")
    assert "sw" not in result.frequent_words and result.frequent_words["en"] == 20_000
    assert any("no word list for sw" in note for note in result.notes)


def test_an_explicit_policy_keeps_just_what_it_names(model: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    top = trim(model, "en,de", corpora, tmp_path / "top", top_k=50)
    assert top.frequent_words == {} and top.notes == []
    both = trim(model, "en,de", corpora, tmp_path / "both", top_k=50, frequent_words=100)
    assert both.vocab_after > top.vocab_after and both.frequent_words == {"en": 100, "de": 100}


def test_word_lists_alone_keep_what_sentences_need_and_lists_cannot_show() -> None:
    """A language known by word lists alone keeps the digit, punctuation and symbol pieces (no list holds them); one
    written without spaces keeps every piece of its script too (its pieces span words: 彼女は)."""
    from mlcompress.vocab_trim.policies import word_list_ids

    surface = ["", "Haus", "?", "“", "12", "€", "彼女は", "ありがとう", "カタカナ", "Straße", "ß", None]
    assert word_list_ids(surface, ["en", "de"]) == {0, 2, 3, 4, 5}
    assert word_list_ids(surface, ["en", "ja"]) == {0, 2, 3, 4, 5, 6, 7, 8}
