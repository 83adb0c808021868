"""Benchmark encoder-decoders through mlcompress: real-shaped mT5-small and NLLB-200-distilled-600M, trimmed to en+de,
exported, sized and timed (issue 24, item 6).

RANDOM WEIGHTS, XLM-R TOKENIZER: no seq2seq checkpoint can be installed here, so each model is built in code from its
real config with random weights, and its tokenizer is XLM-R's SentencePiece Unigram (250,002 pieces, from
``bundled:multilingual-e5-small``) re-laid to the family's conventions. Only sizes and speeds mean anything; the
outputs are noise, and the trim keeps what XLM-R's tokenizer makes of ``DATA/mono`` en+de (the real mT5 / NLLB
tokenizers would keep a similar but not equal set).

- ``mt5``: ``MT5Config`` of google/mt5-small (d_model 512, 8+8 layers, untied head, 250,112 rows); the tokenizer
  rebuilt with T5's special ids (pad 0, eos 1, unk 2; XLM-R's ``<s>`` and ``<mask>`` left out) plus ``<extra_id_0..99>``
  (250,100 pieces, as mT5's), the source written ``$A </s>``;
- ``nllb``: ``M2M100Config`` of facebook/nllb-200-distilled-600M (d_model 1024, 12+12 layers, scaled embeddings,
  sinusoidal positions, tied head, 256,206 rows); XLM-R's ids 0-3 are NLLB's own (``<s> <pad> </s> <unk>``), then
  NLLB's 202 language codes (``ace_Arab`` ... ``zul_Latn``, so the trim's language-code logic applies) and ``<mask>``
  (250,204 pieces; the rows past them stay, as the real model's do), the source written ``eng_Latn $A </s>``.

Each is saved with ``save_pretrained`` in ``--work``, trimmed to en+de by the pipeline's seq2seq recipe (``trim``'s
defaults on ``DATA/mono/{en,de}.txt.gz``), exported (the trim at int8-weights and at int4, each bundle holding the fp32
graphs as well; the source at fp32) and timed in the same interleaved rounds (``mlcompress.eval.measure_lms``): torch
fp32 source and trim, ONNX fp32 source, ONNX fp32 / int8 / int4 trim. "prefill" is one encoder pass over a
``--prompt``-token source (batch 1); "generate" is that pass followed by ``--new-tokens`` greedy decoder steps over the
cache with the stop ids masked (a forced length); decoder tokens/s = new tokens / (generate - encoder), per round.
Bundle MiB per precision: that precision's encoder + merged decoder + the support files (tokenizer, configs).

    flock /tmp/cpu.lock .venv/bin/python bench/seq2seq.py [--models mt5,nllb] [--work out/bench-seq2seq]
        [--rounds 3] [--runs 6] [--prompt 32] [--new-tokens 64] [--reuse] [--tiny] [--build-only]

``--tiny`` builds 1-layer, narrow models with the real vocabularies (a quick check of the code path).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlcompress.artifacts import quiet_transformers
from mlcompress.eval import measure_lms

ROOT = Path(__file__).resolve().parents[1]
NOTE = ("weights are RANDOM and the tokenizer is XLM-R's SentencePiece Unigram re-laid to each family's ids: only "
        "sizes and speeds are meaningful")
QUANTS = {"int8": ("int8-weights", "q8"), "int4": ("int4", "q4")}  # row name: (export's --quantize, bundle dtype)
LANGS = ["en", "de"]


# ------------------------------------------------------------------------------------------------ tokenizers
def _xlmr() -> dict[str, Any]:
    """XLM-R's tokenizer.json (250,002 pieces) from the bundled multilingual-e5-small."""
    from mlcompress.bundled import ensure_bundled

    return json.loads((ensure_bundled("multilingual-e5-small") / "tokenizer.json").read_text(encoding="utf-8"))


def _special(content: str, i: int) -> dict[str, Any]:
    """An added-token entry of tokenizer.json for a special token."""
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
            "special": True}


def _template(single: list[str], specials: dict[str, int]) -> dict[str, Any]:
    """A TemplateProcessing post-processor writing ``single`` ($A the text) for one and two sequences."""
    piece = lambda t: {"Sequence": {"id": t[1:], "type_id": 0}} if t.startswith("$") else {"SpecialToken": {"id": t, "type_id": 0}}  # noqa: E731
    pair = single[:-1] + ["$B"] + single[-1:]
    return {"type": "TemplateProcessing", "single": [piece(t) for t in single], "pair": [piece(t) for t in pair],
            "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in specials.items()}}


def mt5_tokenizer() -> Any:
    """XLM-R's pieces with T5's special ids: <pad> 0, </s> 1, <unk> 2, the pieces, then <extra_id_0..99> (250,100)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tj = _xlmr()
    pieces = [p for p in tj["model"]["vocab"][4:] if p[0] != "<mask>"]
    tj["model"]["vocab"] = [["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0]] + pieces
    tj["model"]["unk_id"] = 2
    extras = [f"<extra_id_{k}>" for k in range(99, -1, -1)]  # mT5 numbers them down from the end
    n = len(tj["model"]["vocab"])
    tj["added_tokens"] = [_special(t, i) for i, t in enumerate(("<pad>", "</s>", "<unk>"))] + \
        [_special(t, n + k) for k, t in enumerate(extras)]
    tj["post_processor"] = _template(["$A", "</s>"], {"</s>": 1})
    tok = Tokenizer.from_str(json.dumps(tj))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                   extra_special_tokens=extras)


def nllb_tokenizer() -> Any:
    """XLM-R's pieces (ids 0-3 are NLLB's <s> <pad> </s> <unk>), NLLB's 202 language codes, then <mask> (250,204)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    tj = _xlmr()
    tj["model"]["vocab"] = [p for p in tj["model"]["vocab"] if p[0] != "<mask>"]
    n = len(tj["model"]["vocab"])
    codes = list(FAIRSEQ_LANGUAGE_CODES)
    tj["added_tokens"] = [_special(t, i) for i, t in enumerate(("<s>", "<pad>", "</s>", "<unk>"))] + \
        [_special(t, n + k) for k, t in enumerate(codes)] + [{**_special("<mask>", n + len(codes)), "lstrip": True}]
    tj["post_processor"] = _template(["eng_Latn", "$A", "</s>"], {"eng_Latn": n + codes.index("eng_Latn"), "</s>": 2})
    tok = Tokenizer.from_str(json.dumps(tj))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   extra_special_tokens=codes)


# ------------------------------------------------------------------------------------------------ models
def _config(family: str, tiny: bool) -> Any:
    """The real config of ``family`` (``tiny``: 1 layer each side, narrow, the real vocabulary)."""
    from transformers import M2M100Config, MT5Config

    if family == "mt5":
        dims = dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=1, num_decoder_layers=1) if tiny else \
            dict(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8, num_decoder_layers=8)
        return MT5Config(**dims, vocab_size=250112, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                         relative_attention_num_buckets=32, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                         dropout_rate=0.0)
    dims = dict(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
                encoder_ffn_dim=128, decoder_ffn_dim=128) if tiny else \
        dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16, decoder_attention_heads=16,
             encoder_ffn_dim=4096, decoder_ffn_dim=4096)
    return M2M100Config(**dims, vocab_size=256206, scale_embedding=True, max_position_embeddings=1024,
                        tie_word_embeddings=True, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        decoder_start_token_id=2, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                        activation_function="relu")


def built(family: str, work: Path, tiny: bool, reuse: bool) -> Path:
    """The random-weight ``family`` model with its tokenizer, saved in ``work/family/source`` (reused when asked)."""
    import torch
    from transformers import GenerationConfig, M2M100ForConditionalGeneration, MT5ForConditionalGeneration

    out = work / family / "source"
    if reuse and (out / "tokenizer.json").is_file():  # written last: a folder without it is an interrupted build
        return out
    torch.manual_seed(0)
    config = _config(family, tiny)
    if family == "mt5":
        model, tok = MT5ForConditionalGeneration(config), mt5_tokenizer()
        # mT5's lm_head is its own matrix (transformers 5 ties it at construction; the checkpoint decides at load)
        model.lm_head.weight = torch.nn.Parameter(torch.randn(config.vocab_size, config.d_model) * config.d_model ** -0.5)
        gen = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    else:
        model, tok = M2M100ForConditionalGeneration(config), nllb_tokenizer()
        gen = GenerationConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, decoder_start_token_id=2, max_length=200)
    model.generation_config = gen
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def trimmed(source: Path, data: Path, reuse: bool) -> Path:
    """The en+de trim of ``source`` by the pipeline's seq2seq recipe (``trim``'s defaults on DATA/mono, no vocabulary
    budget, as `orchestrate.stages.trim_stage` does for generative families), beside it."""
    from mlcompress.vocab_trim import trim

    out = source.parent / "trim-en-de"
    if not (reuse and (out / "mlcompress.json").is_file()):
        corpora = {code: [str(data / "mono" / f"{code}.txt.gz")] for code in LANGS}
        result = trim(source, LANGS, corpora, out, max_vocab=None, overwrite=True)
        print(result.summary(), flush=True)
    return out


def exported(model: Path, name: str, quantize: str, data: Path, reuse: bool) -> Path:
    """The seq2seq bundle of ``model`` at ``quantize`` (``none``, ``int8-weights``, ``int4``) in ``model/../name``,
    parity-checked on en+de mono lines."""
    from mlcompress.export import export

    out = model.parent / name
    if not (reuse and (out / "manifest.json").is_file()):
        texts = {code: str(data / "mono" / f"{code}.txt.gz") for code in LANGS}
        export(model, out, quantize=quantize, languages=LANGS, texts=texts, overwrite=True, measure_latency=False)
    return out


# ------------------------------------------------------------------------------------------------ timed models
class TorchTimed:
    """A save_pretrained encoder-decoder in PyTorch fp32 (eval's `TorchSeq2Seq`) in the shape `measure_lms` times:
    ``prefill`` is one encoder pass, ``generate_fixed`` that pass and exactly N greedy decoder steps over the cache."""

    def __init__(self, path: Path, target: str) -> None:
        from mlcompress.eval.seq2seq_scorer import TorchSeq2Seq

        self.lm = TorchSeq2Seq(str(path), path, device="cpu")
        self.path, self.device, self.vocab_size = path, self.lm.device, self.lm.vocab_size
        self.stop_ids, self.max_length, self.text_ids = self.lm.stop_ids, self.lm.max_length, self.lm.text_ids
        self.start_ids = [self.lm.codes["en"]] if "en" in self.lm.codes else []  # NLLB: eng_Latn text </s>
        self.prefix = self.lm.target_prefix(target)

    def _encode(self, ids: list[int]) -> tuple[Any, Any]:
        """The encoder's output for ``ids`` (batch 1) and its attention mask."""
        import torch

        ids_t = torch.tensor([ids])
        mask = torch.ones_like(ids_t)
        return self.lm.model.get_encoder()(input_ids=ids_t, attention_mask=mask), mask

    def prefill(self, ids: list[int]) -> None:
        """One encoder pass over ``ids`` (batch 1)."""
        import torch

        with torch.inference_mode():
            self._encode(ids)

    def generate_fixed(self, ids: list[int], new_tokens: int) -> None:
        """The encoder pass, then the decoder from the prefix for exactly ``new_tokens`` greedy tokens (no stop)."""
        import torch

        with torch.inference_mode():
            encoded, mask = self._encode(ids)
            step, cache = torch.tensor([self.prefix]), None
            for _ in range(new_tokens):
                out = self.lm.model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=step,
                                    use_cache=True, **{self.lm._cache_arg: cache})
                cache = out["cache"] if "cache" in out else out.past_key_values
                step = out.logits[:, -1:].argmax(-1)

    def size(self) -> dict[str, Any]:
        """Parameters and bytes (eval's torch_size)."""
        return self.lm.size()


class OnnxTimed:
    """One precision of a seq2seq bundle, run by the torch-free `Seq2SeqGenerator`, in the shape `measure_lms` times."""

    def __init__(self, bundle: Path, dtype: str, like: TorchTimed, target: str) -> None:
        from mlcompress.export import generate

        self.gen = generate.load(bundle, dtype=dtype)
        self.path, self.dtype, self.device, self.like = bundle, dtype, None, like
        self.stop_ids, self.start_ids, self.text_ids = like.stop_ids, like.start_ids, like.text_ids
        self.max_length, self.vocab_size = like.max_length, like.vocab_size
        self.target = target if self.gen.languages else None

    def prefill(self, ids: list[int]) -> None:
        """One encoder pass over ``ids`` (batch 1)."""
        from mlcompress.export.seq2seq_generate import encode_batch

        encode_batch(self.gen.encoder, [ids], self.gen.pad_id)

    def generate_fixed(self, ids: list[int], new_tokens: int) -> None:
        """The runtime's generate for exactly ``new_tokens`` tokens (stop ids masked)."""
        self.gen.generate_ids([ids], target_language=self.target, max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    def size(self) -> dict[str, Any]:
        """The model's parameters, this precision's encoder + merged decoder bytes and the bundle's support files."""
        entry = self.gen.manifest["seq2seq"]["dtypes"]
        graphs = {f for d in entry.values() for f in d.values()}
        own = sum((self.path / f).stat().st_size for f in entry[self.dtype].values())
        support = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        return {"parameters": self.like.size()["parameters"], "weight_file_bytes": own, "bytes_on_disk": own + support,
                "other_forms": sorted(graphs - set(entry[self.dtype].values()))}


# ------------------------------------------------------------------------------------------------ the bench
def run_model(family: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build, trim, export and time one family; returns its figures (also written to work/family/results.json)."""
    from mlcompress.eval.data import DataSource
    from mlcompress.eval.lm_data import lm_texts

    t = time.time()
    source = built(family, args.work, args.tiny, args.reuse)
    trim = trimmed(source, args.data, args.reuse)
    bundles = {"source fp32": exported(source, "onnx-source-fp32", "none", args.data, args.reuse)}
    for name, (quantize, _) in QUANTS.items():
        bundles[name] = exported(trim, f"onnx-trim-{name}", quantize, args.data, args.reuse)
    print(f"{family}: models, trim and exports ready in {time.time() - t:.0f} s", flush=True)
    if args.build_only:
        return {"family": family, "built": True}
    target = "de"
    torch_source, torch_trim = TorchTimed(source, target), TorchTimed(trim, target)
    models: dict[str, Any] = {"source, PyTorch fp32": torch_source, "trim, PyTorch fp32": torch_trim,
                              "source, ONNX fp32": OnnxTimed(bundles["source fp32"], "fp32", torch_source, target),
                              "trim, ONNX fp32": OnnxTimed(bundles["int8"], "fp32", torch_trim, target)}
    for name, (_, dtype) in QUANTS.items():
        models[f"trim, ONNX {name}"] = OnnxTimed(bundles[name], dtype, torch_trim, target)
    texts = lm_texts(DataSource(root=args.data), "en", 64)[0]  # held-out English (never mono/)
    figures, together = measure_lms(models, texts, args.prompt, args.new_tokens, args.runs, args.rounds)
    out = {"family": family, "tiny": args.tiny, "note": NOTE, "figures": figures, "order": together["order"],
           "vocab": {n: m.vocab_size for n, m in models.items()}, "prompt_tokens": args.prompt,
           "new_tokens": args.new_tokens, "seconds_to_build": round(time.time() - t)}
    (args.work / family / "results.json").write_text(json.dumps(out, indent=1, default=str))
    return out


def table(result: dict[str, Any]) -> str:
    """The Markdown rows of one family (speed ratios against the untrimmed PyTorch fp32 row)."""
    label = {"mt5": "mt5-small-shaped", "nllb": "NLLB-200-distilled-600M-shaped"}[result["family"]]
    rows = [f"\n### {label}{' (tiny)' if result['tiny'] else ''}: en+de trim (random weights, XLM-R tokenizer)\n",
            f"| model | vocabulary | parameters | MiB | encoder ms ({result['prompt_tokens']} tok, p50) | "
            f"decoder tok/s ({result['new_tokens']} new) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    base = None
    for name, f in result["figures"].items():
        tps = f.get("decode_tokens_per_s") or 0.0
        base = base or tps or 1.0
        lo, hi = f.get("decode_tokens_per_s_min") or 0.0, f.get("decode_tokens_per_s_max") or 0.0
        rows.append(f"| {name} | {result['vocab'][name]:,} | {(f.get('parameters') or 0) / 1e6:.1f}M | "
                    f"{(f.get('bytes_on_disk') or 0) / 2**20:.1f} | {f.get('prefill_ms_p50', 0.0):.1f} | "
                    f"{tps:.1f} [{lo:.1f}-{hi:.1f}] ({tps / base:.2f}x) |")
    return "\n".join(rows)


def ratios(result: dict[str, Any], candidate: str = "trim, ONNX int8") -> dict[str, Any]:
    """``candidate`` against the untrimmed fp32 source, in ONNX (like for like) and in PyTorch: size and decoder speed
    (both per-round medians), and the encoder time ratio."""
    f = result["figures"]
    out: dict[str, Any] = {"candidate": candidate}
    for base in ("source, ONNX fp32", "source, PyTorch fp32"):
        s, c = f[base], f[candidate]
        out[base] = {"size": c["bytes_on_disk"] / s["bytes_on_disk"],
                     "decoder_tokens_per_s": (c["decode_tokens_per_s"] or 0) / (s["decode_tokens_per_s"] or np.nan),
                     "encoder_ms": c["prefill_ms_p50"] / s["prefill_ms_p50"]}
    return out


def main() -> None:
    """Run the families and print the tables, the JSON and the int8-trim ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mt5,nllb")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-seq2seq")
    ap.add_argument("--prompt", type=int, default=32, help="encoder input tokens")
    ap.add_argument("--new-tokens", type=int, default=64, help="decoder tokens per timed generate (forced length)")
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="reuse the models, trims and exports already in --work")
    ap.add_argument("--tiny", action="store_true", help="1-layer narrow models, real vocabularies (checks the code path)")
    ap.add_argument("--build-only", action="store_true",
                    help="build, trim and export only (time later with --reuse, on a quiet CPU)")
    args = ap.parse_args()
    quiet_transformers()
    for name in ("onnx_ir", "onnxscript"):  # the exporter's per-initializer and per-node INFO lines
        logging.getLogger(name).setLevel(logging.WARNING)
    print(f"NOTE: {NOTE}", flush=True)
    results = []
    for family in [x.strip() for x in args.models.split(",") if x.strip()]:
        result = run_model(family, args)
        if args.build_only:
            continue
        result["ratios"] = ratios(result)
        results.append(result)
        print(table(result), flush=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nNOTE: {NOTE}")
    print("\n".join(table(r) for r in results))
    print("\n" + json.dumps([{k: r[k] for k in ("family", "tiny", "figures", "ratios")} for r in results], indent=1,
                            default=str))
    for r in results:
        for base in ("source, ONNX fp32", "source, PyTorch fp32"):
            x = r["ratios"][base]
            print(f"{r['family']}: trimmed int8 (ONNX) against untrimmed fp32 ({base.split(', ')[1]}): size "
                  f"{x['size']:.3f}x, decoder tokens/s {x['decoder_tokens_per_s']:.2f}x, encoder ms {x['encoder_ms']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
