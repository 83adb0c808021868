"""Sentence-level data for the embedding objective: what users feed an embedding model, in length-bucketed batches.

Users embed one sentence (or a short query) at a time, with the model's prefix. Paragraph corpora are cut
into sentences, and a share of them into shorter word spans, so that the lengths the student trains on
cover short queries as well as long sentences. Each step's batch is a function of the step number (exact
resume): half of it from each language, all of similar token length, so that padding wastes little.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from mlcompress.errors import CorpusError

# A sentence ends at . ! ? ; (Greek question mark) or CJK/Devanagari stops, before a space or the end.
_SENTENCE_END = re.compile(r"(?<=[.!?;;。！？।])\s+")


def split_sentences(lines: Iterable[str], min_words: int = 2, max_words: int = 64) -> list[str]:
    """Sentences of the lines (one paragraph or sentence per line); fragments under ``min_words`` words are
    dropped, and sentences longer than ``max_words`` words are cut into pieces of at most that many."""
    out: list[str] = []
    for line in lines:
        for sentence in _SENTENCE_END.split(line.strip()):
            words = sentence.split()
            if len(words) < min_words:
                continue
            for i in range(0, len(words), max_words):
                piece = words[i:i + max_words]
                if len(piece) >= min_words:
                    out.append(" ".join(piece))
    return out


def add_short_spans(sentences: list[str], share: float, seed: int, min_words: int = 2, max_words: int = 8) -> list[str]:
    """The sentences plus, for a ``share`` of them, one contiguous span of ``min_words``..``max_words`` words:
    short queries and titles, which paragraph text hardly contains."""
    if share <= 0:
        return list(sentences)
    gen = torch.Generator().manual_seed(seed)
    picks = torch.rand(len(sentences), generator=gen) < share
    extra: list[str] = []
    for keep, sentence in zip(picks.tolist(), sentences):
        words = sentence.split()
        if not keep or len(words) <= min_words:
            continue
        n = int(torch.randint(min_words, min(max_words, len(words) - 1) + 1, (1,), generator=gen))
        start = int(torch.randint(0, len(words) - n + 1, (1,), generator=gen))
        extra.append(" ".join(words[start:start + n]))
    return list(sentences) + extra


class SentencePool:
    """Tokenized sentences of each language (prefix and special tokens included), sorted by length.

    ``positions[lang][row]`` is each sorted row's index in the language's given sentence list, the key of its
    teacher targets; ``partners`` (set by ``pair``) gives each row its partner row in another language.
    """

    def __init__(self, tokenizer, texts: Mapping[str, list[str]], prefix: str = "", max_length: int = 128) -> None:
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.ids: dict[str, list[list[int]]] = {}
        self.lengths: dict[str, torch.Tensor] = {}
        self.positions: dict[str, torch.Tensor] = {}
        self.partners: dict[str, tuple[str, torch.Tensor]] = {}
        for lang, sentences in texts.items():
            if not sentences:
                raise CorpusError(f"the {lang} text has no sentence of two or more words",
                                  "give that language running text, one sentence or paragraph per line")
            encoded = tokenizer([prefix + s for s in sentences], truncation=True, max_length=max_length)["input_ids"]
            self._set(lang, encoded, list(range(len(encoded))))

    def _set(self, lang: str, rows: list[list[int]], positions: list[int]) -> None:
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # stable: ties keep the given order
        self.ids[lang] = [rows[i] for i in order]
        self.positions[lang] = torch.tensor([positions[i] for i in order], dtype=torch.long)
        self.lengths[lang] = torch.tensor([len(rows[i]) for i in order], dtype=torch.long)

    def in_order(self, lang: str) -> list[list[int]]:
        """The language's token rows in the given sentence order (position 0 first), as teacher targets key them."""
        rows: list[list[int]] = [[] for _ in self.ids[lang]]
        for row, pos in zip(self.ids[lang], self.positions[lang].tolist()):
            rows[pos] = row
        return rows

    def first(self, counts: Mapping[str, int]) -> SentencePool:
        """A pool of each language's first ``counts[lang]`` sentences (by position)."""
        pool = object.__new__(SentencePool)
        pool.pad_id, pool.ids, pool.lengths, pool.positions, pool.partners = self.pad_id, {}, {}, {}, {}
        for lang in self.ids:
            keep = [(row, pos) for row, pos in zip(self.ids[lang], self.positions[lang].tolist()) if pos < counts[lang]]
            if not keep:
                raise CorpusError(f"no {lang} sentence is left for training", "give the run more time or more text")
            pool._set(lang, [r for r, _ in keep], [p for _, p in keep])
        return pool

    def pair(self, partners: Mapping[str, tuple[str, torch.Tensor]]) -> None:
        """Give each language's rows a partner: ``partners[lang] = (other, position in other of each position)``."""
        for lang, (other, by_position) in partners.items():
            row_of = torch.empty(len(self.positions[other]), dtype=torch.long)
            row_of[self.positions[other]] = torch.arange(len(self.positions[other]))
            self.partners[lang] = (other, row_of[by_position[self.positions[lang]]])

    def sizes(self) -> dict[str, int]:
        """Sentences per language."""
        return {lang: len(ids) for lang, ids in self.ids.items()}

    def mean_length(self) -> float:
        """Mean token length over all languages' sentences (for throughput estimates)."""
        return float(torch.cat(list(self.lengths.values())).float().mean())

    def batch_for_step(self, batch_size: int, seed: int, window: float = 0.02):
        """A function of the step: ``batch_size`` sentences, an equal share per language, of similar length.

        A length is drawn from the first language's sentences; each language contributes sentences from a
        window (a ``window`` share of its sentences) around that length. With partners, half of each language's
        share is drawn so and each drawn sentence brings its partner along (next to it in the batch).
        """
        langs = list(self.ids)
        share = batch_size // len(langs)
        if share < 1 or (self.partners and batch_size < 2 * len(langs)):
            raise CorpusError(f"batch size {batch_size} is too small for {len(langs)} languages",
                              f"use a batch size of at least {2 * len(langs)}")
        counts = [share + (1 if i < batch_size - share * len(langs) else 0) for i in range(len(langs))]
        if self.partners:  # each drawn row brings a partner; the first language draws what an odd split leaves
            counts = [c // 2 for c in counts]
            counts[0] += (batch_size - 2 * sum(counts))

        def batch(step: int) -> dict[str, torch.Tensor]:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
            first = self.lengths[langs[0]]
            target = int(first[int(torch.randint(len(first), (1,), generator=gen))])
            rows: list[tuple[str, int]] = []
            for lang, n in zip(langs, counts):
                for i in self._window(lang, n, target, window, gen).tolist():
                    rows.append((lang, i))
                    if self.partners and len(rows) < batch_size:
                        other, table = self.partners[lang]
                        rows.append((other, int(table[i])))
            out = pad_rows([self.ids[lang][i] for lang, i in rows], self.pad_id)
            out["language"] = torch.tensor([langs.index(lang) for lang, _ in rows], dtype=torch.long)
            out["position"] = torch.stack([self.positions[lang][i] for lang, i in rows])
            return out

        return batch

    def _window(self, lang: str, n: int, target: int, window: float, gen: torch.Generator) -> torch.Tensor:
        """``n`` random rows of the language from a window of similar length around ``target`` tokens."""
        lengths = self.lengths[lang]
        width = max(4 * n, int(window * len(lengths)))
        centre = int(torch.searchsorted(lengths, target))
        lo = max(0, min(centre - width // 2, len(lengths) - width))
        hi = min(len(lengths), lo + width)
        return lo + torch.randint(hi - lo, (n,), generator=gen)


def pad_rows(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of token rows, right-padded to the longest."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}
