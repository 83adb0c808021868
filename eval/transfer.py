"""Zero-shot cross-lingual transfer: train on English, test on each target language, same recipe and seed for both models.

Two recipes: a frozen-encoder linear probe (``probe``: features computed once, a softmax classifier trained
full-batch; minutes on a CPU) and full fine-tuning of the encoder with a linear head (``finetune``; the
default when a GPU is present).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import SentencePairs, TaggedSentences
from .encoders import Encoder


@dataclass(frozen=True)
class Recipe:
    """Training settings shared by both models of a comparison."""

    mode: str = "probe"  # "probe" or "finetune"
    seed: int = 0
    probe_steps: int = 300
    probe_lr: float = 0.05
    probe_weight_decay: float = 1e-4
    ft_epochs: int = 2
    ft_lr: float = 3e-5
    ft_batch: int = 16
    pos_layer: int = -1


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``finetune`` on a GPU, ``probe`` otherwise."""
    if mode == "auto":
        import torch

        return "finetune" if torch.cuda.is_available() else "probe"
    if mode not in ("probe", "finetune"):
        from mlcompress.errors import InputError

        raise InputError(f"unknown transfer mode {mode!r}", "use probe, finetune or auto")
    return mode


def train_probe(x: np.ndarray, y: np.ndarray, n_classes: int, recipe: Recipe) -> Any:
    """A softmax classifier on standardised features, trained full-batch with Adam; returns predict(x) -> labels."""
    import torch

    torch.manual_seed(recipe.seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.as_tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    head = torch.nn.Linear(x.shape[1], n_classes)
    torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=recipe.probe_lr, weight_decay=recipe.probe_weight_decay)
    for _ in range(recipe.probe_steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(xt), yt).backward()
        opt.step()

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.as_tensor((z - mean) / std, dtype=torch.float32)).argmax(-1).numpy()

    return predict


def _tag_ids(train: TaggedSentences) -> dict[str, int]:
    return {t: i for i, t in enumerate(sorted({t for s in train.tags for t in s}))}


class Accuracy(float):
    """An accuracy that also keeps its per-unit outcomes (right and total per sentence or row), for the bootstrap."""

    right: np.ndarray
    total: np.ndarray

    def __new__(cls, right: np.ndarray, total: np.ndarray) -> Accuracy:
        obj = super().__new__(cls, float(np.sum(right)) / max(float(np.sum(total)), 1.0))
        obj.right, obj.total = np.asarray(right, dtype=np.float64), np.asarray(total, dtype=np.float64)
        return obj

    def __getnewargs__(self) -> tuple[np.ndarray, np.ndarray]:  # copy and pickle rebuild it from its units
        return self.right, self.total


def _token_accuracy(pred: list[np.ndarray], gold: list[list[str]], tags: dict[str, int]) -> Accuracy:
    right, total = [], []
    for p, g in zip(pred, gold):
        gi = np.array([tags.get(t, -1) for t in g])
        right.append(int((p[: len(gi)] == gi).sum()))
        total.append(len(gi))
    return Accuracy(np.array(right), np.array(total))


def _row_accuracy(pred: np.ndarray, labels: list[int]) -> Accuracy:
    hits = (np.asarray(pred) == np.asarray(labels, dtype=int)).astype(np.float64)
    return Accuracy(hits, np.ones_like(hits))


def pos_transfer(encoder: Encoder, train: TaggedSentences, tests: dict[str, TaggedSentences], recipe: Recipe) -> dict[str, float]:
    """Word-level POS accuracy per target language after training on English."""
    tags = _tag_ids(train)
    if recipe.mode == "finetune":
        return _finetune_tokens(encoder, train, tests, tags, recipe)
    feats = encoder.word_features(train.words, recipe.pos_layer)
    x = np.concatenate(feats)
    y = np.array([tags[t] for s in train.tags for t in s])
    predict = train_probe(x, y, len(tags), recipe)
    out = {}
    for lang, test in tests.items():
        pred = [predict(f) if len(f) else np.zeros(0, dtype=int) for f in encoder.word_features(test.words, recipe.pos_layer)]
        out[lang] = _token_accuracy(pred, test.tags, tags)
    return out


def pair_features(encoder: Encoder, pairs: SentencePairs, prefix: str) -> np.ndarray:
    """[u, v, |u-v|, u*v] of the normalised sentence embeddings of each pair."""
    from .retrieval import normalize

    u = normalize(encoder.embed(pairs.a, prefix))
    v = normalize(encoder.embed(pairs.b, prefix))
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


def nli_transfer(encoder: Encoder, train: SentencePairs, tests: dict[str, SentencePairs], recipe: Recipe, prefix: str) -> dict[str, float]:
    """NLI accuracy per target language after training on English rows."""
    if recipe.mode == "finetune":
        return _finetune_pairs(encoder, train, tests, recipe)
    y = np.asarray(train.labels, dtype=int)
    predict = train_probe(pair_features(encoder, train, prefix), y, 3, recipe)
    return {lang: _row_accuracy(predict(pair_features(encoder, t, prefix)), t.labels) for lang, t in tests.items()}


# ----------------------------------------------------------------------------------------------- fine-tuning
def _train_loop(model: Any, head: Any, batches: list[dict[str, Any]], loss_fn: Any, recipe: Recipe) -> None:
    import torch

    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.ft_lr, weight_decay=0.01)
    total = max(len(batches) * recipe.ft_epochs, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / total))
    gen = torch.Generator().manual_seed(recipe.seed)
    model.train(), head.train()
    for _ in range(recipe.ft_epochs):
        for i in torch.randperm(len(batches), generator=gen).tolist():
            opt.zero_grad()
            loss_fn(batches[i]).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
    model.eval(), head.eval()


def _finetune_tokens(encoder: Encoder, train: TaggedSentences, tests: dict[str, TaggedSentences], tags: dict[str, int],
                     recipe: Recipe) -> dict[str, float]:
    import torch

    if "finetune" not in encoder.capabilities:
        raise NotImplementedError(f"{encoder.kind} backend cannot be fine-tuned")
    torch.manual_seed(recipe.seed)
    model, tok = encoder.trainable_copy()
    device = next(model.parameters()).device
    head = torch.nn.Linear(model.config.hidden_size, len(tags)).to(device)

    def encode(words: list[list[str]], tag_lists: list[list[str]] | None) -> dict[str, Any]:
        enc = tok(words, is_split_into_words=True, padding=True, truncation=True, max_length=256, return_tensors="pt")
        enc.pop("token_type_ids", None)
        first = torch.full(enc["input_ids"].shape, -100, dtype=torch.long)
        for b in range(len(words)):
            seen: set[int] = set()
            for pos, w in enumerate(enc.word_ids(b)):
                if w is not None and w not in seen:
                    seen.add(w)
                    first[b, pos] = tags.get(tag_lists[b][w], -1) if tag_lists else w
        return {"enc": dict(enc), "labels": first}

    def logits(batch: dict[str, Any]) -> Any:
        hidden = model(**{k: v.to(device) for k, v in batch["enc"].items()}).last_hidden_state
        return head(hidden)

    def loss_fn(batch: dict[str, Any]) -> Any:
        return torch.nn.functional.cross_entropy(logits(batch).flatten(0, 1), batch["labels"].to(device).flatten(), ignore_index=-100)

    n = recipe.ft_batch
    batches = [encode(train.words[i : i + n], train.tags[i : i + n]) for i in range(0, len(train.words), n)]
    _train_loop(model, head, batches, loss_fn, recipe)
    out = {}
    with torch.inference_mode():
        for lang, test in tests.items():
            preds: list[np.ndarray] = []
            for i in range(0, len(test.words), 64):
                batch = encode(test.words[i : i + 64], None)
                lg = logits(batch).argmax(-1).cpu()
                for b, words in enumerate(test.words[i : i + 64]):
                    p = np.full(len(words), -2)
                    pos = (batch["labels"][b] >= 0).nonzero().flatten()
                    p[batch["labels"][b][pos].numpy()] = lg[b][pos].numpy()
                    preds.append(p)
            out[lang] = _token_accuracy(preds, test.tags, tags)
    del model
    return out


def _finetune_pairs(encoder: Encoder, train: SentencePairs, tests: dict[str, SentencePairs], recipe: Recipe) -> dict[str, float]:
    import torch

    if "finetune" not in encoder.capabilities:
        raise NotImplementedError(f"{encoder.kind} backend cannot be fine-tuned")
    torch.manual_seed(recipe.seed)
    model, tok = encoder.trainable_copy()
    device = next(model.parameters()).device
    head = torch.nn.Linear(model.config.hidden_size, 3).to(device)

    def encode(a: list[str], b: list[str], y: list[float]) -> dict[str, Any]:
        enc = tok(a, b, padding=True, truncation=True, max_length=256, return_tensors="pt")
        enc.pop("token_type_ids", None)
        return {"enc": dict(enc), "labels": torch.as_tensor([int(v) for v in y])}

    def logits(batch: dict[str, Any]) -> Any:
        enc = {k: v.to(device) for k, v in batch["enc"].items()}
        hidden = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return head((hidden * m).sum(1) / m.sum(1))

    def loss_fn(batch: dict[str, Any]) -> Any:
        return torch.nn.functional.cross_entropy(logits(batch), batch["labels"].to(device))

    n = recipe.ft_batch
    batches = [encode(train.a[i : i + n], train.b[i : i + n], train.labels[i : i + n]) for i in range(0, len(train.a), n)]
    _train_loop(model, head, batches, loss_fn, recipe)
    out = {}
    with torch.inference_mode():
        for lang, t in tests.items():
            preds = [logits(encode(t.a[i : i + 64], t.b[i : i + 64], t.labels[i : i + 64])).argmax(-1).cpu().numpy()
                     for i in range(0, len(t.a), 64)]
            out[lang] = _row_accuracy(np.concatenate(preds) if preds else np.zeros(0, dtype=int), t.labels)
    del model
    return out
