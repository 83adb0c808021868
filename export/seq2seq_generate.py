"""Generate text from an exported encoder-decoder bundle (mT5, mBART, M2M100 / NLLB) with onnxruntime, tokenizers and
numpy only: one encoder pass, then the merged decoder with its cache (`decoding.decode`, the loop decoder-only
bundles use), starting from ``decoder_start_token_id`` and, for translation models, the target language's code.

    from mlcompress.export import generate
    gen = generate.load("nllb-bundle/")                      # verifies every file's sha256 first
    gen.generate("The weather is nice today.", target_language="de")   # de, deu, deu_Latn: the language-code token
    gen.generate(["Good morning", "Good night"], target_language="de", max_new_tokens=32)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlcompress.errors import InputError

from .bundle import BundleError
from .decoding import TextStream, decode, pad_rows
from .generate import _ids, _json, sampling_settings
from .runtime import _session, _verified_bytes
from .sampling import Sampling
from .seq2seq_families import Seq2SeqSpec, target_token

TASK = "text2text-generation"


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask [batch, longest] (int64) of source rows, padded on the right."""
    return pad_rows(rows, pad_id, left=False, what="source text")


class DecoderSteps:
    """The merged decoder of one encoded batch as `decoding.decode` drives it: ``empty_past`` and ``step``. The first
    step runs the no-cache branch (``use_cache_branch`` False) and gets every layer's cross-attention keys and values;
    later steps feed the cache back (as transformers.js does, the encoder part is kept from the first step)."""

    def __init__(self, session: Any, spec: Seq2SeqSpec, hidden: np.ndarray, mask: np.ndarray,
                 forced_eos: tuple[int, int] | None = None) -> None:
        self.session, self.spec, self.hidden, self.mask = session, spec, hidden, mask
        self.outputs = ["logits", *spec.past_names("present")]
        self.forced_eos = forced_eos  # (eos id, target position): generate's forced_eos_token_id at its length limit

    def empty_past(self, batch: int) -> list[np.ndarray]:
        """The first step's (unused) cache: [batch, heads, 0, head_dim] per name, as transformers.js feeds it."""
        shape = (batch, self.spec.num_heads, 0, self.spec.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in self.spec.past_names()]

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray | None, past: list[np.ndarray]
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits [batch, seq, vocab] of the target tokens ``input_ids`` after ``past``, and the grown cache
        (``attention_mask``: the loop's target-side mask, unused: target rows are never padded)."""
        first = past[0].shape[2] == 0
        feeds = {"input_ids": input_ids, "encoder_attention_mask": self.mask, "encoder_hidden_states": self.hidden,
                 "use_cache_branch": np.array([not first])}
        feeds.update(zip(self.spec.past_names(), past))
        out = self.session.run(self.outputs, feeds)
        present, logits = list(out[1:]), out[0]
        if self.forced_eos is not None and past[0].shape[2] + input_ids.shape[1] == self.forced_eos[1]:
            logits = np.full_like(logits, -np.inf)
            logits[:, -1, self.forced_eos[0]] = 0.0
        if not first:  # the with-past branch passes the encoder keys and values through; keep ours
            for i, name in enumerate(self.spec.past_names()):
                if ".encoder." in name:
                    present[i] = past[i]
        return logits, present


def encode_batch(session: Any, rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's last_hidden_state of source rows (right-padded into one batch) and their attention mask."""
    ids, mask = pad_right(rows, pad_id)
    return session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0], mask


class Seq2SeqGenerator:
    """A loaded, verified encoder-decoder bundle: tokenizer, generation settings, language codes, both sessions."""

    def __init__(self, directory: Path, manifest: dict[str, Any], threads: int | None = None,
                 providers: list[str] | None = None, dtype: str | None = None) -> None:
        from tokenizers import Tokenizer

        entry = manifest.get("seq2seq")
        if manifest["head"].get("task") != TASK or not isinstance(entry, dict):
            raise BundleError(f"bundle {directory} is not an encoder-decoder bundle", "use mlcompress.export.runtime.load")
        self.directory, self.manifest, self.spec = directory, manifest, Seq2SeqSpec.from_dict(entry["spec"])
        self.dtype = dtype or entry["default_dtype"]
        if self.dtype not in entry["dtypes"]:
            raise BundleError(f"bundle {directory} has no {self.dtype!r} model", f"choose one of {', '.join(entry['dtypes'])}")
        self.tokenizer = Tokenizer.from_str(_verified_bytes(directory, manifest, manifest["tokenizer"]["file"]).decode("utf-8"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        config, self.generation_config = _json(directory, manifest, "config.json"), _json(directory, manifest, "generation_config.json")
        self.stop_ids = _ids(self.generation_config.get("eos_token_id"), config.get("eos_token_id"))
        self.pad_id = int(manifest["tokenizer"]["pad_id"])
        self.languages: dict[str, dict[str, Any]] = entry.get("languages") or {}
        self.forced_bos = _ids(self.generation_config.get("forced_bos_token_id"))
        files, settings = entry["dtypes"][self.dtype], (entry.get("session_config") or {}).get(self.dtype)
        self.encoder, self.decoder = (_session(_verified_bytes(directory, manifest, files[part]), files[part], "onnx",
                                               threads, providers, settings) for part in ("encoder", "decoder"))

    def encode(self, text: str) -> list[int]:
        """Source token ids of ``text`` (with the tokenizer's special tokens: mBART's </s> and source code, NLLB's ...)."""
        ids = list(self.tokenizer.encode(text).ids)
        if self.spec.max_length and len(ids) > self.spec.max_length:
            raise InputError(f"the text has {len(ids)} tokens, more than the model's {self.spec.max_length} positions",
                             "split it into shorter pieces")
        return ids

    def decode_ids(self, ids: Sequence[int]) -> str:
        """Text of generated ids, special tokens (language codes included) left out."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def prefix(self, target_language: str | None) -> list[int]:
        """The decoder's first tokens: decoder_start_token_id, then the target language's code (given, or the
        generation config's forced_bos_token_id) when the model has language codes."""
        start = [self.spec.decoder_start_token_id]
        if target_language is not None:
            return start + [target_token(target_language, self.languages)]
        return start + self.forced_bos[:1]

    def generate_ids(self, rows: Sequence[Sequence[int]], *, target_language: str | None = None,
                     max_new_tokens: int = 64, sampling: Sampling = Sampling(), seed: int | None = None,
                     min_new_tokens: int = 0, on_token: Callable[[list[list[int]]], None] | None = None
                     ) -> list[list[int]]:
        """New target ids (after the prefix) for each source row; one encoder pass, then the decoder with its cache.
        A generation config's ``forced_eos_token_id`` ends a text that reaches ``max_new_tokens`` with it (as
        generate does at its length limit)."""
        prefix = self.prefix(target_language)
        if self.spec.max_length and len(prefix) + max_new_tokens > self.spec.max_length:
            raise InputError(f"max_new_tokens {max_new_tokens} exceeds the decoder's {self.spec.max_length} positions",
                             f"ask for at most {self.spec.max_length - len(prefix)} tokens")
        hidden, mask = encode_batch(self.encoder, rows, self.pad_id)
        eos = self.generation_config.get("forced_eos_token_id")
        forced = (int(eos), len(prefix) + max_new_tokens - 1) if isinstance(eos, int) else None
        if forced is not None:  # generate forces the EOS after masking it for min_new_tokens: the EOS wins
            min_new_tokens = min(min_new_tokens, max_new_tokens - 1)
        steps = DecoderSteps(self.decoder, self.spec, hidden, mask, forced)
        return decode(steps, [prefix] * len(rows), pad_id=self.pad_id, stop_ids=self.stop_ids,  # type: ignore[arg-type]
                      max_new_tokens=max_new_tokens, sampling=sampling, seed=seed, min_new_tokens=min_new_tokens,
                      on_token=on_token)

    def teacher_forced_logits(self, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]
                              ) -> list[np.ndarray]:
        """Decoder logits [len(target), vocab_size] (float32) of each (source ids, whole target row) pair, teacher
        forced: one encoder pass over the right-padded sources, then the merged decoder's first-step (no-cache) branch
        on the right-padded target rows at once (causal: a row's positions never see its padding)."""
        if len(sources) != len(targets) or not targets or any(len(t) == 0 for t in targets):
            raise InputError("teacher_forced_logits needs one non-empty target row per source row",
                             "pass as many target rows as source rows, each with at least its first token")
        hidden, mask = encode_batch(self.encoder, sources, self.pad_id)
        steps = DecoderSteps(self.decoder, self.spec, hidden, mask)
        ids, _ = pad_right(targets, self.pad_id)
        logits, _ = steps.step(ids, None, steps.empty_past(len(targets)))
        return [np.asarray(logits[i, :len(t)], dtype=np.float32) for i, t in enumerate(targets)]

    def greedy_ids(self, source: Sequence[int], prefix: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy target ids after an explicit decoder ``prefix`` (batch 1, the cache as in `generate_ids`), with
        nothing forced (no forced EOS, no minimum length): the plain loop an evaluation compares with PyTorch's. Ends
        with a stop id when the model made one."""
        hidden, mask = encode_batch(self.encoder, [source], self.pad_id)
        steps = DecoderSteps(self.decoder, self.spec, hidden, mask)
        return decode(steps, [list(prefix)], pad_id=self.pad_id, stop_ids=self.stop_ids,  # type: ignore[arg-type]
                      max_new_tokens=max_new_tokens)[0]

    def generate(self, texts: str | Sequence[str], *, target_language: str | None = None, max_new_tokens: int = 64,
                 do_sample: bool = False, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, min_new_tokens: int = 0,
                 stream: Callable[[str], None] | None = None) -> str | list[str]:
        """Translate / transform each text; one str for one text. ``target_language`` (mBART, M2M100, NLLB): the
        language to write (de, deu, or the code token itself); default: the generation config's forced_bos_token_id.

        Greedy unless ``do_sample`` (settings not given come from generation_config.json); stops at the eos ids or
        after ``max_new_tokens``. ``stream`` (one text only) receives the text piece by piece."""
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)  # type: ignore[list-item]
        if stream is not None and len(batch) != 1:
            raise InputError("stream= works with one text at a time", "call generate once per text to stream each")
        sink = TextStream(self.decode_ids, stream) if stream is not None else None
        sampling = sampling_settings(self.generation_config, do_sample, temperature, top_k, top_p)
        out = self.generate_ids([self.encode(t) for t in batch], target_language=target_language,
                                max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                                min_new_tokens=min_new_tokens, on_token=(lambda r: sink.update(r[0])) if sink else None)
        if sink is not None:
            sink.update(out[0], final=True)
        result = [self.decode_ids(ids) for ids in out]
        return result[0] if single else result


def is_seq2seq_bundle(manifest: dict[str, Any]) -> bool:
    """True for a manifest that the encoder-decoder export wrote."""
    return (manifest.get("head") or {}).get("task") == TASK
