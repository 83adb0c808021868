"""Parity of an exported encoder-decoder with its PyTorch model, measured before anything is written (the decoder-only
gate's rules, `decoder_parity`, applied to the two graphs):

- the encoder alone: last_hidden_state on a right-padded batch;
- the decoder alone: fed PyTorch's encoder output, logits without the cache (one step) and with it (two steps);
- both together: the ONNX encoder's output into the ONNX decoder;
- greedy decoding token for token against transformers' ``generate`` (EOS masked, decoder_start_token_id and the forced
  target-language token as generate uses them), through the runtime's own loop.

The fp32 record is gated by `decoder_parity.gate_fp32` (allclose with ``atol``/``rtol``, no real greedy divergence);
quantised graphs get next-token top-1 agreement and the perplexity ratio, teacher-forced, from both graphs together
(`decoder_parity.gate_quantized`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .decoding import decode
from .parity import greedy_differences
from .seq2seq_families import Seq2SeqSpec
from .seq2seq_generate import DecoderSteps, pad_right


def check_batch(rows: Sequence[Sequence[int]], prefix: list[int], pad_id: int, width: int = 12
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source ids and mask (right-padded), and teacher-forced targets: ``prefix`` + the first tokens of each source
    (one length for all, so that target rows need no padding)."""
    ids, mask = pad_right(rows, pad_id)
    n = max(1, min(width, min(len(r) for r in rows)))
    targets = np.asarray([prefix + list(r[:n]) for r in rows], dtype=np.int64)
    return ids, mask, targets


def reference(model: Any, ids: np.ndarray, mask: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's encoder output [batch, source, hidden] and logits [batch, target, vocab]."""
    import torch

    with torch.inference_mode():
        hidden = model.get_encoder()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
        logits = model(attention_mask=torch.from_numpy(mask), decoder_input_ids=torch.from_numpy(targets),
                       encoder_outputs=(hidden,)).logits
    return hidden.float().numpy(), logits.float().numpy()


def _excess(got: np.ndarray, ref: np.ndarray, rtol: float) -> float:
    """The largest ``|got - ref| - rtol * |ref|`` (np.allclose passes where it is <= atol)."""
    return float((np.abs(got - ref) - rtol * np.abs(ref)).max())


def _decoder_logits(session: Any, spec: Seq2SeqSpec, hidden: np.ndarray, mask: np.ndarray, targets: np.ndarray,
                    cut: int | None = None) -> np.ndarray:
    """The merged decoder's logits of ``targets``: in one step (no cache), or in two steps split at ``cut``."""
    steps = DecoderSteps(session, spec, hidden.astype(np.float32), mask)
    if cut is None:
        return steps.step(targets, None, steps.empty_past(len(targets)))[0]
    first, past = steps.step(targets[:, :cut], None, steps.empty_past(len(targets)))
    rest, _ = steps.step(targets[:, cut:], None, past)
    return np.concatenate([first, rest], axis=1)


def float_noise(model: Any, ids: np.ndarray, mask: np.ndarray, targets: np.ndarray, ref: np.ndarray) -> float:
    """PyTorch's own float noise on this batch: its eager attention against its default one (0 when already eager)."""
    from .decoder_graph import eager_attention

    with eager_attention(model):
        other = reference(model, ids, mask, targets)[1]
    return float(np.abs(other - ref).max())


def logits_parity(model: Any, encoder: Any, decoder: Any, spec: Seq2SeqSpec, ids: np.ndarray, mask: np.ndarray,
                  targets: np.ndarray, rtol: float = 1e-4) -> dict[str, Any]:
    """Max abs differences of the encoder alone, the decoder alone (PyTorch's encoder output; without and with the
    cache) and both together; ``excess``: the largest ``|diff| - rtol * |torch|`` of them all."""
    hidden_ref, ref = reference(model, ids, mask, targets)
    hidden = encoder.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
    real = mask.astype(bool)
    alone = _decoder_logits(decoder, spec, hidden_ref, mask, targets)
    cached = _decoder_logits(decoder, spec, hidden_ref, mask, targets, cut=max(1, targets.shape[1] // 2))
    together = _decoder_logits(decoder, spec, hidden, mask, targets)
    excess = max(_excess(hidden[real], hidden_ref[real], rtol), *(_excess(x, ref, rtol) for x in (alone, cached, together)))
    return {"texts": len(ids), "source_tokens": int(real.sum()), "target_tokens": int(targets.size),
            "max_abs_hidden": float(np.abs(hidden_ref[real]).max()), "max_abs_logit": float(np.abs(ref).max()),
            "max_abs_diff_encoder": float(np.abs(hidden - hidden_ref)[real].max()),
            "max_abs_diff_no_cache": float(np.abs(alone - ref).max()),
            "max_abs_diff_cache": float(np.abs(cached - ref).max()),
            "max_abs_diff_together": float(np.abs(together - ref).max()), "rtol": rtol, "excess": excess,
            "torch_noise": float_noise(model, ids, mask, targets, ref)}


def _hf_greedy(model: Any, ids: np.ndarray, mask: np.ndarray, spec: Seq2SeqSpec, prefix: list[int], stop_ids: list[int],
               pad_id: int, n: int) -> list[list[int]]:
    """transformers' plain greedy output after ``prefix`` (its decoder start and forced BOS), EOS masked for ``n``
    tokens (the model's own generation defaults, such as a forced EOS at the length limit, left out)."""
    import torch
    from transformers import GenerationConfig

    forced = prefix[1] if len(prefix) > 1 else None
    total = n + len(prefix) - 1  # generate counts the forced token as a new one
    config = GenerationConfig(max_new_tokens=total, min_new_tokens=total, do_sample=False, num_beams=1,
                              eos_token_id=stop_ids or None, pad_token_id=pad_id,
                              decoder_start_token_id=spec.decoder_start_token_id, forced_bos_token_id=forced)
    own, model.generation_config = model.generation_config, GenerationConfig()  # no defaults merged in (forced EOS ...)
    try:
        with torch.inference_mode():
            out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                 generation_config=config)
    finally:
        model.generation_config = own
    return [row[len(prefix):].tolist() for row in out]


def greedy_parity(model: Any, encoder: Any, decoder: Any, spec: Seq2SeqSpec, rows: Sequence[Sequence[int]],
                  prefix: list[int], stop_ids: list[int], pad_id: int, n: int, atol: float) -> dict[str, Any]:
    """Greedy tokens of the torch-free loop (ONNX encoder, merged decoder) against transformers' generate, per source
    row; a divergence where PyTorch's two best logits lie within ``atol`` is a tie, reported, not a failure."""
    ids, mask = pad_right(rows, pad_id)
    ref = _hf_greedy(model, ids, mask, spec, prefix, stop_ids, pad_id, n)
    hidden = encoder.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
    got = decode(DecoderSteps(decoder, spec, hidden, mask), [prefix] * len(rows), pad_id=pad_id,  # type: ignore[arg-type]
                 stop_ids=stop_ids, max_new_tokens=n, min_new_tokens=n)

    def margin(i: int, before: list[int]) -> float:
        target = np.asarray([prefix + before], dtype=np.int64)
        last = np.sort(reference(model, ids[i:i + 1], mask[i:i + 1], target)[1][0, -1])
        return float(last[-1] - last[-2])

    return {"prompts": len(rows), "new_tokens": n, "prefix": prefix, **greedy_differences(ref, got, margin, atol)}


def quality(model: Any, encoder: Any, decoder: Any, spec: Seq2SeqSpec, ids: np.ndarray, mask: np.ndarray,
            targets: np.ndarray) -> dict[str, Any]:
    """Both graphs together, teacher-forced: next-token top-1 agreement with PyTorch and perplexity ratio (graph /
    PyTorch) over the target tokens; and the encoder's own max abs difference."""
    hidden_ref, ref = reference(model, ids, mask, targets)
    hidden = encoder.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
    got = _decoder_logits(decoder, spec, hidden, mask, targets).astype(np.float64)
    nxt = targets[:, 1:]

    def nll(logits: np.ndarray) -> float:
        x = logits[:, :-1].astype(np.float64)
        top = x.max(-1, keepdims=True)
        logz = np.log(np.exp(x - top).sum(-1)) + top[..., 0]
        return float((logz - np.take_along_axis(x, nxt[..., None], -1)[..., 0]).mean())

    nll_ref, nll_got = nll(ref), nll(got)
    real = mask.astype(bool)
    return {"tokens": int(nxt.size), "finite": bool(np.isfinite(got).all() and np.isfinite(hidden).all()),
            "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
            "perplexity_torch": float(np.exp(nll_ref)), "perplexity": float(np.exp(nll_got)),
            "perplexity_ratio": float(np.exp(nll_got - nll_ref)), "max_abs_diff": float(np.abs(got - ref).max()),
            "max_abs_diff_encoder": float(np.abs(hidden - hidden_ref)[real].max())}
