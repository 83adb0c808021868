"""Token counting over corpora, fast and exact, with a cache so that a new policy costs no recount.

Text is split at ASCII spaces and each distinct chunk is tokenized once; its tokens are
multiplied by how often the chunk occurs. This equals tokenizing every line whenever the
tokenizer's pre-tokenizer splits at spaces (Metaspace, BERT, byte-level BPE...), which
``decomposes`` checks on probe strings and on the corpus's first lines before it is used; a
tokenizer that fails the check is counted line by line instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import time
import uuid
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from mlcompress.errors import CorpusError

from mlcompress.corpus import Corpus

_PROBES = (
    "a b", "a  b", " a", "a ", "  ", "ab  cd e", "x\ty z", "Hello, world! 1 2.", "a \u00a0 b",
    "Ñandú  ça va", "don't stop", "e\u0301 f", "東京 は", "a\u3000b c", "  lead trail  ",
)
_CHECK_LINES = 32
_JOIN = 512


@dataclass
class TokenCounts:
    """How often each token id occurs in one language's corpus (ids of the source tokenizer)."""

    counts: np.ndarray  # int64, one entry per token id
    lines: int
    seconds: float
    method: str  # "chunks" (exact fast path) or "lines"

    @property
    def total(self) -> int:
        """Number of token occurrences."""
        return int(self.counts.sum())

    def save(self, path: Path) -> None:
        """Store as .npz through a temporary file of this writer's own, renamed into place: two processes counting the
        same corpus at once each write their own file, and a reader never sees half of one."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "xb") as handle:
                np.savez_compressed(handle, counts=self.counts, lines=self.lines, seconds=self.seconds, method=self.method)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: Path) -> TokenCounts:
        """Read what ``save`` wrote."""
        with np.load(path) as data:
            return cls(data["counts"], int(data["lines"]), float(data["seconds"]), str(data["method"]))


# what a damaged or foreign cache file raises when it is read
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile)


def _cached(path: Path, vocab_size: int) -> TokenCounts | None:
    """The counts cached at ``path``, or None when there are none that fit; a damaged file is a miss (with a warning),
    so that the recount overwrites it instead of every later trim failing on it."""
    if not path.is_file():
        return None
    try:
        found = TokenCounts.load(path)
    except _UNREADABLE as exc:
        warnings.warn(f"the token-count cache file {path} is unreadable ({type(exc).__name__}: {exc}); "
                      "counting again and overwriting it", RuntimeWarning, stacklevel=3)
        return None
    return found if len(found.counts) == vocab_size else None


def _encode_ids(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(list(texts), add_special_tokens=False)]


def _chunk_texts(line: str) -> list[str]:
    parts = line.split(" ")
    return [parts[0]] + [" " + p for p in parts[1:]]


def decomposes(tok: Tokenizer, sample: Sequence[str] = ()) -> bool:
    """Whether tokenizing space-separated chunks alone gives the tokens of the whole line."""
    lines = list(_PROBES) + list(sample)
    chunked = [_chunk_texts(line) for line in lines]
    parts = iter(_encode_ids(tok, [t for chunks in chunked for t in chunks]))
    for ids, chunks in zip(_encode_ids(tok, lines), chunked):
        if ids != [i for _ in chunks for i in next(parts)]:
            return False
    return True


def count_lines(tok: Tokenizer, lines: Iterable[str], vocab_size: int, exact_check: bool = True) -> TokenCounts:
    """Count token ids over ``lines`` (each tokenized without special tokens)."""
    start = time.perf_counter()
    it = iter(lines)
    head = list(itertools.islice(it, _CHECK_LINES))
    counts = np.zeros(vocab_size, dtype=np.int64)
    n = 0
    if not exact_check or decomposes(tok, head):
        first: Counter[str] = Counter()
        rest: Counter[str] = Counter()
        for line in itertools.chain(head, it):
            parts = line.split(" ")
            first[parts[0]] += 1
            rest.update(parts[1:])
            n += 1
        _accumulate(counts, _encode_ids(tok, list(first)), np.fromiter(first.values(), np.int64, len(first)))
        _count_words(tok, rest, counts, join=True)
        method = "chunks"
    else:
        batch: list[str] = []
        for line in itertools.chain(head, it):
            batch.append(line)
            if len(batch) == 4096:
                _accumulate(counts, _encode_ids(tok, batch), None)
                n += len(batch)
                batch = []
        _accumulate(counts, _encode_ids(tok, batch), None)
        n += len(batch)
        method = "lines"
    return TokenCounts(counts, n, time.perf_counter() - start, method)


def _count_words(tok: Tokenizer, words: Mapping[str, int], counts: np.ndarray, join: bool) -> None:
    """Add the tokens of each word as it reads after a space, times its count.

    With ``join``, words that occur equally often are tokenized together as one space-joined
    text (exact when the tokenizer ``decomposes``), so a few hundred texts carry them all.
    """
    by_count: dict[int, list[str]] = {}
    for word, c in words.items():
        by_count.setdefault(int(c), []).append(word)
    texts: list[str] = []
    weights: list[int] = []
    step = _JOIN if join else 1
    for c, group in by_count.items():
        for i in range(0, len(group), step):
            texts.append(" " + " ".join(group[i : i + step]))
            weights.append(c)
    _accumulate(counts, _encode_ids(tok, texts), np.asarray(weights, dtype=np.int64))


def count_word_list(tok: Tokenizer, words: Iterable[tuple[str, int]], vocab_size: int) -> TokenCounts:
    """Count token ids over a word-frequency list: each word tokenized as it reads after a space, times its count."""
    start = time.perf_counter()
    table: Counter[str] = Counter()
    for word, c in words:
        table[word] += c
    counts = np.zeros(vocab_size, dtype=np.int64)
    exact = decomposes(tok)
    _count_words(tok, table, counts, join=exact)
    return TokenCounts(counts, len(table), time.perf_counter() - start, "words" if exact else "words-single")


def _accumulate(counts: np.ndarray, ids: list[list[int]], weights: np.ndarray | None) -> None:
    if not ids:
        return
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    w = None if weights is None else np.repeat(weights, lengths)
    counts += np.bincount(flat, weights=w, minlength=len(counts)).astype(np.int64)[: len(counts)]


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """A key for the tokenizer's behaviour (its whole serialised pipeline)."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    """Where counts are cached: $MLCOMPRESS_CACHE/counts, else ~/.cache/mlcompress/counts."""
    root = os.environ.get("MLCOMPRESS_CACHE") or Path.home() / ".cache" / "mlcompress"
    return Path(root) / "counts"


def count_corpus(
    tok: Tokenizer,
    corpus: Corpus,
    language: str,
    vocab_size: int,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    half: int | None = None,
) -> tuple[TokenCounts, bool]:
    """Counts for one (tokenizer, corpus, language), from the cache when present; returns (counts, cached).

    ``half`` 0 or 1 counts only the even or the odd lines (a word list is not split): the two halves
    sum to the whole, and one half checked against the other estimates coverage of unseen text.
    """
    cache = (cache_dir or default_cache_dir())
    split = "" if half is None or corpus.word_list is not None else f"-h{half}"
    key = f"{tokenizer_fingerprint(tok)}-{corpus.fingerprint()}-{language}{split}.npz"
    path = cache / key
    found = _cached(path, vocab_size) if use_cache else None
    if found is not None:
        return found, True
    if corpus.word_list is not None:
        result = count_word_list(tok, corpus.word_counts(), vocab_size)
    elif split:
        result = count_lines(tok, itertools.islice(corpus.lines(), half, None, 2), vocab_size)
    else:
        result = count_lines(tok, corpus.lines(), vocab_size)
    if (result.lines == 0 or result.total == 0) and not split:  # a half may be empty: the caller checks the sum
        raise CorpusError(f"corpus {corpus.spec} for {language!r} has no text", "pass a corpus with at least one non-empty line")
    if use_cache:
        cache.mkdir(parents=True, exist_ok=True)
        result.save(path)
    return result, False
