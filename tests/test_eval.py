"""`mlcompress eval` end to end with tiny models on slices of ../shared/data: scores checked against independent
computations, the gate both ways (exact trim passes, shuffled embedding rows fail), the exact CLI form, reports, bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATA, read_lines
from tiny_models import build_xlmr, training_lines

from mlcompress.errors import GateError, InputError, LanguageError, ModelSourceError, OutputExistsError
from mlcompress.eval import Limits, evaluate, load_encoder, shuffled_embeddings

ROOT = Path(__file__).resolve().parents[1]
SMALL = Limits(fidelity_sentences=60, mlm_sentences=40, retrieval_pairs=120, pos_train_sentences=150, pos_test_sentences=40,
               nli_train_rows=150, nli_test_rows=100, sts_pairs=100, latency_runs=5, throughput_batches=1)


def _write_gz(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def _sentences_block(path: Path, n: int) -> list[str]:
    """The raw lines of the first ``n`` blank-line separated sentences."""
    out, count = [], 0
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for raw in handle:
            out.append(raw.rstrip("\n"))
            if not raw.strip():
                count += 1
                if count >= n:
                    break
    return out


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A folder laid out like ../shared/data holding small slices of it."""
    root = tmp_path_factory.mktemp("data")
    for code in ("deu", "ell"):
        for side in (code, "eng"):
            name = f"tatoeba/tatoeba.{code}-eng.{side}.gz"
            _write_gz(root / name, read_lines(data_dir / name, 150))
    _write_gz(root / "xtreme_udpos/train-en.tsv.gz", _sentences_block(data_dir / "xtreme_udpos/train-en.tsv.gz", 300))
    for lang in ("de", "el"):
        _write_gz(root / f"xtreme_udpos/dev-{lang}.tsv.gz", _sentences_block(data_dir / f"xtreme_udpos/dev-{lang}.tsv.gz", 60))
    for lang in ("en", "de", "el"):
        _write_gz(root / f"xnli/dev-{lang}.tsv.gz", read_lines(data_dir / f"xnli/dev-{lang}.tsv.gz", 300))
    _write_gz(root / "sts/stsb_multi_mt/stsb-de-test.csv.gz", read_lines(data_dir / "sts/stsb_multi_mt/stsb-de-test.csv.gz", 150))
    for stem in ("input.track3.es-es", "gs.track3.es-es", "input.track4a.es-en", "gs.track4a.es-en"):
        name = f"sts/sts17_crosslingual/STS.{stem}.txt.gz"
        _write_gz(root / name, read_lines(data_dir / name))
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """A tiny XLM-R MLM, its exact en+de trim (scripts policy: lossless on German text), and a copy with shuffled embedding rows."""
    from mlcompress.vocab_trim import trim

    base = tmp_path_factory.mktemp("models")
    src = build_xlmr(base / "src", training_lines(data_dir)).path
    trim(src, "en,de", None, base / "trim", scripts=True, overwrite=True)
    shuffled_embeddings(src, base / "shuffled", seed=0)
    return {"src": src, "trim": base / "trim", "shuffled": base / "shuffled"}


def _embed_by_hand(path: Path, texts: list[str]) -> np.ndarray:
    """Mean-pooled last hidden states, one sentence at a time, with plain transformers (no eval code)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for t in texts:
            enc = tok(t, return_tensors="pt", truncation=True, max_length=256)
            out.append(model(**enc).last_hidden_state[0].mean(0).numpy())
    return np.stack(out)


def _spearman_by_hand(x: list[float], y: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


@pytest.fixture(scope="module")
def self_report(models: dict[str, Path], small_data: Path) -> object:
    """The source against itself on every task."""
    return evaluate(models["src"], models["src"], "de,el", data_dir=small_data, limits=SMALL, min_retention=0.97,
                    task_languages={"sts": "de,es"})


def test_model_against_itself_keeps_everything(self_report: object) -> None:
    r = self_report
    tasks = {s.task for s in r.scores}
    assert tasks == {"fidelity", "retrieval", "pos", "nli", "sts"}
    for s in r.scores:
        if s.retention is not None:
            assert s.retention == pytest.approx(1.0, abs=1e-6), s
        assert 0 <= s.candidate <= 1.0 + 1e-6 or s.task == "sts"
    metrics = {(s.task, s.metric) for s in r.scores}
    assert ("fidelity", "mlm_top1_agreement") in metrics and ("fidelity", "cka_mean") in metrics
    assert {s.language for s in r.scores if s.task == "sts"} == {"de-de", "es-es", "es-en (4a)"}
    assert r.passed is True
    assert r.efficiency["source"]["latency_ms_p95"] >= r.efficiency["source"]["latency_ms_p50"] > 0


def test_scores_match_independent_computations(self_report: object, models: dict[str, Path], small_data: Path) -> None:
    r = self_report
    # retrieval: nearest neighbour by cosine both ways, from embeddings made here with plain transformers
    de = read_lines(small_data / "tatoeba/tatoeba.deu-eng.deu.gz", 120)
    en = read_lines(small_data / "tatoeba/tatoeba.deu-eng.eng.gz", 120)
    a, b = _embed_by_hand(models["src"], de), _embed_by_hand(models["src"], en)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    sim = a @ b.T
    acc = (np.mean([sim[i].argmax() == i for i in range(120)]) + np.mean([sim[:, i].argmax() == i for i in range(120)])) / 2
    (ret,) = [s for s in r.scores if s.task == "retrieval" and s.language == "de-en"]
    assert ret.source == pytest.approx(acc, abs=1 / 120)  # at most one near-tie may flip with batch padding
    # STS: Spearman of pair cosines with the gold scores, ranked here by hand
    rows = [line.split("\t") for line in read_lines(small_data / "sts/sts17_crosslingual/STS.input.track3.es-es.txt.gz", 100)]
    gold = [float(x) for x in read_lines(small_data / "sts/sts17_crosslingual/STS.gs.track3.es-es.txt.gz", 100)]
    u, v = _embed_by_hand(models["src"], [x[0] for x in rows]), _embed_by_hand(models["src"], [x[1] for x in rows])
    cos = [float(p @ q / np.linalg.norm(p) / np.linalg.norm(q)) for p, q in zip(u, v)]
    (sts,) = [s for s in r.scores if s.task == "sts" and s.language == "es-es"]
    assert sts.source == pytest.approx(_spearman_by_hand(cos, gold), abs=1e-3)
    # efficiency: parameters and bytes counted here
    from transformers import AutoModelForMaskedLM

    params = sum(p.numel() for p in AutoModelForMaskedLM.from_pretrained(models["src"]).parameters())
    assert r.efficiency["source"]["parameters"] == params
    assert r.efficiency["source"]["bytes_on_disk"] == sum(f.stat().st_size for f in models["src"].rglob("*") if f.is_file())


def test_nli_trains_and_tests_on_disjoint_rows(self_report: object) -> None:
    nli = [s for s in self_report.scores if s.task == "nli"]
    assert {s.language for s in nli} == {"de", "el"}
    for s in nli:
        assert "rows 150-250" in s.dataset and "rows 0-150" in s.note and s.n == 100


def test_exact_trim_passes_the_gate(models: dict[str, Path], small_data: Path, tmp_path: Path) -> None:
    r = evaluate(models["src"], models["trim"], "de", "retrieval,pos,nli,sts,fidelity", small_data, tmp_path / "rep",
                 min_retention=0.97, limits=SMALL, raise_on_fail=True)
    assert r.passed is True
    emb = [s for s in r.scores if s.metric == "embedding_cosine"]
    assert emb and emb[0].candidate > 0.9999
    for s in r.scores:
        if s.task in ("retrieval", "pos", "nli", "sts"):
            assert s.retention == pytest.approx(1.0, abs=1e-6), s
    assert r.source["size"]["parameters"] > r.candidate["size"]["parameters"]  # the trim is smaller
    report = json.loads((tmp_path / "rep/report.json").read_text())
    assert report["gate"]["passed"] is True and len(report["scores"]) == len(r.scores)


def test_shuffled_embedding_rows_fail_the_gate(models: dict[str, Path], small_data: Path, tmp_path: Path) -> None:
    with pytest.raises(GateError) as info:
        evaluate(models["src"], models["shuffled"], "de", "retrieval,fidelity,pos", small_data, tmp_path / "rep",
                 min_retention=0.97, limits=SMALL, raise_on_fail=True)
    assert info.value.exit_code == 1 and "fidelity de embedding_cosine" in info.value.message
    report = json.loads((tmp_path / "rep/report.json").read_text())  # the report is written before the gate fails
    assert report["gate"]["passed"] is False
    failing = {(f["task"], f["language"], f["metric"]): f["retention"] for f in report["gate"]["failures"]}
    # an untrained tiny model's rows are random vectors, so a shuffled copy is as good at retrieval and POS (its task
    # scores may pass); fidelity is what tells it is not the same model
    assert failing[("fidelity", "de", "embedding_cosine")] < 0.95


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / ".venv/bin/mlcompress"), *args], capture_output=True, text=True, timeout=600)


def test_cli_exact_form_writes_reports_and_gates(models: dict[str, Path], small_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = _cli("eval", str(models["src"]), str(models["shuffled"]), "-l", "de,el", "--tasks",
                "retrieval,pos,nli,sts,fidelity,efficiency", "--data", str(small_data), "-o", str(out), "--min-retention", "0.97")
    assert proc.returncode == 1, proc.stderr
    assert "error: retention gate failed" in proc.stderr and "hint:" in proc.stderr and "Traceback" not in proc.stderr
    data = json.loads((out / "report.json").read_text())
    assert data["gate"]["passed"] is False and data["efficiency"]["candidate"]["parameters"] > 0
    assert {s["task"] for s in data["scores"]} == {"fidelity", "retrieval", "pos", "nli", "sts"}
    assert any(s["task"] == "sts" and s["language"] == "de-de" for s in data["scores"])
    assert {"task": "sts", "language": "el", "reason": "no STS17 track and no stsb_multi_mt file for el"} in data["skipped"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "http" not in html.split("<body>")[0]
    md = (out / "report.md").read_text()
    assert "Gate: FAILED" in md and "| retrieval | de-en | accuracy |" in md
    assert json.loads((out / "mlcompress.json").read_text())["stage"] == "eval"
    # the same models on the exact trim pass: exit 0
    proc = _cli("eval", str(models["src"]), str(models["trim"]), "-l", "de", "--tasks", "retrieval,sts",
                "--data", str(small_data), "-o", str(tmp_path / "ok"), "--min-retention", "0.97", "--max-examples", "50")
    assert proc.returncode == 0, proc.stderr
    assert "gate passed" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--tasks", "retrieval,parsing"], "unknown task(s): parsing"),
    (["-l", "de,xx"], "unknown language 'xx'"),
    (["--data", "/nonexistent/data"], "data folder /nonexistent/data does not exist"),
    (["--tasks", "nli", "-l", "ja"], "task nli has no data for any requested language"),
])
def test_cli_bad_input_is_refused_and_leaves_nothing(args: list[str], message: str, models: dict[str, Path], small_data: Path,
                                                     tmp_path: Path) -> None:
    base = ["eval", str(models["src"]), str(models["trim"]), "-l", "de", "--tasks", "retrieval", "--data", str(small_data),
            "-o", str(tmp_path / "out" / "report")]
    for flag, value in zip(args[::2], args[1::2]):
        base[base.index(flag) + 1] = value
    proc = _cli(*base)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split()) and "hint:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_api_errors(models: dict[str, Path], small_data: Path, tmp_path: Path) -> None:
    with pytest.raises(LanguageError):
        evaluate(models["src"], models["trim"], "", "retrieval", small_data)
    with pytest.raises(ModelSourceError):
        evaluate(models["src"], tmp_path / "missing-model", "de", "retrieval", small_data, limits=SMALL)
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputExistsError):
        evaluate(models["src"], models["trim"], "de", "retrieval", small_data, tmp_path / "exists")
    with pytest.raises(InputError, match="min-retention"):
        evaluate(models["src"], models["trim"], "de", "retrieval", small_data, min_retention=-1)


def test_datasets_source_gives_the_same_retrieval(models: dict[str, Path], small_data: Path, tmp_path: Path) -> None:
    import datasets

    de = read_lines(small_data / "tatoeba/tatoeba.deu-eng.deu.gz", 120)
    en = read_lines(small_data / "tatoeba/tatoeba.deu-eng.eng.gz", 120)
    datasets.Dataset.from_dict({"de": de, "en": en}).save_to_disk(str(tmp_path / "ds"))
    enc = (load_encoder(models["src"]), load_encoder(models["shuffled"]))
    local = evaluate(models["src"], models["shuffled"], "de", "retrieval", small_data, limits=SMALL, encoders=enc)
    hub = evaluate(models["src"], models["shuffled"], "de", "retrieval", None, limits=SMALL, encoders=enc,
                   hub_data={"retrieval:de": f"disk://{tmp_path / 'ds'}?columns=de,en"})
    assert hub.scores[0].source == local.scores[0].source and hub.scores[0].candidate == local.scores[0].candidate
    assert hub.scores[0].dataset.startswith("disk://")


def test_without_data_the_data_folder_is_found_as_the_pipeline_finds_it(models: dict[str, Path], small_data: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    enc = (load_encoder(models["src"]), load_encoder(models["shuffled"]))
    local = evaluate(models["src"], models["shuffled"], "de", "retrieval", small_data, limits=SMALL, encoders=enc)
    monkeypatch.setenv("MLCOMPRESS_DATA", str(small_data))
    found = evaluate(models["src"], models["shuffled"], "de", "retrieval", None, limits=SMALL, encoders=enc)
    assert [(s.source, s.candidate) for s in found.scores] == [(s.source, s.candidate) for s in local.scores]
    assert found.parameters["data"] == str(small_data.absolute())


def test_full_finetuning_recipe_is_the_same_for_both_models(models: dict[str, Path], small_data: Path) -> None:
    lim = Limits(pos_train_sentences=40, pos_test_sentences=15, nli_train_rows=48, nli_test_rows=30)
    r = evaluate(models["src"], models["src"], "de", "pos,nli", small_data, limits=lim, transfer="finetune")
    assert r.parameters["transfer"] == "finetune"
    for s in r.scores:
        assert 0 <= s.source <= 1 and s.retention == pytest.approx(1.0), s  # same seed, same data: same model


class _FakeBundle:
    """Stands in for mlcompress.export.runtime's Bundle: a sentence-embedding bundle adding its own prefix."""

    def __init__(self, encoder: object, prefix: str) -> None:
        self.encoder, self.prefix, self.calls = encoder, prefix, []
        self.manifest = {"head": {"task": "sentence-embedding"}, "tokenizer": {"prefix": prefix}, "parameters": 123}

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        vecs = self.encoder.embed_uncached([self.prefix + t for t in texts])
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def test_export_bundle_backend(models: dict[str, Path], small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder with manifest.json is run through mlcompress.export.runtime (faked here), and judged by the same evaluators."""
    import types

    import mlcompress.export

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    torch_enc = load_encoder(models["src"])
    fake = _FakeBundle(torch_enc, "query: ")
    runtime = types.ModuleType("mlcompress.export.runtime")
    runtime.load = lambda path: fake
    monkeypatch.setitem(sys.modules, "mlcompress.export.runtime", runtime)
    monkeypatch.setattr(mlcompress.export, "runtime", runtime, raising=False)
    enc = load_encoder(bundle)
    assert enc.kind == "export-bundle" and enc.capabilities == {"embed"} and enc.size()["parameters"] == 123
    r = evaluate(models["src"], bundle, "de", "fidelity,retrieval,pos,efficiency", small_data, limits=SMALL, prefix="query: ",
                 encoders=(torch_enc, enc))
    assert all(not t.startswith("query: query: ") for call in fake.calls for t in call)  # the bundle's own prefix, once
    emb = [s for s in r.scores if s.metric == "embedding_cosine"]
    assert emb[0].candidate == pytest.approx(1.0, abs=1e-5)  # same network, same prefix: same embeddings
    assert [s.retention for s in r.scores if s.task == "retrieval"] == [pytest.approx(1.0)]
    reasons = {(s["task"], s["reason"]) for s in r.skipped}
    assert ("pos", "a backend gives no token-level outputs") in reasons
    assert ("fidelity", "CKA: a backend gives no hidden states") in reasons
    assert r.efficiency["candidate"]["parameters"] == 123
    # without the export stage's runtime: a clear error
    monkeypatch.setitem(sys.modules, "mlcompress.export.runtime", None)
    monkeypatch.delattr(mlcompress.export, "runtime", raising=False)
    with pytest.raises(ModelSourceError, match="mlcompress.export.runtime is not available"):
        load_encoder(bundle)


def _tiny_onnx(path: Path, rows: int) -> int:
    """A one-initializer ONNX graph (rows x 4 floats) at ``path``; returns its parameter count."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((rows, 4), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 4])], [w])
    onnx.save(helper.make_model(graph), str(path))
    return rows * 4


def test_bundle_size_is_its_model_with_other_forms_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A --tokenizer-in-graph (and --ort) bundle holds its model in several forms: eval counts the model once."""
    import types

    import mlcompress.export

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    params = _tiny_onnx(bundle / "model.onnx", 50)
    _tiny_onnx(bundle / "model_with_tokenizer.onnx", 50)  # the same weights again, strings in
    (bundle / "model.ort").write_bytes(b"o" * 3000)
    (bundle / "required_operators.config").write_text("ai.onnx;17;Identity\n")
    (bundle / "tokenizer.json").write_text("{}")
    manifest = {"model": "model.onnx", "head": {"task": "sentence-embedding"}, "tokenizer": {"prefix": ""},
                "tokenizer_in_graph": {"model": "model_with_tokenizer.onnx", "input": "text"},
                "ort": {"model": "model.ort", "operators_config": "required_operators.config"}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    runtime = types.ModuleType("mlcompress.export.runtime")
    runtime.load = lambda path: types.SimpleNamespace(manifest=manifest, prefix="", encode=lambda texts: np.ones((len(texts), 4)))
    monkeypatch.setitem(sys.modules, "mlcompress.export.runtime", runtime)
    monkeypatch.setattr(mlcompress.export, "runtime", runtime, raising=False)
    size = load_encoder(bundle).size()
    forms = {n: (bundle / n).stat().st_size for n in ("model_with_tokenizer.onnx", "model.ort", "required_operators.config")}
    everything = sum(f.stat().st_size for f in bundle.iterdir())
    assert size["parameters"] == params  # counted in model.onnx only, not in model_with_tokenizer.onnx too
    assert size["weight_file_bytes"] == (bundle / "model.onnx").stat().st_size
    assert size["other_forms"] == forms
    assert size["bytes_on_disk"] == everything - sum(forms.values()) and size["bytes_on_disk_with_other_forms"] == everything


def test_import_is_light() -> None:
    code = "import sys, mlcompress.eval.cli, mlcompress.eval; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_word_features_stand_for_a_word_by_its_first_content_piece(models: dict[str, Path]) -> None:
    """SentencePiece starts many words (most Chinese ones) with a bare "▁": the POS probe reads the next piece."""
    import torch

    from mlcompress.eval.encoders import TorchEncoder

    enc = TorchEncoder("src", models["src"], device="cpu")
    words = ["同樣", "Haus", "，"]
    feats = enc.word_features([words])[0]
    batch = enc._tok([words], is_split_into_words=True)
    tokens = batch.tokens(0)
    with torch.no_grad():
        hidden = enc.model(**batch, output_hidden_states=True).hidden_states[-1][0].numpy()
    for w in range(len(words)):
        positions = [p for p, x in enumerate(batch.word_ids(0)) if x == w]
        content = [p for p in positions if tokens[p] != "▁"] or positions
        np.testing.assert_allclose(feats[w], hidden[content[0]], atol=1e-5)
    assert any(tokens[p] == "▁" for p, x in enumerate(batch.word_ids(0)) if x == 0)  # the case this is about occurs
