"""Run an mlcompress edge bundle with onnxruntime, tokenizers and numpy only (no torch, no transformers).

    from mlcompress.export import runtime
    model = runtime.load("bundle/")          # verifies every file's sha256 first
    emb = model.encode(["Guten Morgen", "Good morning"])   # (2, dim) float32, L2-normalised, default prompt (E5: query)
    docs = model.encode(["Der Hund schläft."], prompt_name="document")   # E5: "passage: " before each
    mobile = runtime.load("bundle/", format="ort")    # a bundle exported with --ort: its model.ort instead
    text = runtime.load("bundle/", format="tokenizer-in-graph")  # --tokenizer-in-graph: strings go into the graph
                                                     # (onnxruntime + onnxruntime-extensions; tokenizers is not used)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .bundle import BundleError, check_fields, inside, open_bundle, verify_dir
from .prompts import manifest_prompts, resolve_prompt

if TYPE_CHECKING:
    from .generate import Generator
    from .seq2seq_generate import Seq2SeqGenerator


def make_tokenizer(path: str | os.PathLike[str] | bytes, pad_id: int, pad_token: str, max_length: int) -> Any:
    """A tokenizers.Tokenizer from tokenizer.json (a path, or its bytes) with the bundle's padding and truncation."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(path.decode("utf-8")) if isinstance(path, bytes) else Tokenizer.from_file(str(path))
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    tok.enable_truncation(max_length=max_length)
    return tok


def tokenize(tok: Any, texts: list[str], prefix: str = "") -> dict[str, np.ndarray]:
    """The model's inputs for ``texts``: input_ids and attention_mask, int64, padded to the longest."""
    return feeds(tok.encode_batch([prefix + t for t in texts]))


def feeds(encodings: list[Any]) -> dict[str, np.ndarray]:
    """input_ids and attention_mask (int64) of a batch of padded tokenizers encodings."""
    return {"input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64)}


def text_tokens(encodings: list[Any], prefix_chars: int) -> list[list[bool]]:
    """Per encoding, True for each token of the text itself: not padding, not a special token (``<s>``, ``[CLS]`` ...),
    not a token of the prompt (the first ``prefix_chars`` characters)."""
    return [[bool(m) and not special and end > prefix_chars
             for m, special, (_, end) in zip(e.attention_mask, e.special_tokens_mask, e.offsets)] for e in encodings]


def _verified_bytes(directory: Path, manifest: dict[str, Any], name: str) -> bytes:
    """The bytes of a bundle file, read once and checked against the manifest: what is loaded is what was verified
    (a file swapped between the check and the load is refused, not run)."""
    import hashlib

    data = inside(directory, name).read_bytes()
    entry = manifest["files"].get(name) or {}
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise BundleError(f"bundle file {name} changed after it was verified (its sha256 no longer matches)",
                          "do not modify a bundle while it loads; re-copy or re-export it")
    return data


MODEL_FORMATS = ("onnx", "ort", "tokenizer-in-graph")
_FORM_KEYS = {"ort": ("ort", "--ort"), "tokenizer-in-graph": ("tokenizer_in_graph", "--tokenizer-in-graph")}


def _model_file(manifest: dict[str, Any], directory: Path, format: str) -> str:
    """The bundle file of the model in ``format``: the ONNX graph the manifest's ``model`` names (onnx/model*.onnx;
    model.onnx in bundles written before the client layout), the `--ort` model.ort, or the
    `--tokenizer-in-graph` model_with_tokenizer.onnx."""
    if format not in MODEL_FORMATS:
        raise BundleError(f"unknown model format {format!r}", f"choose one of {', '.join(MODEL_FORMATS)}")
    if format == "onnx":
        return manifest["model"]
    key, flag = _FORM_KEYS[format]
    if not isinstance(manifest.get(key), dict):
        raise BundleError(f"bundle {directory} has no {'.ort' if format == 'ort' else format} model", f"re-export it with `mlcompress export --bundle "
                          f"{flag}`, or load its ONNX model (format='onnx')")
    return manifest[key]["model"]


def session_options(threads: int | None = None, config: dict[str, str] | None = None, extensions: bool = False) -> Any:
    """onnxruntime session options as every mlcompress session uses them: ORT's log quiet below errors, ``threads``
    intra-op threads, the session ``config`` entries a bundle's quantisation asks for (int8-weights: fold its weights
    at load), and with ``extensions`` onnxruntime-extensions' operators (the in-graph tokenizer's) registered."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    for key, value in (config or {}).items():
        options.add_session_config_entry(str(key), str(value))
    if extensions:
        try:
            from onnxruntime_extensions import get_library_path
        except ImportError as exc:
            raise BundleError("the tokenizer-in-graph model needs onnxruntime-extensions, which is not installed",
                              "pip install onnxruntime-extensions (or 'mlcompress[edge]'), or load format='onnx'") from exc
        options.register_custom_ops_library(get_library_path())
    return options


def _session(data: bytes, name: str, format: str, threads: int | None, providers: list[str] | None,
             config: dict[str, str] | None = None) -> Any:
    """An onnxruntime session for the verified model bytes ``data`` (ORT's flatbuffer format when ``format`` is ort),
    with the session ``config`` entries the bundle's quantisation asks for."""
    import onnxruntime as ort

    options = session_options(threads, config, extensions=format == "tokenizer-in-graph")
    if format == "ort":
        options.add_session_config_entry("session.load_model_format", "ORT")
    try:
        return ort.InferenceSession(data, options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        raise BundleError(f"onnxruntime cannot load {name} ({type(exc).__name__}: {exc})",
                          "the bundle may need a newer onnxruntime (it uses contrib operators), or another "
                          "execution provider; check `providers`") from exc


class Bundle:
    """A loaded, verified bundle: its manifest, tokenizer and onnxruntime session (of its ONNX graph; with
    ``format="ort"`` of the `--ort` model.ort; with ``format="tokenizer-in-graph"`` of model_with_tokenizer.onnx, which
    tokenizes inside, so tokenizer.json is not read)."""

    def __init__(self, directory: Path, manifest: dict[str, Any], threads: int | None = None,
                 providers: list[str] | None = None, format: str = "onnx") -> None:
        check_fields(manifest, directory)  # verify_dir did; a hand-made manifest gets the same clear error
        self.directory = directory
        self.manifest = manifest
        self.prefix = manifest["tokenizer"].get("prefix") or ""  # the default prompt's (what the in-graph tokenizer adds)
        self.prompts, self.default_prompt_name = manifest_prompts(manifest)
        self.format = format
        self.tokenizer = None if format == "tokenizer-in-graph" else self._tokenizer(directory, manifest)
        name = _model_file(manifest, directory, format)
        self.model_file = name
        self.session = _session(_verified_bytes(directory, manifest, name), name, format, threads, providers,
                                (manifest.get("quantization") or {}).get("session_config"))
        self.task = manifest["head"]["task"]
        self.output_name = manifest["head"]["output"]

    @staticmethod
    def _tokenizer(directory: Path, manifest: dict[str, Any]) -> Any:
        """The bundle's verified tokenizer.json with its padding and truncation."""
        t = manifest["tokenizer"]
        tok_bytes = _verified_bytes(directory, manifest, t["file"])
        try:
            return make_tokenizer(tok_bytes, int(t["pad_id"]), str(t["pad_token"]), int(t["max_length"]))
        except Exception as exc:  # tokenizers raises its own Exception type for a bad file
            raise BundleError(f"bundle {directory}: cannot read its tokenizer {t['file']} ({type(exc).__name__}: {exc})",
                              "re-export the bundle; tokenizer.json must be a tokenizers-library file") from exc

    def run(self, texts: list[str] | str, batch_size: int = 32, prefix: str | None = None) -> list[np.ndarray]:
        """Raw outputs per batch of ``texts`` (embeddings, or logits with the attention mask's padding), ``prefix``
        (default: the bundle's) before each; the tokenizer-in-graph model takes the strings themselves and adds its
        prefix inside."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        prefix = self.prefix if prefix is None else prefix
        outs = []
        for i in range(0, len(texts), batch_size):
            if self.tokenizer is None:
                batch = np.array(texts[i:i + batch_size], dtype=object)
                outs.append((self.session.run([self.output_name], {self.manifest["tokenizer_in_graph"]["input"]: batch})[0], None))
                continue
            inputs = tokenize(self.tokenizer, texts[i:i + batch_size], prefix)
            outs.append((self.session.run([self.output_name], inputs)[0], inputs["attention_mask"]))
        return outs

    def encode(self, texts: list[str] | str, batch_size: int = 32, prompt_name: str | None = None,
               prompt: str | None = None) -> np.ndarray:
        """Sentence embeddings (normalised when the source model normalises) as a (n, dim) float32 array, each text
        after the prompt named ``prompt_name`` ("query", "document"; default: the bundle's default prompt, as
        sentence-transformers picks it), or after ``prompt`` itself."""
        if self.task != "sentence-embedding":
            raise BundleError(f"this bundle is a {self.task} model; encode() is for sentence-embedding bundles",
                              "use predict() or run() for classification and masked-LM bundles")
        prefix = resolve_prompt(self.prompts, self.default_prompt_name, prompt_name, prompt)
        if self.tokenizer is None and prefix != self.prefix:
            raise BundleError(f"the tokenizer-in-graph model adds {self.prefix!r} before every text itself, so it cannot "
                              f"embed with the prompt {prefix!r}",
                              "load the bundle's ONNX model (format='onnx') for other prompts")
        single = isinstance(texts, str)
        parts = [out for out, _ in self.run(texts, batch_size, prefix)]
        shape = (self.manifest["outputs"][0] if self.manifest["outputs"] else {}).get("shape") or [0]
        dim = shape[-1] if isinstance(shape[-1], int) else 0
        emb = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)
        return emb[0] if single else emb

    def predict(self, texts: list[str] | str, batch_size: int = 32) -> list[Any]:
        """Predicted labels: one per text (sequence classification), or a list per text over the text's own tokens
        (token heads: none for special tokens, padding or a prefix)."""
        if self.task == "sentence-embedding":
            raise BundleError("this bundle makes sentence embeddings, not labels", "use encode()")
        labels = self.manifest["head"].get("labels") or {}
        name = (lambda i: labels.get(str(int(i)), int(i))) if labels else int
        if self.task == "sequence-classification":
            return [name(i) for logits, _ in self.run(texts, batch_size) for i in logits.argmax(-1)]
        if self.tokenizer is None:
            raise BundleError(f"this {self.task} model's labels are per token, and the tokenizer-in-graph model returns no "
                              "tokens", "load the bundle's ONNX model (format='onnx')")
        texts = [texts] if isinstance(texts, str) else list(texts)
        result: list[Any] = []
        for i in range(0, len(texts), batch_size):
            encodings = self.tokenizer.encode_batch([self.prefix + t for t in texts[i:i + batch_size]])
            ids = self.session.run([self.output_name], feeds(encodings))[0].argmax(-1)
            keep = text_tokens(encodings, len(self.prefix))
            result.extend([name(j) for j, k in zip(row, krow) if k] for row, krow in zip(ids, keep))
        return result


def load(path: str | os.PathLike[str], threads: int | None = None, providers: list[str] | None = None,
         format: str = "onnx") -> Bundle | Generator | Seq2SeqGenerator:
    """Open a bundle directory or .tar.gz, verify every file against the manifest, and load it: its ONNX graph, or
    with ``format="ort"`` the model.ort that `mlcompress export --bundle --ort` wrote (the same verified bytes).

    A decoder bundle (`export_decoder`, task text-generation) loads as a `generate.Generator` of its default dtype,
    an encoder-decoder bundle (`export_seq2seq`, task text2text-generation) as a `seq2seq_generate.Seq2SeqGenerator`."""
    if format not in MODEL_FORMATS:  # before unpacking anything
        raise BundleError(f"unknown model format {format!r}", f"choose one of {', '.join(MODEL_FORMATS)}")
    directory, tmp = open_bundle(path)
    try:
        manifest = verify_dir(directory)
        task = (manifest.get("head") or {}).get("task")
        if task == "text-generation" and format == "onnx":
            from .generate import Generator

            return Generator(directory, manifest, threads=threads, providers=providers)
        if task == "text2text-generation" and format == "onnx":
            from .seq2seq_generate import Seq2SeqGenerator

            return Seq2SeqGenerator(directory, manifest, threads=threads, providers=providers)
        bundle = Bundle(directory, manifest, threads=threads, providers=providers, format=format)
    finally:
        if tmp is not None:  # the session and tokenizer are in memory now
            shutil.rmtree(tmp, ignore_errors=True)
    return bundle
