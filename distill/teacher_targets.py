"""Teacher targets computed once: each training sentence's pooled teacher embedding and the teacher hidden states the
objective matches, stored at fp16 and memory-mapped, so that training runs the student alone.

Each language's sentences are processed in the pool's seeded order, in chunks of ``CHUNK`` sentences. A chunk is
written atomically (its offsets file last marks it complete), so an interrupted build resumes at the next chunk and
a later run on the same teacher and text that needs more sentences extends the cache instead of redoing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .losses import mean_pool

CHUNK = 256  # sentences per chunk file
_BATCH_TOKENS = 4096  # padded tokens per teacher forward


class TeacherTargets:
    """The cache of one teacher on one text: ``pooled`` embeddings and the ``layers`` of ``hidden_states`` per token.

    ``root`` holds one folder per language with ``pooled-NNNNNN.npy`` ([n, H]), ``hidden-NNNNNN.npy``
    ([tokens, len(layers), H], when layers are stored) and ``offsets-NNNNNN.npy`` ([n + 1]) per chunk.
    """

    def __init__(self, root: Path, layers: Sequence[int], pooling: str = "mean") -> None:
        self.root, self.layers, self.pooling = Path(root), tuple(int(t) for t in layers), pooling
        self._open: dict[tuple[str, int, str], np.ndarray] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        spec = {"layers": list(self.layers), "pooling": pooling, "chunk": CHUNK}
        marker = self.root / "targets.json"
        if marker.is_file() and json.loads(marker.read_text()) != spec:
            raise ValueError(f"{self.root} holds teacher targets of other settings")  # its key names the settings
        if not marker.is_file():
            partial = marker.with_name(marker.name + ".partial")
            partial.write_text(json.dumps(spec) + "\n")
            os.replace(partial, marker)

    def done(self, lang: str) -> int:
        """How many of the language's sentences (from position 0 on) have their targets stored."""
        count = 0
        while (self._file(lang, count // CHUNK, "offsets")).is_file():
            count += len(self._array(lang, count // CHUNK, "offsets")) - 1
            if count % CHUNK:  # a short chunk is the language's last
                break
        return count

    def build(self, teacher: torch.nn.Module, ids: dict[str, list[list[int]]], wanted: dict[str, int], pad_id: int,
              deadline: float | None = None, autocast: str | None = None) -> dict[str, int]:
        """Extend the cache to ``wanted`` sentences per language (``ids``: each language's token ids in pool order),
        one chunk of each language in turn; stop between chunks once ``deadline`` (perf_counter) has passed.

        Returns the sentences stored per language. ``autocast`` ``"bf16"`` runs the teacher in bf16.
        """
        done = {lang: self.done(lang) for lang in ids}
        device = next(teacher.parameters()).device
        while any(done[lang] < min(wanted[lang], len(ids[lang])) for lang in ids):
            if deadline is not None and time.perf_counter() >= deadline and all(done.values()):
                break  # out of time, with some text for every language
            for lang in ids:
                end = min(wanted[lang], len(ids[lang]))
                if done[lang] < end:
                    chunk, kept = divmod(done[lang], CHUNK)  # kept: rows of a short chunk, stored as they were
                    rows = ids[lang][chunk * CHUNK + kept:(chunk + 1) * CHUNK]
                    computed = self._forward(teacher, rows, pad_id, device, autocast)
                    self._write_chunk(lang, chunk, *(self._extend(lang, chunk, *computed) if kept else computed))
                    done[lang] = chunk * CHUNK + kept + len(rows)
        return done

    def _extend(self, lang: str, chunk: int, pooled: np.ndarray, hidden: np.ndarray | None,
                offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """A short chunk's stored rows followed by new ones: what was stored is kept bit for bit (recomputing it in
        other batches would change it in the last bits on CPUs whose kernels depend on the batch's shape)."""
        old = self._array(lang, chunk, "offsets")
        both = np.concatenate([old, offsets[1:] + old[-1]])
        merged = np.concatenate([self._array(lang, chunk, "hidden"), hidden]) if hidden is not None else None
        return np.concatenate([self._array(lang, chunk, "pooled"), pooled]), merged, both

    def _forward(self, teacher: torch.nn.Module, rows: list[list[int]], pad_id: int, device: torch.device,
                 autocast: str | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The teacher's pooled embeddings, hidden states (the stored layers, real tokens only) and token offsets."""
        from .sentences import pad_rows

        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pooled: list[torch.Tensor | None] = [None] * len(rows)
        hidden: list[torch.Tensor | None] = [None] * len(rows)
        cast = torch.autocast(device.type, dtype=torch.bfloat16) if autocast == "bf16" else contextlib.nullcontext()
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and len(rows[order[end]]) * (end + 1 - start) <= _BATCH_TOKENS:
                end += 1
            picked = order[start:end]
            batch = {k: v.to(device) for k, v in pad_rows([rows[i] for i in picked], pad_id).items()}
            with torch.inference_mode(), cast:
                out = teacher(**batch, output_hidden_states=True)
            last = out.last_hidden_state
            emb = last[:, 0].float() if self.pooling == "cls" else mean_pool(last, batch["attention_mask"])
            stack = torch.stack([out.hidden_states[t] for t in self.layers], 2) if self.layers else None
            for j, i in enumerate(picked):
                pooled[i] = emb[j].half().cpu()
                if stack is not None:
                    hidden[i] = stack[j, :len(rows[i])].half().cpu()
            start = end
        offsets = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
        stored = torch.cat(hidden).numpy() if self.layers else None  # type: ignore[arg-type]
        return torch.stack(pooled).numpy(), stored, offsets  # type: ignore[arg-type]

    def _write_chunk(self, lang: str, chunk: int, pooled: np.ndarray, hidden: np.ndarray | None,
                     offsets: np.ndarray) -> None:
        """Write one chunk's files, each renamed into place; the offsets file, written last, marks it complete."""
        (self.root / lang).mkdir(parents=True, exist_ok=True)
        arrays = [("pooled", pooled)] + ([("hidden", hidden)] if hidden is not None else []) + [("offsets", offsets)]
        for kind, array in arrays:
            target = self._file(lang, chunk, kind)
            partial = target.with_name(target.name + ".partial")
            with partial.open("wb") as f:
                np.save(f, array)
            os.replace(partial, target)
            self._open.pop((lang, chunk, kind), None)  # a map of the file it replaced would read stale rows

    def _file(self, lang: str, chunk: int, kind: str) -> Path:
        return self.root / lang / f"{kind}-{chunk:06d}.npy"

    def _array(self, lang: str, chunk: int, kind: str) -> np.ndarray:
        key = (lang, chunk, kind)
        if key not in self._open:
            self._open[key] = np.load(self._file(lang, chunk, kind), mmap_mode="r")
        return self._open[key]

    def pooled(self, lang: str, count: int) -> torch.Tensor:
        """The pooled teacher embeddings of the language's first ``count`` sentences, [count, H] fp32."""
        parts = [self._array(lang, c, "pooled") for c in range((count + CHUNK - 1) // CHUNK)]
        return torch.from_numpy(np.concatenate(parts)[:count].astype(np.float32))

    def lookup(self, langs: Sequence[str], language: torch.Tensor, position: torch.Tensor,
               length: int) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Targets of a batch: pooled [B, H] and, per stored layer, hidden states [B, length, H] (zeros on padding).

        Rows are gathered per chunk file with one fancy index each (not row by row), since this runs every step."""
        lang_index, pos = language.numpy(), position.numpy()
        pooled: np.ndarray | None = None
        padded: np.ndarray | None = None
        for li, chunk in sorted({(int(a), int(b)) for a, b in zip(lang_index, pos // CHUNK)}):
            where = np.nonzero((lang_index == li) & (pos // CHUNK == chunk))[0]
            lang, rows = langs[li], pos[where] % CHUNK
            emb = np.asarray(self._array(lang, chunk, "pooled")[rows], dtype=np.float32)
            if pooled is None:
                pooled = np.zeros((len(pos), emb.shape[-1]), dtype=np.float32)
            pooled[where] = emb
            if self.layers:
                if padded is None:
                    padded = np.zeros((len(pos), length, len(self.layers), emb.shape[-1]), dtype=np.float32)
                offsets = self._array(lang, chunk, "offsets")
                starts, sizes = offsets[rows], offsets[rows + 1] - offsets[rows]
                before = np.repeat(np.cumsum(sizes) - sizes, sizes)  # tokens of the earlier rows, per token
                token = np.arange(int(sizes.sum())) - before  # each token's place in its sentence
                stored = self._array(lang, chunk, "hidden")[np.repeat(starts, sizes) + token]
                padded[np.repeat(where, sizes), token] = stored
        emb_t = torch.from_numpy(pooled)  # numpy: no autocast rules apply
        if padded is None:
            return emb_t, {}
        states = torch.from_numpy(padded)
        return emb_t, {t: states[:, :, k] for k, t in enumerate(self.layers)}


def nearest(queries: torch.Tensor, keys: torch.Tensor, query_lengths: torch.Tensor | None = None,
            key_lengths: torch.Tensor | None = None, band: float = 0.25, block: int = 2048) -> torch.Tensor:
    """For each query, the index of its nearest key by cosine similarity (in blocks, to bound memory).

    With lengths (in tokens), only keys within ``band`` of the query's length (at least 2 tokens either way) compete,
    as a translation's length does: the pair then shares a batch with little padding. A query with no key in its band
    takes its nearest key of any length.
    """
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    found = []
    for i in range(0, len(q), block):
        sims = q[i:i + block] @ k.T
        if query_lengths is not None and key_lengths is not None:
            ql = query_lengths[i:i + block, None].float()
            inside = (key_lengths[None, :].float() - ql).abs() <= torch.clamp(band * ql, min=2.0)
            sims = torch.where(inside.any(1, keepdim=True), sims.masked_fill(~inside, -2.0), sims)
        found.append(sims.argmax(1))
    return torch.cat(found)


TEACHER_SHARE = 0.2  # of a time budget, for the teacher pass when the run sizes its own sentence pool
PASSES = 2  # without a budget or a cap: the pool a run of N steps reads about twice


def teacher_fingerprint(teacher_dir: Path) -> str:
    """What identifies a teacher's outputs: the digests of its configuration and weight files."""
    from mlcompress.artifacts import json_digest, sha256_file

    files = sorted(p for p in Path(teacher_dir).iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    return json_digest({p.name: sha256_file(p) for p in files})


def pool_size(pool, work: Path, wanted: dict[str, int] | None) -> dict[str, int] | None:
    """The sentences per language a run trains on: those saved in ``work`` by its first start (a resume keeps them),
    else ``wanted`` (None: what the teacher pass gets through in its share of the time budget)."""
    saved = work / "pool.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    return None if wanted is None else {lang: min(n, pool.sizes()[lang]) for lang, n in wanted.items()}


def prepare_targets(teacher: torch.nn.Module, pool, layers: Sequence[int], pooling: str, root: Path, work: Path,
                    wanted: dict[str, int] | None, deadline: float | None, autocast: str | None, main: bool,
                    wait) -> tuple[object, TeacherTargets, dict]:
    """Compute (or extend, or reuse) the teacher targets of the pool's first sentences and return the pool cut to
    them, the targets, and what the teacher pass did. The main process builds; the others ``wait`` and read."""
    targets = TeacherTargets(root, layers, pooling) if main else None
    counts = pool_size(pool, work, wanted)
    started, report = time.perf_counter(), {}
    if main:
        ids = {lang: pool.in_order(lang) for lang in pool.ids}
        before = {lang: targets.done(lang) for lang in ids}
        goal = counts or {lang: len(rows) for lang, rows in ids.items()}
        done = targets.build(teacher, ids, goal, pool.pad_id, None if counts else deadline, autocast)
        counts = {lang: min(n, done[lang]) for lang, n in (counts or done).items()}
        partial = work / "pool.json.partial"
        partial.write_text(json.dumps(counts) + "\n")
        os.replace(partial, work / "pool.json")
        report = {"sentences": counts, "computed": {lang: max(0, done[lang] - before[lang]) for lang in done},
                  "seconds": round(time.perf_counter() - started, 1)}
    wait()
    counts = json.loads((work / "pool.json").read_text())
    return pool.first(counts), targets or TeacherTargets(root, layers, pooling), report


def pair_by_teacher(pool, targets: TeacherTargets) -> None:
    """Pair each sentence with its nearest sentence of similar length in the other language under the teacher (the
    source language's sentences with the first target language's), for the cross-lingual ranking term."""
    langs = list(pool.ids)
    embeddings = {lang: targets.pooled(lang, int(pool.positions[lang].max()) + 1) for lang in langs}
    lengths = {}
    for lang in langs:  # by position
        lengths[lang] = torch.empty(len(embeddings[lang]), dtype=torch.long)
        lengths[lang][pool.positions[lang]] = pool.lengths[lang]
    partners = {}
    for lang in langs:
        other = langs[1] if lang == langs[0] else langs[0]
        partners[lang] = (other, nearest(embeddings[lang], embeddings[other], lengths[lang], lengths[other]))
    pool.pair(partners)
