"""Tiny XLM-R-style encoders for the bundle tests: a bare encoder (sentence embeddings) or a token tagger, with the
tiny Unigram tokenizer of `tiny_models`, and optionally E5's sentence-transformers prompts."""

from __future__ import annotations

import json
from pathlib import Path

E5_ST_CONFIG = {"prompts": {"query": "query: ", "document": "passage: "}, "default_prompt_name": "query",
                "similarity_fn_name": "cosine"}


def build_encoder(out: Path, lines: list[str], head: str = "sentence-embedding", e5_prompts: bool = False) -> Path:
    """A 2-layer XLM-R encoder saved to ``out``: ``XLMRobertaModel`` (sentence-embedding) or
    ``XLMRobertaForTokenClassification`` with 5 labels (token-classification); with ``e5_prompts``, E5's
    config_sentence_transformers.json beside it (as a model distilled from E5 keeps it)."""
    import torch
    import transformers
    from tiny_models import build_xlmr

    base = build_xlmr(out.parent / f"{out.name}-mlm", lines)
    tok = transformers.AutoTokenizer.from_pretrained(base.path)
    config = transformers.AutoConfig.from_pretrained(base.path).to_dict()
    torch.manual_seed(1)
    if head == "sentence-embedding":
        model = transformers.XLMRobertaModel(transformers.XLMRobertaConfig.from_dict({**config, "architectures": None}),
                                             add_pooling_layer=False)
    else:
        cfg = transformers.XLMRobertaConfig.from_dict({**config, "architectures": None, "num_labels": 5})
        model = transformers.XLMRobertaForTokenClassification(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if e5_prompts:
        (out / "config_sentence_transformers.json").write_text(json.dumps(E5_ST_CONFIG, indent=2), encoding="utf-8")
    return out
