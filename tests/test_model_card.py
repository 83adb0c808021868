"""The model card every output carries: Hub metadata and a body generated from the artifacts' records, the source
card's licence and citation kept (its figures not), eval's table in the pipeline's card, and the commands rendered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DATA, read_lines
from mlcompress.card_command import DEFAULT_FREQUENT_WORDS, DEFAULT_MAX_VOCAB, trim_command
from mlcompress.card_lineage import front_matter
from mlcompress.model_card import eval_table, write_model_card
from tiny_models import build_bert_teacher, training_lines

SOURCE_CARD = """---
license: apache-2.0
language: multilingual
---

# Tiny encoder

## Results

| task | score |
| --- | --- |
| STS | 0.8731 |

## License

Released under the Apache 2.0 licence; see LICENSE.

## Citation

```bibtex
@article{tiny2026, title={A tiny encoder}}
```
"""


def _card(path: Path) -> tuple[dict, str]:
    return front_matter((path / "README.md").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("corpora")
    for lang in ("en", "de"):
        (base / f"{lang}.txt").write_text("\n".join(read_lines(DATA / "mono" / f"{lang}.txt.gz", 150)) + "\n", encoding="utf-8")
    return {lang: str(base / f"{lang}.txt") for lang in ("en", "de")}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """A bundled-E5-like source (E5 by provenance, no card) and a plain encoder with its own model card."""
    base = tmp_path_factory.mktemp("card-sources")
    e5 = build_bert_teacher(base / "e5", training_lines(DATA))
    (e5 / "mlcompress.json").write_text(json.dumps({"stage": "bundled", "parameters": {"name": "multilingual-e5-small"},
                                                    "inputs": [], "metrics": {}}))
    carded = base / "carded"
    carded.mkdir()
    for f in e5.iterdir():
        if f.name != "mlcompress.json":
            (carded / f.name).write_bytes(f.read_bytes())
    (carded / "README.md").write_text(SOURCE_CARD, encoding="utf-8")
    return {"e5": e5, "carded": carded}


@pytest.fixture(scope="module")
def e5_trim(sources, corpora, tmp_path_factory) -> Path:
    from mlcompress.vocab_trim import trim

    out = tmp_path_factory.mktemp("trims") / "trimmed"
    trim(sources["e5"], "en,de", corpora, out, frequent_words=0)
    return out


def test_a_trims_card_says_what_it_is_from_its_records(e5_trim: Path) -> None:
    meta, body = _card(e5_trim)
    assert meta["base_model"] == "intfloat/multilingual-e5-small" and meta["base_model_relation"] == "finetune"
    assert meta["language"] == ["en", "de"] and meta["license"] == "mit"
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert {"mlcompress", "vocabulary-trimming"} <= set(meta["tags"])
    record = json.loads((e5_trim / "mlcompress.json").read_text())["metrics"]
    assert f"| vocabulary | {record['vocab_before']:,} | {record['vocab_after']:,} |" in body
    assert f"| parameters | {record['params_before']:,} | {record['params_after']:,} |" in body
    assert "mlcompress trim" in body and "-l en,de" in body and "--corpus en=" in body and "--frequent-words 0 -o trimmed" in body
    assert "model.encode_query" in body and 'adds "passage: "' in body
    assert "FastEmbed and transformers.js add none" in body  # the prompt is the user's job there


def test_the_source_cards_licence_and_citation_are_kept_not_its_figures(sources, corpora, tmp_path: Path) -> None:
    from mlcompress.vocab_trim import trim

    out = tmp_path / "t"
    trim(sources["carded"], "en,de", corpora, out, frequent_words=0)
    meta, body = _card(out)
    assert meta["license"] == "apache-2.0" and "base_model" not in meta  # a local source has no Hub id
    assert "@article{tiny2026" in body and "Released under the Apache 2.0 licence" in body
    assert "0.8731" not in body and "## Results" not in body and "# Tiny encoder" not in body
    assert meta["library_name"] == "transformers" and "AutoModel.from_pretrained" in body  # not a sentence model
    again = tmp_path / "again"  # a card made from an mlcompress card passes the source's sections on
    (again).mkdir()
    for f in out.iterdir():
        if f.is_file():
            (again / f.name).write_bytes(f.read_bytes())
    (again / "mlcompress.json").write_text(json.dumps({"stage": "trim", "parameters": {"languages": ["en"]},
                                                       "inputs": [{"source": str(out), "path": str(out)}], "metrics": {}}))
    meta2, body2 = _card(Path(write_model_card(again)).parent)
    assert meta2["license"] == "apache-2.0" and "@article{tiny2026" in body2 and body2.count("@article") == 1


def test_an_export_bundle_card(e5_trim: Path, corpora, tmp_path: Path) -> None:
    from mlcompress.export import export

    bundle = tmp_path / "bundle"
    export(e5_trim, bundle, quantize="none", bundle=True, texts={"en": corpora["en"]}, measure_latency=False,
           parity_texts=8, calibration_texts=8)
    assert (bundle / "README.md").is_file()  # export writes its card itself
    meta, body = _card(bundle)
    assert meta["base_model"] == "intfloat/multilingual-e5-small" and meta["base_model_relation"] == "quantized"
    assert meta["license"] == "mit" and meta["pipeline_tag"] == "feature-extraction" and "onnx" in meta["tags"]
    assert "an ONNX export (fp32) of a vocabulary trim (en, de) of `intfloat/multilingual-e5-small`" in body
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "runtime.load(\"bundle\")" in body and 'prompt_name="document"' in body
    if (bundle / "tokenizer_config.json").is_file():
        assert f'model_file="{manifest["model"]}"' in body and "PoolingType.DISABLED" in body
    assert "optimum-onnx" in body  # why sentence-transformers' ONNX backend is not among the clients


def test_the_pipeline_card_carries_evals_table_and_leaves_the_fingerprints_alone(e5_trim: Path, tmp_path: Path) -> None:
    from mlcompress.orchestrate.card import write_pipeline_card
    from mlcompress.orchestrate.runner import _Digests

    final = tmp_path / "out" / "01-trim"
    final.parent.mkdir()
    final.mkdir()
    for f in e5_trim.rglob("*"):
        if f.is_file():
            (final / f.relative_to(e5_trim)).parent.mkdir(parents=True, exist_ok=True)
            (final / f.relative_to(e5_trim)).write_bytes(f.read_bytes())
    before = _Digests({})(final)
    score = {"task": "retrieval", "language": "de-en", "metric": "accuracy@1", "source": 0.9, "candidate": 0.88, "n": 100,
             "gated": True, "retention": 0.88 / 0.9, "interval": {"retention_low": 0.95, "retention_high": 1.01}}
    evaluations = {"trim": {"scores": [score], "gate": {"min_retention": 0.95, "passed": True, "checked": 1}}}
    cfg = {"source": "bundled:multilingual-e5-small", "languages": ["en", "de"], "stages": {"trim": {}, "eval": {}}}
    card = write_pipeline_card(tmp_path / "out", cfg, [{"name": "source", "path": "x"}, {"name": "trim", "path": str(final)}],
                               evaluations)
    body = card.read_text()
    assert card == final / "README.md" and _Digests({})(final) == before
    assert "| retrieval | de-en | accuracy@1 | 0.9000 | 0.8800 | 0.978 | 0.950..1.010 |" in body
    assert "**passed** (1 scores checked)" in body and "mlcompress pipeline config.yaml -o out" in body
    assert "source: bundled:multilingual-e5-small" in body


def test_eval_table_marks_ungated_scores() -> None:
    table = eval_table({"scores": [{"task": "sts", "language": "de", "metric": "spearman", "source": 0.01, "candidate": 0.02,
                                    "gated": False, "retention": 2.0}]})
    assert "| sts | de | spearman | 0.0100 | 0.0200 | 2.000 (not gated) | — |" in table


@pytest.mark.parametrize("policy, params, expected", [
    ({"name": "TopK", "k": 5000}, {"word_variants": False, "frequent_words": 0}, "--top-k 5000 -o out"),
    ({"name": "Scripts", "languages": ["en"]}, {"word_variants": False, "frequent_words": 0}, "--scripts -o out"),
    ({"name": "MinCount", "n": 1}, {"word_variants": True, "frequent_words": DEFAULT_FREQUENT_WORDS}, "-l en -o out"),
    ({"name": "MinCount", "n": 3}, {"word_variants": False, "frequent_words": 0}, "--min-count 3 -o out"),
    ({"name": "Quotas", "quotas": {"en": 10}}, {"word_variants": True, "frequent_words": 0}, "--quota en=10 --word-variants -o out"),
    # a translation model's codes: the default (targets) goes unsaid, more codes are named as trim records them
    ({"name": "MinCount", "n": 1}, {"word_variants": True, "frequent_words": DEFAULT_FREQUENT_WORDS, "keep_language_codes": "targets"},
     "-l en -o out"),
    ({"name": "MinCount", "n": 1}, {"word_variants": True, "frequent_words": DEFAULT_FREQUENT_WORDS, "keep_language_codes": "all"},
     "-l en --keep-language-codes all -o out"),
    ({"name": "MinCount", "n": 1}, {"word_variants": False, "frequent_words": 0, "keep_language_codes": ["fr", "ro"]},
     "--min-count 1 --keep-language-codes fr,ro -o out"),
])
def test_trim_commands_name_only_what_differs_from_the_recipes_defaults(policy, params, expected) -> None:
    record = {"parameters": {"languages": ["en"], "policy": policy, "max_vocab": DEFAULT_MAX_VOCAB, **params},
              "inputs": [{"source": "bundled:multilingual-e5-small"}]}
    command = trim_command(record, "out")
    assert command.startswith("mlcompress trim bundled:multilingual-e5-small -l en") and command.endswith(expected)


def test_the_cards_trim_defaults_are_trims() -> None:
    from mlcompress.vocab_trim import frequent_words

    assert (DEFAULT_FREQUENT_WORDS, DEFAULT_MAX_VOCAB) == (frequent_words.DEFAULT_FREQUENT_WORDS, frequent_words.DEFAULT_MAX_VOCAB)
