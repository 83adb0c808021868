"""The embedding-preserving phase-1 objective: single sentences with the model's prefix, as users embed them.

Student and teacher read the same batch of sentences (both languages, similar lengths). The loss adds to
BiStil's hidden-state (and optionally attention) terms a pooled-embedding term, 1 - cosine between the
student's and the teacher's sentence embeddings; a relational term, the MSE between their in-batch
similarity matrices across both languages; an in-batch contrastive term (each student embedding picks its
own teacher embedding out of the batch); and a cross-lingual ranking term (each sentence ranks the batch's
other-language sentences as the teacher does, its nearest one under the teacher being in the batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import SimpleNamespace

import torch

from .losses import contrastive_loss, crosslingual_ranking_loss, mean_pool, pooled_cosine_loss, relational_loss
from .objective import add_representation_terms, paired_forward
from .sentences import SentencePool, add_short_spans, split_sentences
from .student import hidden_pairs
from .teacher_targets import TeacherTargets


def sentence_loss(teacher: torch.nn.Module, mapping: list[int], losses, pooling: str = "mean",
                  basis: torch.Tensor | None = None, targets: TeacherTargets | None = None,
                  languages: list[str] | None = None) -> Callable:
    """The loss function for the training loop: pooled, relational, contrastive, cross-lingual ranking, hidden and
    attention terms on a sentence batch. With ``targets`` (teacher targets computed once, keyed by the batch's
    ``language`` and ``position``) the teacher does not run: only the student does."""
    pairs = hidden_pairs(mapping)

    def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return hidden[:, 0].float() if pooling == "cls" else mean_pool(hidden, mask)

    def loss_fn(student: torch.nn.Module, batch: dict[str, torch.Tensor]):
        mask = batch["attention_mask"]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
        if targets is None:
            t_out, s_out, t_att, s_att = paired_forward(teacher, student, inputs, mapping, bool(losses.attention))
            t_hidden, t_emb = t_out.hidden_states, pool(t_out.last_hidden_state, mask)
        else:
            s_out, t_att, s_att = student(**inputs, output_hidden_states=True), [], []
            t_emb, t_hidden = targets.lookup(languages, batch["language"].cpu(), batch["position"].cpu(), mask.shape[1])
            t_emb, t_hidden = t_emb.to(mask.device), {t: h.to(mask.device) for t, h in t_hidden.items()}
        parts: dict[str, torch.Tensor] = {}
        total = add_representation_terms(torch.zeros((), device=mask.device), parts, s_out,
                                         SimpleNamespace(hidden_states=t_hidden), s_att, t_att, pairs, losses.hidden,
                                         losses.attention, losses.attention_kind, mask=mask.float(), basis=basis)
        s_last = s_out.last_hidden_state
        if basis is not None:
            s_last = s_last @ basis.to(s_last.device, s_last.dtype).T
        total = total + embedding_terms(pool(s_last, mask), t_emb, batch.get("language"), losses, parts)
        parts["loss"] = total.detach()
        return total, parts

    return loss_fn


def embedding_terms(s_emb: torch.Tensor, t_emb: torch.Tensor, language: torch.Tensor | None, losses,
                    parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weighted sentence-embedding terms (pooled cosine, relational, contrastive, cross-lingual ranking), in fp32
    even under autocast; their detached values go into ``parts``."""
    terms = {"pooled": (losses.pooled, lambda: pooled_cosine_loss(s_emb, t_emb)),
             "relational": (losses.relational, lambda: relational_loss(s_emb, t_emb)),
             "contrastive": (losses.contrastive, lambda: contrastive_loss(s_emb, t_emb, losses.contrast_temperature)),
             "crosslingual": (losses.crosslingual,
                              lambda: crosslingual_ranking_loss(s_emb, t_emb, language, losses.contrast_temperature))}
    total = s_emb.new_zeros((), dtype=torch.float32)
    for name, (weight, term) in terms.items():
        if weight:
            if name == "crosslingual" and language is None:
                raise ValueError("the cross-lingual term needs the batch's languages")
            with torch.autocast(s_emb.device.type, enabled=False):  # fp32: similarities / 0.05 need the precision
                value = term()
            total = total + weight * value
            parts[name] = value.detach()
    return total


def sentence_pool(tokenizer, texts: Mapping[str, list[str]], prefix: str, max_length: int, short_share: float,
                  seed: int, max_sentences: int | None = None) -> SentencePool:
    """Cut each language's lines into sentences, add short spans, put them in a seeded order, keep the first
    ``max_sentences`` and tokenize with the prefix.

    The order makes any first N a random sample; a cap and the teacher targets computed for the first N (extended
    by a later run that needs more) both rely on it.
    """
    per_lang: dict[str, list[str]] = {}
    for i, (lang, lines) in enumerate(texts.items()):
        sentences = add_short_spans(split_sentences(lines), short_share, seed + 101 * (i + 1))
        order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed + i))[:max_sentences]
        per_lang[lang] = [sentences[int(j)] for j in order]
    return SentencePool(tokenizer, per_lang, prefix, max_length)
