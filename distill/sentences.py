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
    """Tokenized sentences of each language (prefix and special tokens included), sorted by length."""

    def __init__(self, tokenizer, texts: Mapping[str, list[str]], prefix: str = "", max_length: int = 128) -> None:
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.ids: dict[str, list[list[int]]] = {}
        self.lengths: dict[str, torch.Tensor] = {}
        for lang, sentences in texts.items():
            if not sentences:
                raise CorpusError(f"the {lang} text has no sentence of two or more words",
                                  "give that language running text, one sentence or paragraph per line")
            encoded = tokenizer([prefix + s for s in sentences], truncation=True, max_length=max_length)["input_ids"]
            encoded.sort(key=len)
            self.ids[lang] = encoded
            self.lengths[lang] = torch.tensor([len(e) for e in encoded])

    def sizes(self) -> dict[str, int]:
        """Sentences per language."""
        return {lang: len(ids) for lang, ids in self.ids.items()}

    def mean_length(self) -> float:
        """Mean token length over all languages' sentences (for throughput estimates)."""
        return float(torch.cat(list(self.lengths.values())).float().mean())

    def batch_for_step(self, batch_size: int, seed: int, window: float = 0.02):
        """A function of the step: ``batch_size`` sentences, an equal share per language, of similar length.

        A length is drawn from the first language's sentences; each language contributes sentences from a
        window (a ``window`` share of its sentences) around that length.
        """
        langs = list(self.ids)
        share = batch_size // len(langs)
        if share < 1:
            raise CorpusError(f"batch size {batch_size} is smaller than the number of languages",
                              f"use a batch size of at least {len(langs)}")
        counts = [share + (1 if i < batch_size - share * len(langs) else 0) for i in range(len(langs))]

        def batch(step: int) -> dict[str, torch.Tensor]:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
            first = self.lengths[langs[0]]
            target = int(first[int(torch.randint(len(first), (1,), generator=gen))])
            rows: list[list[int]] = []
            for lang, n in zip(langs, counts):
                lengths = self.lengths[lang]
                width = max(4 * n, int(window * len(lengths)))
                centre = int(torch.searchsorted(lengths, target))
                lo = max(0, min(centre - width // 2, len(lengths) - width))
                hi = min(len(lengths), lo + width)
                picks = lo + torch.randint(hi - lo, (n,), generator=gen)
                rows.extend(self.ids[lang][int(i)] for i in picks)
            return pad_rows(rows, self.pad_id)

        return batch


def pad_rows(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of token rows, right-padded to the longest."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}
