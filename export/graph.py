"""Graph building: the ONNX export, ORT's optimisation, and the quantisation (with the accuracy-aware --max-drop search),
in a scratch folder; the result is ``model.onnx`` there."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .options import (EmbeddingConfig, EncoderOptions, Int4Config, Int4WeightsConfig, Int8DynamicConfig, Int8StaticConfig,
                      QuantConfig)
from .step import step
from .texts import batches, common_length, languages_in, sentences, take

# How far ORT fuses attention before each quantisation: dynamic int8 quantises the fused Attention op itself
# (QAttention); static int8 and int4 quantise MatMuls only, so they keep the projections apart; fp16 graphs
# are checked on CPU, whose fused attention kernels are fp32-only.
ATTENTION_FUSION = {"none": "fused", "int8-dynamic": "fused", "int8-weights": "fused", "int8-static": "mha", "int4": "mha",
                    "int4-weights": "fused", "fp16": "none"}
MODEL_FILE = "model.onnx"
RERANK_TOP = 12  # operators re-ranked by a measured drop (a quantise-and-validate round each) before the search


def build(module: Any, spec: Any, config: Any, scratch: Path, options: EncoderOptions, tok: Any, prefix: str,
          sources: dict[str, Any], pad_id: int) -> tuple[Path, dict[str, int], dict[str, Any]]:
    """Export, optimise and quantise one graph in ``scratch``; return ``scratch/model.onnx``, its fused operators and
    what the quantisation did."""
    quantize = options.quantization.name
    current, fused = _graph(module, spec, config, scratch, quantize, pad_id, options.outputs.optimize)
    current, qinfo = _quantise(current, scratch, options, tok, prefix, sources, pad_id, module, spec)
    final = scratch / MODEL_FILE
    shutil.move(str(current), final)
    return final, fused, qinfo


def _graph(module: Any, spec: Any, config: Any, scratch: Path, quantize: str, pad_id: int, optimize: bool
           ) -> tuple[Path, dict[str, int]]:
    """Export the module to ONNX (sentence embeddings: with ``last_hidden_state`` as a second output) and optimise it
    (or just strip it) in ``scratch``; return the graph and its fused ops."""
    from .onnx_export import export_onnx
    from .optimize import optimize_graph, strip_metadata
    from .outputs import exportable

    with step("the ONNX export", "check that the model runs in PyTorch; try another --task, or report the architecture"), \
            exportable(module, spec) as (graph_module, names):
        raw = export_onnx(graph_module, names, scratch / "raw.onnx", pad_id=pad_id, vocab=int(config.vocab_size))
    fused: dict[str, int] = {}
    with step("ONNX Runtime's graph optimisation", "retry without optimisation (optimize=False)"):
        if optimize:
            fused = optimize_graph(raw, scratch / "optimized.onnx", config.model_type, int(config.num_attention_heads),
                                   int(config.hidden_size), attention=ATTENTION_FUSION[quantize])
        else:
            import onnx

            onnx.save(strip_metadata(onnx.load(str(raw))), str(scratch / "optimized.onnx"))
    return scratch / "optimized.onnx", fused


def _quantise(current: Path, scratch: Path, options: EncoderOptions, tok: Any, prefix: str, sources: dict[str, Any],
              pad_id: int, module: Any, spec: Any) -> tuple[Path, dict[str, Any]]:
    """Quantise the graph as asked (weights, then 4-bit embedding tables); return the new graph and what was done.

    With ``max_drop``, the most sensitive weight operators stay float until the drop against the float graph holds.
    """
    scheme, checks = options.quantization, options.checks
    feeds: list[dict[str, Any]] = []
    if isinstance(scheme, Int8StaticConfig):  # calibration text is read before the quantiser runs: its errors are corpus errors
        n = max(1, checks.calibration_texts // languages_in(sources))
        feeds = batches(tok, take(sources, n, 0), prefix, 8)
        if scheme.calibration != "minmax":
            feeds = common_length(feeds, pad_id)
    if checks.max_drop is not None:  # export() allows it only with a scheme the search can steer
        return _accuracy_aware(current, scratch, options, tok, prefix, sources, feeds, module, spec)
    return _quantise_once(current, scratch / "quantized.onnx", scheme, options.embeddings, feeds, ())


def _quantise_once(current: Path, dst: Path, scheme: QuantConfig, embeddings: EmbeddingConfig,
                   feeds: list[dict[str, Any]], exclude: Sequence[str]) -> tuple[Path, dict[str, Any]]:
    """One quantised graph (at ``dst`` when the embeddings are quantised last): weights (all but ``exclude``), then the
    embedding tables in 4 bits."""
    from . import quantize as q

    quantize = scheme.name
    weights = dst.with_name(dst.stem + ".weights.onnx")
    qinfo: dict[str, Any] = {}
    with step(f"the {quantize} quantisation", "try another --quantize (int8-dynamic, or none), or update onnxruntime"):
        if isinstance(scheme, Int8DynamicConfig):
            qinfo = q.quantize_int8_dynamic(current, weights, per_channel=scheme.per_channel,
                                            reduce_range=scheme.reduce_range, exclude=exclude)
        elif isinstance(scheme, Int8StaticConfig):
            qinfo = q.quantize_int8_static(current, weights, feeds, per_channel=scheme.per_channel,
                                           reduce_range=scheme.reduce_range, method=scheme.calibration, exclude=exclude)
        elif quantize == "int8-weights":
            qinfo = q.quantize_int8_weights(current, weights, exclude=exclude)
        elif isinstance(scheme, Int4Config):
            qinfo = q.quantize_int4(current, weights, block_size=scheme.block_size, exclude=exclude)
        elif isinstance(scheme, Int4WeightsConfig):
            qinfo = q.quantize_int4_weights(current, weights, block_size=scheme.block_size, exclude=exclude)
        elif quantize == "fp16":
            qinfo = q.convert_fp16(current, weights)
        current = weights if quantize != "none" else current
        if exclude:
            qinfo["kept_float_storage"] = "fp16 weights, fp32 compute"
            q.store_float16(current, current, exclude)
    qinfo["embeddings"] = None
    if embeddings.enabled(scheme):
        with step("the 4-bit embedding quantisation", "pass --no-quantize-embeddings"):
            count = q.quantize_embeddings(current, dst, block_size=embeddings.block_size)
        qinfo["embeddings"] = {"bits": 4, "block_size": embeddings.block_size, "op": "GatherBlockQuantized",
                               "scales": "fp16", "symmetric": True, "tables": count}
        if current == weights:
            weights.unlink()
        return dst, qinfo
    return current, qinfo


def _ranking_settings(scheme: QuantConfig) -> tuple[bool, int]:
    """What ranking the operators fakes of ``scheme``: int8's 7-bit range (dynamic, static) and int4's block size."""
    from .quantize import default_reduce_range

    reduce_range = scheme.reduce_range if isinstance(scheme, (Int8DynamicConfig, Int8StaticConfig)) else None
    block_size = scheme.block_size if isinstance(scheme, (Int4Config, Int4WeightsConfig)) else Int4Config().block_size
    return default_reduce_range() if reduce_range is None else reduce_range, block_size


def _accuracy_aware(current: Path, scratch: Path, options: EncoderOptions, tok: Any, prefix: str,
                    sources: dict[str, Any], feeds: list[dict[str, Any]], module: Any, spec: Any
                    ) -> tuple[Path, dict[str, Any]]:
    """Rank the weight operators on calibration text, then keep the fewest most sensitive ones float so that the
    drop (1 - mean cosine, or 1 - label agreement, against the float graph on held-out text) is within max_drop."""
    import onnxruntime as ort

    from .accuracy_control import parameter_labels, rank_operators, search
    from .parity import compare, ort_outputs
    from .runtime import session_options

    scheme, checks, quantize = options.quantization, options.checks, options.quantization.name
    n_langs = languages_in(sources)
    per_lang = max(1, checks.calibration_texts // n_langs)
    ranking = feeds or batches(tok, sentences(take(sources, per_lang, 0)), prefix, 8)
    skip = per_lang + max(1, checks.parity_texts // n_langs)  # after calibration and parity text
    held_out = batches(tok, sentences(take(sources, max(1, checks.accuracy_texts // n_langs), skip)), prefix, 16)
    reduce_range, block_size = _ranking_settings(scheme)
    session_opts = session_options()
    with step("ranking the operators for --max-drop", "try without --max-drop, or another --quantize"):
        ranked = rank_operators(current, ranking, quantize, reduce_range, block_size, labels=parameter_labels(module))
        reference = ort_outputs(ort.InferenceSession(str(current), session_opts, providers=["CPUExecutionProvider"]),
                                spec.output_name, held_out)
    infos: dict[int, dict[str, Any]] = {}

    def build(exclude: list[str]) -> Path:
        path, infos[len(exclude)] = _quantise_once(current, scratch / f"candidate-{len(exclude):03d}.onnx", scheme,
                                                   options.embeddings, feeds, exclude)
        return path

    def measure(path: Path) -> float:
        with step("validating a --max-drop candidate in ONNX Runtime", "try without --max-drop"):
            session = ort.InferenceSession(str(path), session_opts, providers=["CPUExecutionProvider"])
            got = ort_outputs(session, spec.output_name, held_out)
        p = compare(spec.task, reference, got, held_out, 0.0, None)
        return 1 - (p.label_agreement if p.label_agreement is not None else p.mean_cosine)

    metric = "1 - label agreement" if spec.task != "sentence-embedding" else "1 - mean cosine"
    path, result = search(ranked, build, measure, checks.max_drop, f"{metric} vs the float graph on held-out target text",
                          rerank_top=RERANK_TOP)
    qinfo = infos[len(result.kept)]
    qinfo["accuracy_control"] = {**result.as_dict(0.5 if quantize.startswith("int4") else 1.0, 2.0),
                                 "held_out_texts": sum(len(f["input_ids"]) for f in held_out),
                                 "ranking": f"the {RERANK_TOP} operators with the largest local output error (each quantised "
                                            "alone) by the measured drop with each kept float alone, then the rest by "
                                            "local error"}
    return path, qinfo
