"""Causal-LM backends for eval's generative tasks: one small interface over a PyTorch checkpoint or a decoder bundle.

A :class:`CausalLM` gives what scoring and generation need and nothing more: token ids of a text (the same
tokenizer.json both backends read, so a bundle and its PyTorch model segment alike), next-token logits of whole id
rows from a cache-free forward (teacher forcing), greedy continuations that stop at the model's stop ids, and two timed
operations for efficiency (a prefill, and a prefill followed by a fixed number of new tokens). :class:`IdMap` says
which candidate id is which source id (``id_map.json`` that a trim writes, checked; else the token strings).
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlcompress.artifacts import dir_bytes, onnx_parameters
from mlcompress.errors import InputError, ModelSourceError, UnsupportedModelError

LOGIT_BUDGET = 1 << 25  # float32 logits per forward batch (rows x positions x vocabulary): 128 MiB


class TextModel:
    """The tokenizer side that every generative backend shares (causal LMs here, encoder-decoders in `seq2seq_scorer`):
    token ids of a text (the backend tokenizer of tokenizer.json, as the bundle runtimes use it), text of ids, the token
    string of every id (to match ids across vocabularies) and a trim's ``id_map.json``."""

    kind: str = "abstract"

    def __init__(self, spec: str, path: Path) -> None:
        self.spec = spec
        self.path = path
        self.vocab_size = 0  # logit width (may exceed the tokenizer's size: padded rows)
        self.max_length = 0  # positions the model takes (0: unknown)

    def text_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, special tokens left out."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=True)

    def tokens(self) -> list[str | None]:
        """The token string of every tokenizer id (to match ids across vocabularies)."""
        n = self.backend.get_vocab_size(with_added_tokens=True)
        return [self.backend.id_to_token(i) for i in range(n)]

    def old_ids(self) -> list[int] | None:
        """The ``old_ids`` of the ``id_map.json`` a trim wrote beside this model (source id per own id), if any."""
        return _read_old_ids(self.path / "id_map.json")


class CausalLM(TextModel):
    """What the generative tasks need of a decoder-only language model; subclasses fill in a backend."""

    kind: str = "abstract"

    def __init__(self, spec: str, path: Path) -> None:
        super().__init__(spec, path)
        self.start_ids: list[int] = []  # what every scored text and prompt starts with (BOS, or a document separator)
        self.stop_ids: list[int] = []

    def encode(self, text: str) -> list[int]:
        """The ids a scored text or a prompt is fed as: the start ids, then the text's tokens."""
        return self.start_ids + self.text_ids(text)

    def _start_ids(self, bos: Any) -> list[int]:
        """The tokenizer's own leading special tokens (Gemma, Llama: BOS); else the configured BOS; else the first stop
        id (a document separator, as byte-level BPE models without BOS are trained with)."""
        own = list(self.backend.encode("", add_special_tokens=True).ids)
        if own:
            return own
        if isinstance(bos, int):
            return [bos]
        return self.stop_ids[:1]

    # ---- model
    def logits(self, rows: list[list[int]]) -> list[np.ndarray]:
        """Next-token logits [len(row), vocab_size] (float32) of each id row, from one cache-free forward."""
        raise NotImplementedError

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``ids`` (ends with a stop id when the model made one)."""
        raise NotImplementedError

    def prefill(self, ids: list[int]) -> None:
        """Generation's first step on ``ids`` (building the cache), for timing."""
        raise NotImplementedError

    def generate_fixed(self, ids: list[int], new_tokens: int) -> None:
        """Prefill ``ids``, then make exactly ``new_tokens`` greedy tokens with the cache (stop ids ignored), for timing."""
        raise NotImplementedError

    def size(self) -> dict[str, Any]:
        """Parameters and bytes."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The report's entry for this model."""
        return {"spec": self.spec, "path": str(self.path), "backend": self.kind, "model_kind": "causal-lm",
                "vocab": self.vocab_size, "start_ids": self.start_ids, "stop_ids": self.stop_ids}


def _read_old_ids(path: Path) -> list[int] | None:
    """``old_ids`` of an id_map.json (None when absent or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ids = data.get("old_ids") if isinstance(data, dict) else None
    return [int(i) for i in ids] if isinstance(ids, list) else None


def bundle_old_ids(path: Path, manifest: dict[str, Any]) -> list[int] | None:
    """An export bundle's id map: id_map.json beside it, else beside the model it was exported from."""
    own = _read_old_ids(path / "id_map.json")
    source = (manifest.get("source") or {}).get("path")
    return own if own is not None or not source else _read_old_ids(Path(source) / "id_map.json")


def bundle_size(path: Path, manifest: dict[str, Any], own: list[str], forms: list[str]) -> dict[str, Any]:
    """The size entry of an export bundle scored through ``own`` (the loaded dtype's graph files): their parameters and
    bytes (external data included), and the bundle's bytes without the other dtypes' graphs (``forms``), listed apart."""
    if not path.is_dir():  # a packed bundle: the archive is what ships
        return {"parameters": manifest.get("parameters"), "weight_file_bytes": None, "bytes_on_disk": path.stat().st_size}

    def nbytes(name: str) -> int:
        return sum(p.stat().st_size for p in (path / name).parent.glob(f"{Path(name).name}*"))

    others = {f: nbytes(f) for f in forms if f not in own and (path / f).is_file()}
    counts = [onnx_parameters(path / f) if (path / f).is_file() else None for f in sorted(own)]
    params = manifest.get("parameters") or (sum(counts) if counts and None not in counts else None)  # type: ignore[arg-type]
    disk = dir_bytes(path)
    return {"parameters": params, "weight_file_bytes": int(sum(nbytes(f) for f in own)),
            "bytes_on_disk": disk - sum(others.values()), "other_forms": others, "bytes_on_disk_with_other_forms": disk}


def _batches(rows: list[list[int]], width: int) -> list[list[int]]:
    """Indices of ``rows`` in length order, grouped so that each batch's logits stay within LOGIT_BUDGET."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * len(rows[i]) * width <= LOGIT_BUDGET:
            out[-1].append(i)
        else:
            out.append([i])
    return out


class TorchLM(CausalLM):
    """A ``save_pretrained`` causal LM run with PyTorch and transformers: in fp32 on a CPU (bf16 there is slow and coarse),
    in its saved dtype on a GPU."""

    kind = "torch"

    def __init__(self, spec: str, path: Path, device: str | None = None) -> None:
        import inspect

        import torch

        from transformers import AutoModelForCausalLM

        from mlcompress.sources import load_tokenizer, load_weights

        super().__init__(spec, path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = "auto" if self.device.type == "cuda" else torch.float32  # CPU: fp32, as the export checks parity in
        self.model = load_weights(AutoModelForCausalLM, path, dtype=dtype).eval().to(self.device)
        self.tokenizer = load_tokenizer(path)
        self.backend = self.tokenizer.backend_tokenizer
        params = inspect.signature(self.model.forward).parameters
        self._keep_arg = "logits_to_keep" in params
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5.2x renamed it
        config, gen = self.model.config, getattr(self.model, "generation_config", None)
        self.stop_ids = _ids(getattr(gen, "eos_token_id", None), getattr(config, "eos_token_id", None))
        pad = _ids(getattr(gen, "pad_token_id", None), getattr(config, "pad_token_id", None))
        self.pad_id = (pad or self.stop_ids or [0])[0]
        bos = getattr(gen, "bos_token_id", None)
        self.start_ids = self._start_ids(bos if isinstance(bos, int) else getattr(config, "bos_token_id", None))
        head = self.model.get_output_embeddings()
        self.vocab_size = int(head.weight.shape[0] if head is not None else config.vocab_size)
        self.max_length = int(getattr(config, "max_position_embeddings", 0) or 0)

    def logits(self, rows: list[list[int]]) -> list[np.ndarray]:
        """Next-token logits of each row; rows are right-padded into batches (causal attention never sees the padding)."""
        import torch

        out: list[np.ndarray | None] = [None] * len(rows)
        for batch in _batches(rows, self.vocab_size):
            width = max(len(rows[i]) for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, i in enumerate(batch):
                ids[b, : len(rows[i])] = torch.tensor(rows[i])
                mask[b, : len(rows[i])] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False).logits
            for b, i in enumerate(batch):
                out[i] = logits[b, : len(rows[i])].float().cpu().numpy()
        return out  # type: ignore[return-value]

    def _step(self, ids: Any, cache: Any) -> tuple[Any, Any]:
        """One forward over ``ids`` after ``cache`` (None: a new one): last-position logits and the cache."""
        kw = {"logits_to_keep": 1} if self._keep_arg else {}
        out = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: cache}, **kw)
        return out.logits[:, -1], (out["cache"] if "cache" in out else out.past_key_values)

    def _loop(self, ids: list[int], new_tokens: int, stop: list[int]) -> list[int]:
        """Greedy decoding at batch 1 over the model's cache: what transformers' greedy generate makes, without its
        per-call set-up (a tenth of a second, more than a tiny model's whole continuation)."""
        import torch

        made: list[int] = []
        with torch.inference_mode():
            logits, cache = self._step(torch.tensor([ids], device=self.device), None)
            while True:
                nxt = logits.argmax(-1, keepdim=True)
                made.append(int(nxt[0, 0]))
                if len(made) >= new_tokens or made[-1] in stop:
                    return made
                logits, cache = self._step(nxt, cache)

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation (batch 1), ending at the first of the model's stop ids it makes."""
        return self._loop(ids, max_new_tokens, self.stop_ids)

    def prefill(self, ids: list[int]) -> None:
        """One forward of ``ids`` building the cache, with only the last position's logits (as generate does)."""
        import torch

        with torch.inference_mode():
            self._step(torch.tensor([ids], device=self.device), None)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def generate_fixed(self, ids: list[int], new_tokens: int) -> None:
        """Prefill, then single-token steps over the cache until ``new_tokens`` are made (greedy, stop ids ignored)."""
        self._loop(ids, new_tokens, [])

    def size(self) -> dict[str, Any]:
        """Parameters, bytes of weights in memory, bytes of the weight files and of the whole directory."""
        from .encoders import torch_size

        return torch_size(self.model, self.path)

    def describe(self) -> dict[str, Any]:
        """The report's entry for this model."""
        return {**super().describe(), "class": type(self.model).__name__, "device": str(self.device),
                "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
                "layers": int(getattr(self.model.config, "num_hidden_layers", 0) or 0)}


def _ids(*values: Any) -> list[int]:
    """Token ids from config values that are an int, a list of ints, or None (first occurrence kept)."""
    out: list[int] = []
    for v in values:
        out += [int(x) for x in (v if isinstance(v, list) else [v]) if isinstance(x, int) and int(x) not in out]
    return out


class BundleLM(CausalLM):
    """A decoder bundle (`export_decoder`), run by ``mlcompress.export.runtime`` without torch."""

    kind = "export-bundle"

    def __init__(self, spec: str, path: Path, threads: int | None = None) -> None:
        super().__init__(spec, path)
        try:
            from mlcompress.export import runtime
        except ImportError as exc:
            raise ModelSourceError(f"{path} is an export bundle, but mlcompress.export.runtime is not available ({exc})",
                                   "install an mlcompress with the export stage (onnxruntime, tokenizers)") from exc
        try:
            self.generator = runtime.load(path, threads=threads)
        except Exception as exc:
            raise ModelSourceError(f"{path}: could not load the decoder bundle ({type(exc).__name__}: {exc})",
                                   "re-export it with export_decoder; check its manifest.json and checksums") from exc
        g = self.generator
        if not all(hasattr(g, a) for a in ("runner", "generate_ids", "tokenizer", "stop_ids")):
            raise UnsupportedModelError(f"{path}: this mlcompress's runtime gives no decoder generator for the bundle",
                                        "update mlcompress (its export stage), or evaluate the PyTorch model directory")
        self.manifest = dict(g.manifest)
        self.backend = g.tokenizer
        self.stop_ids = list(g.stop_ids)
        self.start_ids = self._start_ids((g.generation_config or {}).get("bos_token_id"))
        self.vocab_size = int(g.spec.vocab_size)
        self.max_length = int(g.spec.max_length or 0)

    def _run(self, ids: list[int]) -> np.ndarray:
        row = np.asarray([ids], dtype=np.int64)
        runner = self.generator.runner
        logits, _ = runner.step(row, np.ones_like(row), runner.empty_past(1))
        return logits

    def logits(self, rows: list[list[int]]) -> list[np.ndarray]:
        """Next-token logits of each row: one step over an empty cache (batch 1: no padding in the graph)."""
        return [np.asarray(self._run(r)[0], dtype=np.float32) for r in rows]

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """The runtime's greedy decoding loop, stopping at the bundle's stop ids."""
        return list(self.generator.generate_ids([ids], max_new_tokens=max_new_tokens)[0])

    def prefill(self, ids: list[int]) -> None:
        """The graph's first step on ``ids`` (it computes every position's logits, as the runtime always does)."""
        self._run(ids)

    def generate_fixed(self, ids: list[int], new_tokens: int) -> None:
        """The runtime's loop for exactly ``new_tokens`` tokens (stop ids masked)."""
        self.generator.generate_ids([ids], max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    def old_ids(self) -> list[int] | None:
        """id_map.json beside the bundle, else beside the model it was exported from (checked by IdMap before use)."""
        return bundle_old_ids(self.path, self.manifest)

    def size(self) -> dict[str, Any]:
        """The loaded model file (and its external data) and the bundle's other files; other dtypes listed apart."""
        forms = list(((self.manifest.get("decoder") or {}).get("dtypes") or {}).values())
        return bundle_size(self.path, self.manifest, [str(self.generator.model_file)], forms)

    def describe(self) -> dict[str, Any]:
        """The report's entry for this model."""
        keep = {k: self.manifest[k] for k in ("quantization", "parity") if k in self.manifest}
        return {**super().describe(), "dtype": getattr(self.generator, "dtype", None), **keep}


@dataclass(frozen=True)
class IdMap:
    """Which source id each candidate logit row is (-1: none), and how that was established."""

    to_source: np.ndarray  # int64 [candidate vocab_size]
    source_size: int
    how: str  # "identity", "id_map.json" or "token strings"

    @property
    def candidate_kept(self) -> np.ndarray:
        """Candidate ids that are some source id."""
        return np.flatnonzero(self.to_source >= 0)

    @property
    def source_kept(self) -> np.ndarray:
        """The source ids of ``candidate_kept`` (same order)."""
        return self.to_source[self.candidate_kept]

    def map(self, ids: list[int]) -> list[int]:
        """Candidate ids as source ids (-1 where a candidate id has none)."""
        return [int(self.to_source[i]) if 0 <= i < len(self.to_source) else -1 for i in ids]

    def as_dict(self) -> dict[str, Any]:
        """The report's summary of the mapping."""
        return {"how": self.how, "candidate_ids": int(len(self.to_source)), "mapped": int((self.to_source >= 0).sum()),
                "source_ids": self.source_size}


def id_map(source: TextModel, candidate: TextModel) -> IdMap:
    """The candidate's ids as source ids: the same vocabulary (identity), else ``id_map.json`` (a trim's ``old_ids``)
    when every id's token string agrees with the source's, else by token string."""
    s_tok, c_tok = source.tokens(), candidate.tokens()
    width = candidate.vocab_size
    if s_tok == c_tok and source.vocab_size == width:
        return IdMap(np.arange(width, dtype=np.int64), source.vocab_size, "identity")
    old = candidate.old_ids()
    if old is not None and len(old) <= width and all(0 <= o < source.vocab_size for o in old) and all(
            c_tok[j] == s_tok[o] for j, o in enumerate(old) if j < len(c_tok) and o < len(s_tok)):
        to_source = np.full(width, -1, dtype=np.int64)
        to_source[: len(old)] = old
        return IdMap(to_source, source.vocab_size, "id_map.json")
    index = {t: i for i, t in enumerate(s_tok) if t is not None}
    to_source = np.full(width, -1, dtype=np.int64)
    for j, t in enumerate(c_tok[:width]):
        to_source[j] = index.get(t, -1) if t is not None else -1
    if not (to_source >= 0).any():
        raise InputError(f"{candidate.spec} shares no token with {source.spec}",
                         "compare a model with its own trim, distillation or export (the same tokenizer family)")
    return IdMap(to_source, source.vocab_size, "token strings")


# ------------------------------------------------------------------------------------------- detection and loading
def _bundle_manifest(path: Path) -> dict[str, Any]:
    """manifest.json of a bundle directory or packed bundle ({} when unreadable)."""
    try:
        if path.is_dir():
            return json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        with tarfile.open(path) as tar:
            member = next((m for m in tar.getmembers() if Path(m.name).name == "manifest.json"), None)
            handle = tar.extractfile(member) if member is not None else None
            return json.loads(handle.read().decode("utf-8")) if handle is not None else {}
    except (OSError, ValueError, tarfile.TarError):
        return {}


def is_causal_lm(spec: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """True for a decoder-only language model: a decoder bundle (task text-generation), or a model whose config.json
    names a causal-LM architecture (…ForCausalLM, …LMHeadModel). False for anything else, unreadable specs included
    (the encoder path then reports them as it always has)."""
    from mlcompress.errors import MlcompressError
    from mlcompress.families import model_family

    from .encoders import is_export_bundle

    if is_export_bundle(spec):
        return (_bundle_manifest(Path(spec).expanduser()).get("head") or {}).get("task") == "text-generation"
    try:
        from mlcompress.sources import resolve_model

        return model_family(resolve_model(spec, cache_dir).path) == "decoder"
    except MlcompressError:
        return False


def load_causal_lm(spec: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
                   device: str | None = None) -> CausalLM:
    """A causal LM for a model directory, Hub id, bundled model or decoder bundle; anything else is refused."""
    from .encoders import is_export_bundle

    if is_export_bundle(spec):
        path = Path(spec).expanduser().absolute()
        if (_bundle_manifest(path).get("head") or {}).get("task") != "text-generation":
            raise UnsupportedModelError(f"{spec} is an export bundle of an encoder, not of a causal LM",
                                        "compare a causal LM with its own trim, distillation or decoder export")
        return BundleLM(str(spec), path)
    from mlcompress.families import model_family
    from mlcompress.sources import resolve_model

    source = resolve_model(spec, cache_dir)
    family = model_family(source.path)
    if family != "decoder":
        raise UnsupportedModelError(f"{spec} is an {family} model, not a causal LM",
                                    "the generative eval compares a causal LM with its own trim, distillation or export")
    return TorchLM(str(spec), source.path, device=device)
