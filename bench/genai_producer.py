"""onnxruntime-genai's model builder as a second producer for ``bench/generative.py`` (issue 22, items 3 and 8): bench only.

:func:`build` runs the builder of ``onnxruntime-genai`` 0.18 on a (trimmed) Gemma 3 transformers folder for CPU, in a
child process, with the rope patch that Gemma 3 needs under transformers 5 (``../shared/notes/generative-export.md``
section 2: v5 nests ``rope_parameters`` per layer type and drops ``rope_local_base_freq``, so the builder stops with
``KeyError: 'rope_type'``). :class:`GenAILM` runs a built folder with ``onnxruntime_genai`` (``og.Model`` and
``og.Generator``, CPU provider) behind the :class:`mlcompress.eval.CausalLM` interface. Neither package nor this module
is a dependency of mlcompress.

    flock /tmp/cpu.lock .venv/bin/python bench/genai_producer.py [--model out/gemma-en-de] [--out /tmp/genai-work]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlcompress.eval import CausalLM

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "int8", "int4")
RECORD = "builder_record.json"  # what build() writes beside the model: the options the builder really used


def available() -> str | None:
    """None when onnxruntime_genai imports; else why the genai producer is skipped."""
    try:
        import onnxruntime_genai  # noqa: F401
        import onnxruntime_genai.models.builder  # noqa: F401  (needs torch and transformers)
    except Exception as exc:
        return f"onnxruntime-genai is not usable here ({type(exc).__name__}: {exc})"
    return None


# ------------------------------------------------------------------------------------------------------------ build
def _patch_builder(record_path: Path, exact_embed_scale: bool, context_length: int | None) -> None:
    """In the builder's process: fix Gemma 3's v5 rope config; optionally use Gemma's exact embedding scale
    sqrt(hidden) (the builder rounds it to 2 decimals: 25.3 for 25.2982 here) and a shorter context (the fp32 cos/sin
    caches hold context x head_dim/2 per rope theta: 64 MiB at Gemma 3's 32,768); record the options used."""
    import onnxruntime_genai.models  # noqa: F401  (puts the builder's folder on sys.path: its modules import flat)
    from builders import base  # type: ignore[import-not-found]

    make_config_init, save_model, make_model = base.Model.make_config_init, base.Model.save_model, base.Model.make_model

    def config_init(self: Any, config: Any) -> None:
        rope = getattr(config, "rope_parameters", None)
        if type(self).__name__ == "Gemma3Model" and isinstance(rope, dict) and "full_attention" in rope:
            config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
            config.rope_parameters = dict(rope["full_attention"])
        make_config_init(self, config)
        if context_length:
            config.max_position_embeddings = context_length  # read into context_length (and rope caches) next

    def model(self: Any, input_path: str) -> None:
        if exact_embed_scale and type(self).__name__.startswith("Gemma"):
            self.embed_attrs["scale"] = float(np.float32(np.sqrt(self.hidden_size)))  # what transformers multiplies by
        make_model(self, input_path)

    def save(self: Any, out_dir: str) -> None:
        keep = (str, int, float, bool, type(None), list, tuple, dict)
        extra = {k: v for k, v in self.extra_options.items() if isinstance(v, keep) and not k.startswith("_")
                 and k != "hf_details"}
        record = {"quant_attrs": self.quant_attrs, "extra_options": extra,
                  "tied_quantized_embeddings": getattr(self, "tied_quantized_embeddings", None),
                  "tied_unquantized_embeddings": getattr(self, "tied_unquantized_embeddings", None),
                  "io_dtype": str(self.io_dtype), "onnx_dtype": str(self.onnx_dtype), "ep": self.ep,
                  "window_size": getattr(self, "window_size", None), "embed_scale": self.embed_attrs.get("scale")}
        record_path.write_text(json.dumps(record, indent=1, default=str))
        save_model(self, out_dir)

    base.Model.make_config_init, base.Model.save_model, base.Model.make_model = config_init, save, model


def _build_here(model_dir: str, out_dir: str, precision: str, options: list[str], cache_dir: str,
                exact_embed_scale: bool, context_length: int | None) -> None:
    """Run the builder in this process (``build`` calls it in a child process)."""
    _patch_builder(Path(out_dir) / RECORD, exact_embed_scale, context_length)
    import builder  # type: ignore[import-not-found]

    extra = builder.parse_extra_options(None, model_dir, out_dir, precision, "cpu", cache_dir, options)
    builder.create_model(None, model_dir, out_dir, precision, "cpu", cache_dir, **extra)


def build(model_dir: str | Path, out_dir: str | Path, precision: str, options: dict[str, Any] | None = None,
          exact_embed_scale: bool = False, context_length: int | None = None, log: Path | None = None
          ) -> dict[str, Any]:
    """Build ``model_dir`` (a transformers Gemma 3 folder) with the genai builder into ``out_dir`` for CPU at
    ``precision`` (fp32, int8, int4), extra ``options`` as the builder's KEY=VALUE options; returns the record."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = [str(Path(model_dir).resolve()), str(out.resolve()), precision,
            [f"{k}={v}" for k, v in (options or {}).items()], str(out.resolve().parent / ".genai-cache"), exact_embed_scale,
            context_length]
    code = ("import json, runpy, sys; runpy.run_path(sys.argv[1])['_build_here'](*json.loads(sys.argv[2]))")
    start = time.perf_counter()
    with open(log or out / "build.log", "w") as sink:
        done = subprocess.run([sys.executable, "-c", code, __file__, json.dumps(args)], stdout=sink,
                              stderr=subprocess.STDOUT, cwd=str(out), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode:
        tail = (log or out / "build.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the genai builder failed ({done.returncode}) for {precision}:\n{tail}")
    record = json.loads((out / RECORD).read_text())
    record.update(precision=precision, options=options or {}, exact_embed_scale=exact_embed_scale,
                  context_length=context_length, build_s=round(time.perf_counter() - start, 1),
                  files=model_files(out))
    (out / RECORD).write_text(json.dumps(record, indent=1, default=str))
    return record


def model_files(out_dir: str | Path) -> dict[str, int]:
    """Bytes of each ONNX model file and its external data in a built folder."""
    out = Path(out_dir)
    return {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file() and ".onnx" in p.name}


# --------------------------------------------------------------------------------------------------------- runtime
class GenAILM(CausalLM):
    """A genai builder folder run by ``onnxruntime_genai`` on CPU, batch 1; token ids from its tokenizer.json."""

    kind = "onnxruntime-genai"

    def __init__(self, out_dir: str | Path, threads: int = 2, spec: str | None = None) -> None:
        import onnxruntime_genai as og
        from tokenizers import Tokenizer

        path = Path(out_dir)
        super().__init__(spec or f"genai:{path.name}", path)
        self.device = None
        self.og = og
        self.threads = threads
        config = og.Config(str(path))
        config.clear_providers()  # the CPU provider
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        self.genai_config = json.loads((path / "genai_config.json").read_text())
        self.backend = Tokenizer.from_file(str(path / "tokenizer.json"))
        m = self.genai_config["model"]
        eos = m.get("eos_token_id")
        self.stop_ids = [int(i) for i in (eos if isinstance(eos, list) else [eos]) if isinstance(i, int)]
        self.start_ids = self._start_ids(m.get("bos_token_id"))
        self.vocab_size = int(m["vocab_size"])
        self.max_length = int(m.get("context_length") or 0)
        self.window = int((m["decoder"].get("sliding_window") or {}).get("window_size") or 0)

    def _generator(self, ids: list[int], total: int, min_total: int = 0) -> Any:
        """A greedy generator after the prompt ``ids`` (prefill done), its shared KV buffer sized for ``total``
        positions, at least the sliding window (the windowed cache of Gemma 3's local layers refuses less)."""
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=max(total, self.window), min_length=min_total,
                                  batch_size=1)
        gen = self.og.Generator(self.model, params)
        gen.append_tokens(np.asarray([ids], dtype=np.int32))
        return gen

    def logits(self, rows: list[list[int]]) -> list[np.ndarray]:
        """Teacher-forced logits [len(row), vocab] of each row: the graph's ``logits`` output after the prompt step
        (every position, unless the folder was built with ``prune_lm_head``)."""
        out = []
        for row in rows:
            gen = self._generator(row, len(row) + 1)
            got = np.asarray(gen.get_output("logits"), dtype=np.float32)
            got = got.reshape(-1, got.shape[-1])
            if got.shape[0] != len(row):
                raise ValueError(f"the graph gave logits for {got.shape[0]} of {len(row)} positions (prune_lm_head?)")
            out.append(got)
        return out

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation by genai's own search, ending at the first stop id made."""
        gen = self._generator(ids, len(ids) + max_new_tokens)
        made: list[int] = []
        while len(made) < max_new_tokens and not gen.is_done():
            gen.generate_next_token()
            made.append(int(gen.get_next_tokens()[0]))
            if made[-1] in self.stop_ids:
                break
        return made

    def prefill(self, ids: list[int]) -> None:
        """A generator for the prompt (its KV buffer sized for one more token) and the prompt step."""
        self._generator(ids, len(ids) + 1)

    def generate_fixed(self, ids: list[int], new_tokens: int) -> None:
        """Prefill, then exactly ``new_tokens`` greedy tokens by genai's loop (stop ids masked by min_length)."""
        gen = self._generator(ids, len(ids) + new_tokens, min_total=len(ids) + new_tokens)
        for _ in range(new_tokens):
            gen.generate_next_token()
        made = len(gen.get_sequence(0)) - len(ids)
        if made != new_tokens:
            raise RuntimeError(f"genai made {made} tokens, not {new_tokens}")

    def size(self) -> dict[str, Any]:
        """Initializer elements of model.onnx, bytes of the ONNX files (graph + external data), the whole folder."""
        from mlcompress.artifacts import dir_bytes, onnx_parameters

        model = self.path / self.genai_config["model"]["decoder"]["filename"]
        record = self.path / RECORD
        return {"parameters": onnx_parameters(model), "weight_file_bytes": sum(model_files(self.path).values()),
                "bytes_on_disk": dir_bytes(self.path) - (record.stat().st_size if record.is_file() else 0)}

    def describe(self) -> dict[str, Any]:
        """The report's entry for this model, with the builder options it was built with."""
        record = self.path / RECORD
        built = json.loads(record.read_text()) if record.is_file() else {}
        keep = {k: built[k] for k in ("precision", "options", "quant_attrs", "tied_quantized_embeddings") if k in built}
        return {**super().describe(), "threads": self.threads, "builder": keep}


# -------------------------------------------------------------------------------------------------- quick checks
def german_sentences(n: int = 16, path: Path = Path("/work/shared/data/pawsx/dev-de.tsv.gz")) -> list[str]:
    """The first ``n`` distinct sentences of column 0 of PAWS-X German dev (a dev set: fine for choices)."""
    out: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            text = line.split("\t")[0].strip()
            if text and text not in out:
                out.append(text)
            if len(out) >= n:
                break
    return out


def compare(reference: CausalLM, candidate: CausalLM, texts: list[str]) -> dict[str, float]:
    """Teacher-forced agreement of ``candidate`` with ``reference`` (same vocabulary): max |Δlogit|, next-token top-1
    agreement, and the perplexity ratio candidate/reference over every predicted position."""
    rows = [reference.encode(t) for t in texts]
    if any(candidate.encode(t) != r for t, r in zip(texts, rows)):
        raise ValueError("the two models segment the texts differently")
    ref, cand = reference.logits(rows), candidate.logits(rows)
    diff, agree, n, nll_r, nll_c = 0.0, 0, 0, 0.0, 0.0
    for row, a, b in zip(rows, ref, cand):
        diff = max(diff, float(np.abs(a - b).max()))
        agree += int((a[:-1].argmax(-1) == b[:-1].argmax(-1)).sum())
        target = np.asarray(row[1:])
        for logits, acc in ((a, "r"), (b, "c")):
            z = logits[:-1].astype(np.float64)
            lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
            nll = float((lse - z[np.arange(len(target)), target]).sum())
            nll_r, nll_c = (nll_r + nll, nll_c) if acc == "r" else (nll_r, nll_c + nll)
        n += len(target)
    return {"max_abs_logit_diff": diff, "top1_agreement": agree / n, "nll_ref": nll_r / n, "nll_cand": nll_c / n,
            "ppl_ratio": math.exp((nll_c - nll_r) / n), "positions": n}


def main() -> None:
    """Smoke: build (or reuse) each precision, then parity against PyTorch, sizes and batch-1 speed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "out/gemma-en-de")
    parser.add_argument("--out", type=Path, default=Path("/tmp/genai-work"))
    parser.add_argument("--precisions", default="fp32,int8,int4")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    args = parser.parse_args()
    reason = available()
    if reason:
        print(json.dumps({"skipped": reason}))
        return
    from llama_anchor import decode_speed  # the same batch-1 timing as the llama.cpp anchor's

    from mlcompress.eval.lm_scorer import TorchLM

    torch_lm = TorchLM("torch", args.model, device="cpu")
    texts = german_sentences()
    for precision in args.precisions.split(","):
        out = args.out / f"genai-{args.model.name}-{precision}"
        record = build(args.model, out, precision) if args.rebuild or not (out / RECORD).is_file() else None
        lm = GenAILM(out)
        same_ids = all(lm.text_ids(t) == torch_lm.text_ids(t) for t in texts)
        row = {"precision": precision, "built_s": record and record["build_s"], "same_text_ids": same_ids,
               "mib": round(lm.size()["weight_file_bytes"] / 2**20, 1), "size": lm.size(),
               "builder": lm.describe()["builder"], **compare(torch_lm, lm, texts)}
        if precision == "fp32":
            row["first_two_max_abs_logit_diff"] = compare(torch_lm, lm, texts[:2])["max_abs_logit_diff"]
        if not args.no_speed:
            row["speed"] = decode_speed(lm)
        print(json.dumps(row, default=str), flush=True)
        del lm
    if not args.no_speed:
        print(json.dumps({"precision": "torch fp32", "speed": decode_speed(torch_lm)}), flush=True)


if __name__ == "__main__":
    main()
