"""The client matrix on the built-in job's outputs: how close each client that loads them comes to the bundle runtime.

Reads a pipeline folder (default `out/pipe`, from `mlcompress pipeline -l en,de -o out/pipe`): its trim folder
(`01-trim`) and its export bundle (`03-export`, int8-weights by default). On Tatoeba lines of the languages (both sides
of each xxx-eng pair, `--sentences` per side), with the query prompt added by hand where a client adds none, prints
one JSON line per client and a Markdown table: cosine to the bundle runtime (mean, min) and, for the export's
clients, to PyTorch fp32 on the trim folder.

Clients: the runtime (`mlcompress.export.runtime`), a plain `onnxruntime.InferenceSession` with default options
(what any ONNX client does), FastEmbed (`add_custom_model`, as the README shows), transformers.js through node
(`./setup.sh --dev` installs it; skipped without node), sentence-transformers on the trim folder (fp32, compared with
the runtime of an fp32 export of that folder, which this script writes to `--work`).

    flock /tmp/cpu.lock .venv/bin/python bench/clients.py [--pipe out/pipe] [--sentences 50]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from mlcompress.export import export, runtime, verify
from mlcompress.languages import tatoeba_code

ROOT = Path(__file__).resolve().parents[1]
NODE_PREFIX = ROOT / ".cache" / "node"


def lines(data: Path, languages: list[str], per_side: int) -> list[str]:
    """The first ``per_side`` lines of both sides of each xxx-eng Tatoeba pair of the non-English languages."""
    out: list[str] = []
    for lang in languages:
        if lang == "en":
            continue
        for side in (tatoeba_code(lang), "eng"):
            with gzip.open(data / "tatoeba" / f"tatoeba.{tatoeba_code(lang)}-eng.{side}.gz", "rt", encoding="utf-8") as f:
                out += [next(f).rstrip("\n") for _ in range(per_side)]
    return list(dict.fromkeys(out))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def plain_session(bundle: Path, texts: list[str]) -> np.ndarray:
    """A default onnxruntime session on the bundle's graph, fed by the bundle's tokenizer (prompt included)."""
    import onnxruntime as ort

    model = runtime.load(bundle)
    session = ort.InferenceSession(str(bundle / model.model_file), providers=["CPUExecutionProvider"])
    rows = [session.run(["sentence_embedding"], runtime.tokenize(model.tokenizer, texts[i:i + 32], model.prefix))[0]
            for i in range(0, len(texts), 32)]
    return np.concatenate(rows)


def fastembed(bundle: Path, texts: list[str], prompt: str) -> np.ndarray:
    """FastEmbed 0.9 on the local bundle folder, registered as the README shows (no network)."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    manifest = verify(bundle)
    name = f"local/{bundle.name}-{os.getpid()}"
    TextEmbedding.add_custom_model(model=name, pooling=PoolingType.DISABLED, normalization=False,
                                   sources=ModelSource(hf=name), dim=manifest["outputs"][0]["shape"][-1],
                                   model_file=manifest["model"], output_name="sentence_embedding")
    model = TextEmbedding(model_name=name, specific_model_path=str(bundle))
    return np.stack(list(model.embed([prompt + t for t in texts], batch_size=32)))


def transformers_js(bundle: Path, texts: list[str], prompt: str, work: Path) -> np.ndarray | None:
    """transformers.js's feature-extraction pipeline in node (mean pooling, normalised), or None without node."""
    if not shutil.which("node") or not (NODE_PREFIX / "node_modules" / "@huggingface" / "transformers").is_dir():
        return None
    (work / "texts.json").write_text(json.dumps([prompt + t for t in texts]), encoding="utf-8")
    proc = subprocess.run(["node", str(ROOT / "tests" / "transformers_js_embed.mjs"), str(NODE_PREFIX), str(bundle),
                           str(work / "texts.json")], capture_output=True, text=True, timeout=900)
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    return np.asarray(json.loads(proc.stdout)["embeddings"], dtype=np.float32)


def sentence_transformers(trim: Path, texts: list[str]) -> np.ndarray:
    """SentenceTransformer(trim folder) with no arguments, encode_query (the prompt from its own config)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(trim), device="cpu").encode_query(texts, batch_size=32, convert_to_numpy=True)


def row(client: str, form: str, got: np.ndarray | None, runtime_ref: np.ndarray, torch_ref: np.ndarray) -> dict:
    if got is None:
        return {"client": client, "form": form, "skipped": "not installed"}
    to_rt, to_pt = cosines(got, runtime_ref), cosines(got, torch_ref)
    return {"client": client, "form": form, "sentences": len(got), "cos_runtime_mean": float(to_rt.mean()),
            "cos_runtime_min": float(to_rt.min()), "cos_torch_mean": float(to_pt.mean()),
            "cos_torch_min": float(to_pt.min())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipe", type=Path, default=ROOT / "out" / "pipe")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--sentences", type=int, default=50, help="Tatoeba lines per side of each pair")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-clients")
    args = ap.parse_args()
    trim, bundle = args.pipe / "01-trim", args.pipe / "03-export"
    manifest = verify(bundle)
    languages = manifest["languages"]
    texts = lines(args.data, languages, args.sentences)
    args.work.mkdir(parents=True, exist_ok=True)
    prompt = runtime.load(bundle).prefix
    fp32 = args.work / "fp32"
    if not (fp32 / "manifest.json").exists():
        export(trim, fp32, quantize="none", quantize_embeddings=False, bundle=True, languages=",".join(languages),
               prefix=prompt, overwrite=True)
    ref_q, ref_f = runtime.load(bundle).encode(texts), runtime.load(fp32).encode(texts)
    torch_ref = sentence_transformers(trim, texts)
    rows = [row("mlcompress runtime", manifest["quantization"]["name"], ref_q, ref_q, torch_ref),
            row("onnxruntime, default options", manifest["quantization"]["name"], plain_session(bundle, texts), ref_q,
                torch_ref),
            row("FastEmbed", manifest["quantization"]["name"], fastembed(bundle, texts, prompt), ref_q, torch_ref),
            row("transformers.js (node)", manifest["quantization"]["name"],
                transformers_js(bundle, texts, prompt, args.work), ref_q, torch_ref),
            row("sentence-transformers (trim folder)", "fp32", torch_ref, ref_f, torch_ref),
            row("FastEmbed", "fp32", fastembed(fp32, texts, prompt), ref_f, torch_ref)]
    for r in rows:
        print(json.dumps(r))
    print("\n| client | form | cosine to runtime (mean / min) | cosine to PyTorch fp32 (mean / min) |\n|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['client']} | {r['form']} | skipped: {r['skipped']} | |")
        else:
            print(f"| {r['client']} | {r['form']} | {r['cos_runtime_mean']:.6f} / {r['cos_runtime_min']:.6f} | "
                  f"{r['cos_torch_mean']:.6f} / {r['cos_torch_min']:.6f} |")


if __name__ == "__main__":
    main()
