"""Encoder-decoder export (issue 24 items 1-2): mT5, mBART and NLLB (M2M100) to ONNX with a KV cache in the optimum /
transformers.js layout (encoder_model + decoder_model_merged with use_cache_branch), fp32 / int8 / int4 behind the
parity gate, and torch-free generation from the bundle (one encoder pass, the decoder with its cache, the forced
target-language token), through the API and `mlcompress bundle generate --to`.

Tiny random models with real-format tokenizers (tests/seq2seq_models.py). Each family's three graphs are exported from
torch once per session (the export function is memoised here, the slow part); every precision then runs the whole
public export: the fp32 gate, quantisation, the merge and the written bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from seq2seq_models import FAMILIES, build
from tiny_models import training_lines
from mlcompress.errors import InputError
from mlcompress.export import export_seq2seq, generate, verify

QUANTIZE = ("none", "int8", "int4")
DTYPE = {"none": "fp32", "int8": "q8", "int4": "q4"}
SUFFIX = {"fp32": "", "q8": "_quantized", "q4": "_q4"}
ROOT = Path(__file__).resolve().parents[1]
NODE_PREFIX = Path(os.environ.get("MLCOMPRESS_NODE_PREFIX", ROOT / ".cache" / "node"))  # setup.sh --dev installs there
# transformers.js's own seq2seq generate() on a bundle folder, offline: node - PREFIX BUNDLE IDS FORCED N DTYPE
TRANSFORMERS_JS = """
import { createRequire } from "node:module";
import { basename, dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
const [prefix, bundle, idsJson, forced, n, dtype] = process.argv.slice(2);
const entry = createRequire(join(resolve(prefix), "package.json")).resolve("@huggingface/transformers");
const { AutoModelForSeq2SeqLM, Tensor, env } = await import(pathToFileURL(entry).href);
env.allowRemoteModels = false; env.allowLocalModels = true; env.localModelPath = dirname(resolve(bundle)) + "/";
const model = await AutoModelForSeq2SeqLM.from_pretrained(basename(resolve(bundle)), { dtype });
const ids = JSON.parse(idsJson);
const input_ids = new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
const attention_mask = new Tensor("int64", BigInt64Array.from(ids.map(() => 1n)), [1, ids.length]);
const options = { input_ids, attention_mask, max_new_tokens: Number(n), do_sample: false, num_beams: 1 };
if (Number(forced) >= 0) options.forced_bos_token_id = Number(forced);
process.stdout.write(JSON.stringify(Array.from((await model.generate(options)).data, Number)));
"""
TEXTS = ["The weather in Berlin is mild today, and the trains run on time.",
         "Die Bundesregierung hat heute ein neues Gesetz beschlossen."]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Callable[[str], Path]:
    """family -> its tiny model directory, built on first use."""
    lines = training_lines(data_dir)
    done: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in done:
            done[family] = build(family, tmp_path_factory.mktemp(family) / "model", lines)
        return done[family]

    return get


@pytest.fixture(scope="session")
def memo_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`seq2seq_graph.export_graph`, run by torch once per model folder and graph, copied after that."""
    from mlcompress.export import seq2seq_graph

    real, cache = seq2seq_graph.export_graph, tmp_path_factory.mktemp("graphs")

    def memo(model, spec, kind: str, path: Path) -> Path:
        key = cache / f"{Path(model.config._name_or_path).parent.name}-{kind}.onnx"
        if not key.exists():
            real(model, spec, kind, key)
        shutil.copyfile(key, path)
        return path

    return memo


@pytest.fixture(scope="session")
def exported(models, memo_export, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], tuple[Path, object]]:
    """(family, quantize) -> (bundle dir, ExportResult); torch's export of each graph runs once per family."""
    from mlcompress.export import seq2seq_graph

    done: dict[tuple[str, str], tuple[Path, object]] = {}
    memo = memo_export

    def get(family: str, quantize: str) -> tuple[Path, object]:
        if (family, quantize) not in done:
            out = tmp_path_factory.mktemp(f"{family}-{quantize}") / "bundle"
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(seq2seq_graph, "export_graph", memo)
                done[family, quantize] = out, export_seq2seq(models(family), out, quantize=quantize, texts=TEXTS)
        return done[family, quantize]

    return get


def _hf(model_dir: Path):
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _hf_greedy(model, rows: list[list[int]], pad: int, n: int, forced: int | None) -> list[list[int]]:
    """transformers' greedy tokens after its decoder start (and forced BOS), for a right-padded batch."""
    from transformers import GenerationConfig

    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    extra = forced is not None
    config = GenerationConfig(max_new_tokens=n + extra, do_sample=False, num_beams=1, forced_bos_token_id=forced,
                              eos_token_id=model.generation_config.eos_token_id, pad_token_id=pad,
                              decoder_start_token_id=model.config.decoder_start_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    start = 1 + extra
    eos = model.generation_config.eos_token_id
    rows_out = []
    for row in out[:, start:].tolist():
        cut = row.index(eos) + 1 if eos in row else len(row)
        rows_out.append(row[:cut])
    return rows_out


@pytest.mark.parametrize("quantize", QUANTIZE)
@pytest.mark.parametrize("family", FAMILIES)
def test_parity_per_family_and_precision(family: str, quantize: str, exported, record_property) -> None:
    """The fp32 pair matches PyTorch (encoder alone, decoder alone with and without the cache, both together) and
    decodes greedily as generate; a quantised pair is measured and passes its (report-only) gate."""
    bundle, result = exported(family, quantize)
    fp32 = result.parity["fp32"]
    logits = fp32["logits"]
    for key in ("max_abs_diff_encoder", "max_abs_diff_no_cache", "max_abs_diff_cache", "max_abs_diff_together"):
        assert logits[key] < 1e-4, (key, logits)
    assert fp32["passed"] and fp32["greedy"]["identical"] == fp32["greedy"]["prompts"] == 2, fp32["greedy"]
    record_property("fp32", {k: logits[k] for k in logits if k.startswith("max_abs_diff")})
    dtype = DTYPE[quantize]
    if dtype != "fp32":
        q = result.parity[dtype]
        floor = 0.9 if dtype == "q8" else 0.3  # random 2-layer weights: 4-bit blocks of 32 are one block per row
        assert q["passed"] and q["finite"] and floor <= q["top1_agreement"] <= 1 and q["perplexity_ratio"] < 1.5, q
        record_property(dtype, {k: q[k] for k in ("top1_agreement", "perplexity_ratio", "max_abs_diff_encoder")})
    manifest = verify(bundle)
    assert manifest["seq2seq"]["default_dtype"] == dtype and manifest["parity"] == result.parity


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_io_names_and_merged_decoder(family: str, exported) -> None:
    """transformers.js's files and names: use_cache_branch BOOL[1], past/present per layer, static head dims, one If
    whose branches read the shared weights from the outer graph (each stored once)."""
    import onnx
    from onnx import numpy_helper

    bundle, _ = exported(family, "int4")
    manifest = verify(bundle)
    names = ["onnx/encoder_model.onnx", "onnx/decoder_model_merged.onnx", "onnx/encoder_model_q4.onnx",
             "onnx/decoder_model_merged_q4.onnx", "config.json", "generation_config.json", "tokenizer.json"]
    assert set(names) <= set(manifest["files"]) and manifest["head"]["task"] == "text2text-generation"
    config = json.loads((bundle / "config.json").read_text())
    assert config["transformers.js_config"]["dtype"] == "q4"
    spec = manifest["seq2seq"]["spec"]
    layers, heads, head_dim = spec["num_layers"], spec["num_heads"], spec["head_dim"]
    for dtype in ("fp32", "q4"):
        graph = onnx.load(str(bundle / f"onnx/decoder_model_merged{SUFFIX[dtype]}.onnx")).graph
        past = [f"past_key_values.{i}.{p}.{kv}" for i in range(layers) for p in ("decoder", "encoder") for kv in ("key", "value")]
        assert [v.name for v in graph.input] == ["input_ids", "encoder_attention_mask", "encoder_hidden_states", *past,
                                                 "use_cache_branch"]
        assert [v.name for v in graph.output] == ["logits", *(n.replace("past_key_values", "present") for n in past)]
        dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]}
        assert graph.input[-1].type.tensor_type.elem_type == onnx.TensorProto.BOOL and dims["use_cache_branch"] == [1]
        assert dims["past_key_values.1.decoder.key"] == ["batch_size", heads, "past_decoder_sequence_length", head_dim]
        assert dims["past_key_values.0.encoder.value"] == ["batch_size", heads, "encoder_sequence_length", head_dim]
        assert [n.op_type for n in graph.node] == ["If"]
        digests = [numpy_helper.to_array(t).tobytes() for t in graph.initializer]
        assert len(digests) == len(set(digests))  # what both branches use is stored once
    encoder = onnx.load(str(bundle / "onnx/encoder_model.onnx")).graph
    assert [v.name for v in encoder.input] == ["input_ids", "attention_mask"]
    assert [v.name for v in encoder.output] == ["last_hidden_state"]
    fp32_bytes = manifest["files"]["onnx/decoder_model_merged.onnx"]["bytes"]
    assert manifest["files"]["onnx/decoder_model_merged_q4.onnx"]["bytes"] < fp32_bytes


@pytest.mark.parametrize("family", FAMILIES)
def test_runtime_greedy_matches_transformers_generate(family: str, models, exported) -> None:
    """The torch-free runtime (fp32) gives generate's tokens, for a padded batch of two texts, with the model's own
    forced BOS (mBART), a target language (NLLB) or none (mT5)."""
    model_dir = models(family)
    bundle, _ = exported(family, "none")
    gen = generate.load(bundle)
    hf = _hf(model_dir)
    target = {"nllb": "de", "mbart": None, "mt5": None}[family]
    rows = [gen.encode(t) for t in TEXTS]
    forced = gen.prefix(target)[1] if len(gen.prefix(target)) > 1 else None
    expected = {"nllb": lambda: gen.languages["de"]["id"], "mbart": lambda: hf.generation_config.forced_bos_token_id,
                "mt5": lambda: None}[family]()
    assert forced == expected
    ours = gen.generate_ids(rows, target_language=target, max_new_tokens=12)
    assert ours == _hf_greedy(hf, rows, gen.pad_id, 12, forced)
    assert gen.generate(TEXTS[0], target_language=target, max_new_tokens=12) == gen.decode_ids(ours[0])
    from mlcompress.export import runtime  # the one loader for every bundle gives the same generator

    assert type(runtime.load(bundle)).__name__ == "Seq2SeqGenerator"


def test_bundle_generate_translates_with_a_forced_target_language(models, exported) -> None:
    """`mlcompress bundle generate BUNDLE "text" --to de` on the tiny NLLB (and mBART): generate's tokens with the
    target code forced, streamed as text."""
    from typer.testing import CliRunner

    from mlcompress.orchestrate.cli import app

    for family, code in (("nllb", "deu_Latn"), ("mbart", "de_DE")):
        bundle, _ = exported(family, "none")
        gen, hf = generate.load(bundle), _hf(models(family))
        forced = gen.tokenizer.token_to_id(code)
        want = _hf_greedy(hf, [gen.encode(TEXTS[0])], gen.pad_id, 10, forced)[0]
        assert gen.generate_ids([gen.encode(TEXTS[0])], target_language="de", max_new_tokens=10)[0] == want
        assert gen.generate_ids([gen.encode(TEXTS[0])], target_language=code, max_new_tokens=10)[0] == want
        cli = CliRunner().invoke(app, ["bundle", "generate", str(bundle), TEXTS[0], "--to", "de", "-n", "10"])
        assert cli.exit_code == 0, cli.output
        assert cli.output == gen.decode_ids(want) + "\n"
    q8 = CliRunner().invoke(app, ["bundle", "generate", str(exported("nllb", "int8")[0]), TEXTS[0], "--to", "deu"])
    assert q8.exit_code == 0, q8.output


def test_bad_target_languages_give_clear_errors(exported) -> None:
    """An unknown language, a language whose code the vocabulary lacks (trimmed away), and a target language for a
    model without language codes are refused by name, listing what the model can write."""
    from typer.testing import CliRunner

    from mlcompress.orchestrate.cli import app

    gen = generate.load(exported("nllb", "none")[0])
    assert sorted(gen.languages) == ["de", "en", "ru"]
    with pytest.raises(InputError, match="unknown target language 'xx'.*") as unknown:
        gen.generate(TEXTS[0], target_language="xx")
    assert "de (deu_Latn)" in unknown.value.hint
    with pytest.raises(InputError, match="cannot write 'fr': its language code is not in the vocabulary"):
        gen.generate(TEXTS[0], target_language="fra_Latn")
    with pytest.raises(InputError, match="no language-code tokens"):
        generate.load(exported("mt5", "none")[0]).generate(TEXTS[0], target_language="de")
    cli = CliRunner().invoke(app, ["bundle", "generate", str(exported("nllb", "none")[0]), TEXTS[0], "--to", "fr"])
    assert cli.exit_code != 0 and "cannot write 'fr'" in (cli.output + str(cli.exception))


def test_export_and_its_cli_dispatch_seq2seq(models, memo_export, tmp_path: Path, monkeypatch) -> None:
    """`mlcompress export` (and `export()`) send an encoder-decoder to the seq2seq exporter (--quantize int8-weights,
    the default, is 8-bit MatMulNBits); options it has no meaning for are refused before any work."""
    from typer.testing import CliRunner

    from mlcompress.export import export, seq2seq_graph
    from mlcompress.families import SUPPORT
    from mlcompress.orchestrate.cli import app

    assert SUPPORT["seq2seq"]["export"].startswith("yes")
    for bad, message in ((dict(ort=True), "--ort"), (dict(quantize="int8-static"), "int8-static is not available")):
        with pytest.raises(InputError, match=message):
            export(models("mbart"), tmp_path / "refused", **bad)
    assert not (tmp_path / "refused").exists()
    monkeypatch.setattr(seq2seq_graph, "export_graph", memo_export)
    cli = CliRunner().invoke(app, ["export", str(models("mbart")), "-o", str(tmp_path / "cli")])
    assert cli.exit_code == 0, cli.output
    manifest = verify(tmp_path / "cli")
    assert manifest["model"] == "onnx/decoder_model_merged_quantized.onnx" and manifest["quantization"]["name"] == "int8"
    assert "greedy 2/2 prompts identical" in cli.output and "q8 vs PyTorch: top-1 agreement" in cli.output


def test_inspect_shows_both_graphs_per_dtype_the_languages_and_the_forced_bos(exported) -> None:
    """`mlcompress inspect` on an int8 mBART bundle: the encoder and decoder of each dtype (the default's counted as the
    model), the target-language codes and the forced first token (de_DE), as the manifest records them."""
    from typer.testing import CliRunner

    from mlcompress.orchestrate.cli import app
    from mlcompress.orchestrate.inspect import inspect

    bundle, _ = exported("mbart", "int8")
    manifest = verify(bundle)
    info = inspect(bundle)
    s2s = info["seq2seq"]
    assert s2s["default_dtype"] == "q8" and set(s2s["graphs"]) == {"fp32", "q8"}
    for dtype, parts in manifest["seq2seq"]["dtypes"].items():
        assert {part: g["file"] for part, g in s2s["graphs"][dtype].items()} == parts
        assert all(s2s["graphs"][dtype][part]["bytes"] == manifest["files"][f]["bytes"] for part, f in parts.items())
    default = s2s["graphs"]["q8"]
    assert info["weight_bytes"] == default["encoder"]["bytes"] + default["decoder"]["bytes"]
    codes = manifest["seq2seq"]["languages"]
    assert s2s["language_codes"] == codes and codes["de"]["token"] == "de_DE"
    assert s2s["forced_bos_token_id"] == codes["de"]["id"] and s2s["forced_bos_token"] == "de_DE"
    cli = CliRunner().invoke(app, ["inspect", str(bundle)], env={"COLUMNS": "400"})  # one table row a line
    assert cli.exit_code == 0, cli.output
    row = lambda label: next(line for line in cli.output.splitlines() if label in line)  # noqa: E731
    assert f"encoder onnx/encoder_model_quantized.onnx ({default['encoder']['bytes']:,} bytes), decoder " \
           f"onnx/decoder_model_merged_quantized.onnx ({default['decoder']['bytes']:,} bytes)" in row("graphs q8 (default)")
    assert "encoder onnx/encoder_model.onnx (" in row("graphs fp32") and "decoder onnx/decoder_model_merged.onnx (" in row("graphs fp32")
    assert "de (de_DE)" in row("target languages") and f"{codes['de']['id']} (de_DE)" in row("forced BOS")


def test_encoder_cache_is_reused_and_batch_rows_are_independent(exported) -> None:
    """A padded batch decodes as each text alone (the source padding masked in both attentions)."""
    gen = generate.load(exported("mbart", "none")[0])
    rows = [gen.encode(t) for t in TEXTS]
    together = gen.generate_ids(rows, max_new_tokens=8, min_new_tokens=8)
    alone = [gen.generate_ids([r], max_new_tokens=8, min_new_tokens=8)[0] for r in rows]
    assert together == alone and all(len(r) == 8 for r in together)
    assert all(r[-1] == gen.generation_config["forced_eos_token_id"] for r in together)  # mBART: forced at the limit
    assert np.isfinite(gen.encoder.run(None, {"input_ids": np.asarray([rows[1]]),
                                              "attention_mask": np.ones((1, len(rows[1])), np.int64)})[0]).all()


@pytest.mark.skipif(shutil.which("node") is None or not (NODE_PREFIX / "node_modules" / "@huggingface" / "transformers").is_dir(),
                    reason=f"node or @huggingface/transformers under {NODE_PREFIX} missing (setup.sh --dev installs them)")
@pytest.mark.parametrize("family, quantize", [("nllb", "none"), ("mt5", "int4"), ("mbart", "int8")])
def test_transformers_js_generates_the_same_tokens(family: str, quantize: str, exported, tmp_path: Path) -> None:
    """transformers.js (npm, run by node, offline) loads the bundle in its default dtype (encoder_model +
    decoder_model_merged[_quantized|_q4]) and its generate() gives the runtime's tokens."""
    bundle, _ = exported(family, quantize)
    gen = generate.load(bundle)
    ids = gen.encode(TEXTS[0])
    target = "de" if family == "nllb" else None
    prefix = gen.prefix(target)
    forced = prefix[1] if len(prefix) > 1 else -1
    ours = prefix + gen.generate_ids([ids], target_language=target, max_new_tokens=10)[0]
    script = tmp_path / "generate.mjs"
    script.write_text(TRANSFORMERS_JS, encoding="utf-8")
    proc = subprocess.run(["node", str(script), str(NODE_PREFIX), str(bundle), json.dumps(ids), str(forced),
                           str(10 + (forced >= 0)), gen.dtype], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == ours
