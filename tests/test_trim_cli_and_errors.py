"""`mlcompress trim` from the command line, and bad input: clear errors, nothing on disk lost."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerFast

from mlcompress.errors import CorpusError, LanguageError, ModelSourceError, OutputExistsError
from mlcompress.vocab_trim import trim

from conftest import read_lines


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A 2-layer BERT with a WordPiece tokenizer trained on German, English and Russian text."""
    lines = sum((read_lines(data_dir / "mono" / f"{lang}.txt.gz", 150) for lang in ("de", "en", "ru")), [])
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=1500, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=128, pad_token_id=0))
    out = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture()
def corpora(tmp_path: Path, data_dir: Path) -> dict[str, Path]:
    paths = {}
    for lang in ("en", "de"):
        paths[lang] = tmp_path / f"{lang}.txt"
        paths[lang].write_text("\n".join(read_lines(data_dir / "mono" / f"{lang}.txt.gz", 100, skip=200)) + "\n", encoding="utf-8")
    return paths


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlcompress.orchestrate.cli", *args], capture_output=True, text=True)


def test_trim_command_has_an_option_per_trim_parameter() -> None:
    """`mlcompress trim` (vocab_trim/cli.py) exposes every parameter of the trim() API, and nothing else but --json."""
    import inspect

    from mlcompress.vocab_trim.cli import OPTION_PARAMETERS, trim_command

    options = {OPTION_PARAMETERS.get(name, name) for name in inspect.signature(trim_command).parameters} - {"as_json"}
    assert options == set(inspect.signature(trim).parameters)


def test_cli_exact_form_then_refuses_existing_output(tiny_bert: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    run = _cli("trim", str(tiny_bert), "-l", "en,de", "--corpus", f"en={corpora['en']}", "--corpus", f"de={corpora['de']}", "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert "vocabulary" in run.stdout
    record = json.loads((out / "mlcompress.json").read_text())
    assert record["stage"] == "trim" and record["parameters"]["languages"] == ["en", "de"]
    assert 0 < record["metrics"]["vocab_after"] < record["metrics"]["vocab_before"]
    assert record["inputs"][0]["sha256"] and len(record["inputs"]) == 3
    model = AutoModel.from_pretrained(out)  # plain transformers reads it
    assert model.config.vocab_size == record["metrics"]["vocab_after"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _cli("trim", str(tiny_bert), "-l", "en,de", "--corpus", f"en={corpora['en']}", "--corpus", f"de={corpora['de']}", "-o", str(out))
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_cli_bad_input_exit_2_without_traceback(tiny_bert: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    for args, message in (
        (["trim", str(tmp_path / "nope"), "-l", "en", "--scripts", "-o", str(tmp_path / "o")], "not found"),
        (["trim", str(tiny_bert), "-l", "xx", "-o", str(tmp_path / "o")], "unknown language"),
        (["trim", str(tiny_bert), "-l", "en,de", "--corpus", f"en={corpora['en']}", "-o", str(tmp_path / "o")], "no text for language"),
        (["trim", str(tiny_bert), "-l", "en", "--corpus", f"en={tmp_path / 'missing.txt'}", "-o", str(tmp_path / "o")], "no such file"),
        (["trim", str(tiny_bert), "-l", "en", "--corpus", "en", "-o", str(tmp_path / "o")], "LANG=PATH"),
    ):
        run = _cli(*args)
        assert run.returncode == 2, (args, run.stderr)
        assert message in run.stderr and "hint:" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()


def test_not_a_model_and_corrupt_weights(tiny_bert: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    with pytest.raises(ModelSourceError, match="no config.json"):
        trim(plain, "en", {"en": corpora["en"]}, tmp_path / "o1")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_bert, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelSourceError, match="could not load the model weights"):
        trim(corrupt, "en", {"en": corpora["en"]}, tmp_path / "o2")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def test_empty_corpus_unknown_language_and_stray_corpus(tiny_bert: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n\n")
    with pytest.raises(CorpusError, match="no text"):
        trim(tiny_bert, "en", {"en": blank}, tmp_path / "o")
    with pytest.raises(LanguageError, match="unknown language"):
        trim(tiny_bert, "en,klingon", {"en": corpora["en"]}, tmp_path / "o")
    with pytest.raises(LanguageError, match="not among the target languages"):
        trim(tiny_bert, "en", {"en": corpora["en"], "de": corpora["de"]}, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_existing_output_kept_unless_overwrite(tiny_bert: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError):
        trim(tiny_bert, "en,de", corpora, out)
    assert (out / "precious.txt").read_text() == "keep me"
    result = trim(tiny_bert, "en,de", corpora, out, overwrite=True)
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").is_file()
    assert result.vocab_after < result.vocab_before and result.coverage == {"en": 1.0, "de": 1.0}
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == result.vocab_after
