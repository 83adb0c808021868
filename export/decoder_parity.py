"""Parity of an exported decoder with its PyTorch model, measured before anything is written.

fp32: logits on left-padded text without and with the cache (max abs difference, gated as np.allclose with ``atol``
and ``rtol``, 1e-4 each as optimum-onnx's decoder tests, where ``atol`` is raised to twice PyTorch's own float noise
on the same batch (its eager attention against its default one) when that is larger: on the real Gemma 3 270M,
whose logits reach 46, the export differs from PyTorch by 5e-5 to 1.4e-4 depending on the text, and PyTorch's eager
attention from its own sdpa by about 1e-4, so a fixed 1e-4 refused sound exports by chance), and greedy
decoding token for token against transformers' ``generate`` (EOS masked so that every prompt runs its full length;
a divergence where PyTorch's top two logits lie within ``atol`` is a tie, reported, not a failure). Quantised graphs:
next-token top-1 agreement with PyTorch and the perplexity ratio on the same text (reported; gated only when asked).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .decoding import DecoderSession, decode, left_pad, position_ids
from .parity import greedy_differences, settle


def reference_logits(model: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """PyTorch's logits [batch, seq, vocab] for a left-padded batch (positions from the mask, as generate makes them)."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(position_ids(mask, ids.shape[1])))
    return out.logits.float().numpy()


def logits_parity(model: Any, runner: DecoderSession, rows: Sequence[Sequence[int]], pad_id: int,
                  rtol: float = 1e-4) -> dict[str, Any]:
    """Max abs logit difference on real tokens: the whole batch in one step (no cache), and in two steps (the second
    one reading the first one's cache); and ``excess``, the largest ``|diff| - rtol * |torch|`` of both (np.allclose
    passes where it is <= atol)."""
    ids, mask = left_pad(rows, pad_id)
    ref = reference_logits(model, ids, mask)
    whole, _ = runner.step(ids, mask, runner.empty_past(len(rows)))
    cut = max(1, ids.shape[1] // 2)
    first, past = runner.step(ids[:, :cut], mask[:, :cut], runner.empty_past(len(rows)))
    rest, _ = runner.step(ids[:, cut:], mask, past)
    real = mask.astype(bool)
    cached = np.concatenate([first, rest], axis=1)
    excess = max(float((np.abs(got - ref) - rtol * np.abs(ref))[real].max()) for got in (whole, cached))
    return {"texts": len(rows), "tokens": int(real.sum()), "max_abs_logit": float(np.abs(ref)[real].max()),
            "max_abs_diff_no_cache": float(np.abs(whole - ref)[real].max()),
            "max_abs_diff_cache": float(np.abs(cached - ref)[real].max()), "rtol": rtol, "excess": excess,
            "torch_noise": float_noise(model, ids, mask, ref)}


def float_noise(model: Any, ids: np.ndarray, mask: np.ndarray, ref: np.ndarray) -> float:
    """PyTorch's own float noise on this batch: max abs logit difference of its eager attention from the default one
    (0 when the model already runs eager attention)."""
    from .decoder_graph import eager_attention

    with eager_attention(model):
        other = reference_logits(model, ids, mask)
    return float(np.abs(other - ref)[mask.astype(bool)].max())


def _hf_greedy(model: Any, rows: Sequence[Sequence[int]], pad_id: int, stop_ids: list[int], n: int) -> list[list[int]]:
    """transformers' greedy continuation of each row (one left-padded batch), EOS masked for ``n`` tokens."""
    import torch
    from transformers import GenerationConfig

    ids, mask = left_pad(rows, pad_id)
    config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=stop_ids or None,
                              pad_token_id=pad_id)
    with torch.inference_mode():
        out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             generation_config=config)
    return [row[ids.shape[1]:].tolist() for row in out]


def _margin(model: Any, row: Sequence[int], made: Sequence[int]) -> float:
    """PyTorch's gap between its two best next-token logits after ``row + made``."""
    ids = np.asarray([list(row) + list(made)], dtype=np.int64)
    last = np.sort(reference_logits(model, ids, np.ones_like(ids))[0, -1])
    return float(last[-1] - last[-2])


def greedy_parity(model: Any, runner: DecoderSession, rows: Sequence[Sequence[int]], pad_id: int,
                  stop_ids: list[int], n: int, atol: float) -> dict[str, Any]:
    """Greedy tokens of the torch-free decoding loop against transformers' generate, per prompt."""
    ref = _hf_greedy(model, rows, pad_id, stop_ids, n)
    got = decode(runner, rows, pad_id=pad_id, stop_ids=stop_ids, max_new_tokens=n, min_new_tokens=n)
    found = greedy_differences(ref, got, lambda i, before: _margin(model, rows[i], before), atol)
    return {"prompts": len(rows), "new_tokens": n, **found}


def quality(model: Any, runner: DecoderSession, rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, Any]:
    """Next-token top-1 agreement with PyTorch and perplexity (graph / PyTorch) over the real tokens of ``rows``."""
    ids, mask = left_pad(rows, pad_id)
    ref = reference_logits(model, ids, mask)
    got, _ = runner.step(ids, mask, runner.empty_past(len(rows)))
    got = got.astype(np.float64)
    keep = (mask[:, :-1] & mask[:, 1:]).astype(bool)
    target = ids[:, 1:][keep]

    def nll(logits: np.ndarray) -> float:
        x = logits[:, :-1][keep].astype(np.float64)
        top = x.max(-1, keepdims=True)
        logz = np.log(np.exp(x - top).sum(-1)) + top[:, 0]
        return float((logz - x[np.arange(len(x)), target]).mean())

    nll_ref, nll_got = nll(ref), nll(got)
    return {"tokens": int(keep.sum()), "finite": bool(np.isfinite(got).all()),
            "top1_agreement": float((ref[:, :-1][keep].argmax(-1) == got[:, :-1][keep].argmax(-1)).mean()),
            "perplexity_torch": float(np.exp(nll_ref)), "perplexity": float(np.exp(nll_got)),
            "perplexity_ratio": float(np.exp(nll_got - nll_ref)),
            "max_abs_diff": float(np.abs(got - ref)[mask.astype(bool)].max())}


def gate_fp32(logits: dict[str, Any], greedy: dict[str, Any], atol: float, force: bool) -> dict[str, Any]:
    """The fp32 parity record; logits not allclose (``atol``, the record's rtol) or a real greedy divergence refuse
    the export unless forced."""
    worst = max(logits["max_abs_diff_no_cache"], logits["max_abs_diff_cache"])
    tolerance = max(atol, 2 * logits.get("torch_noise", 0.0))
    record = {"logits": logits, "greedy": greedy, "atol": atol, "tolerance": tolerance,
              "passed": bool(logits["excess"] <= tolerance and not greedy["mismatches"])}
    return settle(record, force, lambda: f"the fp32 decoder export differs from PyTorch: logits max |diff| {worst:.2e} "
                  f"(atol {tolerance:.2e}: {atol}, or twice PyTorch's own eager-vs-default noise "
                  f"{logits.get('torch_noise', 0.0):.2e}; rtol {logits['rtol']}), greedy divergences "
                  f"{greedy['mismatches']}; nothing was written",
                  "report it with the model's config; force=True writes it anyway")


def gate_quantized(q: dict[str, Any], name: str, min_agreement: float | None, force: bool) -> dict[str, Any]:
    """The quantised graph's record; non-finite logits, or agreement below ``min_agreement`` (when given), refuse it."""
    ok = q["finite"] and (min_agreement is None or q["top1_agreement"] >= min_agreement)
    record = {**q, "min_agreement": min_agreement, "passed": bool(ok)}
    return settle(record, force, lambda: f"the {name} decoder export fails its check: finite logits {q['finite']}, "
                  f"top-1 agreement {q['top1_agreement']:.3f} (minimum {min_agreement}); nothing was written",
                  "try int8, or lower --min-agreement, or pass force=True")
