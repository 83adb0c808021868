"""Encoder-decoder backends for eval's seq2seq tasks: one small interface over a PyTorch checkpoint (`TorchSeq2Seq`)
or a seq2seq export bundle run by the torch-free runtime (`Seq2SeqBundleLM`).

A :class:`Seq2SeqLM` gives what scoring and generation need: the encoder input of a source text (the tokenizer's own
special tokens, with the source language's code where a translation model takes one), the decoder prefix of a target
language (``decoder_start_token_id``, then the target language's code for mBART-50 / M2M100 / NLLB), decoder logits of
whole (encoder input, decoder row) pairs from a cache-free forward (teacher forcing), and greedy continuations of a
prefix that stop at the model's stop ids. The tokenizer side (ids, text, token strings, ``id_map.json``) is
`lm_scorer.TextModel`'s, so `lm_scorer.id_map` matches a candidate's ids to its source's as for causal LMs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mlcompress.errors import ModelSourceError, UnsupportedModelError

from .lm_scorer import LOGIT_BUDGET, TextModel, _ids

SEQ2SEQ_TASK = "text2text-generation"  # an encoder-decoder bundle's manifest task


class Seq2SeqLM(TextModel):
    """What the seq2seq tasks need of an encoder-decoder; subclasses fill in a backend (``logits``, ``greedy``)."""

    def __init__(self, spec: str, path: Path) -> None:
        super().__init__(spec, path)
        self.decoder_start_id = 0
        self.stop_ids: list[int] = []
        self.codes: dict[str, int] = {}  # language -> its code's id (translation models; empty for others)
        self.code_ids: set[int] = set()  # every language code's id (a language may have two: zho_Hans, zho_Hant)
        self.code_style: str | None = None

    def _read_codes(self) -> None:
        """The language codes of the tokenizer (mBART-50 / M2M100 / NLLB), from its tokenizer.json."""
        import json

        from mlcompress.translation import language_codes

        self.code_style, found = language_codes(json.loads(self.backend.to_str()))
        for code in found:
            self.codes.setdefault(code.language, code.id)
            self.code_ids.add(code.id)

    @property
    def translates(self) -> bool:
        """Whether the model picks its output language with a language code (a translation model)."""
        return bool(self.codes)

    def source_ids(self, text: str, language: str) -> list[int]:
        """Encoder input: the text with the tokenizer's special tokens, any language code in them replaced by
        ``language``'s (the tokenizer file fixes one source language; mBART-50 and NLLB take the real one)."""
        ids = list(self.backend.encode(text, add_special_tokens=True).ids)
        code = self.codes.get(language)
        if code is None:
            return ids
        return [code if i in self.code_ids else i for i in ids]

    def target_prefix(self, language: str) -> list[int]:
        """Decoder prefix: the start id, then ``language``'s code for a translation model (its forced first token)."""
        code = self.codes.get(language)
        return [self.decoder_start_id] + ([code] if code is not None else [])

    def target_row(self, text: str, language: str) -> list[int]:
        """The decoder row of a reference translation: the prefix, the text's tokens, the first stop id."""
        return self.target_prefix(language) + self.text_ids(text) + self.stop_ids[:1]

    # ---- model
    def logits(self, pairs: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """Decoder logits [len(row), vocab_size] (float32) of each (encoder ids, decoder row), one cache-free forward."""
        raise NotImplementedError

    def greedy(self, source: list[int], prefix: list[int], max_new_tokens: int) -> list[int]:
        """Greedy tokens after ``prefix`` for encoder input ``source`` (ending with a stop id when the model made one)."""
        raise NotImplementedError

    def size(self) -> dict[str, Any]:
        """Parameters and bytes."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The report's entry for this model."""
        return {"spec": self.spec, "path": str(self.path), "backend": self.kind, "model_kind": "seq2seq",
                "vocab": self.vocab_size, "decoder_start_id": self.decoder_start_id, "stop_ids": self.stop_ids,
                "language_codes": self.code_style, "target_languages": sorted(self.codes)}


def _pair_batches(pairs: list[tuple[list[int], list[int]]], width: int) -> list[list[int]]:
    """Indices of ``pairs`` in decoder-length order, grouped so that each batch's logits stay within LOGIT_BUDGET."""
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][1]), len(pairs[i][0])))
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * len(pairs[i][1]) * width <= LOGIT_BUDGET and len(out[-1]) < 16:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _padded(rows: list[list[int]], pad: int) -> tuple[Any, Any]:
    """Right-padded id and mask tensors of ``rows``."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    return ids, mask


class TorchSeq2Seq(Seq2SeqLM):
    """A ``save_pretrained`` encoder-decoder (mT5, mBART, M2M100, NLLB) run with PyTorch, fp32 on a CPU."""

    kind = "torch"

    def __init__(self, spec: str, path: Path, device: str | None = None) -> None:
        import inspect

        import torch
        from transformers import AutoModelForSeq2SeqLM

        from mlcompress.sources import load_tokenizer, load_weights

        super().__init__(spec, path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = "auto" if self.device.type == "cuda" else torch.float32
        self.model = load_weights(AutoModelForSeq2SeqLM, path, dtype=dtype).eval().to(self.device)
        self.tokenizer = load_tokenizer(path)
        self.backend = self.tokenizer.backend_tokenizer
        config, gen = self.model.config, getattr(self.model, "generation_config", None)
        start = getattr(gen, "decoder_start_token_id", None)
        self.decoder_start_id = int(start if isinstance(start, int) else config.decoder_start_token_id)
        self.stop_ids = _ids(getattr(gen, "eos_token_id", None), getattr(config, "eos_token_id", None))
        pad = _ids(getattr(gen, "pad_token_id", None), getattr(config, "pad_token_id", None))
        self.pad_id = (pad or self.stop_ids or [0])[0]
        head = self.model.get_output_embeddings()
        self.vocab_size = int(head.weight.shape[0] if head is not None else config.vocab_size)
        self.max_length = int(getattr(config, "max_position_embeddings", 0) or 0)  # 0 for T5 (relative positions)
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5.2x renamed it
        self._read_codes()

    def logits(self, pairs: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """Decoder logits of each pair; encoder inputs and decoder rows right-padded into batches (the encoder masks its
        padding, and causal decoder positions never see theirs)."""
        import torch

        out: list[np.ndarray | None] = [None] * len(pairs)
        for batch in _pair_batches(pairs, self.vocab_size):
            enc, enc_mask = _padded([pairs[i][0] for i in batch], self.pad_id)
            dec, _ = _padded([pairs[i][1] for i in batch], self.pad_id)
            with torch.inference_mode():
                logits = self.model(input_ids=enc.to(self.device), attention_mask=enc_mask.to(self.device),
                                    decoder_input_ids=dec.to(self.device), use_cache=False).logits
            for b, i in enumerate(batch):
                out[i] = logits[b, : len(pairs[i][1])].float().cpu().numpy()
        return out  # type: ignore[return-value]

    def greedy(self, source: list[int], prefix: list[int], max_new_tokens: int) -> list[int]:
        """One encoder pass, then the decoder over its cache, one token at a time (batch 1)."""
        import torch

        made: list[int] = []
        with torch.inference_mode():
            ids = torch.tensor([source], device=self.device)
            mask = torch.ones_like(ids)
            encoded = self.model.get_encoder()(input_ids=ids, attention_mask=mask)
            step = torch.tensor([prefix], device=self.device)
            cache = None
            while len(made) < max_new_tokens:
                out = self.model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=step, use_cache=True,
                                 **{self._cache_arg: cache})
                cache = out["cache"] if "cache" in out else out.past_key_values
                made.append(int(out.logits[0, -1].argmax()))
                if made[-1] in self.stop_ids:
                    break
                step = torch.tensor([[made[-1]]], device=self.device)
        return made

    def size(self) -> dict[str, Any]:
        """Parameters, bytes of weights in memory, bytes of the weight files and of the whole directory."""
        from .encoders import torch_size

        return torch_size(self.model, self.path)

    def describe(self) -> dict[str, Any]:
        """The report's entry for this model."""
        return {**super().describe(), "class": type(self.model).__name__, "device": str(self.device),
                "dtype": str(next(self.model.parameters()).dtype).replace("torch.", "")}


class Seq2SeqBundleLM(Seq2SeqLM):
    """An encoder-decoder export bundle (`export_seq2seq`, task text2text-generation), run without torch by the
    runtime's `Seq2SeqGenerator` (``mlcompress.export.runtime``): teacher-forced logits from the merged decoder's
    first-step branch over whole target rows, greedy continuations from its cached loop. ``generator``: one already
    loaded (e.g. another of the bundle's dtypes, ``generate.load(path, dtype="fp32")``); default: the bundle's own."""

    kind = "export-bundle"

    def __init__(self, spec: str, path: Path, threads: int | None = None, generator: Any = None) -> None:
        super().__init__(spec, path)
        self.generator = generator if generator is not None else _load_generator(path, threads)
        g = self.generator
        self.manifest = dict(g.manifest)
        self.backend = g.tokenizer
        self.decoder_start_id = int(g.spec.decoder_start_token_id)
        self.stop_ids = [int(i) for i in g.stop_ids]
        self.pad_id = int(g.pad_id)
        self.vocab_size = int(g.spec.vocab_size)
        self.max_length = int(g.spec.max_length or 0)
        self._read_codes()

    def logits(self, pairs: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """Decoder logits of each pair, batched as `TorchSeq2Seq` batches them (sources and rows right-padded)."""
        out: list[np.ndarray | None] = [None] * len(pairs)
        for batch in _pair_batches(pairs, self.vocab_size):
            got = self.generator.teacher_forced_logits([pairs[i][0] for i in batch], [pairs[i][1] for i in batch])
            for i, row in zip(batch, got):
                out[i] = row
        return out  # type: ignore[return-value]

    def greedy(self, source: list[int], prefix: list[int], max_new_tokens: int) -> list[int]:
        """The runtime's cached greedy loop after ``prefix`` (nothing forced), stopping at the bundle's stop ids."""
        return [int(i) for i in self.generator.greedy_ids(source, prefix, max_new_tokens)]

    def old_ids(self) -> list[int] | None:
        """id_map.json beside the bundle, else beside the model it was exported from (checked by IdMap before use)."""
        from .lm_scorer import bundle_old_ids

        return bundle_old_ids(self.path, self.manifest)

    def size(self) -> dict[str, Any]:
        """The loaded dtype's encoder and decoder files and the bundle's other files; other dtypes listed apart."""
        from .lm_scorer import bundle_size

        dtypes = (self.manifest.get("seq2seq") or {}).get("dtypes") or {}
        own = sorted(set((dtypes.get(self.generator.dtype) or {}).values()))
        return bundle_size(self.path, self.manifest, own, [f for d in dtypes.values() for f in d.values()])

    def describe(self) -> dict[str, Any]:
        """The report's entry for this model."""
        keep = {k: self.manifest[k] for k in ("quantization", "parity") if k in self.manifest}
        return {**super().describe(), "dtype": getattr(self.generator, "dtype", None), **keep}


def _load_generator(path: Path, threads: int | None) -> Any:
    """The runtime's `Seq2SeqGenerator` of a bundle (every file verified), or a clear error."""
    try:
        from mlcompress.export import runtime
    except ImportError as exc:
        raise ModelSourceError(f"{path} is an export bundle, but mlcompress.export.runtime is not available ({exc})",
                               "install an mlcompress with the export stage (onnxruntime, tokenizers)") from exc
    try:
        g = runtime.load(path, threads=threads)
    except Exception as exc:
        raise ModelSourceError(f"{path}: could not load the encoder-decoder bundle ({type(exc).__name__}: {exc})",
                               "re-export it with export_seq2seq; check its manifest.json and checksums") from exc
    if not all(hasattr(g, a) for a in ("teacher_forced_logits", "greedy_ids", "tokenizer", "stop_ids", "spec")):
        raise UnsupportedModelError(f"{path}: this mlcompress's runtime gives no encoder-decoder generator for the bundle",
                                    "update mlcompress (its export stage), or evaluate the PyTorch model directory")
    return g


def _is_seq2seq_bundle(path: Path) -> bool:
    """Whether ``path`` is an export bundle of an encoder-decoder (manifest task text2text-generation)."""
    from .lm_scorer import _bundle_manifest

    return (_bundle_manifest(path).get("head") or {}).get("task") == SEQ2SEQ_TASK


def is_seq2seq(spec: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """True for an encoder-decoder: a model directory (config.json: is_encoder_decoder, or a ...ForConditionalGeneration
    architecture) or an encoder-decoder export bundle (task text2text-generation); False for anything else, unreadable
    specs included."""
    from mlcompress.errors import MlcompressError
    from mlcompress.families import model_family
    from mlcompress.sources import resolve_model

    from .encoders import is_export_bundle

    if is_export_bundle(spec):
        return _is_seq2seq_bundle(Path(spec).expanduser())
    try:
        return model_family(resolve_model(spec, cache_dir).path) == "seq2seq"
    except MlcompressError:
        return False


def load_seq2seq(spec: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
                 device: str | None = None) -> Seq2SeqLM:
    """An encoder-decoder for a model directory or Hub id (PyTorch), or an encoder-decoder export bundle (the
    torch-free runtime); bundles of other families and other models are refused clearly."""
    from mlcompress.families import model_family
    from mlcompress.sources import resolve_model

    from .encoders import is_export_bundle

    if is_export_bundle(spec):
        path = Path(spec).expanduser().absolute()
        if not _is_seq2seq_bundle(path):
            raise UnsupportedModelError(f"{spec} is an export bundle of another family, not of an encoder-decoder",
                                        "compare an encoder-decoder with its own trim, distillation or seq2seq export")
        return Seq2SeqBundleLM(str(spec), path)
    source = resolve_model(spec, cache_dir)
    family = model_family(source.path)
    if family != "seq2seq":
        raise UnsupportedModelError(f"{spec} is a {family} model, not an encoder-decoder",
                                    "the seq2seq eval compares an encoder-decoder with its own trim, distillation or export")
    return TorchSeq2Seq(str(spec), source.path, device=device)
