"""Model families and what each stage supports for them: one table, checked before any work starts.

A family is read from a model's ``config.json`` (no weights loaded): ``encoder`` (BERT, XLM-R, E5 and their heads),
``decoder`` (Gemma, Qwen, Llama: causal LMs) or ``seq2seq`` (mT5, mBART, M2M100/NLLB). A stage that cannot handle a
family refuses it up front with the whole table in the message, instead of failing after an hour of work or producing
meaningless figures (a distillation objective built for sentence embeddings run on a causal LM).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ModelSourceError, UnsupportedModelError

FAMILIES = ("encoder", "decoder", "seq2seq")
STAGES = ("trim", "distill", "export", "eval", "pipeline")
_DECODER_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_SEQ2SEQ_SUFFIXES = ("ForConditionalGeneration", "ForSeq2SeqLM", "MTModel")

# family -> stage -> what is supported ("" = not yet); the message a refusal shows is rendered from this table
SUPPORT: dict[str, dict[str, str]] = {
    "encoder": {"trim": "yes", "distill": "yes (BiStil, embedding objective)", "export": "yes (ONNX, TensorRT, bnb)",
                "eval": "yes (retrieval, STS, POS, NLI, fidelity)", "pipeline": "yes"},
    "decoder": {"trim": "yes", "distill": "", "export": "yes (ONNX with a KV cache: fp32, int8, int4)",
                "eval": "yes (perplexity, next token, greedy, efficiency)", "pipeline": "yes (trim, export, eval)"},
    "seq2seq": {"trim": "yes", "distill": "",
                "export": "yes (ONNX encoder + merged decoder with a KV cache: fp32, int8, int4)",
                "eval": "yes (teacher-forced NLL, next token, greedy, chrF/BLEU)",
                "pipeline": "yes (trim, export, eval)"},
}


def family_of_config(config: dict[str, Any]) -> str:
    """The family of a model from its config.json contents (architectures, is_encoder_decoder, is_decoder)."""
    archs = [str(a) for a in config.get("architectures") or []]
    if config.get("is_encoder_decoder") or any(a.endswith(_SEQ2SEQ_SUFFIXES) for a in archs):
        return "seq2seq"
    if any(a.endswith(_DECODER_SUFFIXES) for a in archs) or (config.get("is_decoder") and not archs):
        return "decoder"
    return "encoder"


def model_family(model_dir: str | os.PathLike[str]) -> str:
    """The family of the model in ``model_dir`` (a save_pretrained folder), read from its config.json."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelSourceError(f"{path} is missing", "point to a save_pretrained folder (config.json, weights, "
                               "tokenizer)") from exc
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path} cannot be read ({exc})", "restore config.json or re-save the model") from exc
    return family_of_config(config)


def support_table() -> str:
    """The support table as plain text (one line per family), for error messages and ``--help``."""
    width = max(len(f) for f in FAMILIES)
    lines = [f"{'':{width}}  " + " | ".join(STAGES)]
    for family in FAMILIES:
        cells = [SUPPORT[family][s] or "not yet" for s in STAGES]
        lines.append(f"{family:{width}}  " + " | ".join(f"{s}: {c}" for s, c in zip(STAGES, cells)))
    return "\n".join(lines)


def check_supported(family: str, stage: str, model: str = "the model") -> None:
    """Refuse ``stage`` for ``family`` when the table says it is not supported yet, naming what is."""
    if family not in SUPPORT or stage not in STAGES:
        raise ValueError(f"unknown family {family!r} or stage {stage!r}")
    if SUPPORT[family][stage]:
        return
    able = [s for s in STAGES if SUPPORT[family][s]]
    raise UnsupportedModelError(
        f"{model} is a {family} model, and `{stage}` does not handle {family} models yet",
        f"for {family} models use: {', '.join(able) or 'nothing yet'}. What each stage supports:\n{support_table()}")
