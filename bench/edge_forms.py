"""Benchmark the forms of one edge bundle (exported with `--bundle --ort --tokenizer-in-graph`): the Python runtime
(tokenizer.json + the ONNX graph), the tokenizer-in-graph model, and the .ort model.

Prints, as JSON lines:
- size of each form (the files each needs: the ONNX graph + tokenizer.json; model_with_tokenizer.onnx; model.ort +
  tokenizer.json);
- token-id parity of the in-graph tokenizer against tokenizer.json on every Tatoeba line of the bundle's languages
  (both sides of each xxx-eng pair; English: the English side of every pair), raw lines (only the newline removed);
- the largest embedding difference of the in-graph and .ort models against the two-file path, same batches of 32,
  on both sides of the bundle's Tatoeba pairs;
- batch-1 latency per sentence (tokenization included) of each form, interleaved rounds, median of round medians.

    flock /tmp/cpu.lock .venv/bin/python bench/edge_forms.py BUNDLE [--rounds 5] [--sentences 100]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from pathlib import Path

import numpy as np

from mlcompress.export import runtime, verify
from mlcompress.export.tokenizer_graph import session, token_id_mismatches, tokenizer_graph
from mlcompress.languages import tatoeba_code

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def raw_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def pair_files(data: Path, languages: list[str]) -> list[Path]:
    """Both sides of each xxx-eng pair of the bundle's non-English languages (English: every pair's English side)."""
    tatoeba = data / "tatoeba"
    files = [tatoeba / f"tatoeba.{tatoeba_code(lang)}-eng.{side}.gz" for lang in languages if lang != "en"
             for side in (tatoeba_code(lang), "eng")]
    if "en" in languages:
        files += sorted(p for p in tatoeba.glob("tatoeba.*-eng.eng.gz") if p not in files)
    return files


def id_parity(bundle: Path, manifest: dict, files: list[Path]) -> dict:
    """Lines whose in-graph token ids differ from tokenizer.json's (with the bundle's prefix and truncation)."""
    t = manifest["tokenizer"]
    tok_json = json.loads((bundle / t["file"]).read_text(encoding="utf-8"))
    graph = session(tokenizer_graph(tok_json, t["prefix"], t["max_length"], t["pad_id"], 21).SerializeToString())
    tok = runtime.make_tokenizer(bundle / t["file"], t["pad_id"], t["pad_token"], t["max_length"])
    lines = list(dict.fromkeys(line for f in files for line in raw_lines(f)))
    mismatched = token_id_mismatches(graph, tok, t["prefix"], lines)
    return {"lines": len(lines), "files": len(files), "mismatches": len(mismatched), "examples": mismatched[:10]}


def timed_rounds(forms: dict, sentences: list[str], rounds: int) -> dict:
    """Batch-1 ms per sentence of each form, interleaved within each round (the CPU's speed drifts over minutes)."""
    per_round: dict[str, list[float]] = {name: [] for name in forms}
    for name, model in forms.items():
        model.encode(sentences[:5])  # warm-up
    for _ in range(rounds):
        for name, model in forms.items():
            times = []
            for s in sentences:
                t0 = time.perf_counter()
                model.encode([s])
                times.append((time.perf_counter() - t0) * 1000)
            per_round[name].append(statistics.median(times))
    return {name: {"ms_per_sentence": round(statistics.median(v), 2), "rounds": [round(x, 2) for x in v]}
            for name, v in per_round.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sentences", type=int, default=100)
    args = ap.parse_args()
    manifest = verify(args.bundle)
    files = manifest["files"]
    size = {"python_runtime": files[manifest["model"]]["bytes"] + files["tokenizer.json"]["bytes"],
            "tokenizer_in_graph": files["model_with_tokenizer.onnx"]["bytes"],
            "ort": files["model.ort"]["bytes"] + files["tokenizer.json"]["bytes"]}
    print(json.dumps({"size_mib": {k: round(v / MIB, 2) for k, v in size.items()}}), flush=True)
    print(json.dumps({"token_id_parity": id_parity(args.bundle, manifest, pair_files(args.data, manifest["languages"]))}),
          flush=True)
    forms = {"python_runtime": runtime.load(args.bundle, threads=1),
             "tokenizer_in_graph": runtime.load(args.bundle, threads=1, format="tokenizer-in-graph"),
             "ort": runtime.load(args.bundle, threads=1, format="ort")}
    pairs = [raw_lines(f) for f in pair_files(args.data, [x for x in manifest["languages"] if x != "en"])]
    texts = [line for side in pairs for line in side]
    want = forms["python_runtime"].encode(texts, batch_size=32)
    diffs = {name: float(np.abs(forms[name].encode(texts, batch_size=32) - want).max()) for name in ("tokenizer_in_graph", "ort")}
    print(json.dumps({"max_abs_diff_vs_python_runtime": diffs, "texts": len(texts)}), flush=True)
    sentences = [s for s in texts if s.strip()][:args.sentences]
    print(json.dumps({"latency_batch1_1thread": timed_rounds(forms, sentences, args.rounds)}), flush=True)


if __name__ == "__main__":
    main()
