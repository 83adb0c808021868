"""The built-in job from a plain install: no data folder anywhere (no --data, no $MLCOMPRESS_DATA, no ../shared/data), so
the trim reads wordfreq's word lists and eval the Tatoeba sample shipped in the package (retrieval, fidelity,
efficiency). Run on a tiny encoder with E5's prompts, its tokenizer trained on the packaged sample alone."""

from __future__ import annotations

import gzip
import json
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import DATA, ROOT, pipeline_app
from mlcompress.errors import InputError
from mlcompress.eval import SAMPLE_LANGUAGES, SAMPLE_PAIRS, SAMPLE_TASKS, sample_data_dir
from mlcompress.languages import tatoeba_code
from mlcompress.orchestrate.config import default_config
from mlcompress.orchestrate.runner import Pipeline


def _sample_lines(name: str) -> list[str]:
    with gzip.open(sample_data_dir() / "tatoeba" / name, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


@pytest.fixture
def no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup as a wheel install sees it: no $MLCOMPRESS_DATA, no shared/data beside the package or the working dir."""
    from mlcompress.corpus import default_data_dir

    monkeypatch.delenv("MLCOMPRESS_DATA", raising=False)
    monkeypatch.setattr("mlcompress.corpus._REPO_ROOT", tmp_path / "site-packages")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert default_data_dir() is None


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny XLM-R sentence encoder with E5's prompts; Greek and Russian in its tokenizer, for an en,de trim to drop."""
    from bundle_models import build_encoder

    lines = [line for code in ("deu", "ell", "rus") for side in (code, "eng") for line in _sample_lines(f"tatoeba.{code}-eng.{side}.gz")]
    return build_encoder(tmp_path_factory.mktemp("no-data") / "e5", lines, e5_prompts=True)




def test_the_built_in_job_runs_without_a_data_folder(no_data: None, encoder: Path, tmp_path: Path) -> None:
    """`mlcompress pipeline -l en,de` trims on the word lists, skips distillation, exports and gates on the sample's
    tasks, and says so in its output and its report."""
    cfg = default_config("en,de", source=str(encoder))
    assert cfg["data"] == str(sample_data_dir()) and cfg["stages"]["eval"]["tasks"] == ",".join(SAMPLE_TASKS)
    res = CliRunner().invoke(pipeline_app(), ["pipeline", "-l", "en,de", "--model", str(encoder), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "no data folder: trim on wordfreq's word lists of en, de" in out
    assert "note: eval: evaluated on the packaged Tatoeba sample" in out and "need the full data folder (--data DIR)" in out
    assert "gate: PASSED" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert {s["name"]: s["action"] for s in report["stages"]} == {"trim": "ran", "distill": "skipped", "export": "ran", "eval": "ran"}
    assert report["passed"] is True and any("packaged Tatoeba sample" in n for n in report["notes"])
    final = report["evaluations"]["export"]
    assert {s["task"] for s in final["scores"]} == {"retrieval", "fidelity"}  # efficiency is measured, never scored
    retrieval = next(s for s in final["scores"] if s["task"] == "retrieval")
    assert retrieval["language"] == "de-en" and retrieval["n"] == SAMPLE_PAIRS and "data_sample" in retrieval["dataset"]
    assert final["gate"]["checked"] >= 3
    trim_record = json.loads((tmp_path / "out" / "01-trim" / "mlcompress.json").read_text(encoding="utf-8"))
    assert trim_record["parameters"]["word_list_symbols"] == ["en", "de"]
    assert [i["corpus"] for i in trim_record["inputs"][1:]] == ["wordfreq:en?wordlist=best&n=50000", "wordfreq:de?wordlist=best&n=50000"]
    state = json.loads((tmp_path / "out" / "pipeline.json").read_text(encoding="utf-8"))
    assert "tatoeba.deu-eng.deu.gz" in state["stages"]["export"]["inputs"]["texts"]["de"][0]  # sentences, not words
    _check_trim_keeps_what_sentences_need(encoder, tmp_path / "out" / "01-trim")
    _check_inspect_names_the_clients(tmp_path / "out")


def _check_inspect_names_the_clients(out: Path) -> None:
    """`mlcompress inspect` on the real outputs: who loads the trim, the bundle and each stage of the pipeline."""
    from mlcompress.orchestrate.inspect import inspect

    def loading(path: Path) -> list[str]:
        return [c["client"] for c in inspect(path)["clients"] if c["loads"]]

    assert loading(out / "01-trim") == ["sentence-transformers", "transformers"]
    assert loading(out / "03-export") == ["mlcompress runtime", "FastEmbed", "transformers.js"]
    staged = inspect(out)["clients"]
    assert {c["stage"] for c in staged} == {"trim", "export"}
    res = CliRunner().invoke(pipeline_app(), ["inspect", str(out / "03-export")])
    assert res.exit_code == 0, res.output
    for words in ("loaded by", "clients (DIR: this folder)", "mlcompress runtime", "FastEmbed", "transformers.js",
                  "sentence-transformers"):
        assert words in res.stdout, words
    res = CliRunner().invoke(pipeline_app(), ["inspect", str(out)])
    assert res.exit_code == 0 and "sentence-transformers, transformers" in res.stdout


def _check_trim_keeps_what_sentences_need(source: Path, trimmed: Path) -> None:
    """Punctuation (which no word list holds) and the E5 prompts' tokens survive a trim on word lists alone."""
    from transformers import AutoTokenizer

    src, new = AutoTokenizer.from_pretrained(source), AutoTokenizer.from_pretrained(trimmed)
    old_ids = json.loads((trimmed / "id_map.json").read_text())["old_ids"]
    for text in ("query: Wo ist der Bahnhof?", "passage: Tom sagte: „Nein!“", "It costs 10 € (or $12)."):
        want = src(text)["input_ids"]
        if all(i in old_ids for i in want):
            assert [old_ids[i] for i in new(text)["input_ids"]] == want, text
    kept = set(old_ids)
    for prompt in ("query: ", "passage: "):
        assert set(src(prompt, add_special_tokens=False)["input_ids"]) <= kept, prompt
    assert {src.convert_tokens_to_ids(p) for p in ("?", ":", "!") if p in src.get_vocab()} <= kept


def test_distillation_is_skipped_on_word_lists(no_data: None, encoder: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Even where a GPU would run it, distillation needs running text: on word lists it is skipped, saying why."""
    cfg = default_config("en,de", source=str(encoder))
    cfg["stages"] = {"trim": {}, "distill": {}}
    monkeypatch.setattr(Pipeline, "_distill_decision", lambda self: (True, "a CUDA GPU is present"))
    result = Pipeline(cfg).run(tmp_path / "out")
    distill = result.stage("distill")
    assert distill["action"] == "skipped" and "word lists, not running text" in distill["note"] and "--data" in distill["note"]
    printed = str(result)  # the result prints its key figures
    assert printed.startswith(f"pipeline -> {tmp_path / 'out'}: no gate") and "trim" in printed and "ran" in printed
    assert "distill" in printed and "skipped (the corpora of en, de are word lists" in printed and "vocab" in printed


def test_languages_the_sample_lacks_name_data(no_data: None) -> None:
    with pytest.raises(InputError, match=r"(?s)no data folder.*no text for sw, th.*--data DIR"):
        default_config("en,sw,th")
    given = default_config("de,fr", data=str(DATA)) if DATA.is_dir() else None  # a data folder, as before
    assert given is None or (given["data"] == str(DATA) and given.get("corpora") is None)


def test_the_sample_is_package_data_with_its_licence() -> None:
    """Every sample file is aligned and declared in pyproject's package data (so a wheel carries it), with its licence;
    every sample language has a word list; the files are the first pairs of ../shared/data's Tatoeba where present."""
    import wordfreq

    root = sample_data_dir()
    files = {p.relative_to(root.parent).as_posix() for p in root.rglob("*") if p.is_file()}
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]["mlcompress.eval"]
    assert all(any(fnmatch(f, p) for p in patterns) for f in files), files
    licence = (root / "LICENSE.md").read_text(encoding="utf-8")
    assert "CC BY 2.0 FR" in licence and "Tatoeba" in licence
    assert sum((root.parent / f).stat().st_size for f in files) < 300_000
    for lang in SAMPLE_LANGUAGES[1:]:
        code = tatoeba_code(lang)
        a, b = _sample_lines(f"tatoeba.{code}-eng.{code}.gz"), _sample_lines(f"tatoeba.{code}-eng.eng.gz")
        assert len(a) == len(b) == SAMPLE_PAIRS and all(a) and all(b), lang
    assert set(SAMPLE_LANGUAGES) <= set(wordfreq.available_languages("best"))
    if DATA.is_dir():
        sys.path.insert(0, str(ROOT / "bench"))
        try:
            from eval_sample import sample_bytes
        finally:
            sys.path.remove(str(ROOT / "bench"))
        name = "tatoeba/tatoeba.jpn-eng.jpn.gz"
        assert gzip.decompress(sample_bytes(DATA / name, SAMPLE_PAIRS)) == gzip.decompress((root / name).read_bytes())
