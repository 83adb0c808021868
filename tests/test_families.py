"""One support table (family x stage), checked before work starts: a stage that does not handle a model's family
refuses it at once with the table in the message, and the pipeline refuses before it writes anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DATA
from mlcompress.errors import UnsupportedModelError
from mlcompress.families import SUPPORT, check_supported, family_of_config, model_family, support_table
from tiny_models import build_gpt2, build_mbart, build_xlmr, training_lines


@pytest.mark.parametrize("config, family", [
    ({"architectures": ["BertModel"]}, "encoder"),
    ({"architectures": ["XLMRobertaForMaskedLM"]}, "encoder"),
    ({"architectures": ["Gemma3ForCausalLM"]}, "decoder"),
    ({"architectures": ["GPT2LMHeadModel"]}, "decoder"),
    ({"architectures": ["MT5ForConditionalGeneration"], "is_encoder_decoder": True}, "seq2seq"),
    ({"architectures": ["M2M100ForConditionalGeneration"]}, "seq2seq"),
    ({"model_type": "t5", "is_encoder_decoder": True}, "seq2seq"),
    ({}, "encoder"),
])
def test_family_of_config(config: dict, family: str) -> None:
    assert family_of_config(config) == family


def test_refusal_names_the_family_the_stage_and_the_whole_table() -> None:
    for family, stages in SUPPORT.items():
        for stage, supported in stages.items():
            if supported:
                check_supported(family, stage)
            else:
                with pytest.raises(UnsupportedModelError) as info:
                    check_supported(family, stage, "m")
                text = str(info.value)
                assert f"m is a {family} model" in text and f"`{stage}`" in text and support_table() in text
    assert all(f in support_table() for f in SUPPORT)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base, lines = tmp_path_factory.mktemp("families"), training_lines(DATA)
    return {"decoder": build_gpt2(base / "gpt2", lines).path, "seq2seq": build_mbart(base / "mbart", lines).path,
            "encoder": build_xlmr(base / "xlmr", lines).path}


def test_model_family_reads_config_json(zoo: dict[str, Path], tmp_path: Path) -> None:
    assert {k: model_family(v) for k, v in zoo.items()} == {k: k for k in zoo}
    from mlcompress.errors import ModelSourceError

    with pytest.raises(ModelSourceError, match="config.json is missing"):
        model_family(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ModelSourceError, match="cannot be read"):
        model_family(tmp_path)


def test_distillation_refuses_a_causal_lm_before_any_work(zoo: dict[str, Path], tmp_path: Path) -> None:
    from mlcompress.distill import distill_general

    corpora = {"en": str(DATA / "mono" / "en.txt.gz"), "de": str(DATA / "mono" / "de.txt.gz")}
    with pytest.raises(UnsupportedModelError, match="decoder model, and `distill` does not handle"):
        distill_general(zoo["decoder"], "en,de", corpora, tmp_path / "student")
    assert not any(tmp_path.iterdir())


def test_pipeline_refuses_an_unsupported_stage_before_writing(zoo: dict[str, Path], tmp_path: Path) -> None:
    """Asked to distil an encoder-decoder (no distillation for the family yet), the pipeline refuses before any stage
    runs, with the support table in the message, and writes nothing."""
    from mlcompress import Pipeline

    cfg = {"source": str(zoo["seq2seq"]), "languages": "en,de", "data": str(DATA),
           "stages": {"trim": {"scripts": True}, "distill": {"enabled": True}, "export": {"quantize": "none"}}}
    with pytest.raises(UnsupportedModelError, match="seq2seq model, and `distill` does not handle") as info:
        Pipeline(cfg).run(tmp_path / "pipe")
    assert support_table() in str(info.value) and not (tmp_path / "pipe").exists()
    assert json.loads((zoo["seq2seq"] / "config.json").read_text())["architectures"]  # the source is untouched