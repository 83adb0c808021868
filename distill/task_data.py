"""Phase-2 task data: token tagging (`token<TAB>TAG`, blank line between sentences) and sentence pairs (TSV)."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mlcompress.errors import CorpusError, InputError

from .data import step_rows

TASKS = ("token-classification", "sequence-classification")


@dataclass
class TaskData:
    """Encoded examples of one task, padded to one length, with the label names."""

    task: str
    tensors: dict[str, torch.Tensor]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.tensors["input_ids"])


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def read_tagged(path: str | os.PathLike[str], max_sentences: int | None = None) -> list[tuple[list[str], list[str]]]:
    """Sentences of a `token<TAB>TAG` file (XTREME UD-POS layout)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"task data {path} not found", "pass a token<TAB>TAG file, e.g. xtreme_udpos/train-en.tsv.gz")
    sents, words, tags = [], [], []
    with _open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line.strip():
                if words:
                    sents.append((words, tags))
                    words, tags = [], []
                    if max_sentences and len(sents) >= max_sentences:
                        break
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                raise CorpusError(f"{path}: line {line[:60]!r} is not token<TAB>TAG", "use the XTREME UD-POS layout")
            words.append(parts[0])
            tags.append(parts[-1])
    if words and not (max_sentences and len(sents) >= max_sentences):
        sents.append((words, tags))
    if not sents:
        raise CorpusError(f"{path} holds no tagged sentences", "check the file")
    return sents


def read_pairs(path: str | os.PathLike[str], max_rows: int | None = None) -> list[tuple[str, str, str]]:
    """Rows of a `text_a<TAB>text_b<TAB>label` file (XNLI / PAWS-X layout)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"task data {path} not found", "pass a text_a<TAB>text_b<TAB>label file, e.g. xnli/dev-en.tsv.gz")
    rows = []
    with _open(path) as f:
        for raw in f:
            parts = raw.rstrip("\n").split("\t")
            if len(parts) < 3:
                raise CorpusError(f"{path}: a row has {len(parts)} columns, expected text_a, text_b, label",
                                  "labelled sentence-pair data is needed for training")
            rows.append((parts[0], parts[1], parts[2]))
            if max_rows and len(rows) >= max_rows:
                break
    if not rows:
        raise CorpusError(f"{path} holds no rows", "check the file")
    return rows


def encode_task(task: str, path: str | os.PathLike[str], tokenizer, max_length: int = 128,
                max_examples: int | None = None, labels: list[str] | None = None) -> TaskData:
    """Read and encode a task file; token labels go on each word's first piece, -100 elsewhere."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}", f"choose one of: {', '.join(TASKS)}")
    if task == "token-classification":
        sents = read_tagged(path, max_examples)
        names = labels or sorted({t for _, tags in sents for t in tags})
        index = {n: i for i, n in enumerate(names)}
        enc = tokenizer([w for w, _ in sents], is_split_into_words=True, truncation=True, max_length=max_length,
                        padding="max_length", return_tensors="pt")
        label_ids = torch.full(enc["input_ids"].shape, -100, dtype=torch.long)
        for row, (_, tags) in enumerate(sents):
            previous = None
            for pos, word in enumerate(enc.word_ids(row)):
                if word is not None and word != previous and tags[word] in index:
                    label_ids[row, pos] = index[tags[word]]
                previous = word
    else:
        rows = read_pairs(path, max_examples)
        names = labels or sorted({r[2] for r in rows})
        index = {n: i for i, n in enumerate(names)}
        enc = tokenizer([r[0] for r in rows], [r[1] for r in rows], truncation=True, max_length=max_length,
                        padding="max_length", return_tensors="pt")
        label_ids = torch.tensor([index.get(r[2], -100) for r in rows], dtype=torch.long)
    tensors = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": label_ids}
    return TaskData(task, tensors, names)


def example_batches(data: TaskData, batch_size: int, seed: int):
    """Global batch per step: examples in a seeded per-epoch order (deterministic, so resumable)."""

    def batch_for_step(step: int) -> dict[str, torch.Tensor]:
        rows = step_rows(len(data), batch_size, seed, step)
        return {k: v[rows] for k, v in data.tensors.items()}

    return batch_for_step
