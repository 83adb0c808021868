"""Each language's most frequent words (the `wordfreq` library): the default trim's cover for text its corpora never used.

A corpus of a few MB misses many common word forms; a trim kept to it cuts them into smaller pieces
and shifts their embeddings. Word-frequency lists, built from large web, subtitle, news and book
corpora, name the words a language's text will use. The trim keeps the pieces of the top words,
ranked, so that a vocabulary budget cuts the rarest words first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

DEFAULT_FREQUENT_WORDS = 20_000
"""Words per language. Chosen on XNLI / PAWS-X dev token coverage (de, es, el, ru, vi, hi, ar, ja, ko, en):
10k -> 20k words adds 0.1-0.3 points of coverage for about 1,200 tokens; 20k -> 40k adds under 0.15 points."""

DEFAULT_MAX_VOCAB = 48_000
"""Vocabulary budget for the word-list additions: about 32 MiB as an int8 e5-small bundle (4-bit embeddings,
about 0.19 MiB per 1,000 tokens). Tokens the corpora use are always kept, even past the budget."""

NO_RANK = np.iinfo(np.int64).max


@dataclass
class WordRanks:
    """For each token id, the rank of the most frequent listed word that uses it (``NO_RANK`` if none)."""

    ranks: np.ndarray
    words: dict[str, int] = field(default_factory=dict)  # words listed per language
    missing: list[str] = field(default_factory=list)  # languages the library has no list for

    def ids_below(self, rank: int) -> set[int]:
        """Token ids used by the words of rank < ``rank`` in some language."""
        return set(np.flatnonzero(self.ranks < rank).tolist())


def wordfreq_languages() -> set[str]:
    """Languages `wordfreq` has a list for (empty when it is not installed)."""
    try:
        import wordfreq
    except ImportError:
        return set()
    return set(wordfreq.available_languages("best"))


def top_words(language: str, n: int) -> list[str]:
    """The ``n`` most frequent words of ``language``, most frequent first (wordfreq's best list)."""
    import wordfreq

    words = []
    for word in wordfreq.get_frequency_dict(language, wordlist="best"):
        words.append(word)
        if len(words) >= n:
            break
    return words


def word_ranks(tok: Tokenizer, languages: list[str], n: int, vocab_size: int) -> WordRanks:
    """Rank each token by the first of each language's top ``n`` words that uses it.

    A word is tokenized as it reads after a space, in lower case and capitalised (as at a sentence
    start); both forms take the word's rank.
    """
    ranks = np.full(vocab_size, NO_RANK, dtype=np.int64)
    have = wordfreq_languages()
    out = WordRanks(ranks)
    for lang in languages:
        if lang not in have:
            out.missing.append(lang)
            continue
        words = top_words(lang, n) if n > 0 else []
        out.words[lang] = len(words)
        if not words:
            continue
        texts = [" " + w for w in words] + [" " + w[:1].upper() + w[1:] for w in words]
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        for k, enc in enumerate(encode(texts, add_special_tokens=False)):
            ids = np.asarray([i for i in enc.ids if i < vocab_size], dtype=np.int64)
            np.minimum.at(ranks, ids, k % len(words))
    return out


def within_budget(base: set[int], ranks: WordRanks, finish: Callable[[set[int]], set[int]], max_vocab: int | None,
                  n: int) -> tuple[set[int], int]:
    """``finish(base | words below rank r)`` for the largest r <= n whose result fits ``max_vocab``; returns (ids, r).

    ``finish`` adds what the trim adds anyway (word variants, merge closure), so the budget counts the
    vocabulary as written. When ``base`` alone is over the budget, no word is added (r = 0).
    """
    full = finish(base | ranks.ids_below(n))
    if max_vocab is None or len(full) <= max_vocab:
        return full, n
    lo, hi = 0, n  # finish(lo) fits (or lo == 0), finish(hi) does not
    best = finish(set(base))
    if len(best) > max_vocab:
        return best, 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ids = finish(base | ranks.ids_below(mid))
        if len(ids) <= max_vocab:
            lo, best = mid, ids
        else:
            hi = mid
    return best, lo


def per_language_words(ranks: WordRanks, cutoff: int) -> Mapping[str, int]:
    """How many of each language's listed words the budget kept."""
    return {lang: min(count, cutoff) for lang, count in ranks.words.items()}
