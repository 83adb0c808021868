"""The decoding loop over an exported decoder graph with numpy and onnxruntime only: left-padded batches, an empty
first-step cache, one forward step per new token, stop ids, and incremental text for streaming."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mlcompress.errors import InputError

from .decoder_families import DecoderSpec
from .sampling import Sampling, choose


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, left: bool, what: str = "prompt"
             ) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask [batch, longest] (int64), each row padded on the left (a decoder's prompts) or
    the right (an encoder's source texts); an empty row is refused, naming ``what`` it is."""
    if not rows or any(len(r) == 0 for r in rows):
        raise InputError(f"every {what} needs at least one token", f"pass non-empty {what}s")
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    return ids, mask


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask [batch, longest] (int64), each row padded on the left."""
    return pad_rows(rows, pad_id, left=True)


def position_ids(attention_mask: np.ndarray, seq: int) -> np.ndarray:
    """0-based positions of the last ``seq`` tokens, counted over real tokens (padding at 0), as transformers' generate."""
    full = np.clip(np.cumsum(attention_mask, axis=-1) - 1, 0, None)
    return full[:, attention_mask.shape[1] - seq:].astype(np.int64)


class DecoderSession:
    """An onnxruntime session of a decoder graph with its cache layout: one forward step at a time."""

    def __init__(self, session: Any, spec: DecoderSpec) -> None:
        self.session = session
        self.spec = spec
        self.inputs = {i.name for i in session.get_inputs()}
        self.outputs = [o.name for o in session.get_outputs()]

    def empty_past(self, batch: int) -> list[np.ndarray]:
        """The first step's cache: [batch, kv_heads, 0, head_dim] per layer's key and value."""
        shape = (batch, self.spec.num_kv_heads, 0, self.spec.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.spec.num_layers)]

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray]
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits [batch, seq, vocab] of ``input_ids`` after ``past``, and the cache with them appended."""
        feeds: dict[str, np.ndarray] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = position_ids(attention_mask, input_ids.shape[1])
        names = self.spec.input_names()[len(feeds):]
        feeds.update(zip(names, past))
        out = self.session.run(self.outputs, feeds)
        return out[0], list(out[1:])


def decode(runner: DecoderSession, rows: Sequence[Sequence[int]], *, pad_id: int, stop_ids: Sequence[int],
           max_new_tokens: int, sampling: Sampling = Sampling(), seed: int | None = None, min_new_tokens: int = 0,
           on_token: Callable[[list[list[int]]], None] | None = None) -> list[list[int]]:
    """The new tokens of each prompt in ``rows`` (a row ends with its stop id, when it met one).

    Stop ids are masked until ``min_new_tokens`` have been made (as transformers' min_new_tokens); finished rows are fed
    ``pad_id`` until the whole batch is done. ``on_token`` sees the tokens so far after every step.
    """
    ids, mask = left_pad(rows, pad_id)
    past = runner.empty_past(len(rows))
    rng = np.random.default_rng(seed)
    stops = np.asarray(sorted(set(stop_ids)), dtype=np.int64)
    done = np.zeros(len(rows), dtype=bool)
    out: list[list[int]] = [[] for _ in rows]
    feed = ids
    for step in range(max_new_tokens):
        logits, past = runner.step(feed, mask, past)
        last = np.array(logits[:, -1, :], dtype=np.float32)
        if step < min_new_tokens and stops.size:
            last[:, stops] = -np.inf
        tokens = np.where(done, pad_id, choose(last, sampling, rng))
        for i in np.flatnonzero(~done):
            out[i].append(int(tokens[i]))
        done |= np.isin(tokens, stops)
        if on_token is not None:
            on_token(out)
        if done.all():
            break
        feed = tokens[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
    return out


class TextStream:
    """Turns a growing list of token ids into new text pieces for a callback (never half a UTF-8 character)."""

    def __init__(self, decode_ids: Callable[[list[int]], str], callback: Callable[[str], None]) -> None:
        self.decode_ids = decode_ids
        self.callback = callback
        self.sent = ""

    def update(self, ids: list[int], final: bool = False) -> None:
        """Send the text that ``ids`` add to what was sent (held back while it ends in an incomplete character)."""
        text = self.decode_ids(ids)
        if (final or not text.endswith("\ufffd")) and text.startswith(self.sent) and len(text) > len(self.sent):
            self.callback(text[len(self.sent):])
            self.sent = text
