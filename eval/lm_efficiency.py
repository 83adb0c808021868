"""Efficiency of a causal LM against its source: prefill latency of a fixed-length prompt and decode speed at batch 1.

Measured with eval's one timing method (`efficiency.measure_together`: interleaved rounds in one process, the order
rotated each round) on four timed operations: each model's prefill of a P-token prompt, and each model's prefill of
the same prompt followed by N greedy tokens over its cache (stop ids ignored). Within a round every operation runs
the same prompts, so per round: decode tokens/s = N / (generate time - prefill time), both medians of that round.
Each model's prompt is P tokens of its own tokenization of the same held-out text (start ids first): the same amount
of model work, whatever the vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .efficiency import measure_together, paired_ratio
from .lm_scorer import CausalLM

PROMPTS = 4  # distinct prompts, cycled through the rounds


class _Timed:
    """One timed operation of a model in the shape `measure_together` times (``embed_uncached``, ``size``)."""

    def __init__(self, lm: CausalLM, prompts: list[list[int]], new_tokens: int = 0) -> None:
        self.lm, self.prompts, self.new_tokens = lm, prompts, new_tokens
        self.device = getattr(lm, "device", None)

    def embed_uncached(self, texts: list[str], prefix: str = "") -> None:
        """Run the operation once per "text" (a prompt number)."""
        for t in texts:
            ids = self.prompts[int(t) % len(self.prompts)]
            if self.new_tokens:
                self.lm.generate_fixed(ids, self.new_tokens)
            else:
                self.lm.prefill(ids)

    def size(self) -> dict[str, Any]:
        """The model's size (for the figures' size fields)."""
        return self.lm.size()


def fixed_prompts(lm: CausalLM, texts: list[str], length: int, count: int = PROMPTS) -> list[list[int]]:
    """``count`` prompts of exactly ``length`` ids: the start ids, then consecutive windows of the joined texts' tokens."""
    body = length - len(lm.start_ids)
    ids = lm.text_ids(" ".join(texts))
    while len(ids) < body * count:
        ids = ids + ids if ids else [lm.stop_ids[0] if lm.stop_ids else 0] * body * count
    return [lm.start_ids + ids[k * body:(k + 1) * body] for k in range(count)]


def _decode_rounds(together: dict[str, Any], name: str, new_tokens: int) -> list[float]:
    """Per round: decode tokens/s of ``name`` (its generate median minus its prefill median)."""
    gen = together["models"][f"{name} generate"]["latency_ms_p50_rounds"]
    pre = together["models"][f"{name} prefill"]["latency_ms_p50_rounds"]
    return [new_tokens * 1000.0 / (g - p) for g, p in zip(gen, pre) if g > p]


def _model_figures(together: dict[str, Any], name: str, new_tokens: int) -> dict[str, Any]:
    """One model's entry: size, prefill latency with its spread, decode tokens/s with its spread, peak memory."""
    pre = together["models"][f"{name} prefill"]
    gen = together["models"][f"{name} generate"]
    rounds = _decode_rounds(together, name, new_tokens)
    keep = ("parameters", "weights_in_memory_bytes", "weight_file_bytes", "bytes_on_disk", "other_forms", "device",
            "peak_memory_bytes", "peak_memory_kind")
    return {**{k: gen[k] for k in keep if k in gen},
            "prefill_ms_p50": pre["latency_ms_p50"], "prefill_ms_p95": pre["latency_ms_p95"],
            "prefill_ms_p50_min": pre["latency_ms_p50_min"], "prefill_ms_p50_max": pre["latency_ms_p50_max"],
            "prefill_ms_p50_rounds": pre["latency_ms_p50_rounds"],
            "generate_ms_p50": gen["latency_ms_p50"],
            "decode_tokens_per_s": float(np.median(rounds)) if rounds else None,
            "decode_tokens_per_s_min": min(rounds) if rounds else None,
            "decode_tokens_per_s_max": max(rounds) if rounds else None,
            "decode_tokens_per_s_rounds": [round(x, 2) for x in rounds], "rounds": pre["rounds"], "runs": pre["latency_runs"]}


def measure_lms(models: dict[str, CausalLM], texts: list[str], prefill_tokens: int = 64, new_tokens: int = 32,
                runs: int = 24, rounds: int = 6) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Prefill and decode figures of every model in ``models``, timed together in interleaved rounds (see the module
    docstring); returns the figures per name and the joint measurement."""
    ops: dict[str, Any] = {}
    for name, lm in models.items():
        limit = lm.max_length or prefill_tokens + new_tokens
        prompts = fixed_prompts(lm, texts, min(prefill_tokens, max(2, limit - new_tokens)))
        ops[f"{name} prefill"] = _Timed(lm, prompts)
        ops[f"{name} generate"] = _Timed(lm, prompts, new_tokens)
    together = measure_together(ops, [str(k) for k in range(PROMPTS)], runs=runs, rounds=rounds, warmup=1, batches=0)
    return {name: _model_figures(together, name, new_tokens) for name in models}, together


def measure_lm(source: CausalLM, candidate: CausalLM, texts: list[str], prefill_tokens: int = 64, new_tokens: int = 32,
               runs: int = 24, rounds: int = 6) -> dict[str, Any]:
    """Prefill and decode figures of both models, timed together in interleaved rounds (see the module docstring)."""
    figures, together = measure_lms({"source": source, "candidate": candidate}, texts, prefill_tokens, new_tokens,
                                    runs, rounds)
    s, c = figures["source"], figures["candidate"]
    ratio = {}
    for key in ("parameters", "bytes_on_disk", "weight_file_bytes", "prefill_ms_p50", "decode_tokens_per_s", "peak_memory_bytes"):
        a, b = s.get(key), c.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a:
            ratio[key] = b / a
    per_round = -(-max(runs, 1) // max(rounds, 1))
    method = (f"interleaved rounds: {together['rounds']} rounds in one process; in each round four timed operations, each "
              f"model's prefill of a {prefill_tokens}-token prompt and its prefill followed by {new_tokens} greedy tokens "
              f"over its cache, run the same {per_round} prompts one at a time at batch 1, their order rotated by one each "
              f"round; prefill_ms_p50/p95 over all runs, its min..max over the per-round medians; decode tokens/s per round "
              f"= {new_tokens} / (generate median - prefill median), median over the rounds (min..max beside it)")
    return {"kind": "generative", "source": s, "candidate": c, "candidate_over_source": ratio,
            "prefill_ratio_per_round": paired_ratio(together, "source prefill", "candidate prefill"),
            "prefill_tokens": prefill_tokens, "new_tokens": new_tokens, "method": method, "order": together["order"],
            "measured_with": list(together["models"])}
