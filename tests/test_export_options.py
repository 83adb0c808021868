"""The export stage's typed options (export/options.py): built once by export() from its keywords, refusing what they
cannot mean with the CLI's messages, a ready-made scheme config accepted, and the decoder's configs. No model needed:
export() is stopped where the encoder exporter would start, and the options it built are inspected."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mlcompress.errors import InputError
from mlcompress.export import (QUANTIZE_CHOICES, Fp16Config, Int4Config, Int4WeightsConfig, Int8DynamicConfig,
                               Int8StaticConfig, Int8WeightsConfig, NoQuantConfig, export)
from mlcompress.export.options import (SCHEMES, ChecksConfig, DecoderParityConfig, DecoderQuantConfig, EmbeddingConfig,
                                       EncoderOptions, OutputsConfig, quantization_config)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """export() on a path that is no model yet (the encoder path), stopped after its options are built: what it built."""
    import mlcompress.export.api as api
    import mlcompress.export.onnx_backend as backend

    seen: dict[str, Any] = {}
    monkeypatch.setattr(backend, "prepare", lambda *a, **k: "prepared")
    monkeypatch.setattr(api, "_write_graph", lambda prepared, options, langs, *a: seen.update(options=options, langs=langs))
    seen["model"] = tmp_path / "not-a-model-yet"
    seen["out"] = tmp_path / "out"
    return seen


def test_export_builds_one_typed_config_per_concern_from_its_keywords(built: dict[str, Any]) -> None:
    export(built["model"], built["out"], quantize="int8-static", bundle=True, ort=True, per_channel=False,
           reduce_range=True, calibration="entropy", quantize_embeddings=False, embedding_block_size=64, optimize=False,
           parity_texts=8, calibration_texts=9, accuracy_texts=10, min_cosine=0.5, min_agreement=0.6, max_drop=0.01,
           force=True, measure_latency=False, languages="de")
    options = built["options"]
    assert isinstance(options, EncoderOptions) and built["langs"] == ["de"]
    assert options.quantization == Int8StaticConfig(per_channel=False, reduce_range=True, calibration="entropy")
    assert options.embeddings == EmbeddingConfig(quantize=False, block_size=64)
    assert options.checks == ChecksConfig(parity_texts=8, calibration_texts=9, accuracy_texts=10, min_cosine=0.5,
                                          min_agreement=0.6, max_drop=0.01, force=True)
    assert options.outputs == OutputsConfig(format="onnx", bundle=True, ort=True, tokenizer_in_graph=False,
                                            optimize=False, measure_latency=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.checks.force = False  # type: ignore[misc]


def test_export_defaults_and_each_scheme_from_its_name(built: dict[str, Any]) -> None:
    export(built["model"], built["out"])
    options = built["options"]
    assert options.quantization == Int8WeightsConfig() and options.checks == ChecksConfig()
    assert options.outputs == OutputsConfig() and options.embeddings == EmbeddingConfig()
    expected = {"none": NoQuantConfig(), "fp16": Fp16Config(), "int8-dynamic": Int8DynamicConfig(per_channel=False),
                "int8-static": Int8StaticConfig(per_channel=False), "int8-weights": Int8WeightsConfig(),
                "int4": Int4Config(block_size=32), "int4-weights": Int4WeightsConfig(block_size=32)}
    assert tuple(SCHEMES) == QUANTIZE_CHOICES == tuple(expected)
    for name, config in expected.items():
        assert quantization_config(name, per_channel=False, int4_block_size=32) == config
        assert config.name == name


def test_a_ready_made_scheme_config_is_taken_as_given(built: dict[str, Any]) -> None:
    config = Int4Config(block_size=32)
    export(built["model"], built["out"], quantize=config, max_drop=0.1)
    assert built["options"].quantization is config and built["options"].checks.max_drop == 0.1
    with pytest.raises(InputError, match="unknown quantisation"):
        export(built["model"], built["out"], quantize=DecoderQuantConfig("int4"))  # not an encoder scheme
    with pytest.raises(InputError, match="--max-drop 0.1 with --format onnx --quantize fp16"):
        export(built["model"], built["out"], quantize=Fp16Config(), max_drop=0.1)


@pytest.mark.parametrize("keywords, message", [
    (dict(quantize="int3"), "unknown quantisation 'int3'"),
    (dict(format="tflite"), "unknown format 'tflite'"),
    (dict(calibration="kl"), "unknown calibration method 'kl'"),  # checked whatever the scheme, as before
    (dict(quantize=Int4Config(), calibration="kl"), "unknown calibration method 'kl'"),
    (dict(quantize="fp16", max_drop=0.01), "--max-drop 0.01 with --format onnx --quantize fp16"),
    (dict(quantize="int8-dynamic", max_drop=-0.1), "--max-drop -0.1 with --format onnx"),
    (dict(format="tensorrt", quantize="int4", max_drop=0.1), "--max-drop 0.1 with --format tensorrt"),
    (dict(ort=True), "--ort without --bundle"),
    (dict(format="bnb", bundle=True, tokenizer_in_graph=True), "--tokenizer-in-graph with --format bnb"),
])
def test_bad_keywords_are_refused_before_any_work(built: dict[str, Any], keywords: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        export(built["model"], built["out"], **keywords)
    assert "options" not in built and not built["out"].exists()


def test_configs_refuse_what_they_cannot_mean_when_built() -> None:
    with pytest.raises(InputError, match="unknown calibration method 'kl'") as info:
        Int8StaticConfig(calibration="kl")
    assert "percentile" in info.value.hint
    with pytest.raises(InputError, match="unknown format"):
        OutputsConfig(format="tflite")
    with pytest.raises(InputError, match="--ort with --format tensorrt"):
        EncoderOptions(Fp16Config(), EmbeddingConfig(), ChecksConfig(), OutputsConfig(format="tensorrt", ort=True))
    with pytest.raises(InputError, match="--max-drop 2"):
        EncoderOptions(Int4Config(), EmbeddingConfig(), ChecksConfig(max_drop=2), OutputsConfig())
    with pytest.raises(InputError, match="unknown decoder quantisation 'int2'"):
        DecoderQuantConfig("int2")
    with pytest.raises(InputError, match="unknown int8 method 'fast'"):
        DecoderQuantConfig("int8", "fast")
    with pytest.raises(InputError, match="new_tokens 0"):
        DecoderParityConfig(new_tokens=0)


def test_embedding_tables_are_quantised_by_default_with_int8_and_int4_only() -> None:
    default, off, on = EmbeddingConfig(), EmbeddingConfig(quantize=False), EmbeddingConfig(quantize=True)
    assert [default.enabled(quantization_config(n)) for n in QUANTIZE_CHOICES] == [False, False, True, True, True, True, True]
    assert not any(off.enabled(quantization_config(n)) for n in QUANTIZE_CHOICES)
    assert [on.enabled(quantization_config(n)) for n in QUANTIZE_CHOICES] == [True, False, True, True, True, True, True]


def test_decoders_map_exports_schemes_and_record_the_same_parameters() -> None:
    from mlcompress.export.decoder_export import _params
    from mlcompress.export.generative_api import decoder_quantization

    assert decoder_quantization("int8-weights") == DecoderQuantConfig("int8", "nbits")
    assert decoder_quantization(Int8WeightsConfig()) == DecoderQuantConfig("int8", "nbits")
    assert decoder_quantization(Int8DynamicConfig()) == DecoderQuantConfig("int8", "dynamic")
    assert decoder_quantization("int8") == DecoderQuantConfig("int8", "nbits")
    assert decoder_quantization(Int4Config()).dtype == "q4" and decoder_quantization("none").dtype == "fp32"
    for refused in ("int8-static", Int8StaticConfig(), "fp16"):
        with pytest.raises(InputError, match="is not available for decoder models"):
            decoder_quantization(refused)
    params = _params(SimpleNamespace(family="llama"), DecoderQuantConfig("int4"), ChecksConfig(min_agreement=0.9),
                     DecoderParityConfig())
    assert params == {"format": "onnx", "kind": "decoder", "quantize": "int4", "family": "llama", "int8_method": "nbits",
                      "new_tokens": 24, "atol": 1e-4, "rtol": 1e-4, "min_agreement": 0.9, "force": False}
