"""Generate text from an exported decoder bundle with onnxruntime, tokenizers and numpy only (no torch, no transformers).

    from mlcompress.export import generate
    gen = generate.load("gemma-bundle/")                  # verifies every file's sha256 first
    gen.generate("Die Hauptstadt von Frankreich ist", max_new_tokens=32)
    gen.generate([{"role": "user", "content": "Hallo!"}])     # chat messages: the bundle's chat template
    gen.generate(["Guten Morgen", "Good morning"])             # a list: one left-padded batch, a list back
    gen.generate("Once upon a time", do_sample=True, temperature=0.8, top_p=0.9, seed=0, stream=print)

`mlcompress.export.runtime.load(folder)` returns the same `Generator` for a decoder bundle. An encoder-decoder bundle
(mT5, mBART, M2M100 / NLLB) loads here as a `seq2seq_generate.Seq2SeqGenerator`:
``generate.load("nllb-bundle/").generate("Good morning", target_language="de")``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcompress.errors import InputError

from .bundle import BundleError, open_bundle, verify_dir
from .chat import render, special_tokens, template_of
from .decoder_families import DecoderSpec
from .decoding import DecoderSession, TextStream, decode
from .runtime import _session, _verified_bytes
from .sampling import Sampling

if TYPE_CHECKING:
    from .seq2seq_generate import Seq2SeqGenerator

TASK = "text-generation"
Prompt = str | Sequence[dict[str, Any]]  # plain text, or chat messages


def _json(directory: Path, manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """A verified JSON file of the bundle ({} when the bundle has none)."""
    if name not in manifest["files"]:
        return {}
    try:
        return json.loads(_verified_bytes(directory, manifest, name).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {directory}: {name} is not valid JSON ({exc})", "re-export the bundle") from exc


def _ids(*values: Any) -> list[int]:
    """Token ids from config values that are an int, a list of ints, or None."""
    out: list[int] = []
    for v in values:
        out += [int(x) for x in (v if isinstance(v, list) else [v]) if isinstance(x, int) and x not in out]
    return out


def sampling_settings(generation_config: dict[str, Any], do_sample: bool, temperature: float | None,
                      top_k: int | None, top_p: float | None) -> Sampling:
    """The sampling settings: those given, else ``generation_config``'s (when sampling), else neutral."""
    g = generation_config if do_sample else {}

    def pick(given: Any, key: str, neutral: Any) -> Any:
        value = given if given is not None else g.get(key)
        return neutral if value is None else value

    return Sampling(bool(do_sample), float(pick(temperature, "temperature", 1.0)), int(pick(top_k, "top_k", 0)),
                    float(pick(top_p, "top_p", 1.0))).check()


class Generator:
    """A loaded, verified decoder bundle: its tokenizer, generation settings, chat template and ONNX session."""

    def __init__(self, directory: Path, manifest: dict[str, Any], threads: int | None = None,
                 providers: list[str] | None = None, dtype: str | None = None) -> None:
        from tokenizers import Tokenizer

        entry = manifest.get("decoder")
        if manifest["head"].get("task") != TASK or not isinstance(entry, dict):
            raise BundleError(f"bundle {directory} is not a text-generation bundle", "use mlcompress.export.runtime.load")
        self.directory, self.manifest = directory, manifest
        self.spec = DecoderSpec.from_dict(entry["spec"])
        self.dtype = dtype or entry["default_dtype"]
        if self.dtype not in entry["dtypes"]:
            raise BundleError(f"bundle {directory} has no {self.dtype!r} model", f"choose one of {', '.join(entry['dtypes'])}")
        self.model_file = entry["dtypes"][self.dtype]
        self.tokenizer = Tokenizer.from_str(_verified_bytes(directory, manifest, manifest["tokenizer"]["file"]).decode("utf-8"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        config, self.generation_config = _json(directory, manifest, "config.json"), _json(directory, manifest, "generation_config.json")
        tok_config = _json(directory, manifest, "tokenizer_config.json")
        self.chat_template = template_of(tok_config)
        self.specials = special_tokens(tok_config)
        self.stop_ids = _ids(self.generation_config.get("eos_token_id"), config.get("eos_token_id"))
        pad = _ids(self.generation_config.get("pad_token_id"), config.get("pad_token_id"), manifest["tokenizer"].get("pad_id"))
        self.pad_id = (pad or self.stop_ids or [0])[0]
        config_entries = (entry.get("session_config") or {}).get(self.dtype)
        session = _session(_verified_bytes(directory, manifest, self.model_file), self.model_file, "onnx", threads,
                           providers, config_entries)
        self.runner = DecoderSession(session, self.spec)

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text of chat ``messages`` under the bundle's chat template."""
        if self.chat_template is None:
            raise InputError("this bundle's tokenizer has no chat template", "pass plain text prompts")
        return render(self.chat_template, messages, self.specials, add_generation_prompt)

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a text prompt (with the tokenizer's special tokens) or of chat messages (the template's own)."""
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt).ids)
        return list(self.tokenizer.encode(self.apply_chat_template(prompt), add_special_tokens=False).ids)

    def decode_ids(self, ids: Sequence[int]) -> str:
        """Text of generated ids, special tokens left out."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _sampling(self, do_sample: bool, temperature: float | None, top_k: int | None, top_p: float | None) -> Sampling:
        """The sampling settings: those given, else generation_config.json's, else neutral."""
        return sampling_settings(self.generation_config, do_sample, temperature, top_k, top_p)

    def generate_ids(self, rows: Sequence[Sequence[int]], *, max_new_tokens: int = 64, do_sample: bool = False,
                     temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                     seed: int | None = None, min_new_tokens: int = 0,
                     on_token: Callable[[list[list[int]]], None] | None = None) -> list[list[int]]:
        """New token ids for each prompt's ids in ``rows`` (left-padded into one batch); see `generate`."""
        longest = max((len(r) for r in rows), default=0)
        if self.spec.max_length and longest + max_new_tokens > self.spec.max_length:
            raise InputError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                             f"{self.spec.max_length} positions", "shorten the prompt or ask for fewer tokens")
        return decode(self.runner, rows, pad_id=self.pad_id, stop_ids=self.stop_ids, max_new_tokens=max_new_tokens,
                      sampling=self._sampling(do_sample, temperature, top_k, top_p), seed=seed,
                      min_new_tokens=min_new_tokens, on_token=on_token)

    def generate(self, prompts: Prompt | Sequence[Prompt], *, max_new_tokens: int = 64, do_sample: bool = False,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, min_new_tokens: int = 0, stream: Callable[[str], None] | None = None
                 ) -> str | list[str]:
        """Continue each prompt (text, or chat messages rendered with the chat template); one str for one prompt.

        Greedy unless ``do_sample``; sampling settings not given come from generation_config.json; ``seed`` makes
        sampling reproducible. Generation stops at generation_config's eos ids (a list is fine) or after
        ``max_new_tokens``. Several prompts run as one left-padded batch. ``stream`` (one prompt only) receives the
        text piece by piece as it is made.
        """
        single = isinstance(prompts, str) or (bool(prompts) and isinstance(prompts[0], dict))
        batch: list[Prompt] = [prompts] if single else list(prompts)  # type: ignore[list-item]
        if stream is not None and len(batch) != 1:
            raise InputError("stream= works with one prompt at a time", "call generate once per prompt to stream each")
        sink = TextStream(self.decode_ids, stream) if stream is not None else None
        out = self.generate_ids([self.encode(p) for p in batch], max_new_tokens=max_new_tokens, do_sample=do_sample,
                                temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                min_new_tokens=min_new_tokens, on_token=(lambda rows: sink.update(rows[0])) if sink else None)
        if sink is not None:
            sink.update(out[0], final=True)
        texts = [self.decode_ids(ids) for ids in out]
        return texts[0] if single else texts


def is_decoder_bundle(manifest: dict[str, Any]) -> bool:
    """True for a manifest that `export_decoder` wrote."""
    return (manifest.get("head") or {}).get("task") == TASK


def load(path: str | os.PathLike[str], *, dtype: str | None = None, threads: int | None = None,
         providers: list[str] | None = None) -> Generator | Seq2SeqGenerator:
    """Open a generative bundle (directory or .tar.gz), verify every file against its manifest, and load it (``dtype``:
    fp32, q8 or q4 where the bundle has it; default: the one config.json names for transformers.js): a `Generator`
    for a decoder-only bundle, a `Seq2SeqGenerator` for an encoder-decoder one."""
    from .seq2seq_generate import Seq2SeqGenerator, is_seq2seq_bundle

    directory, tmp = open_bundle(path)
    try:
        manifest = verify_dir(directory)
        kind = Seq2SeqGenerator if is_seq2seq_bundle(manifest) else Generator
        return kind(directory, manifest, threads=threads, providers=providers, dtype=dtype)
    finally:
        if tmp is not None:  # everything is in memory now
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["Generator", "Sampling", "is_decoder_bundle", "load", "sampling_settings"]
