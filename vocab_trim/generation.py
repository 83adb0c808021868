"""Generation and a trimmed vocabulary: what the source model emits, and what a trim costs it.

A trimmed decoder can only write the tokens it kept, so what a generative trim must keep is what the model
would have generated, not only what the corpora hold (markup such as ``<strong>``, digit and punctuation runs).

- :func:`sample_emitted` samples continuations from the source model on target-language corpus lines (seeded,
  the model's own sampling settings) and returns the ids it emitted, which ``trim(generated=N)`` keeps.
- :func:`dropped_mass` measures, on held-out text, the source's next-token probability mass on the ids a trim
  removed, position by position: the share of its predictions a trimmed model can no longer make.
- :func:`greedy_identity` compares greedy continuations of the source and a trimmed model, as text.

``dropped_mass`` and ``greedy_identity`` read a model directory or take a loaded ``(model, tokenizer)`` pair, so
eval can call them on any source / trim pair.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcompress.corpus import Corpus
from mlcompress.errors import CorpusError, InputError

GENERATED_NEW_TOKENS = 48
"""Tokens sampled per continuation for ``trim(generated=N)``."""
GENERATED_SEED = 0
_PROMPT_POOL = 4000  # corpus lines per language that prompts are drawn from
_PROMPT_WORDS = (3, 12)  # a prompt is a line's first k words, k drawn in this range
_BATCH = 8


# ------------------------------------------------------------------------------------------- loading
def _pair(model: Any, tokenizer: Any = None) -> tuple[Any, Any]:
    """A loaded (model, tokenizer) from a directory, a ``(model, tokenizer)`` pair, or a model plus ``tokenizer``."""
    if isinstance(model, tuple):
        return model
    if isinstance(model, (str, os.PathLike)):
        from mlcompress.sources import load_model, load_tokenizer, resolve_model

        path = resolve_model(model).path
        return load_model(path), tokenizer if tokenizer is not None else load_tokenizer(path)
    if tokenizer is None:
        raise InputError("a loaded model needs its tokenizer", "pass tokenizer=..., or the model's directory")
    return model, tokenizer


@contextmanager
def _padding(tok: Any, side: str) -> Iterator[Any]:
    """The tokenizer padding on ``side`` (restored after), with a pad token (the eos when it has none)."""
    before = (tok.padding_side, tok.pad_token)
    tok.padding_side = side
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise InputError("the tokenizer has neither a pad nor an eos token to pad a batch with",
                             "set tokenizer.pad_token (any special token the model ignores) and save it again")
        tok.pad_token = tok.eos_token
    try:
        yield tok
    finally:
        tok.padding_side = before[0]
        if before[1] is None:
            tok.pad_token = None


def _encode(tok: Any, texts: Sequence[str], max_tokens: int | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"truncation": True, "max_length": max_tokens} if max_tokens else {}
    enc = tok(list(texts), return_tensors="pt", padding=True, **kwargs)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _eos_ids(model: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    return set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])


# ------------------------------------------------------------------------------- generation coverage
@dataclass
class Emitted:
    """What the source model wrote from the prompts: how often each id, and a record of how it was sampled."""

    counts: Counter[int]
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> set[int]:
        """Every id emitted at least once."""
        return set(self.counts)


def corpus_prompts(texts: Mapping[str, list[Corpus]], n: int, seed: int = GENERATED_SEED) -> list[tuple[str, str]]:
    """``n`` (language, prompt) pairs, split evenly over the languages with text corpora: seeded picks among each
    language's first corpus lines, each cut to its first few words (the model continues mid-sentence)."""
    langs = [lang for lang, cs in texts.items() if any(c.word_list is None for c in cs)]
    if not langs:
        raise CorpusError("generated continuations need prompts, and no corpus has text lines",
                          "pass a text corpus per language (--corpus LANG=PATH), or --generated 0")
    rng, out = random.Random(seed), []
    for k, lang in enumerate(langs):
        want = n // len(langs) + (k < n % len(langs))
        lines = itertools.chain.from_iterable(itertools.islice(c.lines(), _PROMPT_POOL) for c in texts[lang] if c.word_list is None)
        pool = [line for line in lines if len(line.split()) > _PROMPT_WORDS[0]]
        if not pool or not want:
            continue
        picked = rng.sample(pool, want) if want <= len(pool) else rng.choices(pool, k=want)
        for line in picked:
            words = line.split()
            out.append((lang, " ".join(words[: rng.randint(_PROMPT_WORDS[0], min(_PROMPT_WORDS[1], len(words) - 1))])))
    return out


def sample_continuations(model: Any, tok: Any, prompts: Sequence[str], new_tokens: int = GENERATED_NEW_TOKENS,
                         seed: int = GENERATED_SEED, batch_size: int = _BATCH) -> list[list[int]]:
    """The ids each prompt's sampled continuation holds (up to and including its end-of-sequence token).

    Seeded (the global torch generator is left as it was) and with the model's own sampling settings
    (``generation_config``: temperature, top-k, top-p), so that the model shows its habits.
    """
    import torch

    eos, out = _eos_ids(model), []
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    with _padding(tok, "left"), torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            enc = _encode(tok, prompts[start : start + batch_size])
            gen = model.generate(**enc, do_sample=True, max_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)
            new = gen if encoder_decoder else gen[:, enc["input_ids"].shape[1]:]
            for row in new.tolist():
                ends = [i for i, t in enumerate(row) if t in eos]
                out.append(row[: ends[0] + 1] if ends else row)
    return out


def _sampling(model: Any) -> dict[str, Any]:
    """The sampling settings generate() applies: the model's own, else transformers' defaults (top-k 50)."""
    cfg = model.generation_config
    defaults = getattr(cfg, "_get_default_generation_params", dict)()
    return {key: getattr(cfg, key, None) if getattr(cfg, key, None) is not None else defaults.get(key)
            for key in ("temperature", "top_k", "top_p")}


def sample_emitted(model: Any, tok: Any, texts: Mapping[str, list[Corpus]], n: int, *, model_key: str | None = None,
                   cache: Path | None = None, new_tokens: int = GENERATED_NEW_TOKENS, seed: int = GENERATED_SEED) -> Emitted:
    """Sample ``n`` continuations of corpus prompts from the source ``model`` and count the ids it emitted.

    With ``model_key`` (the weights' sha256) and ``cache``, the result is cached there: another policy or budget
    costs no second sampling.
    """
    prompts = corpus_prompts(texts, n, seed)
    record = {"continuations": len(prompts), "new_tokens": new_tokens, "seed": seed, "sampling": _sampling(model),
              "prompts_per_language": dict(Counter(lang for lang, _ in prompts))}
    key = None
    if model_key and cache is not None:
        from .counting import tokenizer_fingerprint

        blob = json.dumps([model_key, tokenizer_fingerprint(tok.backend_tokenizer), prompts, record], sort_keys=True)
        key = cache / f"generated-{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"
        if key.is_file():
            try:
                found = json.loads(key.read_text(encoding="utf-8"))
                return Emitted(Counter({int(k): v for k, v in found["counts"].items()}), record | {"cached": True})
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry: sample again and overwrite it
    counts = Counter(t for row in sample_continuations(model, tok, [p for _, p in prompts], new_tokens, seed) for t in row)
    record |= {"tokens_emitted": sum(counts.values()), "distinct_ids": len(counts)}
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        tmp = key.with_name(f".{key.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"counts": {str(k): v for k, v in counts.items()}, "record": record}), encoding="utf-8")
        os.replace(tmp, key)
    return Emitted(counts, record | {"cached": False})


# ------------------------------------------------------------------------------------------ dropped mass
@dataclass
class DroppedMass:
    """The source's next-token probability mass on removed ids, over the positions of held-out text."""

    mean: float  # mean over positions: the share of its predictions a trimmed model can no longer make
    p99: float  # 99th percentile over positions
    max: float
    top1_dropped: float  # share of positions whose most likely next token was removed (where greedy decoding differs)
    positions: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def dropped_masses(model: Any, texts: Sequence[str], kept: Mapping[str, Iterable[int]], *, tokenizer: Any = None,
                   max_tokens: int = 128, batch_size: int = 2) -> dict[str, DroppedMass]:
    """:func:`dropped_mass` for several trims of one source at once (one forward pass over ``texts``)."""
    import numpy as np
    import torch

    net, tok = _pair(model, tokenizer)
    names = list(kept)
    rows = net.get_output_embeddings().weight.shape[0]
    mask = torch.ones(rows, len(names))  # 1 where the trim removed the id
    for r, name in enumerate(names):
        ids = torch.tensor(sorted(set(kept[name])), dtype=torch.long)
        mask[ids[ids < rows], r] = 0.0
    masses, tops = [], []
    with _padding(tok, "right"), torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = _encode(tok, texts[start : start + batch_size], max_tokens)
            logits = net(**enc).logits.float()
            valid = enc["attention_mask"].bool()
            tops.append(mask[logits.argmax(-1)][valid])
            masses.append((logits.softmax(-1) @ mask)[valid])
            del logits
    if not masses:
        raise InputError("dropped_mass needs held-out text", "pass a few target-language sentences")
    mass, top = torch.cat(masses).clamp(0, 1).numpy(), torch.cat(tops).numpy()
    return {name: DroppedMass(float(mass[:, r].mean()), float(np.quantile(mass[:, r], 0.99)), float(mass[:, r].max()),
                              float(top[:, r].mean()), int(mass.shape[0])) for r, name in enumerate(names)}


def dropped_mass(model: Any, texts: Sequence[str], kept_ids: Iterable[int], *, tokenizer: Any = None,
                 max_tokens: int = 128, batch_size: int = 2) -> DroppedMass:
    """The source ``model``'s next-token probability mass on ids a trim removed, on held-out ``texts``.

    ``kept_ids``: the source ids the trim kept (``id_map.json``'s ``old_ids``; :func:`kept_ids`). At each position
    of each text (cut to ``max_tokens``) the source predicts the next token; the mass it puts on removed ids is what
    a trimmed model cannot say. Measure on text the trim did not count (it keeps every token its corpora use). An
    untrimmed copy gives 0. ``model``: a directory, a ``(model, tokenizer)`` pair, or a model with ``tokenizer``.
    """
    return dropped_masses(model, texts, {"": kept_ids}, tokenizer=tokenizer, max_tokens=max_tokens,
                          batch_size=batch_size)[""]


def kept_ids(trimmed: str | os.PathLike[str]) -> list[int]:
    """The source ids a trim kept, in new-id order (its ``id_map.json``)."""
    path = Path(trimmed) / "id_map.json"
    if not path.is_file():
        raise InputError(f"{trimmed} has no id_map.json", "pass a directory that `mlcompress trim` wrote")
    return list(json.loads(path.read_text(encoding="utf-8"))["old_ids"])


# --------------------------------------------------------------------------------------- greedy identity
def greedy_continuations(model: Any, prompts: Sequence[str], *, tokenizer: Any = None, new_tokens: int = 32,
                         batch_size: int = _BATCH) -> list[str]:
    """Greedy continuation of each prompt, as text (special tokens skipped)."""
    import torch

    net, tok = _pair(model, tokenizer)
    out: list[str] = []
    with _padding(tok, "left"), torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            enc = _encode(tok, prompts[start : start + batch_size])
            gen = net.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


@dataclass
class GreedyIdentity:
    """How many greedy continuations a trimmed model writes exactly as its source does."""

    identical: float  # share of prompts
    prompts: int
    differing: list[dict[str, str]] = field(default_factory=list)  # prompt, source's and trimmed model's text

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def greedy_identity(source: Any, trimmed: Any, prompts: Sequence[str], *, new_tokens: int = 32,
                    source_texts: Sequence[str] | None = None) -> GreedyIdentity:
    """Compare the greedy continuations of ``source`` and ``trimmed`` (directories or ``(model, tokenizer)`` pairs)
    on ``prompts``, as text. ``source_texts``: the source's continuations, when already computed (several trims)."""
    a = list(source_texts) if source_texts is not None else greedy_continuations(source, prompts, new_tokens=new_tokens)
    b = greedy_continuations(trimmed, prompts, new_tokens=new_tokens)
    differing = [{"prompt": p, "source": x, "trimmed": y} for p, x, y in zip(prompts, a, b) if x != y]
    return GreedyIdentity(1 - len(differing) / max(len(prompts), 1), len(prompts), differing)
