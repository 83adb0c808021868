"""The generative measures of a candidate causal LM against its source, on the same held-out text, as Scores.

Per text both models are run teacher-forced (one cache-free forward each) and compared:

- ``perplexity``: total NLL of the text's tokens over its UTF-8 bytes (bits per byte), so that two tokenizers that
  segment the text differently still compare; retention = source bits per byte / candidate's (1.0: as good, above 1:
  better). Where the two token sequences are identical (candidate ids mapped to source ids), the per-token NLL too,
  with the source's NLL renormalised over the ids the candidate kept (an exact trim matches that to float precision).
- ``next_token``, at every position whose context tokenizes identically in both: top-1 agreement (the candidate's most
  likely token against the source's most likely among the ids the candidate has), and mean KL(source || candidate)
  with the source's distribution renormalised over those ids (the candidate cannot put mass on removed ids); and,
  over every source position, the dropped mass: the source's probability on ids the candidate lacks.
- ``greedy``: greedy continuations of the same prompts, EOS allowed; the share that are the same text.

Every Score carries a 95% paired-bootstrap interval (texts, or prompts, resampled together for both models).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bootstrap import mean_interval, paired_bootstrap, ratio_interval
from .lm_scorer import CausalLM, IdMap
from .retention import Score

CHUNK = 16  # positions per log-softmax (bounds float64 temporaries for large vocabularies)
LN2 = math.log(2.0)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two id lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class TextStats:
    """Per-text sums of both models' teacher-forced measures (one entry per text in each list)."""

    bytes: list[int] = field(default_factory=list)
    nll: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))  # nats, source and candidate
    tokens: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))  # predicted tokens
    same: list[bool] = field(default_factory=list)  # token sequences identical (mapped)
    kept_nll: list[float] = field(default_factory=list)  # source NLL renormalised over kept ids (same texts; else 0)
    max_token_diff: list[float] = field(default_factory=list)  # |candidate - renormalised source| per token, max
    positions: list[int] = field(default_factory=list)  # identical-context positions
    agree: list[int] = field(default_factory=list)
    agree_full: list[int] = field(default_factory=list)  # against the source's top-1 over its whole vocabulary
    kl: list[float] = field(default_factory=list)
    all_positions: list[int] = field(default_factory=list)  # every source position (dropped mass)
    dropped: list[float] = field(default_factory=list)
    top1_dropped: list[int] = field(default_factory=list)

    def arrays(self, name: str) -> np.ndarray:
        """One per-text list as a float64 array."""
        return np.asarray(getattr(self, name), dtype=np.float64)


class Kept:
    """Index arrays of the ids both models have: source ids, candidate ids, and each source id's place among them."""

    def __init__(self, ids: IdMap) -> None:
        self.src = ids.source_kept
        self.cand = ids.candidate_kept
        self.mask = np.zeros(ids.source_size, dtype=bool)
        self.mask[self.src] = True
        self.dropped = np.flatnonzero(~self.mask)
        self.place = np.full(ids.source_size, -1, dtype=np.int64)
        self.place[self.src] = np.arange(len(self.src))
        self.to_source = ids.to_source


def _source_pass(ls_logits: np.ndarray, s_ids: list[int], kept: Kept) -> tuple[float, float, int, np.ndarray]:
    """Source NLL (nats) of its tokens, summed dropped mass, top-1-dropped count, and per-token NLL over its positions."""
    n = len(s_ids) - 1
    per_token = np.zeros(n)
    dropped, top1_dropped = 0.0, 0
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        ls = log_softmax(ls_logits[a:b])
        per_token[a:b] = -ls[np.arange(b - a), s_ids[a + 1:b + 1]]
        dropped += float(np.exp(ls[:, kept.dropped]).sum()) if len(kept.dropped) else 0.0
        top1_dropped += int((~kept.mask[ls.argmax(axis=1)]).sum())
    return float(per_token.sum()), dropped, top1_dropped, per_token


def _candidate_nll(lc_logits: np.ndarray, c_ids: list[int]) -> np.ndarray:
    """The candidate's per-token NLL (nats) of its own tokens."""
    n = len(c_ids) - 1
    out = np.zeros(n)
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        out[a:b] = -log_softmax(lc_logits[a:b])[np.arange(b - a), c_ids[a + 1:b + 1]]
    return out


def _shared_positions(ls_logits: np.ndarray, lc_logits: np.ndarray, s_ids: list[int], p: int,
                      kept: Kept) -> tuple[int, int, float, np.ndarray]:
    """Over the first ``p`` positions (identical contexts): agreements (kept top-1, full top-1), summed KL, and the
    source's per-token NLL renormalised over the kept ids."""
    agree = agree_full = 0
    kl = 0.0
    kept_nll = np.zeros(p)
    for a in range(0, p, CHUNK):
        b = min(p, a + CHUNK)
        ls = log_softmax(ls_logits[a:b])
        lk = ls[:, kept.src]
        lk = lk - np.log(np.exp(lk).sum(axis=1, keepdims=True))
        lc = log_softmax(lc_logits[a:b])
        cand_top = kept.to_source[lc.argmax(axis=1)]
        agree += int((kept.src[lk.argmax(axis=1)] == cand_top).sum())
        agree_full += int((ls.argmax(axis=1) == cand_top).sum())
        kl += float((np.exp(lk) * (lk - lc[:, kept.cand])).sum())
        targets = kept.place[np.asarray(s_ids[a + 1:b + 1])]
        kept_nll[a:b] = np.where(targets >= 0, -lk[np.arange(b - a), targets.clip(0)], np.nan)
    return agree, agree_full, kl, kept_nll


def add_text(stats: TextStats, text: str, s_ids: list[int], c_ids: list[int], ls_logits: np.ndarray,
             lc_logits: np.ndarray, ids: IdMap, kept: Kept) -> None:
    """Measure one text (both models' ids and logits) into ``stats``."""
    mapped = ids.map(c_ids)
    same = mapped == s_ids
    p = min(common_prefix(s_ids, mapped), len(s_ids) - 1)
    nll_s, dropped, top1_dropped, s_tok = _source_pass(ls_logits, s_ids, kept)
    c_tok = _candidate_nll(lc_logits, c_ids)
    agree, agree_full, kl, kept_tok = _shared_positions(ls_logits, lc_logits, s_ids, p, kept)
    stats.bytes.append(len(text.encode("utf-8")))
    stats.nll[0].append(nll_s)
    stats.nll[1].append(float(c_tok.sum()))
    stats.tokens[0].append(len(s_ids) - 1)
    stats.tokens[1].append(len(c_ids) - 1)
    stats.same.append(same)
    stats.kept_nll.append(float(kept_tok.sum()) if same else 0.0)
    stats.max_token_diff.append(float(np.abs(c_tok - kept_tok).max()) if same and len(c_tok) else 0.0)
    stats.positions.append(p)
    stats.agree.append(agree)
    stats.agree_full.append(agree_full)
    stats.kl.append(kl)
    stats.all_positions.append(len(s_ids) - 1)
    stats.dropped.append(dropped)
    stats.top1_dropped.append(top1_dropped)


def measure_texts(source: CausalLM, candidate: CausalLM, ids: IdMap, texts: list[str], batch: int = 8) -> TextStats:
    """Teacher-forced measures of both models on ``texts`` (texts longer than either model's positions are left out)."""
    kept = Kept(ids)
    stats = TextStats()
    rows = [(t, source.encode(t), candidate.encode(t)) for t in texts]
    limit = min(m.max_length or 1 << 30 for m in (source, candidate))
    rows = [r for r in rows if len(r[1]) >= 2 and len(r[2]) >= 2 and max(len(r[1]), len(r[2])) <= limit]
    for i in range(0, len(rows), batch):
        part = rows[i:i + batch]
        ls_all = source.logits([r[1] for r in part])
        lc_all = candidate.logits([r[2] for r in part])
        for (text, s_ids, c_ids), ls, lc in zip(part, ls_all, lc_all):
            add_text(stats, text, s_ids, c_ids, ls, lc, ids, kept)
    return stats


# ----------------------------------------------------------------------------------------------------- scores
def _interval_lower_better(values: tuple[np.ndarray, np.ndarray], totals: np.ndarray) -> dict[str, Any]:
    """Paired-bootstrap interval of ``source / candidate`` for a pooled lower-is-better rate (sum values / sum totals):
    the bootstrap runs on the reciprocal, and the source's interval is given back in the rate's own units."""
    v = [np.asarray(x, dtype=np.float64) for x in values]
    t = np.asarray(totals, dtype=np.float64)
    interval = paired_bootstrap(lambda idx, m: float(t[idx].sum() / max(v[m][idx].sum(), 1e-300)), len(t), 0.0).as_dict()
    low, high = interval["source_low"], interval["source_high"]
    interval.update(source_low=1.0 / high if high else math.inf, source_high=1.0 / low if low else math.inf,
                    above_chance=True, chance=None)
    return interval


def _reference_interval(candidate: Callable[[np.ndarray], float], n: int) -> dict[str, Any]:
    """Interval of a score whose source value is the reference 1.0 (the source against itself): ``candidate(idx)``
    gives the candidate's retention on the resampled texts ``idx`` of ``n``."""
    return paired_bootstrap(lambda idx, m: 1.0 if m == 0 else float(candidate(idx)), n, 0.0).as_dict()


def perplexity_scores(stats: TextStats, lang: str, origin: str) -> list[Score]:
    """Bits per byte over every text (gated), and per-token NLL where the token sequences are identical (diagnostic)."""
    nll_s, nll_c = stats.arrays("nll")
    by = stats.arrays("bytes")
    bpb = (nll_s.sum() / LN2 / by.sum(), nll_c.sum() / LN2 / by.sum())
    tok_s, tok_c = (np.asarray(x, dtype=np.float64) for x in stats.tokens)
    out = [Score("perplexity", lang, "bits_per_byte", float(bpb[0]), float(bpb[1]), len(by), dataset=origin,
                 retention=float(bpb[0] / bpb[1]) if bpb[1] > 0 else None,
                 interval=_interval_lower_better((nll_s, nll_c), by),
                 note="retention = source bits per byte / candidate's (teacher-forced NLL of each model's own tokens "
                      "over the text's UTF-8 bytes)",
                 details={"byte_perplexity": [2 ** bpb[0], 2 ** bpb[1]], "byte_perplexity_ratio": 2 ** (bpb[1] - bpb[0]),
                          "bytes": int(by.sum()), "tokens": [int(tok_s.sum()), int(tok_c.sum())],
                          "nats_per_token": [float(nll_s.sum() / tok_s.sum()), float(nll_c.sum() / tok_c.sum())]})]
    same = np.asarray(stats.same, dtype=bool)
    if same.any():
        n = tok_s[same].sum()
        kept = stats.arrays("kept_nll")[same].sum() / n
        s, c = nll_s[same].sum() / n, nll_c[same].sum() / n
        out.append(Score("perplexity", lang, "nll_per_token_same_tokens", float(s), float(c), int(same.sum()),
                         gated=False, dataset=origin, retention=float(s / c) if c > 0 else None,
                         interval=_interval_lower_better((nll_s[same], nll_c[same]), tok_s[same]),
                         note=f"{int(same.sum())} of {len(same)} texts tokenized identically; nats per token; "
                              "diagnostic, not gated",
                         details={"source_over_kept_ids": float(kept), "candidate_minus_source_over_kept_ids": float(c - kept),
                                  "max_abs_token_diff_vs_kept": float(max(stats.max_token_diff)), "tokens": int(n)}))
    return out


def next_token_scores(stats: TextStats, lang: str, origin: str) -> list[Score]:
    """Top-1 agreement (gated), KL (diagnostic) on identical-context positions; dropped mass (diagnostic) on all."""
    pos, agree, kl = stats.arrays("positions"), stats.arrays("agree"), stats.arrays("kl")
    allpos, dropped = stats.arrays("all_positions"), stats.arrays("dropped")
    n, n_all = int(pos.sum()), int(allpos.sum())
    out = []
    if n:
        rate = float(agree.sum() / n)
        out.append(Score("next_token", lang, "top1_agreement", 1.0, rate, n, dataset=origin,
                         interval=ratio_interval((pos, agree), pos, chance=0.0).as_dict(),
                         note=f"{n} positions whose context tokenizes identically in both ({len(pos)} texts); the source's "
                              "top-1 among the ids the candidate has",
                         details={"full_vocabulary_agreement": float(stats.arrays("agree_full").sum() / n)}))
        mean_kl = float(kl.sum() / n)
        out.append(Score("next_token", lang, "kl_nats", 0.0, mean_kl, n, gated=False, dataset=origin, retention=math.exp(-mean_kl),
                         interval=_reference_interval(lambda idx: math.exp(-kl[idx].sum() / max(pos[idx].sum(), 1)), len(pos)),
                         note="mean KL(source || candidate) in nats, the source renormalised over the candidate's ids; "
                              "retention shown as exp(-KL); diagnostic, not gated"))
    mass = float(dropped.sum() / n_all)
    out.append(Score("next_token", lang, "dropped_mass", 0.0, mass, n_all, gated=False, dataset=origin, retention=1.0 - mass,
                     interval=_reference_interval(lambda idx: 1.0 - dropped[idx].sum() / max(allpos[idx].sum(), 1), len(allpos)),
                     note="mean source next-token probability on ids the candidate lacks, over every position; "
                          "retention shown as 1 - dropped mass; diagnostic, not gated (what it costs on real text "
                          "shows in bits per byte)",
                     details={"top1_dropped_share": float(stats.arrays("top1_dropped").sum() / n_all)}))
    return out


def continuations(source: CausalLM, candidate: CausalLM, ids: IdMap, prompts: list[str], new_tokens: int) -> list[dict[str, Any]]:
    """Greedy continuations of each prompt by both models (EOS allowed): the texts and whether they are the same."""
    out = []
    for p in prompts:
        s_new = source.greedy(source.encode(p), new_tokens)
        c_new = candidate.greedy(candidate.encode(p), new_tokens)
        s_text, c_text = source.decode(s_new), candidate.decode(c_new)
        out.append({"prompt": p, "source": s_text, "candidate": c_text, "same_text": s_text == c_text,
                    "same_tokens": ids.map(c_new) == s_new, "common_prefix_chars": common_prefix(list(s_text), list(c_text)),
                    "tokens": [len(s_new), len(c_new)]})
    return out


def greedy_scores(runs: list[dict[str, Any]], lang: str, origin: str, new_tokens: int, examples: int = 4) -> list[Score]:
    """The share of prompts whose greedy continuation is the same text (diagnostic), with the first differing ones."""
    same = np.asarray([r["same_text"] for r in runs], dtype=np.float64)
    differing = [r for r in runs if not r["same_text"]][:examples]
    return [Score("greedy", lang, "identical_text", 1.0, float(same.mean()), len(runs), gated=False, dataset=origin,
                  interval=mean_interval((np.ones_like(same), same), chance=0.0).as_dict(),
                  note=f"{len(runs)} prompts (the first half of held-out texts), {new_tokens} new tokens, EOS allowed; "
                       "diagnostic, not gated (one early difference changes the rest of a continuation, so this is far "
                       "stricter than the per-position scores)",
                  details={"identical_tokens": float(np.mean([r["same_tokens"] for r in runs])),
                           "mean_common_prefix_chars": float(np.mean([r["common_prefix_chars"] for r in runs])),
                           "examples": differing or runs[:1], "differing": int(len(runs) - same.sum())})]
