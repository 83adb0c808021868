"""Distillation losses: hidden-state MSE, attention-distribution MSE or KL, soft cross-entropy at temperature T."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import attention_log_probs


def hidden_mse(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...],
               pairs: list[tuple[int, int]], mask: torch.Tensor | None = None,
               projection: torch.nn.Module | None = None) -> torch.Tensor:
    """Mean squared error between matched hidden states over real (unpadded) tokens."""
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in pairs:
        hs = student[s].float() if projection is None else projection(student[s]).float()
        diff = (hs - teacher[t].float()).pow(2).mean(-1)
        if mask is not None:
            diff = (diff * mask).sum() / mask.sum().clamp_min(1)
        else:
            diff = diff.mean()
        total = total + diff
    return total / max(len(pairs), 1)


def attention_loss(student: list[list], teacher: list[list], kind: str = "mse") -> torch.Tensor:
    """Match attention distributions of paired layers (captured query/key); heads are averaged when counts differ."""
    losses = []
    for s_store, t_store in zip(student, teacher):
        (sq, sk, smask, sscale), (tq, tk, tmask, tscale) = s_store[-1], t_store[-1]
        s_log = attention_log_probs(sq, sk, smask, sscale)
        with torch.no_grad():
            t_log = attention_log_probs(tq, tk, tmask, tscale)
        if s_log.shape[1] != t_log.shape[1]:
            s_log = torch.logsumexp(s_log, dim=1, keepdim=True) - torch.log(torch.tensor(float(s_log.shape[1])))
            t_log = torch.logsumexp(t_log, dim=1, keepdim=True) - torch.log(torch.tensor(float(t_log.shape[1])))
        if kind == "kl":
            losses.append(F.kl_div(s_log, t_log, log_target=True, reduction="none").sum(-1).mean())
        elif kind == "mse":
            losses.append((s_log.exp() - t_log.exp()).pow(2).sum(-1).mean())
        else:
            raise ValueError(f"unknown attention loss {kind!r}")
    return torch.stack(losses).mean() if losses else torch.zeros(())


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton's soft-target loss, scaled by T^2 so its gradients keep their size across temperatures."""
    t = temperature
    per = -(F.softmax(teacher_logits.float() / t, -1) * F.log_softmax(student_logits.float() / t, -1)).sum(-1)
    if mask is not None:
        per = (per * mask).sum() / mask.sum().clamp_min(1)
    else:
        per = per.mean()
    return per * t * t


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over real tokens, in fp32 (sentence-transformers' mean pooling)."""
    m = mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1.0)


def pooled_cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine between student and teacher sentence embeddings, averaged over the batch."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def relational_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between the in-batch cosine-similarity matrices of student and teacher embeddings (all languages)."""
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    return (s @ s.T - t @ t.T).pow(2).mean()


def contrastive_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """In-batch InfoNCE: each student embedding must pick its own teacher embedding out of the batch's (and each
    teacher embedding its student's), on cosine similarities divided by ``temperature``."""
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    logits = s @ t.T / temperature
    gold = torch.arange(len(s), device=s.device)
    return (F.cross_entropy(logits, gold) + F.cross_entropy(logits.T, gold)) / 2


def crosslingual_ranking_loss(student: torch.Tensor, teacher: torch.Tensor, language: torch.Tensor,
                              temperature: float = 0.05) -> torch.Tensor:
    """Keep the teacher's cross-lingual ranking: for each sentence, the softmax over its cosine similarities to the
    batch's sentences in the other languages, student against teacher (KL), at ``temperature``.

    Batches that hold each sentence's nearest other-language sentence under the teacher make this a nearest-neighbour
    term: the student has to rank that pair first, as retrieval does.
    """
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    other = language[:, None] != language[None, :]
    if not bool(other.any()):
        return s.new_zeros(())
    fill = torch.finfo(torch.float32).min
    s_log = F.log_softmax((s @ s.T / temperature).masked_fill(~other, fill), -1)
    t_log = F.log_softmax((t @ t.T / temperature).masked_fill(~other, fill), -1)
    rows = other.any(1)
    kl = (t_log.exp() * (t_log - s_log)).masked_fill(~other, 0.0).sum(-1)
    return kl[rows].mean()
