"""`mlcompress export --bundle --tokenizer-in-graph`: one ONNX model from strings to embeddings (onnxruntime-extensions'
SentencePiece tokenizer in front of the bundle's graph), with the two-file path's token ids and outputs."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mlcompress.errors import InputError
from mlcompress.export import BundleError, export, runtime, verify

FAST = {"measure_latency": False, "parity_texts": 16, "calibration_texts": 16}
MAX_LENGTH = 24  # short, so that Tatoeba's longer lines are truncated


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """A tiny XLM-R-style sentence encoder (Unigram, NFKC, <s> $A </s>) and a tiny WordPiece (BERT) one."""
    import torch
    import transformers
    from tiny_models import build_bert, build_xlmr, training_lines

    base = tmp_path_factory.mktemp("tiny-text")
    lines = training_lines(data_dir)
    paths = {}
    for name, build, model_cls, cfg_cls in (("xlmr", build_xlmr, transformers.XLMRobertaModel, transformers.XLMRobertaConfig),
                                            ("bert", build_bert, transformers.BertModel, transformers.BertConfig)):
        mlm = build(base / f"{name}-mlm", lines)
        if name == "xlmr":
            _as_transformers5_builds_it(mlm.path / "tokenizer.json")
        config = transformers.AutoConfig.from_pretrained(mlm.path)
        torch.manual_seed(1)
        model = model_cls(cfg_cls.from_dict({**config.to_dict(), "architectures": None}), add_pooling_layer=False)
        model.save_pretrained(base / name)
        transformers.AutoTokenizer.from_pretrained(mlm.path).save_pretrained(base / name)
        paths[name] = base / name
    return paths


def _as_transformers5_builds_it(path: Path) -> None:
    """The XLM-R pipeline transformers 5 gives XLMRobertaTokenizer: split on whitespace, then Metaspace."""
    tok = json.loads(path.read_text(encoding="utf-8"))
    tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, tok["pre_tokenizer"]]}
    path.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="module")
def texts(data_dir: Path) -> dict[str, str]:
    return {"en": str(data_dir / "mono" / "en.txt.gz"), "de": str(data_dir / "mono" / "de.txt.gz")}


@pytest.fixture(scope="module")
def text_bundle(models, texts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "text"
    export(models["xlmr"], out, bundle=True, tokenizer_in_graph=True, texts=texts, languages="en,de", prefix="query: ",
           max_length=MAX_LENGTH, **FAST)
    return out


def tatoeba(data_dir: Path) -> list[str]:
    """Every line of the en-de Tatoeba pair, both sides (the bundle's languages)."""
    lines = []
    for side in ("deu", "eng"):
        with gzip.open(data_dir / "tatoeba" / f"tatoeba.deu-eng.{side}.gz", "rt", encoding="utf-8") as f:
            lines += [line.rstrip("\n") for line in f]
    return lines


def test_manifest_lists_and_verifies_the_text_model(text_bundle):
    manifest = verify(text_bundle)
    entry = manifest["tokenizer_in_graph"]
    assert (entry["model"], entry["input"], entry["tokenizer"]) == ("model_with_tokenizer.onnx", "text", "SentencepieceTokenizer")
    assert "model_with_tokenizer.onnx" in manifest["files"] and entry["domains"] == ["ai.onnx", "ai.onnx.contrib", "com.microsoft"]
    assert entry["parity"]["passed"] and entry["parity"]["token_id_mismatches"] == 0
    assert entry["parity"]["max_abs_diff"] <= 1e-5 and entry["parity"]["texts"] >= 16
    from mlcompress.artifacts import onnx_parameters
    from mlcompress.orchestrate.inspect import inspect

    info = inspect(text_bundle)  # the model's own size and parameters; the other form listed apart
    assert info["forms"] == {"model_with_tokenizer.onnx": (text_bundle / "model_with_tokenizer.onnx").stat().st_size}
    graph = text_bundle / json.loads((text_bundle / "manifest.json").read_text())["model"]
    assert graph.parent.name == "onnx" and info["weight_bytes"] == graph.stat().st_size
    assert info["parameters"] == onnx_parameters(graph)


def test_token_ids_match_tokenizer_json_on_every_tatoeba_line(text_bundle, data_dir):
    """The graph's ids (prefix, truncation to max_length with <s>/</s> kept, padding) equal tokenizer.json's."""
    from mlcompress.export.runtime import make_tokenizer
    from mlcompress.export.tokenizer_graph import session, tokenizer_graph

    lines = tatoeba(data_dir) + ["", "  spaced   out  ", "ﬁne Ｗｉｄｅ ①", "tab\tand\nnewline", "Ünïcödé ß ẞ"]
    tok_json = json.loads((text_bundle / "tokenizer.json").read_text(encoding="utf-8"))
    graph = session(tokenizer_graph(tok_json, "query: ", MAX_LENGTH, 1, 21).SerializeToString())
    tok = make_tokenizer(text_bundle / "tokenizer.json", 1, "<pad>", MAX_LENGTH)
    mismatched, truncated = [], 0
    for i in range(0, len(lines), 256):
        batch = lines[i:i + 256]
        ids, mask = graph.run(None, {"text": np.array(batch, dtype=object)})
        for text, row, m in zip(batch, ids, mask):
            want = tok.encode("query: " + text).ids
            truncated += len(want) == MAX_LENGTH
            if row[m == 1].tolist() != want:
                mismatched.append(text)
    assert mismatched == [] and len(lines) > 2000
    assert truncated > 10  # the truncation path was exercised


def test_embeddings_match_the_two_file_path(text_bundle, data_dir):
    lines = tatoeba(data_dir)[::50] + ["Hallo Welt", "a", "x" * 400]
    two_files = runtime.load(text_bundle)
    in_graph = runtime.load(text_bundle, format="tokenizer-in-graph")
    assert in_graph.model_file == "model_with_tokenizer.onnx" and in_graph.tokenizer is None
    want, got = two_files.encode(lines, batch_size=8), in_graph.encode(lines, batch_size=8)
    assert got.shape == want.shape == (len(lines), 32)
    assert float(np.abs(got - want).max()) <= 1e-5
    # one string, as the Python runtime takes it (alone: dynamic int8 scales depend on the batch)
    assert float(np.abs(in_graph.encode("Hallo Welt") - two_files.encode("Hallo Welt")).max()) <= 1e-5
    # the prefix is inside the graph: the default prompt only (a clear error for another), and the same in both forms
    assert in_graph.prefix == two_files.prefix == "query: " and two_files.prompts == {"query": "query: "}
    with pytest.raises(BundleError, match="adds 'query: ' before every text itself"):
        in_graph.encode(lines[:2], prompt="passage: ")


def test_text_model_runs_with_only_onnxruntime_and_extensions(text_bundle, tmp_path):
    """No tokenizers, torch or transformers: the model file, the manifest's session config and the two runtime packages
    are enough."""
    sentences = ["Guten Morgen", "Where is the station?"]
    np.save(tmp_path / "expected.npy", runtime.load(text_bundle).encode(sentences))
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'transformers', 'tokenizers', 'mlcompress'):
                    raise ImportError(f'blocked: {name}')
        sys.meta_path.insert(0, Block())
    """))
    script = textwrap.dedent(f"""
        import numpy as np, onnxruntime as ort
        from onnxruntime_extensions import get_library_path
        options = ort.SessionOptions()  # as the README: no session entries (int8-weights folds with the defaults)
        options.register_custom_ops_library(get_library_path())
        s = ort.InferenceSession({str(text_bundle / 'model_with_tokenizer.onnx')!r}, options)
        emb = s.run(None, {{'text': np.array({sentences!r}, dtype=object)}})[0]
        np.testing.assert_allclose(emb, np.load({str(tmp_path / 'expected.npy')!r}), atol=1e-5)
        print('ok')
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_unsupported_tokenizers_and_heads_are_refused_before_any_work(models, texts, tmp_path):
    from mlcompress.export.tokenizer_graph import check_supported

    metaspace_only = json.loads((models["xlmr"] / "tokenizer.json").read_text(encoding="utf-8"))
    metaspace_only["pre_tokenizer"] = metaspace_only["pre_tokenizer"]["pretokenizers"][1]
    with pytest.raises(InputError, match="pre-tokenizes with Metaspace;"):
        check_supported(metaspace_only, "sentence-embedding")  # it keeps a trailing space that SentencePiece strips
    bpe = {**metaspace_only, "model": {"type": "BPE", "vocab": {}, "merges": []}}
    with pytest.raises(InputError, match="BPE model") as info:
        check_supported(bpe, "sentence-embedding")
    assert "without --tokenizer-in-graph" in info.value.hint
    lowercase_only = json.loads((models["bert"] / "tokenizer.json").read_text(encoding="utf-8"))
    lowercase_only["normalizer"] = {"type": "Lowercase"}
    with pytest.raises(InputError, match="WordPiece tokenizer with Lowercase"):
        check_supported(lowercase_only, "sentence-embedding")
    with pytest.raises(InputError, match="token-classification head"):
        export(models["xlmr"], tmp_path / "t", bundle=True, tokenizer_in_graph=True, task="token-classification",
               texts=texts, **FAST)
    with pytest.raises(InputError, match="--tokenizer-in-graph without --bundle"):
        export(models["xlmr"], tmp_path / "n", tokenizer_in_graph=True, texts=texts, **FAST)
    with pytest.raises(InputError, match="--tokenizer-in-graph with --format tensorrt"):
        export(models["xlmr"], tmp_path / "r", format="tensorrt", bundle=True, tokenizer_in_graph=True)
    assert not list(tmp_path.iterdir())


def test_runtime_errors_name_the_missing_form_and_a_changed_file(text_bundle, models, texts, tmp_path):
    plain = tmp_path / "plain"
    export(models["xlmr"], plain, bundle=True, texts=texts, **FAST)
    with pytest.raises(BundleError, match="no tokenizer-in-graph model") as info:
        runtime.load(plain, format="tokenizer-in-graph")
    assert "--tokenizer-in-graph" in info.value.hint
    bad = Path(shutil.copytree(text_bundle, tmp_path / "bad"))
    data = bytearray((bad / "model_with_tokenizer.onnx").read_bytes())
    data[len(data) // 3] ^= 0x01
    (bad / "model_with_tokenizer.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model_with_tokenizer.onnx does not match its sha256"):
        runtime.load(bad, format="tokenizer-in-graph")


def test_cli_passes_tokenizer_in_graph_through(monkeypatch, tmp_path):
    """`mlcompress export --bundle --tokenizer-in-graph` reaches export(tokenizer_in_graph=True) (the API test above
    runs the export itself)."""
    import typer
    from typer.testing import CliRunner

    import mlcompress.export as export_pkg
    from mlcompress.export import ExportResult
    from mlcompress.export.cli import register

    seen: dict = {}

    def fake(model, output, **kwargs):
        seen.update(kwargs)
        return ExportResult(Path(output), "onnx", kwargs["quantize"], "sentence-embedding", "model.onnx", 1, None, None)

    monkeypatch.setattr(export_pkg, "export", fake)
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["export", "m", "-o", str(tmp_path / "o"), "--bundle", "--tokenizer-in-graph"])
    assert result.exit_code == 0, result.output
    assert (seen["bundle"], seen["tokenizer_in_graph"], seen["ort"]) == (True, True, False)


def test_every_unicode_whitespace_separates_words_as_in_tokenizer_json(text_bundle):
    """WhitespaceSplit's whitespace (Unicode White_Space) against the graph's: the same ids around each of them."""
    from mlcompress.export.runtime import make_tokenizer
    from mlcompress.export.tokenizer_graph import session, tokenizer_graph

    spaces = [chr(c) for c in range(0x3001) if chr(c).isspace()] + ["\u2028", "\u2029"]
    lines = [f"Guten{s}Morgen{s}" for s in spaces] + [f"{s}a{s}{s}b" for s in spaces]
    tok_json = json.loads((text_bundle / "tokenizer.json").read_text(encoding="utf-8"))
    graph = session(tokenizer_graph(tok_json, "", MAX_LENGTH, 1, 21).SerializeToString())
    tok = make_tokenizer(text_bundle / "tokenizer.json", 1, "<pad>", MAX_LENGTH)
    ids, mask = graph.run(None, {"text": np.array(lines, dtype=object)})
    got = [row[m == 1].tolist() for row, m in zip(ids, mask)]
    assert [(line, g) for line, g in zip(lines, got) if g != tok.encode(line).ids] == []


def test_wordpiece_bundle_tokenizes_in_a_loop_with_the_same_ids_and_outputs(models, texts, tmp_path, data_dir):
    """BERT-family vocabularies: BertTokenizer takes one text, so the graph loops over the batch."""
    from mlcompress.export.runtime import make_tokenizer
    from mlcompress.export.tokenizer_graph import session, tokenizer_graph

    out = tmp_path / "bert"
    export(models["bert"], out, bundle=True, tokenizer_in_graph=True, texts=texts, max_length=MAX_LENGTH, **FAST)
    manifest = verify(out)
    assert manifest["tokenizer_in_graph"]["tokenizer"] == "BertTokenizer" and manifest["tokenizer_in_graph"]["parity"]["passed"]
    t = manifest["tokenizer"]
    lines = tatoeba(data_dir) + ["", "  x ", "中文字符 ok", "Ünïcödé\tß", "a" * 300]
    graph = session(tokenizer_graph(json.loads((out / "tokenizer.json").read_text(encoding="utf-8")), t["prefix"],
                                    MAX_LENGTH, t["pad_id"], 21).SerializeToString())
    tok = make_tokenizer(out / "tokenizer.json", t["pad_id"], t["pad_token"], MAX_LENGTH)
    ids, mask = graph.run(None, {"text": np.array(lines, dtype=object)})
    assert [line for line, row, m in zip(lines, ids, mask) if row[m == 1].tolist() != tok.encode(t["prefix"] + line).ids] == []
    sample = lines[::100]
    got = runtime.load(out, format="tokenizer-in-graph").encode(sample, batch_size=8)
    assert float(np.abs(got - runtime.load(out).encode(sample, batch_size=8)).max()) <= 1e-5
