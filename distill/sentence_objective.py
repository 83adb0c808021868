"""The embedding-preserving phase-1 objective: single sentences with the model's prefix, as users embed them.

Student and teacher read the same batch of sentences (both languages, similar lengths). The loss adds to
BiStil's hidden-state (and optionally attention) terms a pooled-embedding term, 1 - cosine between the
student's and the teacher's sentence embeddings, and a relational term, the MSE between their in-batch
similarity matrices across both languages, which keeps translations close and unrelated sentences apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .losses import mean_pool, pooled_cosine_loss, relational_loss
from .objective import add_representation_terms, paired_forward
from .sentences import SentencePool, add_short_spans, split_sentences
from .student import hidden_pairs


def sentence_loss(teacher: torch.nn.Module, mapping: list[int], losses, pooling: str = "mean",
                  basis: torch.Tensor | None = None) -> Callable:
    """The loss function for the training loop: pooled, relational, hidden and attention terms on a sentence batch."""
    pairs = hidden_pairs(mapping)

    def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return hidden[:, 0].float() if pooling == "cls" else mean_pool(hidden, mask)

    def loss_fn(student: torch.nn.Module, batch: dict[str, torch.Tensor]):
        mask = batch["attention_mask"]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
        t_out, s_out, t_att, s_att = paired_forward(teacher, student, inputs, mapping, bool(losses.attention))
        parts: dict[str, torch.Tensor] = {}
        total = add_representation_terms(torch.zeros((), device=mask.device), parts, s_out, t_out, s_att, t_att,
                                         pairs, losses.hidden, losses.attention, losses.attention_kind,
                                         mask=mask.float(), basis=basis)
        s_last = s_out.last_hidden_state
        if basis is not None:
            s_last = s_last @ basis.to(s_last.device, s_last.dtype).T
        s_emb, t_emb = pool(s_last, mask), pool(t_out.last_hidden_state, mask)
        if losses.pooled:
            p = pooled_cosine_loss(s_emb, t_emb)
            total = total + losses.pooled * p
            parts["pooled"] = p.detach()
        if losses.relational:
            r = relational_loss(s_emb, t_emb)
            total = total + losses.relational * r
            parts["relational"] = r.detach()
        parts["loss"] = total.detach()
        return total, parts

    return loss_fn


def sentence_pool(tokenizer, texts: Mapping[str, list[str]], prefix: str, max_length: int, short_share: float,
                  seed: int, max_sentences: int | None = None) -> SentencePool:
    """Cut each language's lines into sentences, add short spans, cap the count, and tokenize with the prefix."""
    per_lang: dict[str, list[str]] = {}
    for i, (lang, lines) in enumerate(texts.items()):
        sentences = split_sentences(lines)
        if max_sentences is not None and len(sentences) > max_sentences:
            gen = torch.Generator().manual_seed(seed + i)
            keep = torch.randperm(len(sentences), generator=gen)[:max_sentences].sort().values
            sentences = [sentences[int(j)] for j in keep]
        per_lang[lang] = add_short_spans(sentences, short_share, seed + 101 * (i + 1))
    return SentencePool(tokenizer, per_lang, prefix, max_length)
