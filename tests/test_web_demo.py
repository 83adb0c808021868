"""`mlcompress bundle demo`: the static page runs an int8 bundle in headless Chromium (onnxruntime-web, wasm) with the
Python runtime's tokens and embeddings, ranks sentences, reports its timing; bad input leaves nothing on disk.

Chromium and chromedriver must be installed (`./setup.sh --dev`): without them these tests fail, they do not skip.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mlcompress.errors import InputError, OutputExistsError
from mlcompress.export import BundleError, export, runtime, write_demo
from web_browser import call, chromium, find_chromium, serve, wait_ready

ROOT = Path(__file__).resolve().parents[1]
# The pinned npm tarballs are checked against their sha512, so the user's cache is safe to share (conftest gives each
# session a private MLCOMPRESS_CACHE; this is read before it applies): else each session downloads 33 MB.
NPM_CACHE = Path(os.environ.get("MLCOMPRESS_CACHE", "~/.cache/mlcompress")).expanduser()
FAST = {"measure_latency": False, "parity_texts": 16, "calibration_texts": 16}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """An int8-dynamic en+de sentence-embedding bundle of a tiny XLM-R-style encoder (Unigram tokenizer, E5 prefix)."""
    import torch
    import transformers
    from tiny_models import build_xlmr, training_lines

    base = tmp_path_factory.mktemp("web-demo")
    mlm = build_xlmr(base / "mlm", training_lines(data_dir))
    config = transformers.AutoConfig.from_pretrained(mlm.path)
    torch.manual_seed(1)
    model = transformers.XLMRobertaModel(transformers.XLMRobertaConfig.from_dict({**config.to_dict(), "architectures": None}),
                                         add_pooling_layer=False)
    model.save_pretrained(base / "emb")
    transformers.AutoTokenizer.from_pretrained(mlm.path).save_pretrained(base / "emb")
    texts = {lang: str(data_dir / "mono" / f"{lang}.txt.gz") for lang in ("en", "de")}
    export(base / "emb", base / "bundle", quantize="int8-dynamic", bundle=True, texts=texts, languages="en,de",
           prefix="query: ", **FAST)
    return base / "bundle"


@pytest.fixture(scope="module")
def demo(bundle: Path, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return write_demo(bundle, tmp_path_factory.mktemp("demo") / "site", data=data_dir, cache_dir=NPM_CACHE)


@pytest.fixture(scope="module")
def browser():
    try:
        find_chromium()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with chromium() as driver:
        yield driver


def test_demo_folder_holds_the_page_the_bundle_and_pinned_vendor_files(demo, bundle):
    names = {p.relative_to(demo).as_posix() for p in demo.rglob("*") if p.is_file()}
    graph = json.loads((bundle / "manifest.json").read_text())["model"]
    assert {"index.html", "demo.js", "sentences.json", graph, "tokenizer.json", "manifest.json",
            "vendor/ort.wasm.min.mjs", "vendor/ort-wasm-simd-threaded.mjs", "vendor/ort-wasm-simd-threaded.wasm",
            "vendor/tokenizers.min.mjs", "vendor/onnxruntime-web.LICENSE", "vendor/tokenizers.LICENSE"} <= names
    assert graph.startswith("onnx/") and (demo / graph).read_bytes() == (bundle / graph).read_bytes()
    assert "Apache License" in (demo / "vendor" / "tokenizers.LICENSE").read_text()
    sentences = json.loads((demo / "sentences.json").read_text(encoding="utf-8"))
    assert Counter(s["lang"] for s in sentences) == {"de": 20, "en": 20}
    record = json.loads((demo / "mlcompress.json").read_text())
    assert record["stage"] == "bundle-demo" and [p["version"] for p in record["parameters"]["npm"]] == ["1.30.0", "0.2.0"]
    page = (demo / "demo.js").read_text() + (demo / "index.html").read_text()
    assert "http://" not in page.replace("http://localhost", "") and "https://" not in page  # nothing from the network


def test_page_embeds_like_the_python_runtime_and_ranks(browser, demo, bundle):  # browser first: fail fast without it
    sentences = [s["text"] for s in json.loads((demo / "sentences.json").read_text(encoding="utf-8"))]
    long_text = " ".join(sentences * 20)  # beyond max_length: truncated as the runtime truncates
    query = sentences[3]
    with serve(demo) as url:
        browser.get(url)
        timing = wait_ready(browser)
        tokens = call(browser, "window.mlcompressDemo.tokenize(args[0])", [*sentences, long_text])
        got = np.asarray(call(browser, "window.mlcompressDemo.embed(args[0])", [*sentences, long_text]))
        browser.find_element("id", "query").send_keys(query)
        ranked = call(browser, "(async () => { while (document.getElementById('results').dataset.query !== args[0])"
                               " await new Promise((r) => setTimeout(r, 50));"
                               " return Array.from(document.querySelectorAll('#results li'), (li) =>"
                               " [li.querySelector('.text').textContent, Number(li.querySelector('.score').textContent)]); })()",
                      query)
        shown = browser.find_element("id", "timing").text
    model = runtime.load(bundle)
    expected = runtime.tokenize(model.tokenizer, [*sentences, long_text], model.prefix)
    assert model.prefix == "query: " and len(tokens["input_ids"][-1]) == model.manifest["tokenizer"]["max_length"]
    assert tokens == {k: v.tolist() for k, v in expected.items()}
    reference = model.encode([*sentences, long_text])
    cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert got.shape == reference.shape and cosine.min() >= 0.999, f"cosine per sentence: {np.round(cosine, 5)}"
    scores = reference[:-1] @ model.encode([query])[0]
    assert ranked[0][0] == query and len(ranked) == len(sentences)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert max(abs(score - scores[sentences.index(text)]) for text, score in ranked) < 0.01
    assert timing["firstEmbeddingMs"] > timing["modelLoadMs"] > 0 and timing["msPerSentence"] > 0
    assert timing["sentences"] == len(sentences) and "ms per sentence" in shown and "first embedding" in shown


def test_int8_weights_bundle_gives_the_python_runtimes_numbers_in_the_browser(browser, bundle, tmp_path, data_dir):
    """int8-weights (float activations): onnxruntime-web folds the weights with its default options and computes what
    Python does, in padded batches too (int8-dynamic only comes close: each platform's int8 kernels round differently)."""
    weights = tmp_path / "w8"
    source = json.loads((bundle / "mlcompress.json").read_text())["inputs"][0]["path"]
    texts = {lang: str(data_dir / "mono" / f"{lang}.txt.gz") for lang in ("en", "de")}
    export(source, weights, quantize="int8-weights", bundle=True, texts=texts, languages="en,de", prefix="query: ", **FAST)
    site = write_demo(weights, tmp_path / "site", data=data_dir, cache_dir=NPM_CACHE)
    sentences = [s["text"] for s in json.loads((site / "sentences.json").read_text(encoding="utf-8"))]
    with serve(site) as url:
        browser.get(url)
        wait_ready(browser)
        config = call(browser, "window.mlcompressDemo.sessionConfig")
        got = np.asarray(call(browser, "window.mlcompressDemo.embed(args[0])", sentences))
    assert "disable_quant_qdq" not in (config.get("session") or {})  # no session entry asked for
    assert float(np.abs(got - runtime.load(weights).encode(sentences)).max()) <= 1e-5


def test_not_a_bundle_is_refused_and_nothing_written(tmp_path):
    for source, message in ((tmp_path / "nope", "not found"), (tmp_path, "no manifest.json")):
        with pytest.raises(BundleError, match=message):
            write_demo(source, tmp_path / "site", cache_dir=NPM_CACHE)
        assert not (tmp_path / "site").exists()


def test_other_tasks_are_refused(bundle, tmp_path):
    from mlcompress.export.bundle import write_manifest

    other = tmp_path / "tagger"
    other.mkdir()
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in manifest["files"]:
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        (other / name).write_bytes((bundle / name).read_bytes())
    fields = {k: v for k, v in manifest.items() if k not in ("format", "files", "size_bytes", "manifest_sha256")}
    write_manifest(other, {**fields, "head": {**fields["head"], "task": "token-classification"}}, list(manifest["files"]))
    with pytest.raises(BundleError, match="token-classification model"):
        write_demo(other, tmp_path / "site", cache_dir=NPM_CACHE)
    assert not (tmp_path / "site").exists()


def test_existing_output_is_kept_unless_overwrite(bundle, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "notes.txt").write_text("mine")
    lines = tmp_path / "lines.txt"
    lines.write_text("Guten Morgen\n\nGood morning\n", encoding="utf-8")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_demo(bundle, site, lines, cache_dir=NPM_CACHE)
    assert [p.name for p in site.iterdir()] == ["notes.txt"]
    write_demo(bundle, site, lines, overwrite=True, cache_dir=NPM_CACHE)
    assert not (site / "notes.txt").exists()
    assert json.loads((site / "sentences.json").read_text()) == [{"lang": "", "text": "Guten Morgen"},
                                                                  {"lang": "", "text": "Good morning"}]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".site.")]


def test_offline_without_a_cached_package_is_a_clear_error(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("MLCOMPRESS_NPM_REGISTRY", "http://127.0.0.1:9")  # nothing listens there
    cache = tmp_path / "cache"
    (cache / "npm").mkdir(parents=True)
    (cache / "npm" / "onnxruntime-web-1.30.0.tgz").write_bytes(b"not the pinned tarball")
    with pytest.raises(InputError, match="cannot fetch onnxruntime-web 1.30.0") as info:
        write_demo(bundle, tmp_path / "site", data=ROOT.parent / "shared" / "data", cache_dir=cache)
    assert "cached" in info.value.hint and not (tmp_path / "site").exists()


def test_bad_sentences_are_refused_before_writing(bundle, tmp_path):
    with pytest.raises(InputError, match="sentences file .* not found"):
        write_demo(bundle, tmp_path / "site", tmp_path / "missing.txt", cache_dir=NPM_CACHE)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InputError, match="holds no sentence"):
        write_demo(bundle, tmp_path / "site", tmp_path / "empty.txt", cache_dir=NPM_CACHE)
    with pytest.raises(InputError, match="data folder .* not found") as info:
        write_demo(bundle, tmp_path / "site", data=tmp_path / "no-data", cache_dir=NPM_CACHE)
    assert "--sentences" in info.value.hint and not (tmp_path / "site").exists()


def test_cli_demo_takes_write_demo_parameters_and_reports_errors(bundle, tmp_path):
    from mlcompress.export.cli import demo_command

    api = inspect.signature(write_demo).parameters
    cli = inspect.signature(demo_command).parameters
    assert list(api) == list(cli) and {n: p.default for n, p in api.items()} == {n: p.default for n, p in cli.items()}
    mlcompress = str(ROOT / ".venv" / "bin" / "mlcompress")
    env = {**os.environ, "MLCOMPRESS_CACHE": str(NPM_CACHE)}
    lines = tmp_path / "lines.txt"
    lines.write_text("Wo ist der Bahnhof?\nWhere is the station?\n", encoding="utf-8")
    ok = subprocess.run([mlcompress, "bundle", "demo", str(bundle), "-o", str(tmp_path / "site"), "--sentences", str(lines)],
                        capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0 and "http.server" in ok.stdout, ok.stderr[-2000:]
    assert len(json.loads((tmp_path / "site" / "sentences.json").read_text())) == 2
    bad = subprocess.run([mlcompress, "bundle", "demo", str(tmp_path), "-o", str(tmp_path / "other")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and "no manifest.json" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "other").exists()
