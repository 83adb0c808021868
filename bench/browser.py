"""Benchmark a bundle's web demo (`mlcompress bundle demo`) in headless Chromium: onnxruntime-web, wasm backend.

Writes the demo to a temp folder, serves it on 127.0.0.1 and prints: the bundle's size and the page's download, the
time from page start to the first embedding, ms per sentence at batch 1 (~50 Tatoeba sentences after a warm-up),
token-id agreement and cosine against the Python runtime (runtime.load(bundle).encode) on 20 Tatoeba sentences per
bundle language; with --screenshot, the page after typing --query with its ranked list.

    flock /tmp/cpu.lock .venv/bin/python bench/browser.py /tmp/w/bexp-de/bundle-int8-dynamic --screenshot /tmp/w/demo.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mlcompress.artifacts import dir_bytes
from mlcompress.corpus import default_data_dir
from mlcompress.export import runtime, write_demo
from mlcompress.export.demo_texts import tatoeba_sentences

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from web_browser import call, chromium, serve, wait_ready  # noqa: E402

BATCH1_JS = """(async () => {
  const times = [];
  for (const [i, text] of args[0].entries()) {
    const t0 = performance.now();
    await window.mlcompressDemo.embed([text]);
    if (i >= args[1]) times.push(performance.now() - t0);
  }
  return times; })()"""
RESULTS_JS = """(async () => {
  while (document.getElementById('results').dataset.query !== args[0]) await new Promise((r) => setTimeout(r, 50));
  return Array.from(document.querySelectorAll('#results li'), (li) =>
    [li.querySelector('.score').textContent, li.querySelector('.lang').textContent, li.querySelector('.text').textContent]);
  })()"""


def _timing_sentences(languages: list[str], data: Path, n: int) -> list[str]:
    """``n`` Tatoeba lines past the ones the page lists, taken in turn from each language."""
    per = -(-n // max(1, len(languages))) + 20
    pools = [[s["text"] for s in tatoeba_sentences([lang], data, per)][20:] for lang in languages]
    mixed = [s for group in zip(*pools) for s in group]
    return mixed[:n]


def _measure(site: Path, parity: list[str], timed: list[str], warmup: int, query: str, shot: Path | None) -> dict[str, Any]:
    """Load the page in headless Chromium; return its timing, batch-1 times, tokens, embeddings and ranked list."""
    from selenium.webdriver.common.by import By

    with serve(site) as url, chromium(1100, 1000) as driver:
        driver.get(url)
        page = wait_ready(driver, timeout_s=600)
        times = call(driver, BATCH1_JS, timed, warmup)
        tokens = call(driver, "window.mlcompressDemo.tokenize(args[0])", parity)
        embeddings = call(driver, "window.mlcompressDemo.embed(args[0])", parity)
        one_by_one = call(driver, "Promise.all(args[0].map((t) => window.mlcompressDemo.embed([t]).then((e) => e[0])))", parity)
        driver.find_element(By.ID, "query").send_keys(query)
        ranked = call(driver, RESULTS_JS, query)
        if shot is not None:
            driver.save_screenshot(str(shot))
    return {"page": page, "times": times, "tokens": tokens, "embeddings": np.asarray(embeddings),
            "batch1": np.asarray(one_by_one), "ranked": ranked}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--data", type=Path, default=default_data_dir(), help="a folder laid out like ../shared/data")
    ap.add_argument("--per-language", type=int, default=20, help="Tatoeba sentences per language for the cosine")
    ap.add_argument("--timed", type=int, default=50, help="sentences timed at batch 1")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--query", default="Where is the train station?")
    ap.add_argument("--screenshot", type=Path)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    model = runtime.load(args.bundle)
    languages = model.manifest.get("languages") or ["en"]
    parity = [s["text"] for s in tatoeba_sentences(languages, args.data, args.per_language)]
    timed = _timing_sentences(languages, args.data, args.timed + args.warmup)
    with tempfile.TemporaryDirectory(prefix="mlcompress-browser-") as tmp:
        site = write_demo(args.bundle, Path(tmp) / "site", data=args.data)
        page_bytes = dir_bytes(site) - dir_bytes(site / "mlcompress.json")
        got = _measure(site, parity, timed, args.warmup, args.query, args.screenshot)
    expected = runtime.tokenize(model.tokenizer, parity, model.prefix)
    cosine = _cosine(got["embeddings"], model.encode(parity))  # both in batches of 32 padded to the longest
    single = _cosine(got["batch1"], np.stack([model.encode([t])[0] for t in parity]))  # both one sentence at a time
    same = sum(a == b for a, b in zip(got["tokens"]["input_ids"], expected["input_ids"].tolist()))
    figures = {
        "bundle": str(args.bundle), "bundle_bytes": model.manifest["size_bytes"], "page_bytes": page_bytes,
        "first_embedding_ms": got["page"]["firstEmbeddingMs"], "model_load_ms": got["page"]["modelLoadMs"],
        "page_ms_per_sentence": got["page"]["msPerSentence"], "page_sentences": got["page"]["sentences"],
        "batch1_ms_mean": statistics.mean(got["times"]), "batch1_ms_median": statistics.median(got["times"]),
        "batch1_sentences": len(got["times"]), "threads": got["page"]["threads"],
        "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()), "cosine_sentences": len(parity),
        "batch1_cosine_min": float(single.min()), "batch1_cosine_mean": float(single.mean()),
        "token_ids_identical": f"{same}/{len(parity)}", "query": args.query, "top": got["ranked"][:5],
    }
    _print(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _print(f: dict[str, Any]) -> None:
    print(f"bundle {f['bundle']}: {f['bundle_bytes'] / 1e6:.1f} MB (page download with onnxruntime-web: "
          f"{f['page_bytes'] / 1e6:.1f} MB)")
    print(f"time to first embedding: {f['first_embedding_ms'] / 1000:.2f} s from page start "
          f"(model loaded at {f['model_load_ms'] / 1000:.2f} s)")
    print(f"ms per sentence, batch 1, wasm, {f['threads']} thread(s): mean {f['batch1_ms_mean']:.1f}, median "
          f"{f['batch1_ms_median']:.1f} over {f['batch1_sentences']} sentences after warm-up "
          f"(the page's own figure on its {f['page_sentences']}-sentence list: {f['page_ms_per_sentence']:.1f})")
    print(f"vs Python runtime on {f['cosine_sentences']} Tatoeba sentences: token ids identical {f['token_ids_identical']}; "
          f"cosine batched as encode() (32, padded) min {f['cosine_min']:.5f}, mean {f['cosine_mean']:.5f}; "
          f"one at a time min {f['batch1_cosine_min']:.5f}, mean {f['batch1_cosine_mean']:.5f}")
    print(f"query {f['query']!r}: " + "; ".join(f"{s} [{lang}] {text}" for s, lang, text in f["top"]))


if __name__ == "__main__":
    main()
