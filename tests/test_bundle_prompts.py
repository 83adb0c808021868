"""A bundle's prompts by name (sentence-transformers' names and defaults: E5 query "query: ", document "passage: ",
query by default) in the runtime and `mlcompress bundle encode`; the E5 prefix only on sentence-embedding exports;
token labels only for the text's own tokens."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mlcompress.errors import InputError
from mlcompress.export import export, runtime

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv" / "bin" / "mlcompress")
FAST = {"quantize": "none", "bundle": True, "measure_latency": False, "parity_texts": 8, "calibration_texts": 8}
SENTENCES = ["Guten Morgen, wie geht es dir?", "Where is the station?", "a"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """Bundles of two tiny encoders that carry E5's prompts: a sentence embedder and a token tagger."""
    from bundle_models import build_encoder
    from tiny_models import training_lines

    base = tmp_path_factory.mktemp("prompts")
    lines = training_lines(data_dir)
    texts = {"en": str(data_dir / "mono" / "en.txt.gz"), "de": str(data_dir / "mono" / "de.txt.gz")}
    out = {}
    for head in ("sentence-embedding", "token-classification"):
        model = build_encoder(base / head, lines, head=head, e5_prompts=True)
        export(model, base / f"{head}-bundle", texts=texts, **FAST)
        out[head], out[f"{head}-model"] = base / f"{head}-bundle", model
    return out


def test_manifest_records_the_prompts_and_their_default(models):
    manifest = json.loads((models["sentence-embedding"] / "manifest.json").read_text())
    assert manifest["prompts"] == {"query": "query: ", "document": "passage: "}
    assert manifest["default_prompt_name"] == "query" and manifest["tokenizer"]["prefix"] == "query: "


def test_encode_takes_the_prompt_by_name(models):
    model = runtime.load(models["sentence-embedding"])
    default, query = model.encode(SENTENCES), model.encode(SENTENCES, prompt_name="query")
    document = model.encode(SENTENCES, prompt_name="document")
    np.testing.assert_array_equal(default, query)  # query is the default, as in sentence-transformers
    np.testing.assert_allclose(document, model.encode(SENTENCES, prompt="passage: "), atol=1e-6)
    np.testing.assert_allclose(model.encode(SENTENCES, prompt=""), model.run(SENTENCES, prefix="")[0][0], atol=1e-6)
    assert not np.allclose(document, query, atol=1e-3)
    with pytest.raises(InputError, match=r"no prompt named 'passage'.*'query', 'document'"):
        model.encode(SENTENCES, prompt_name="passage")
    with pytest.raises(InputError, match="both"):
        model.encode(SENTENCES, prompt_name="query", prompt="x")


def test_the_e5_prefix_goes_only_to_sentence_embedding_exports(models):
    """A tagger trained from E5 (its prompts beside it) is exported without "query: "."""
    manifest = json.loads((models["token-classification"] / "manifest.json").read_text())
    assert manifest["tokenizer"]["prefix"] == "" and "prompts" not in manifest
    record = json.loads((models["token-classification"] / "mlcompress.json").read_text())
    assert record["parameters"]["prefix"] == "" and record["parameters"]["prompts"] is None


def test_predict_labels_only_the_texts_own_tokens(models, tmp_path, data_dir):
    """No label for <s>, </s>, padding or a prefix: one label per token of the text as the tokenizer splits it."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(models["token-classification"] / "tokenizer.json"))
    expected = [len(tok.encode(s, add_special_tokens=False).ids) for s in SENTENCES]
    labels = runtime.load(models["token-classification"]).predict(SENTENCES, batch_size=2)
    assert [len(row) for row in labels] == expected and all(isinstance(x, str) for row in labels for x in row)
    texts = {"en": str(data_dir / "mono" / "en.txt.gz")}
    export(models["token-classification-model"], tmp_path / "p", texts=texts, prefix="tag: ", **FAST)
    prefixed = runtime.load(tmp_path / "p")
    assert prefixed.prefix == "tag: " and [len(row) for row in prefixed.predict(SENTENCES)] == expected


def test_bundle_encode_from_the_shell(models, tmp_path):
    bundle = models["sentence-embedding"]
    proc = subprocess.run([CLI, "bundle", "encode", str(bundle), *SENTENCES[:2], "--prompt-name", "document"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == SENTENCES[:2]
    want = runtime.load(bundle).encode(SENTENCES[:2], prompt_name="document")
    np.testing.assert_allclose(np.asarray([r["embedding"] for r in rows]), want, atol=1e-6)
    (tmp_path / "in.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    proc = subprocess.run([CLI, "bundle", "encode", str(bundle), "-i", str(tmp_path / "in.txt"), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), runtime.load(bundle).encode(SENTENCES), atol=1e-6)
    bad = subprocess.run([CLI, "bundle", "encode", str(bundle), "x", "--prompt-name", "passage", "-o",
                          str(tmp_path / "b.npy")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no prompt named 'passage'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b.npy").exists()
    again = subprocess.run([CLI, "bundle", "encode", str(bundle), "x", "-o", str(out)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr
    np.testing.assert_allclose(np.load(out), runtime.load(bundle).encode(SENTENCES), atol=1e-6)  # left as it was
