"""`mlcompress.export.export`: export, optimise, quantise, parity-check and (optionally) bundle an encoder model."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlcompress.artifacts import (atomic_output_dir, check_output, is_disk_full, read_provenance, scratch_dir, sha256_file, sweep_leftovers,
                                  write_provenance)
from mlcompress.corpus import Corpus, parse_corpora
from mlcompress.errors import (CorpusError, ExportError, GateError, InputError, LanguageError, MlcompressError,
                               ModelSourceError, OutputError)
from mlcompress.languages import normalize_language, parse_languages

from .parity import AGREEMENT_THRESHOLDS, COSINE_THRESHOLDS
from .accuracy_control import QUANTISED_OPS
from .quantize import QUANTIZE_CHOICES

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")  # static int8 activation ranges
# How far ORT fuses attention before each quantisation: dynamic int8 quantises the fused Attention op itself
# (QAttention); static int8 and int4 quantise MatMuls only, so they keep the projections apart; fp16 graphs
# are checked on CPU, whose fused attention kernels are fp32-only.
ATTENTION_FUSION = {"none": "fused", "int8-dynamic": "fused", "int8-static": "mha", "int4": "mha", "fp16": "none"}

FORMATS = ("onnx", "tensorrt", "bnb")
MODEL_FILE = "model.onnx"


@dataclass
class ExportResult:
    """What an export wrote and measured."""

    output: Path
    format: str
    quantize: str
    task: str
    model_file: str
    size_bytes: int
    parity: dict[str, Any] | None
    latency_ms: dict[str, float] | None
    fused_operators: dict[str, int] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for --json and reports)."""
        d = asdict(self)
        d["output"] = str(self.output)
        return d


def _lines(corpora: list[Corpus], n: int, skip: int) -> list[str]:
    """Non-empty lines ``skip``..``skip+n`` of one language's corpora (files, folders, datasets, word lists), in order."""
    out: list[str] = []
    for corpus in corpora:
        for line in corpus.lines():
            line = line.strip()
            if not line:
                continue
            if skip:
                skip -= 1
                continue
            out.append(line[:1000])
            if len(out) >= n:
                return out
    return out


def _recorded_corpora(model_dir: Path, languages: list[str]) -> dict[str, list[Corpus]]:
    """The corpora the model's trim recorded in mlcompress.json that can still be read here, per language."""
    try:
        record = read_provenance(model_dir) or {}
    except (OSError, ValueError, InputError) as exc:
        raise ModelSourceError(f"{model_dir / 'mlcompress.json'} is corrupt ({exc}), so the corpora the model was trimmed on "
                               "are unknown", "pass --text LANG=PATH per target language, or re-save the model") from exc
    found: dict[str, list[Corpus]] = {}
    for entry in record.get("inputs", []) if isinstance(record, dict) else []:
        if not (isinstance(entry, dict) and entry.get("language") and entry.get("corpus")):
            continue
        try:
            lang, corpus = normalize_language(str(entry["language"])), Corpus.parse(str(entry["corpus"]))
        except (CorpusError, LanguageError):
            continue  # recorded on another machine, or since moved: --text names it
        if not languages or lang in languages:
            found.setdefault(lang, []).append(corpus)
    return found


def _text_sources(texts: Mapping[str, Any] | list[str] | None, model_dir: Path, languages: list[str]) -> dict[str, Any]:
    """Where target-language text comes from: given (sentences, or corpus specs per language read through
    `mlcompress.corpus`), or the corpora the model's trim recorded in mlcompress.json."""
    if isinstance(texts, list):
        if not texts:
            raise InputError("no parity texts given", "pass sentences in the target languages")
        return {"given": texts}
    found = parse_corpora(texts) if texts else _recorded_corpora(model_dir, languages)
    if not found:
        raise InputError("no target-language text to check the export against (and to calibrate static int8)",
                         "pass --text LANG=SPEC per language (a plain or .gz file, a folder, hf://NAME or wordfreq:LANG), "
                         "e.g. --text de=de.txt.gz")
    return found


def _take(sources: dict[str, Any], n: int, skip: int) -> list[str]:
    """``n`` lines per language after ``skip`` (or a slice of given sentences)."""
    if "given" in sources:
        return list(sources["given"][skip:skip + n]) or list(sources["given"][:n])
    lines: list[str] = []
    for lang, corpora in sources.items():
        got = _lines(corpora, n, skip) or _lines(corpora, n, 0)
        if not got:
            specs = ", ".join(c.spec for c in corpora)
            raise CorpusError(f"text for {lang} ({specs}) is empty", "pass a corpus with at least one sentence")
        lines.extend(got)
    return lines


def _auto_prefix(spec: str, model_dir: Path) -> str:
    """The model's own prefix ("query: " for E5 models), from its configuration or provenance (one detector for all stages)."""
    from mlcompress.embedding_profile import embedding_profile

    return embedding_profile(model_dir, spec).prefix


def _check_output(output: Path, bundle: bool, overwrite: bool) -> bool:
    """True when the output is a .tar.gz archive (bundles only); refuse an existing path unless overwriting."""
    archive = output.name.endswith((".tar.gz", ".tgz"))
    if archive and not bundle:
        raise InputError(f"{output} is an archive name but --bundle was not given", "add --bundle, or name an output directory")
    check_output(output, overwrite)
    return archive


def _common_length(feeds: list[dict[str, Any]], pad_id: int) -> list[dict[str, Any]]:
    """Pad every batch to the longest one: ORT's histogram calibrators (percentile, entropy) stack all batches."""
    import numpy as np

    width = max(f["input_ids"].shape[1] for f in feeds)
    out = []
    for f in feeds:
        extra = width - f["input_ids"].shape[1]
        out.append({"input_ids": np.pad(f["input_ids"], ((0, 0), (0, extra)), constant_values=pad_id),
                    "attention_mask": np.pad(f["attention_mask"], ((0, 0), (0, extra)), constant_values=0)})
    return out


def _batches(tok: Any, texts: list[str], prefix: str, size: int) -> list[dict[str, Any]]:
    from .runtime import tokenize

    return [tokenize(tok, texts[i:i + size], prefix) for i in range(0, len(texts), size)]


def export(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    format: str = "onnx",
    quantize: str = "int8-dynamic",
    bundle: bool = False,
    languages: str | list[str] | None = None,
    texts: Mapping[str, str | os.PathLike[str] | list[str]] | list[str] | None = None,
    task: str | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    prefix: str | None = None,
    max_length: int | None = None,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    quantize_embeddings: bool | None = None,
    embedding_block_size: int = 32,
    int4_block_size: int = 128,
    calibration: str = "minmax",
    optimize: bool = True,
    parity_texts: int = 32,
    calibration_texts: int = 64,
    min_cosine: float | None = None,
    min_agreement: float | None = None,
    max_drop: float | None = None,
    accuracy_texts: int = 128,
    force: bool = False,
    measure_latency: bool = True,
    overwrite: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Export MODEL to ONNX (or a TensorRT engine / bitsandbytes checkpoint), quantise it, check parity, and write OUT.

    ``max_drop`` (int8-dynamic, int8-static, int4) keeps the most sensitive weight operators at full precision until
    the drop against the float graph (1 - mean cosine; 1 - label agreement for classifiers) on ``accuracy_texts``
    held-out target-language sentences is within it; the manifest records what was kept and what it cost.
    """
    if format not in FORMATS:
        raise InputError(f"unknown format {format!r}", f"choose one of {', '.join(FORMATS)}")
    if quantize not in QUANTIZE_CHOICES:
        raise InputError(f"unknown quantisation {quantize!r}", f"choose one of {', '.join(QUANTIZE_CHOICES)}")
    if calibration not in CALIBRATION_METHODS:
        raise InputError(f"unknown calibration method {calibration!r}", f"choose one of {', '.join(CALIBRATION_METHODS)}")
    if max_drop is not None and (quantize not in QUANTISED_OPS or format != "onnx"
                                 or not 0 < max_drop < 1):
        raise InputError(f"--max-drop {max_drop} with --format {format} --quantize {quantize}",
                         "use --max-drop between 0 and 1 (e.g. 0.005) with --format onnx and int8-dynamic, int8-static or int4")
    output = Path(output).expanduser().absolute()
    langs = parse_languages(languages) if languages and (not isinstance(languages, str) or languages.strip()) else []
    if format == "tensorrt":
        from .tensorrt import require_tensorrt
        require_tensorrt(quantize)
    if format == "bnb":
        from .bnb import export_bnb
        return export_bnb(model, output, quantize, overwrite=overwrite, cache_dir=cache_dir)
    archive = _check_output(output, bundle, overwrite)

    from mlcompress.sources import load_config, load_tokenizer, resolve_model

    from .heads import detect_head, load_for_export, wrap
    from .runtime import make_tokenizer

    source = resolve_model(model, cache_dir)  # transformers' own verbosity is the caller's (the CLI turns it down)
    config = load_config(source.path)
    spec = detect_head(config, source.path, task=task, pooling=pooling, normalize=normalize)
    sources = _text_sources(texts, source.path, langs)
    hf_tok = load_tokenizer(source.path)
    pad_token = hf_tok.pad_token or hf_tok.eos_token or hf_tok.unk_token
    pad_id = hf_tok.convert_tokens_to_ids(pad_token)
    offset = (config.pad_token_id or 0) + 1 if config.model_type in ("xlm-roberta", "roberta", "camembert") else 0
    limit = min(int(getattr(config, "max_position_embeddings", 512)) - offset, 512 if hf_tok.model_max_length > 100_000 else hf_tok.model_max_length)
    max_length = min(max_length or limit, limit)
    prefix = _auto_prefix(str(model), source.path) if prefix is None else prefix
    tok_json = json.loads(hf_tok.backend_tokenizer.to_str())
    tok_json["padding"] = tok_json["truncation"] = None

    scratch = scratch_dir("export")
    try:
        (scratch / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        tok = make_tokenizer(scratch / "tokenizer.json", pad_id, pad_token, max_length)
        n_langs = max(1, len(sources) if "given" not in sources else 1)
        parity_feeds = _batches(tok, _take(sources, max(1, parity_texts // n_langs), calibration_texts // n_langs), prefix, 16)
        module = wrap(load_for_export(source.path, spec), spec)
        result = _build(module, spec, config, scratch, quantize, format, tok, prefix, sources, parity_feeds, pad_id,
                        per_channel=per_channel, reduce_range=reduce_range, quantize_embeddings=quantize_embeddings,
                        embedding_block_size=embedding_block_size, int4_block_size=int4_block_size, calibration=calibration,
                        optimize=optimize, calibration_texts=calibration_texts, n_langs=n_langs,
                        min_cosine=min_cosine, min_agreement=min_agreement, force=force, measure_latency=measure_latency,
                        max_drop=max_drop, accuracy_texts=accuracy_texts, parity_texts=parity_texts,
                        output_name=spec.output_name, task=spec.task)
        model_file, parity, latency, fused, qinfo = result
        files = [model_file, "tokenizer.json", "mlcompress.json"]
        inputs = [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in ("input_ids", "attention_mask")]
        out_dim = (["batch", _out_dim(module, parity_feeds[0])] if spec.task in ("sentence-embedding", "sequence-classification")
                   else ["batch", "sequence", _out_dim(module, parity_feeds[0])])
        outputs = [{"name": spec.output_name, "dtype": "float32", "shape": out_dim}]
        params = {"format": format, "quantize": quantize, "bundle": bundle, "languages": langs or sorted(k for k in sources if k != "given"),
                  "task": spec.task, "prefix": prefix, "max_length": max_length, "quantization": qinfo, "force": force}
        weights = sorted(source.path.glob("*.safetensors"))
        src_entry = {**source.describe(), "sha256": sha256_file(weights[0]) if weights else None}
        metrics = {"parity": parity, "latency_ms": latency, "fused_operators": fused,
                   "model_bytes": (scratch / model_file).stat().st_size}

        def fill(target: Path) -> dict[str, Any] | None:
            shutil.copy2(scratch / model_file, target / model_file)
            shutil.copy2(scratch / "tokenizer.json", target / "tokenizer.json")
            write_provenance(target, "export", params, [src_entry], metrics)
            if not bundle:
                return None
            from .bundle import write_manifest

            fields = {
                "model": model_file, "runtime": "onnxruntime" if format == "onnx" else "tensorrt",
                "head": spec.as_dict(), "inputs": inputs, "outputs": outputs,
                "tokenizer": {"file": "tokenizer.json", "pad_id": int(pad_id), "pad_token": pad_token, "max_length": max_length,
                              "prefix": prefix},
                "languages": params["languages"], "quantization": {"name": quantize, **qinfo},
                "source": src_entry, "parity": parity, "latency_ms": latency,
                "measured_on": {"machine": platform.machine(), "processor": _cpu_name(), "cpus": os.cpu_count()},
            }
            return write_manifest(target, fields, files)

        if archive:
            from .bundle import pack

            stage = Path(tempfile.mkdtemp(prefix="bundle-", dir=scratch)) / output.name.removesuffix(".tar.gz").removesuffix(".tgz")
            stage.mkdir()
            manifest = fill(stage)
            output.parent.mkdir(parents=True, exist_ok=True)
            sweep_leftovers(output)
            partial = output.with_name(f".{output.name}.tmp-{os.getpid()}-partial")  # swept if this process is killed
            try:
                pack(stage, partial)
                os.replace(partial, output)
            finally:
                partial.unlink(missing_ok=True)  # a failed or interrupted pack leaves no half archive
            size = output.stat().st_size
        else:
            with atomic_output_dir(output, overwrite=overwrite) as target:
                manifest = fill(target)
            size = sum(p.stat().st_size for p in output.iterdir() if p.is_file() and p.name in files + ["manifest.json"])
        return ExportResult(output, format, quantize, spec.task, model_file, size, parity, latency, fused, qinfo, manifest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _out_dim(module: Any, feeds: dict[str, Any]) -> int:
    from .parity import torch_outputs

    return int(torch_outputs(module, [{k: v[:1] for k, v in feeds.items()}])[0].shape[-1])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@contextlib.contextmanager
def _step(what: str, hint: str) -> Iterator[None]:
    """Turn a library failure in one export step into an ExportError with a hint; mlcompress errors pass through."""
    try:
        yield
    except MlcompressError:
        raise
    except Exception as exc:  # exporter, optimiser, quantiser and ORT raise many types; the user needs one message
        if is_disk_full(exc):
            raise OutputError(f"the disk ran out of space during {what} ({exc}); nothing was written",
                              "free some space in the temporary folder (TMPDIR) and on the output's disk") from exc
        raise ExportError(f"{what} failed ({type(exc).__name__}: {exc}); nothing was written", hint) from exc


def _graph(module: Any, spec: Any, config: Any, scratch: Path, quantize: str, pad_id: int, optimize: bool
           ) -> tuple[Path, dict[str, int]]:
    """Export the module to ONNX and optimise it (or just strip it) in ``scratch``; return the graph and its fused ops."""
    from .onnx_export import export_onnx
    from .optimize import optimize_graph, strip_metadata

    with _step("the ONNX export", "check that the model runs in PyTorch; try another --task, or report the architecture"):
        raw = export_onnx(module, spec.output_name, scratch / "raw.onnx", pad_id=pad_id, vocab=int(config.vocab_size))
    fused: dict[str, int] = {}
    with _step("ONNX Runtime's graph optimisation", "retry without optimisation (optimize=False)"):
        if optimize:
            fused = optimize_graph(raw, scratch / "optimized.onnx", config.model_type, int(config.num_attention_heads),
                                   int(config.hidden_size), attention=ATTENTION_FUSION[quantize])
        else:
            import onnx

            onnx.save(strip_metadata(onnx.load(str(raw))), str(scratch / "optimized.onnx"))
    return scratch / "optimized.onnx", fused


def _quantise(current: Path, scratch: Path, quantize: str, tok: Any, prefix: str, sources: dict[str, Any], pad_id: int,
              opts: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Quantise the graph as asked (weights, then 4-bit embedding tables); return the new graph and what was done.

    With ``max_drop``, the most sensitive weight operators stay float until the drop against the float graph holds.
    """
    feeds: list[dict[str, Any]] = []
    if quantize == "int8-static":  # calibration text is read before the quantiser runs: its errors are corpus errors
        n = max(1, opts["calibration_texts"] // opts["n_langs"])
        feeds = _batches(tok, _take(sources, n, 0), prefix, 8)
        if opts["calibration"] != "minmax":
            feeds = _common_length(feeds, pad_id)
    if opts.get("max_drop") is not None:  # export() allows it only with a scheme the search can steer
        return _accuracy_aware(current, scratch, quantize, tok, prefix, sources, feeds, opts)
    return _quantise_once(current, scratch / "quantized.onnx", quantize, feeds, opts, ())


def _quantise_once(current: Path, dst: Path, quantize: str, feeds: list[dict[str, Any]], opts: dict[str, Any],
                   exclude: Sequence[str]) -> tuple[Path, dict[str, Any]]:
    """One quantised graph (at ``dst`` when the embeddings are quantised last): weights (all but ``exclude``), then the
    embedding tables in 4 bits."""
    from . import quantize as q

    embeddings = opts["quantize_embeddings"]
    if embeddings is None:
        embeddings = quantize in ("int8-dynamic", "int8-static", "int4")
    step = dst.with_name(dst.stem + ".weights.onnx")
    qinfo: dict[str, Any] = {}
    with _step(f"the {quantize} quantisation", "try another --quantize (int8-dynamic, or none), or update onnxruntime"):
        if quantize == "int8-dynamic":
            qinfo = q.quantize_int8_dynamic(current, step, per_channel=opts["per_channel"], reduce_range=opts["reduce_range"],
                                            exclude=exclude)
        elif quantize == "int8-static":
            qinfo = q.quantize_int8_static(current, step, feeds, per_channel=opts["per_channel"],
                                           reduce_range=opts["reduce_range"], method=opts["calibration"], exclude=exclude)
        elif quantize == "int4":
            qinfo = q.quantize_int4(current, step, block_size=opts["int4_block_size"], exclude=exclude)
        elif quantize == "fp16":
            qinfo = q.convert_fp16(current, step)
        current = step if quantize != "none" else current
        if exclude:
            qinfo["kept_float_storage"] = "fp16 weights, fp32 compute"
            q.store_float16(current, current, exclude)
    qinfo["embeddings"] = None
    if embeddings and quantize != "fp16":
        with _step("the 4-bit embedding quantisation", "pass --no-quantize-embeddings"):
            count = q.quantize_embeddings(current, dst, block_size=opts["embedding_block_size"])
        qinfo["embeddings"] = {"bits": 4, "block_size": opts["embedding_block_size"], "op": "GatherBlockQuantized",
                               "scales": "fp16", "symmetric": True, "tables": count}
        if current == step:
            step.unlink()
        return dst, qinfo
    return current, qinfo


def _sentences(texts: list[str], limit: int = 300) -> list[str]:
    """Texts cut to about a sentence (``limit`` characters, at a space): inputs of the length users embed, and a
    validation that takes seconds, not minutes, on corpora of whole paragraphs."""
    return [t if len(t) <= limit else (t[:limit].rsplit(" ", 1)[0] or t[:limit]) for t in texts]


RERANK_TOP = 12  # operators re-ranked by a measured drop (a quantise-and-validate round each) before the search


def _accuracy_aware(current: Path, scratch: Path, quantize: str, tok: Any, prefix: str, sources: dict[str, Any],
                    feeds: list[dict[str, Any]], opts: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Rank the weight operators on calibration text, then keep the fewest most sensitive ones float so that the
    drop (1 - mean cosine, or 1 - label agreement, against the float graph on held-out text) is within max_drop."""
    import onnxruntime as ort

    from .accuracy_control import parameter_labels, rank_operators, search
    from .parity import compare, ort_outputs
    from .quantize import default_reduce_range

    per_lang = max(1, opts["calibration_texts"] // opts["n_langs"])
    ranking = feeds or _batches(tok, _sentences(_take(sources, per_lang, 0)), prefix, 8)
    skip = per_lang + max(1, opts["parity_texts"] // opts["n_langs"])  # after calibration and parity text
    held_out = _batches(tok, _sentences(_take(sources, max(1, opts["accuracy_texts"] // opts["n_langs"]), skip)), prefix, 16)
    reduce_range = default_reduce_range() if opts["reduce_range"] is None else opts["reduce_range"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with _step("ranking the operators for --max-drop", "try without --max-drop, or another --quantize"):
        ranked = rank_operators(current, ranking, quantize, reduce_range, opts["int4_block_size"],
                                labels=parameter_labels(opts["module"]))
        reference = ort_outputs(ort.InferenceSession(str(current), options, providers=["CPUExecutionProvider"]),
                                opts["output_name"], held_out)
    infos: dict[int, dict[str, Any]] = {}

    def build(exclude: list[str]) -> Path:
        path, infos[len(exclude)] = _quantise_once(current, scratch / f"candidate-{len(exclude):03d}.onnx", quantize, feeds,
                                                   opts, exclude)
        return path

    def measure(path: Path) -> float:
        with _step("validating a --max-drop candidate in ONNX Runtime", "try without --max-drop"):
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            got = ort_outputs(session, opts["output_name"], held_out)
        p = compare(opts["task"], reference, got, held_out, 0.0, None)
        return 1 - (p.label_agreement if p.label_agreement is not None else p.mean_cosine)

    metric = "1 - label agreement" if opts["task"] != "sentence-embedding" else "1 - mean cosine"
    path, result = search(ranked, build, measure, opts["max_drop"], f"{metric} vs the float graph on held-out target text",
                          rerank_top=RERANK_TOP)
    qinfo = infos[len(result.kept)]
    qinfo["accuracy_control"] = {**result.as_dict(0.5 if quantize == "int4" else 1.0, 2.0),
                                 "held_out_texts": sum(len(f["input_ids"]) for f in held_out),
                                 "ranking": f"the {RERANK_TOP} operators with the largest local output error (each quantised "
                                            "alone) by the measured drop with each kept float alone, then the rest by "
                                            "local error"}
    return path, qinfo


def _build(module: Any, spec: Any, config: Any, scratch: Path, quantize: str, format: str, tok: Any, prefix: str,
           sources: dict[str, Any], parity_feeds: list[dict[str, Any]], pad_id: int, **opts: Any
           ) -> tuple[str, dict[str, Any], dict[str, float] | None, dict[str, int], dict[str, Any]]:
    """Export, optimise, quantise and check one graph in ``scratch``; return (file, parity, latency, fused ops, quantisation)."""
    import onnxruntime as ort

    from .parity import compare, ort_outputs, torch_outputs

    current, fused = _graph(module, spec, config, scratch, quantize, pad_id, opts["optimize"])
    current, qinfo = _quantise(current, scratch, quantize, tok, prefix, sources, pad_id, {**opts, "module": module})
    final = scratch / MODEL_FILE
    shutil.move(str(current), final)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    with _step("loading the exported graph in ONNX Runtime", "update onnxruntime, or try another --quantize"):
        session = ort.InferenceSession(str(final), options, providers=["CPUExecutionProvider"])
    cos_t = COSINE_THRESHOLDS[quantize] if opts["min_cosine"] is None else opts["min_cosine"]
    agr_t = AGREEMENT_THRESHOLDS[quantize] if opts["min_agreement"] is None else opts["min_agreement"]
    with _step("running the exported graph in ONNX Runtime", "update onnxruntime, or try another --quantize"):
        got = ort_outputs(session, spec.output_name, parity_feeds)
    parity = compare(spec.task, torch_outputs(module, parity_feeds), got, parity_feeds, cos_t, agr_t)
    record = parity.as_dict()
    if not parity.passed:
        if not opts["force"]:
            what = f"mean cosine {parity.mean_cosine:.4f} (threshold {cos_t})"
            if parity.label_agreement is not None:
                what += f", label agreement {parity.label_agreement:.3f} (threshold {agr_t})"
            raise GateError(f"the {quantize} export fails its parity check against PyTorch on {parity.texts} target-language "
                            f"sentences: {what}; nothing was written",
                            "try a gentler quantisation (int8-dynamic, or none), or pass --force to write it anyway")
        record["forced"] = True
    latency = None
    if opts["measure_latency"]:
        from .latency import session_latency
        from .runtime import tokenize

        texts = _sentences(_take(sources, 32, 0))[:32]  # sentence-length inputs, as users embed them
        texts = (texts * (32 // max(1, len(texts)) + 1))[:32]
        feeds_b1, feeds_b32 = tokenize(tok, texts[:1], prefix), tokenize(tok, texts, prefix)
        latency = session_latency(session, spec.output_name, feeds_b1, feeds_b32)
        # the figures depend on text length: say what was timed
        latency["tokens_batch_1"] = int(feeds_b1["input_ids"].shape[1])
        latency["padded_length_batch_32"] = int(feeds_b32["input_ids"].shape[1])
    control, plain = qinfo.get("accuracy_control"), scratch / "candidate-000.onnx"  # plain: the search's first trial
    if control and opts["measure_latency"] and plain.is_file():  # what keeping operators float cost, timed the same way
        plain_session = ort.InferenceSession(str(plain), options, providers=["CPUExecutionProvider"])
        control["plain_latency_ms"] = session_latency(plain_session, spec.output_name, feeds_b1, feeds_b32)
    if control:
        control["plain_bytes"] = (plain if plain.is_file() else final).stat().st_size
        control["bytes"] = final.stat().st_size
    if format == "tensorrt":
        from .tensorrt import build_engine

        engine = build_engine(final, scratch / "model.engine", quantize)
        return engine.name, record, latency, fused, {**qinfo, "tensorrt": True}
    return MODEL_FILE, record, latency, fused, qinfo
