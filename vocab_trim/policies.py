"""Selection policies: which token ids to keep, from per-language counts or from scripts alone.

Each policy is a small object with ``select(counts, pieces) -> set[int]``; the always-kept ids
(special, language-code and user-listed tokens) are added by ``trim``, not by policies.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mlcompress.errors import InputError

from mlcompress.languages import scripts_of

Counts = Mapping[str, np.ndarray]


def _ranked(counts: np.ndarray) -> np.ndarray:
    """Ids with a non-zero count, most frequent first (ties by id, so selection is deterministic)."""
    seen = np.flatnonzero(counts)
    return seen[np.lexsort((seen, -counts[seen]))]


def _require(counts: Counts, name: str) -> None:
    if not counts:
        raise InputError(f"the {name} policy needs token counts", "pass a corpus per language (--corpus LANG=PATH), or use --policy scripts")


@dataclass(frozen=True)
class TopK:
    """Keep the k tokens with the highest frequency, each language's counts weighted equally."""

    k: int
    needs_counts = True

    def select(self, counts: Counts, pieces: list[str]) -> set[int]:
        _require(counts, "top-k")
        mixed = sum(c / max(c.sum(), 1) for c in counts.values())
        order = _ranked(mixed)
        return set(order[: self.k].tolist())


@dataclass(frozen=True)
class MinCount:
    """Keep every token seen at least ``n`` times in some language's corpus."""

    n: int = 1
    needs_counts = True

    def select(self, counts: Counts, pieces: list[str]) -> set[int]:
        _require(counts, "min-count")
        return {int(i) for c in counts.values() for i in np.flatnonzero(c >= max(self.n, 1))}


@dataclass(frozen=True)
class Coverage:
    """Per language, keep the most frequent tokens that together cover ``fraction`` of its token occurrences."""

    fraction: float = 0.999
    needs_counts = True

    def select(self, counts: Counts, pieces: list[str]) -> set[int]:
        _require(counts, "coverage")
        if not 0 < self.fraction <= 1:
            raise InputError(f"coverage must be in (0, 1], got {self.fraction}", "e.g. --coverage 0.999")
        keep: set[int] = set()
        for c in counts.values():
            order = _ranked(c)
            cum = np.cumsum(c[order]) / max(c.sum(), 1)
            n = int(np.searchsorted(cum, self.fraction - 1e-12) + 1)
            keep.update(order[:n].tolist())
        return keep


@dataclass(frozen=True)
class Quotas:
    """Keep each language's own top-k tokens (k per language), the union of them all."""

    quotas: Mapping[str, int] = field(default_factory=dict)
    needs_counts = True

    def select(self, counts: Counts, pieces: list[str]) -> set[int]:
        _require(counts, "quota")
        missing = set(self.quotas) - set(counts)
        if missing:
            raise InputError(f"quota for language(s) without counts: {sorted(missing)}", "give each quota's language a corpus")
        keep: set[int] = set()
        for lang, k in self.quotas.items():
            keep.update(_ranked(counts[lang])[:k].tolist())
        return keep


@dataclass(frozen=True)
class Scripts:
    """Corpus-free: keep every piece written only in the languages' scripts, digits, punctuation and symbols.

    Lossless for any text in those scripts: a piece used to tokenize such text contains only its characters.
    """

    languages: tuple[str, ...]
    needs_counts = False

    def select(self, counts: Counts, pieces: list[str]) -> set[int]:
        allowed = scripts_of(list(self.languages))
        cache: dict[str, bool] = {}

        def ok(ch: str) -> bool:
            if ch not in cache:
                cat = unicodedata.category(ch)
                name = unicodedata.name(ch, "")
                first = name.split(" ", 1)[0]
                cache[ch] = (
                    cat[0] in "NPSZ"
                    or first in allowed
                    or (cat[0] == "M" and first == "COMBINING")
                    or (cat == "Cf")
                )
            return cache[ch]

        return {i for i, text in enumerate(pieces) if text is not None and all(ok(ch) for ch in text)}


UNSPACED = frozenset({"ja", "zh", "th", "km", "my"})
"""Languages written without spaces between words: a piece of their text often spans words ("彼女は"), which a
word-frequency list, one word at a time, never shows."""


def word_list_ids(surface: list[str | None], languages: list[str]) -> set[int]:
    """What the text of ``languages``, known by word lists alone, uses and the lists cannot show: the pieces written only
    in digits, punctuation, symbols and spaces, and for a language written without spaces every piece in its script
    (the script policy, lossless on such text)."""
    return Scripts(tuple(lang for lang in languages if lang in UNSPACED)).select({}, surface)


def make_policy(
    languages: list[str],
    top_k: int | None = None,
    min_count: int | None = None,
    coverage: float | None = None,
    quotas: Mapping[str, int] | None = None,
    scripts: bool = False,
) -> TopK | MinCount | Coverage | Quotas | Scripts:
    """The one policy the options ask for; with none given, keep every token the corpora use (min count 1)."""
    chosen = [x for x in (top_k, min_count, coverage, quotas or None, scripts or None) if x is not None]
    if len(chosen) > 1:
        raise InputError("choose one selection policy", "pass only one of --top-k, --min-count, --coverage, --quota, --scripts")
    if top_k is not None:
        if top_k <= 0:
            raise InputError(f"--top-k must be positive, got {top_k}")
        return TopK(top_k)
    if coverage is not None:
        return Coverage(coverage)
    if quotas:
        return Quotas(dict(quotas))
    if scripts:
        return Scripts(tuple(languages))
    return MinCount(min_count or 1)


def word_variants(pieces: list[str | None], keep: set[int], marker: str | None) -> set[int]:
    """``keep`` plus the case variants of every kept word piece, and word-start pieces without their mark.

    A language's words also occur capitalised at a sentence start and glued to punctuation
    (after a quote or a bracket); a small corpus misses many of those forms.
    """
    index = {p: i for i, p in enumerate(pieces) if p is not None}
    out = set(keep)
    for i in keep:
        piece = pieces[i] if i < len(pieces) else None
        if not piece:
            continue
        starts = bool(marker) and piece.startswith(marker)
        body = piece[len(marker):] if starts else piece
        if not body[:1].isalpha():
            continue
        forms = {body, body.lower(), body.capitalize(), body[:1].upper() + body[1:], body[:1].lower() + body[1:]}
        for form in forms:
            for prefix in ((marker, "") if starts else ("",)):
                j = index.get(prefix + form)
                if j is not None:
                    out.add(j)
    return out
