"""Model backends for eval: one small interface over a PyTorch checkpoint or an export bundle.

An :class:`Encoder` gives sentence embeddings; where its backend has them it also gives per-layer
hidden states, word features for token classification, masked-LM predictions, and a trainable copy
for full fine-tuning. ``capabilities`` says which; a task that needs what a backend lacks is skipped
with that reason in the report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mlcompress.artifacts import dir_bytes, onnx_parameters
from mlcompress.errors import ModelSourceError
from mlcompress.embedding_profile import embedding_profile
from mlcompress.st_layout import dense_layers, read_modules

MAX_LENGTH = 256


class Encoder:
    """What eval needs of a model. Subclasses fill in what their backend can do."""

    kind: str = "abstract"
    capabilities: frozenset[str] = frozenset()

    def __init__(self, spec: str, path: Path) -> None:
        self.spec = spec
        self.path = path
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str], prefix: str = "") -> np.ndarray:
        """Sentence embeddings (n x d) of ``prefix + text``, computed once per text and cached."""
        prefix = self.own_prefix(prefix)
        keys = [prefix + t for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if todo:
            for key, vec in zip(todo, self._embed(todo)):
                self._cache[key] = vec
        return np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)

    def _embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def embed_uncached(self, texts: list[str], prefix: str = "") -> np.ndarray:
        """Embeddings computed now (for timing)."""
        return self._embed([self.own_prefix(prefix) + t for t in texts])

    def own_prefix(self, prefix: str) -> str:
        """The prefix to add here (a backend that adds the model's own prefix itself gets none)."""
        return prefix

    def layers(self, texts: list[str], prefix: str = "") -> list[np.ndarray]:
        """Per-layer pooled hidden states (embedding output first), each n x d."""
        raise NotImplementedError(f"{self.kind} backend gives no hidden states")

    def word_features(self, sentences: list[list[str]], layer: int = -1) -> list[np.ndarray]:
        """One vector per word (its first sub-token's hidden state at ``layer``), per sentence."""
        raise NotImplementedError(f"{self.kind} backend gives no token-level outputs")

    def mlm_predictions(self, texts: list[str], every: int = 5) -> list[tuple[list[str], list[str]]]:
        """Per text: its tokens, and the top-1 token predicted at each masked position (every ``every``-th token)."""
        raise NotImplementedError(f"{self.kind} backend has no masked-LM head")

    def size(self) -> dict[str, Any]:
        """Parameters and bytes on disk."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The report's entry for this model."""
        return {"spec": self.spec, "path": str(self.path), "backend": self.kind, "capabilities": sorted(self.capabilities)}


WORD_BOUNDARY_PIECES = ("▁", "Ġ")  # SentencePiece and byte-level BPE pieces that only mark a word start


def word_positions(word_ids: list[int | None], input_ids: list[int], markers: set[int]) -> dict[int, int]:
    """For each word, the position of its first sub-token that is not a bare word-boundary piece (else its first)."""
    first: dict[int, int] = {}
    content: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w is None:
            continue
        first.setdefault(w, pos)
        if w not in content and input_ids[pos] not in markers:
            content[w] = pos
    return {w: content.get(w, p) for w, p in first.items()}


class TorchEncoder(Encoder):
    """A ``save_pretrained`` checkpoint run with PyTorch and transformers."""

    kind = "torch"

    def __init__(self, spec: str, path: Path, pooling: str = "auto", device: str | None = None, batch_size: int | None = None) -> None:
        import torch

        from mlcompress.sources import load_model, load_tokenizer

        super().__init__(spec, path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_model(path).to(self.device)
        self.tokenizer = load_tokenizer(path)
        import inspect

        self._takes_token_types = "token_type_ids" in inspect.signature(self.model.forward).parameters
        self.pooling = embedding_profile(path).pooling if pooling == "auto" else pooling  # the one detector
        if self.pooling not in ("mean", "cls"):
            raise ModelSourceError(f"unknown pooling {pooling!r}", "use mean, cls or auto")
        self.dense = self._dense_modules(path)
        self.batch_size = batch_size or (128 if self.device.type == "cuda" else 32)
        has_mlm = self.model.get_output_embeddings() is not None and "MaskedLM" in type(self.model).__name__
        caps = {"embed", "layers", "tokens", "finetune"} | ({"mlm"} if has_mlm else set())
        self.capabilities = frozenset(caps)

    def _forward(self, enc: dict[str, Any]) -> Any:
        import torch

        with torch.inference_mode():
            return self.model(**{k: v.to(self.device) for k, v in enc.items()}, output_hidden_states=True)

    def _tok(self, texts: list[str], **kw: Any) -> Any:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt", **kw)
        if "token_type_ids" in enc and not self._takes_token_types:
            enc.pop("token_type_ids")
        return enc

    def _pool(self, hidden: Any, mask: Any) -> np.ndarray:
        if self.pooling == "cls":
            return hidden[:, 0].float().cpu().numpy()
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu().numpy()

    def _batches(self, texts: list[str]) -> list[np.ndarray]:
        order = np.argsort([len(t) for t in texts], kind="stable")
        return [order[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]

    def _run(self, texts: list[str], all_layers: bool) -> list[np.ndarray]:
        results: list[np.ndarray | None] = []
        for idx in self._batches(texts):
            enc = self._tok([texts[i] for i in idx])
            out = self._forward(enc)
            mask = enc["attention_mask"].to(self.device)
            hs = out.hidden_states
            pooled = [self._pool(h, mask) for h in (hs if all_layers else hs[-1:])]
            if not results:
                results = [np.zeros((len(texts), p.shape[1]), dtype=np.float32) for p in pooled]
            for r, p in zip(results, pooled):
                r[idx] = p
        return results

    def _dense_modules(self, path: Path) -> Any:
        """The model's sentence-transformers Dense modules (run after the pooling, as the model's users run them), or None."""
        layers = dense_layers(path, read_modules(path))
        if not layers:
            return None
        from mlcompress.st_dense import dense_stack

        return dense_stack(layers).to(self.device)

    def _embed(self, texts: list[str]) -> np.ndarray:
        pooled = self._run(texts, all_layers=False)[0]
        if self.dense is None:
            return pooled
        import torch

        with torch.inference_mode():
            return self.dense(torch.from_numpy(pooled).to(self.device)).float().cpu().numpy()

    def layers(self, texts: list[str], prefix: str = "") -> list[np.ndarray]:
        """Per-layer pooled hidden states (embedding output first), each n x d."""
        return self._run([prefix + t for t in texts], all_layers=True)

    def word_features(self, sentences: list[list[str]], layer: int = -1) -> list[np.ndarray]:
        """One vector per word (its first sub-token's hidden state at ``layer``), per sentence; truncated words get zeros.

        A bare word-boundary piece ("▁" alone, as SentencePiece starts most Chinese and Japanese words) says
        nothing about the word: the word's next piece stands for it then.
        """
        out: list[np.ndarray | None] = [None] * len(sentences)
        order = np.argsort([sum(len(w) for w in s) for s in sentences], kind="stable")
        vocab = self.tokenizer.get_vocab()
        markers = {vocab[m] for m in WORD_BOUNDARY_PIECES if m in vocab}
        for i in range(0, len(sentences), self.batch_size):
            idx = order[i : i + self.batch_size]
            enc = self._tok([sentences[j] for j in idx], is_split_into_words=True)
            hidden = self._forward(enc).hidden_states[layer].float().cpu().numpy()
            for b, j in enumerate(idx):
                feats = np.zeros((len(sentences[j]), hidden.shape[-1]), dtype=np.float32)
                for w, pos in word_positions(enc.word_ids(b), enc["input_ids"][b].tolist(), markers).items():
                    feats[w] = hidden[b, pos]
                out[j] = feats
        return out  # type: ignore[return-value]

    def mlm_predictions(self, texts: list[str], every: int = 5) -> list[tuple[list[str], list[str]]]:
        """Per text: its tokens, and the top-1 token predicted at each masked position (every ``every``-th token)."""
        if "mlm" not in self.capabilities:
            raise NotImplementedError(f"{type(self.model).__name__} has no masked-LM head")
        import torch

        tok = self.tokenizer
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self._tok(texts[i : i + self.batch_size], return_special_tokens_mask=True)
            special = enc.pop("special_tokens_mask").bool() | (enc["attention_mask"] == 0)
            original = enc["input_ids"].clone()
            positions = []
            for b in range(original.shape[0]):
                cand = [p for p in range(original.shape[1]) if not special[b, p]]
                positions.append(cand[every // 2 :: every])
                enc["input_ids"][b, positions[-1]] = tok.mask_token_id
            with torch.inference_mode():
                logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
            pred = logits.argmax(-1).cpu()
            for b, pos in enumerate(positions):
                tokens = tok.convert_ids_to_tokens([int(x) for x, m in zip(original[b], enc["attention_mask"][b]) if m])
                out.append((tokens, tok.convert_ids_to_tokens([int(pred[b, p]) for p in pos])))
        return out

    def trainable_copy(self) -> tuple[Any, Any]:
        """A fresh backbone (no head) and the tokenizer, for full fine-tuning."""
        from transformers import AutoModel

        return AutoModel.from_pretrained(self.path).to(self.device), self.tokenizer

    def size(self) -> dict[str, Any]:
        """Parameters, bytes of weights in memory, bytes of the weight files and of the whole directory."""
        return torch_size(self.model, self.path)

    def describe(self) -> dict[str, Any]:
        """The report's entry for this model."""
        return {**super().describe(), "class": type(self.model).__name__, "pooling": self.pooling,
                "layers": int(getattr(self.model.config, "num_hidden_layers", 0) or 0), "vocab": len(self.tokenizer),
                "device": str(self.device)}


def torch_size(model: Any, path: Path) -> dict[str, Any]:
    """A PyTorch model's parameters and bytes of weights in memory, and the bytes of its directory's weight files and of
    the whole directory (one definition for the encoders and the causal LMs)."""
    params = sum(p.numel() for p in model.parameters())
    in_memory = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors")) + sum(
        f.stat().st_size for f in path.glob("pytorch_model*.bin"))
    return {"parameters": int(params), "weights_in_memory_bytes": int(in_memory),
            "weight_file_bytes": int(weights), "bytes_on_disk": dir_bytes(path)}


class BundleEncoder(Encoder):
    """An export bundle (manifest.json, its ONNX graph, tokenizer.json), run by ``mlcompress.export.runtime`` without torch."""

    kind = "export-bundle"
    capabilities = frozenset({"embed"})

    def __init__(self, spec: str, path: Path, batch_size: int = 32) -> None:
        super().__init__(spec, path)
        self.bundle_prefix = ""
        try:
            from mlcompress.export import runtime
        except ImportError as exc:
            raise ModelSourceError(
                f"{path} is an export bundle, but mlcompress.export.runtime is not available ({exc})",
                "install an mlcompress with the export stage (onnxruntime, tokenizers), or evaluate the PyTorch model directory",
            ) from exc
        try:
            self.runtime = runtime.load(path)
        except Exception as exc:
            raise ModelSourceError(f"{path}: could not load the export bundle ({type(exc).__name__}: {exc})",
                                   "re-export it with mlcompress export; check its manifest.json and checksums") from exc
        self.manifest = dict(getattr(self.runtime, "manifest", None) or {})
        task = (self.manifest.get("head") or {}).get("task", "sentence-embedding")
        if task != "sentence-embedding":
            raise ModelSourceError(f"{path} is a {task} bundle; eval compares sentence-embedding bundles",
                                   "export the encoder as a sentence-embedding bundle, or evaluate its PyTorch directory")
        self.bundle_prefix = (self.manifest.get("tokenizer") or {}).get("prefix") or getattr(self.runtime, "prefix", "") or ""
        self.batch_size = batch_size

    def own_prefix(self, prefix: str) -> str:
        """The bundle adds the model's prefix itself (manifest tokenizer.prefix); eval adds one only when it has none."""
        return "" if self.bundle_prefix else prefix

    def _embed(self, texts: list[str]) -> np.ndarray:
        chunks = [np.asarray(self.runtime.encode(texts[i : i + self.batch_size]), dtype=np.float32)
                  for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)

    def size(self) -> dict[str, Any]:
        """The model's parameters and bytes (as ``inspect`` counts them): other forms of it (`--ort`, `--tokenizer-in-graph`)
        are listed apart under ``other_forms``, not summed in."""
        model = self.path / str(self.manifest.get("model") or "model.onnx")
        params = self.manifest.get("parameters")
        if params is None:
            params = onnx_parameters(model if model.is_file() else self.path)
        forms = bundle_forms(self.path, self.manifest)
        disk = dir_bytes(self.path)
        return {"parameters": params, "weight_file_bytes": int(sum(f.stat().st_size for f in model.parent.glob(f"{model.name}*"))),
                "bytes_on_disk": disk - sum(forms.values()), "other_forms": forms, "bytes_on_disk_with_other_forms": disk}

    def describe(self) -> dict[str, Any]:
        """The report's entry for this model."""
        keep = {k: self.manifest[k] for k in ("quantization", "quantisation", "languages", "format", "parity") if k in self.manifest}
        return {**super().describe(), **keep, "bundle_prefix": self.bundle_prefix}


_FORM_FILES = {"ort": ("model", "operators_config"), "tokenizer_in_graph": ("model",)}  # manifest entry -> its file fields


def bundle_forms(directory: Path, manifest: dict[str, Any]) -> dict[str, int]:
    """The files of a bundle's other forms of its model (`--ort`, `--tokenizer-in-graph`): file name -> bytes."""
    out = {}
    for key, fields in _FORM_FILES.items():
        entry = manifest.get(key)
        for name in (entry.get(f) for f in fields) if isinstance(entry, dict) else ():
            if isinstance(name, str) and (directory / name).is_file():
                out[name] = (directory / name).stat().st_size
    return out


def is_export_bundle(spec: str | os.PathLike[str]) -> bool:
    """True for a directory with an export ``manifest.json``, or a packed bundle (``.tar.gz`` or ``.tgz``)."""
    path = Path(spec).expanduser()
    return (path.is_dir() and (path / "manifest.json").is_file()) or (path.is_file() and path.name.endswith((".tar.gz", ".tgz")))


def load_encoder(spec: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None, pooling: str = "auto",
                 device: str | None = None) -> Encoder:
    """An encoder for a model directory, Hub id, bundled model or export bundle."""
    if is_export_bundle(spec):
        return BundleEncoder(str(spec), Path(spec).expanduser().absolute())
    from mlcompress.sources import resolve_model

    source = resolve_model(spec, cache_dir)
    return TorchEncoder(str(spec), source.path, pooling=pooling, device=device)
