"""Phase-1 data: source and target text tokenized, packed into fixed-length blocks, mixed 50/50, MLM-masked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from mlcompress.errors import CorpusError


def pack_blocks(token_lines: Iterable[list[int]], block_size: int, bos_id: int, eos_id: int) -> torch.Tensor:
    """Concatenate token ids and cut them into ``<s> ... </s>`` blocks of exactly ``block_size`` ids."""
    body = block_size - 2
    if body < 1:
        raise CorpusError(f"block size {block_size} is too small", "use at least 8 (256 is the default)")
    stream = [i for ids in token_lines for i in ids]
    n = len(stream) // body
    if n == 0:
        return torch.empty(0, block_size, dtype=torch.long)
    ids = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    return torch.cat([torch.full((n, 1), bos_id), ids, torch.full((n, 1), eos_id)], dim=1)


def mixed_blocks(tokenizer, texts: Mapping[str, Iterable[str]], block_size: int = 256,
                 max_blocks_per_language: int | None = None) -> tuple[torch.Tensor, dict[str, int]]:
    """Blocks of every language, as many of each (the fewest any language has), interleaved."""
    per_lang: dict[str, torch.Tensor] = {}
    bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    for lang, lines in texts.items():
        batch = [line for line in lines if line.strip()]
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"] if batch else []
        per_lang[lang] = pack_blocks(ids, block_size, bos, eos)
        if len(per_lang[lang]) == 0:
            raise CorpusError(f"the {lang} text fills no block of {block_size} tokens",
                              "give more text for that language, or a smaller --block-size")
    n = min(len(b) for b in per_lang.values())
    if max_blocks_per_language:
        n = min(n, max_blocks_per_language)
    blocks = torch.stack([b[:n] for b in per_lang.values()], dim=1).reshape(-1, block_size)
    return blocks, {lang: n for lang in per_lang}


def mlm_mask(input_ids: torch.Tensor, generator: torch.Generator, vocab_size: int, mask_id: int | None,
             special_ids: Iterable[int], probability: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (80% mask token, 10% random, 10% kept); labels are -100 where nothing is predicted."""
    labels = input_ids.clone()
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for s in special_ids:
        special |= input_ids == s
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special
    labels[~chosen] = -100
    inputs = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    if mask_id is not None:
        inputs[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, labels


def step_rows(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Row indices of the global batch of ``step``: a seeded order per epoch, so any step can be rebuilt on resume."""
    start, rows = step * batch_size, []
    while len(rows) < batch_size:
        epoch, offset = divmod(start + len(rows), n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        rows.extend(order[offset: offset + batch_size - len(rows)].tolist())
    return rows
