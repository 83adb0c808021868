"""`mlcompress eval` on encoder-decoders (issue 24 item 4), with the tiny mBART of tiny_models.py (a translation model:
language codes, forced target-language token) on Tatoeba de-en pairs.

The model against itself keeps everything; its en,de trim scores the same next tokens and the same NLL over the ids it
kept, on pairs whose tokens it all kept; a copy with noised weights keeps less and fails the gate, through the API and
the CLI (exit 1), with chrF and BLEU (sacrebleu) in the HTML report.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import read_lines
from tiny_models import build, training_lines

from mlcompress.errors import GateError, LanguageError
from mlcompress.eval import Seq2SeqLimits, evaluate

TINY = Seq2SeqLimits(pairs=12, prompts=4, new_tokens=6)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """The tiny mBART, its en,de trim, a copy with noised weights, and a data folder of Tatoeba de-en pairs whose
    tokens the trim all kept."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from mlcompress.vocab_trim import trim

    base = tmp_path_factory.mktemp("seq2seq")
    src = build("mbart", base / "src", training_lines(data_dir)).path
    corpora = {}
    for lang in ("en", "de"):
        corpora[lang] = base / f"{lang}.txt"
        corpora[lang].write_text("\n".join(read_lines(data_dir / "mono" / f"{lang}.txt.gz", 300, skip=600)) + "\n")
    trim(src, "en,de", {k: str(v) for k, v in corpora.items()}, base / "trim", frequent_words=0)
    model = AutoModelForSeq2SeqLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    model.save_pretrained(base / "damaged")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, base / "damaged" / name)
    kept = set(json.loads((base / "trim" / "id_map.json").read_text(encoding="utf-8"))["old_ids"])
    tok = AutoTokenizer.from_pretrained(src)
    covered = lambda text: set(tok(text)["input_ids"]) <= kept  # noqa: E731
    eng, deu = (read_lines(data_dir / "tatoeba" / f"tatoeba.deu-eng.{side}.gz") for side in ("eng", "deu"))
    pairs = [(a, b) for a, b in zip(eng, deu) if covered(a) and covered(b)][:24]
    assert len(pairs) == 24
    for side, lines in (("eng", [a for a, _ in pairs]), ("deu", [b for _, b in pairs])):
        (base / "data" / "tatoeba").mkdir(parents=True, exist_ok=True)
        with gzip.open(base / "data" / "tatoeba" / f"tatoeba.deu-eng.{side}.gz", "wt", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
    return {"src": src, "trim": base / "trim", "damaged": base / "damaged", "data": base / "data", "base": base}


def _scores(report: object) -> dict[tuple[str, str], object]:
    return {(s.language, s.metric): s for s in report.scores}


def test_model_against_itself_keeps_everything(models: dict[str, Path]) -> None:
    r = evaluate(models["src"], models["src"], "de", data_dir=models["data"], seq2seq_limits=TINY, min_retention=0.999)
    assert r.parameters["model_kind"] == "seq2seq" and r.parameters["directions"] == ["en-de", "de-en"]
    assert r.tasks == ["perplexity", "next_token", "greedy", "translation"] and r.passed is True
    s = _scores(r)
    for way in ("en-de", "de-en"):
        assert {m for (w, m) in s if w == way} == {"bits_per_byte", "nll_per_token_same_tokens", "top1_agreement", "kl_nats",
                                                    "dropped_mass", "identical_text", "chrf", "bleu"}
        assert s[(way, "bits_per_byte")].retention == pytest.approx(1.0, abs=1e-9)
        assert s[(way, "bits_per_byte")].details["nll_ratio_candidate_over_source"] == pytest.approx(1.0, abs=1e-9)
        assert s[(way, "top1_agreement")].candidate == 1.0 and s[(way, "identical_text")].candidate == 1.0
        assert s[(way, "chrf")].source == s[(way, "chrf")].candidate
        assert "tok:13a" in s[(way, "bleu")].note and "interval" in s[(way, "chrf")].as_dict()


def test_trim_scores_the_same_on_covered_pairs(models: dict[str, Path]) -> None:
    r = evaluate(models["src"], models["trim"], "de", data_dir=models["data"], seq2seq_limits=TINY)
    assert r.parameters["id_map"]["how"] == "id_map.json"
    s = _scores(r)
    for way in ("en-de", "de-en"):
        assert s[(way, "top1_agreement")].candidate == 1.0  # the source's top-1 among the kept ids, every position
        same = s[(way, "nll_per_token_same_tokens")]
        assert same.n == TINY.pairs  # every reference tokenizes identically (covered)
        assert abs(same.details["candidate_minus_source_over_kept_ids"]) < 1e-5  # NLL over kept ids: the source's
        assert s[(way, "kl_nats")].candidate < 1e-6
        assert s[(way, "bits_per_byte")].retention >= 1.0 - 1e-6  # never worse than the source (mass renormalised)
        if s[(way, "identical_text")].candidate == 1.0:
            assert s[(way, "chrf")].candidate == s[(way, "chrf")].source


def test_damaged_candidate_fails_the_gate_with_chrf_and_bleu_in_the_report(models: dict[str, Path]) -> None:
    out = models["base"] / "report"
    r = evaluate(models["src"], models["damaged"], "de", data_dir=models["data"], seq2seq_limits=TINY, output=out,
                 min_retention=0.99)
    assert r.passed is False
    s = _scores(r)
    assert s[("en-de", "top1_agreement")].candidate < 0.99 and s[("en-de", "bits_per_byte")].retention < 0.99
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert {s["metric"] for s in report["scores"] if s["task"] == "translation"} == {"chrf", "bleu"}
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "FAILED" in page and "chrf" in page and "bleu" in page and "en-de" in page and "de-en" in page


def test_the_cli_gate_exits_1(models: dict[str, Path]) -> None:
    from typer.testing import CliRunner

    from mlcompress.orchestrate.cli import app

    cli = CliRunner().invoke(app, ["eval", str(models["src"]), str(models["damaged"]), "-l", "de", "--data", str(models["data"]),
                                   "--tasks", "perplexity,next_token", "--max-examples", "4", "--min-retention", "0.99",
                                   "-o", str(models["base"] / "cli")])
    assert cli.exit_code == 1 and isinstance(cli.exception, GateError), cli.output  # the root command: exit 1
    assert "retention gate failed" in str(cli.exception) and "top1_agreement" in str(cli.exception)


def test_a_candidate_without_a_requested_target_language_is_refused(models: dict[str, Path]) -> None:
    from mlcompress.vocab_trim import trim

    base = models["base"]
    trim(models["src"], "de", {"de": str(base / "de.txt")}, base / "de-only", frequent_words=0)
    with pytest.raises(LanguageError, match="cannot translate into en: the trim to de removed its language code en_XX"):
        evaluate(models["src"], base / "de-only", "de", data_dir=models["data"], seq2seq_limits=TINY)


def test_a_model_without_language_codes_scores_translation_only_when_asked(models: dict[str, Path], tmp_path: Path) -> None:
    """A model without language codes (the tiny mBART with its codes renamed <ar>, <de> ..., as mT5 has none): the
    default tasks leave translation out (listed as skipped); asked, it is scored."""
    from tiny_models import MBART_CODES

    from mlcompress.eval import evaluate_seq2seq, load_seq2seq

    src = tmp_path / "plain"
    shutil.copytree(models["src"], src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        text = (src / name).read_text(encoding="utf-8")
        for code in MBART_CODES:
            text = text.replace(f'"{code}"', f'"<{code[:2]}>"')
        (src / name).write_text(text, encoding="utf-8")
    small, model = Seq2SeqLimits(pairs=4, prompts=2, new_tokens=4), load_seq2seq(src)
    r = evaluate_seq2seq(src, src, "de", data_dir=models["data"], limits=small, models=(model, model))
    assert r.tasks == ["perplexity", "next_token", "greedy"] and r.skipped[0]["task"] == "translation"
    assert r.source["language_codes"] is None and r.retention("perplexity", "en-de", "bits_per_byte") == pytest.approx(1.0)
    r = evaluate_seq2seq(src, src, "de", tasks="translation", data_dir=models["data"], limits=small, models=(model, model))
    assert {(s.language, s.metric) for s in r.scores} == {(w, m) for w in ("en-de", "de-en") for m in ("chrf", "bleu")}
