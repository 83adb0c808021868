"""What an encoder model is exported as: its task, its graph wrapper, its input and output names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcompress.errors import InputError, ModelSourceError, UnsupportedModelError
from mlcompress.st_layout import DenseLayer, dense_layers, read_modules, st_pooling

TASKS = ("sentence-embedding", "token-classification", "sequence-classification", "masked-lm")
INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAMES = {
    "sentence-embedding": "sentence_embedding",
    "token-classification": "logits",
    "sequence-classification": "logits",
    "masked-lm": "logits",
}
_DECODER_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForSeq2SeqLM")


@dataclass(frozen=True)
class HeadSpec:
    """How one model is exported: task, pooling (sentence embeddings), output name and labels."""

    task: str
    architecture: str
    pooling: str | None  # "mean" or "cls" for sentence embeddings
    normalize: bool
    output_name: str
    id2label: dict[int, str] | None
    dense: tuple[DenseLayer, ...] = ()  # sentence-transformers Dense modules after the pooling, in order

    def as_dict(self) -> dict[str, Any]:
        """The manifest entry."""
        entry = {"task": self.task, "architecture": self.architecture, "pooling": self.pooling,
                 "normalize": self.normalize, "output": self.output_name,
                 "labels": {str(k): v for k, v in (self.id2label or {}).items()} or None}
        return {**entry, "dense": [d.as_dict() for d in self.dense]} if self.dense else entry


def _pooling_from_sentence_transformers(model_dir: Path) -> tuple[str | None, bool | None, tuple[DenseLayer, ...]]:
    """Pooling mode, normalisation and Dense modules from a sentence-transformers layout (modules.json), if present."""
    entries = read_modules(model_dir)
    if not entries:
        return None, None, ()
    normalize = any(str(e.get("type", "")).endswith("Normalize") for e in entries)
    mode = st_pooling(model_dir, entries)
    if mode is not None and mode not in ("mean", "cls"):
        raise UnsupportedModelError(f"{model_dir}: pooling mode {mode!r} is not supported", "mlcompress exports mean or CLS pooling")
    return mode, normalize, dense_layers(model_dir, entries)


def detect_head(config: Any, model_dir: Path, task: str | None = None, pooling: str | None = None,
                normalize: bool | None = None) -> HeadSpec:
    """Decide the export task from the config's architecture; refuse decoders and encoder-decoders clearly."""
    arch = (getattr(config, "architectures", None) or [type(config).__name__.replace("Config", "Model")])[0]
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False) or arch.endswith(_DECODER_SUFFIXES):
        raise UnsupportedModelError(
            f"{arch} ({config.model_type}) is a decoder or encoder-decoder model; export handles encoder models only for now",
            "export an encoder (BERT, XLM-R, multilingual-e5 ...) with its head; seq2seq and causal LMs are planned")
    inferred = ("token-classification" if arch.endswith("ForTokenClassification") else
                "sequence-classification" if arch.endswith("ForSequenceClassification") else
                "masked-lm" if arch.endswith("ForMaskedLM") else
                "sentence-embedding" if arch.endswith("Model") else None)
    if task is not None and task not in TASKS:
        raise InputError(f"unknown task {task!r}", f"choose one of {', '.join(TASKS)}")
    task = task or inferred
    if task is None:
        raise UnsupportedModelError(f"architecture {arch} has a head mlcompress cannot export",
                                    "supported: a bare encoder (sentence embeddings) or *ForTokenClassification, "
                                    "*ForSequenceClassification, *ForMaskedLM")
    st_pool, st_norm, dense = _pooling_from_sentence_transformers(model_dir)
    if task == "sentence-embedding":
        pooling = pooling or st_pool or "mean"
        if pooling not in ("mean", "cls"):
            raise InputError(f"unknown pooling {pooling!r}", "choose mean or cls")
        normalize = True if normalize is None and st_norm is None else bool(normalize if normalize is not None else st_norm)
    else:
        pooling, normalize, dense = None, False, ()
    labels = getattr(config, "id2label", None) if task.endswith("classification") else None
    return HeadSpec(task, arch, pooling, bool(normalize), OUTPUT_NAMES[task],
                    {int(k): str(v) for k, v in labels.items()} if labels else None, dense)


def load_for_export(model_dir: Path, spec: HeadSpec) -> Any:
    """Load the model in eval mode with eager attention (what the exporter and ORT's fusions handle best)."""
    import transformers

    cls_name = {"sentence-embedding": "AutoModel", "token-classification": "AutoModelForTokenClassification",
                "sequence-classification": "AutoModelForSequenceClassification", "masked-lm": "AutoModelForMaskedLM"}[spec.task]
    try:
        model = getattr(transformers, cls_name).from_pretrained(model_dir, dtype="float32", attn_implementation="eager")
    except Exception as exc:
        raise ModelSourceError(f"{model_dir}: could not load it as {cls_name} ({type(exc).__name__}: {exc})",
                               "the weights may be corrupt, or --task does not fit this model") from exc
    if spec.task == "sentence-embedding" and getattr(model, "pooler", None) is not None:
        # the graph pools last_hidden_state itself; BERT's pooler is unused, and randomly initialised on every load of a
        # checkpoint without one (a masked LM's), which would make the same model a different graph-cache key each time
        model.pooler = None
    return model.eval()


def wrap(model: Any, spec: HeadSpec) -> Any:
    """A torch module mapping (input_ids, attention_mask) to the task's one output, pooling inside the graph (then the
    sentence-transformers Dense modules and the normalisation)."""
    import torch

    from mlcompress.st_dense import dense_stack

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.dense = dense_stack(spec.dense)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            if spec.task != "sentence-embedding":
                return out.logits
            hidden = out.last_hidden_state
            if spec.pooling == "cls":
                emb = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            emb = self.dense(emb)
            if spec.normalize:
                emb = emb / emb.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-12)
            return emb

    return Exported().eval()
