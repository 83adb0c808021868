"""CLI commands of the export stage (`mlcompress export`, `mlcompress bundle verify | encode | generate | demo`), mounted
on the root app by `mlcompress.orchestrate.cli`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mlcompress.errors import InputError

bundle_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect and check edge bundles.")


def _parse_texts(items: list[str]) -> dict[str, list[str]]:
    """--text LANG=SPEC items as corpus specs per language (repeat a language to read several corpora)."""
    texts: dict[str, list[str]] = {}
    for item in items:
        lang, sep, path = item.partition("=")
        if not sep or not lang or not path:
            raise InputError(f"bad --text {item!r}", "write it as LANG=PATH, e.g. --text de=../shared/data/mono/de.txt.gz")
        texts.setdefault(lang, []).append(path)
    return texts


def export_command(
    model: Annotated[str, typer.Argument(help="Model: a save_pretrained directory, a Hub id, or bundled:multilingual-e5-small.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output directory (or .tar.gz with --bundle).")],
    format: Annotated[str, typer.Option("--format", help="onnx, tensorrt (needs TensorRT and a GPU), or bnb (bitsandbytes checkpoint, GPU).")] = "onnx",
    quantize: Annotated[str, typer.Option("--quantize", help="auto (the default: int8-weights; for a student trained on the 4-bit grid, int4-weights on that grid; for --format tensorrt, fp16), none, fp16, int8-dynamic, int8-static, int8-weights (weight-only: float compute, the same numbers in every runtime, e.g. the browser), int4 (MatMulNBits) or int4-weights (4-bit weights, float compute, as int8-weights).")] = "auto",
    bundle: Annotated[bool, typer.Option("--bundle", help="Write an edge bundle: model, tokenizer.json and manifest.json.")] = False,
    ort: Annotated[bool, typer.Option("--ort", help="With --bundle and --format onnx: also write ONNX Runtime's mobile form, model.ort and required_operators.config (the operators for a reduced-size ONNX Runtime build).")] = False,
    tokenizer_in_graph: Annotated[bool, typer.Option("--tokenizer-in-graph", help="With --bundle and --format onnx: also write model_with_tokenizer.onnx, which takes strings (the tokenizer inside, as onnxruntime-extensions operators: SentencePiece for Unigram vocabularies, BertTokenizer for WordPiece) and needs only onnxruntime and onnxruntime-extensions.")] = False,
    languages: Annotated[Optional[str], typer.Option("-l", "--languages", help="Target languages, e.g. en,de (default: the model's trim languages).")] = None,
    text: Annotated[Optional[list[str]], typer.Option("--text", help="LANG=SPEC: target-language text for the parity check and static calibration: a file or folder (plain or .gz), hf://NAME?..., or wordfreq:LANG. Repeatable. Default: the corpora the model was trimmed on.")] = None,
    task: Annotated[Optional[str], typer.Option(help="sentence-embedding, token-classification, sequence-classification or masked-lm (default: from the architecture).")] = None,
    pooling: Annotated[Optional[str], typer.Option(help="Sentence-embedding pooling: mean or cls (default: the sentence-transformers config, else mean).")] = None,
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="L2-normalise sentence embeddings (default: as the sentence-transformers config says).")] = None,
    prefix: Annotated[Optional[str], typer.Option(help="Sentence embeddings: the default prompt, put before each input (default: the model's sentence-transformers prompts; E5: 'query: ', with 'passage: ' as its document prompt). Other heads: text put before each input (default: none).")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Longest input in tokens (default and cap: the model's position limit, at most 512).")] = None,
    per_channel: Annotated[bool, typer.Option("--per-channel/--no-per-channel", help="int8 weight scales per output channel (else per tensor).")] = True,
    reduce_range: Annotated[Optional[bool], typer.Option("--reduce-range/--no-reduce-range", help="7-bit int8 weights (default: on for x86 CPUs without VNNI).")] = None,
    quantize_embeddings: Annotated[Optional[bool], typer.Option("--quantize-embeddings/--no-quantize-embeddings", help="4-bit block-quantise embedding tables (default: on for int8 and int4 schemes).")] = None,
    embedding_block_size: Annotated[Optional[int], typer.Option(help="Block size of the 4-bit embedding tables (default: 32; a student saved on the 4-bit grid: its grid's, 64).")] = None,
    int4_block_size: Annotated[Optional[int], typer.Option(help="Block size of int4 weights (default: 128 for int4, 32 for int4-weights).")] = None,
    calibration: Annotated[str, typer.Option(help="int8-static activation ranges: minmax, percentile or entropy.")] = "minmax",
    optimize: Annotated[bool, typer.Option("--optimize/--no-optimize", help="Fuse the graph with ONNX Runtime's transformer optimiser.")] = True,
    parity_texts: Annotated[int, typer.Option(help="Target-language sentences the parity check runs on (split across languages).")] = 32,
    calibration_texts: Annotated[int, typer.Option(help="Target-language sentences that calibrate static int8 and rank operators for --max-drop.")] = 64,
    min_cosine: Annotated[Optional[float], typer.Option(help="Parity threshold: minimum mean cosine with PyTorch (default per quantisation).")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(help="Parity threshold for classifier and masked-LM heads: minimum label agreement with PyTorch (default per quantisation).")] = None,
    max_drop: Annotated[Optional[float], typer.Option(help="Accuracy-aware quantisation: keep the most sensitive weight operators float until 1 - mean cosine (1 - label agreement for classifiers) against the float graph on held-out target text is at most this, e.g. 0.005.")] = None,
    accuracy_texts: Annotated[int, typer.Option(help="Held-out target-language sentences --max-drop is measured on.")] = 128,
    force: Annotated[bool, typer.Option("--force", help="Write the export even if it fails its parity threshold.")] = False,
    measure_latency: Annotated[bool, typer.Option("--measure-latency/--no-measure-latency", help="Time the export on this CPU (batch 1 and 32).")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists (only once the new one is complete).")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Cache for bundled models.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Export to ONNX or TensorRT, quantise, check parity against PyTorch on target-language text, and package."""
    from rich.console import Console

    from mlcompress.export import export

    result = export(model, output, format=format, quantize=quantize, bundle=bundle, ort=ort,
                    tokenizer_in_graph=tokenizer_in_graph, languages=languages,
                    texts=_parse_texts(text or []) or None, task=task, pooling=pooling, normalize=normalize, prefix=prefix,
                    max_length=max_length, per_channel=per_channel, reduce_range=reduce_range,
                    quantize_embeddings=quantize_embeddings, embedding_block_size=embedding_block_size,
                    int4_block_size=int4_block_size, calibration=calibration, optimize=optimize, parity_texts=parity_texts,
                    calibration_texts=calibration_texts, min_cosine=min_cosine, min_agreement=min_agreement,
                    max_drop=max_drop, accuracy_texts=accuracy_texts, force=force, measure_latency=measure_latency,
                    overwrite=overwrite, cache_dir=cache_dir)
    out = Console()
    if as_json:
        out.print_json(json.dumps(result.as_dict(), default=str))
        return
    out.print(f"exported {model} -> {result.output} ({result.format}, {result.quantize}, {result.task})")
    out.print(f"  size: {result.size_bytes / 2**20:.2f} MiB ({result.size_bytes:,} bytes)")
    if result.parity and "fp32" in result.parity:  # a decoder: the fp32 graph's checks, then each quantised graph's
        _print_decoder_parity(out, result.parity)
        _print_graph_sizes(out, result.manifest)
    elif result.parity:
        p = result.parity
        line = f"  parity vs PyTorch on {p['texts']} sentences: mean cosine {p['mean_cosine']:.4f}, max abs diff {p['max_abs_diff']:.4g}"
        if p.get("label_agreement") is not None:
            line += f", label agreement {p['label_agreement']:.3f}"
        out.print(line + (" [FORCED: below threshold]" if p.get("forced") else ""))
    if result.latency_ms:
        lat = result.latency_ms
        out.print(f"  latency on this CPU: batch 1 {lat['batch_1']:.2f} ms ({lat.get('tokens_batch_1', '?')} tokens), "
                  f"batch 32 {lat['batch_32']:.1f} ms (padded to {lat.get('padded_length_batch_32', '?')} tokens)")
    mobile = (result.manifest or {}).get("ort")
    if mobile:
        ops = sum(len(o) for opsets in mobile["operators"].values() for o in opsets.values())
        out.print(f"  mobile: {mobile['model']} ({result.manifest['files'][mobile['model']]['bytes'] / 2**20:.2f} MiB, "
                  f"{mobile['optimization_level']} optimisations) and {mobile['operators_config']} ({ops} operators)")
    control = result.quantization.get("accuracy_control")
    if control:
        _print_control(out, control)


def _print_decoder_parity(out: Any, parity: dict[str, Any]) -> None:
    """A decoder export's checks: fp32 logits and greedy identity against PyTorch, agreement of each quantised graph."""
    fp32 = parity["fp32"]
    logits, greedy = fp32["logits"], fp32["greedy"]
    worst = max(logits["max_abs_diff_no_cache"], logits["max_abs_diff_cache"])
    out.print(f"  fp32 vs PyTorch: logits max abs diff {worst:.2e} (with and without the cache), greedy "
              f"{greedy['identical']}/{greedy['prompts']} prompts identical for {greedy['new_tokens']} tokens")
    for dtype, q in parity.items():
        if dtype != "fp32":
            out.print(f"  {dtype} vs PyTorch: top-1 agreement {q['top1_agreement']:.3f}, perplexity ratio "
                      f"{q['perplexity_ratio']:.3f}" + (" [FORCED]" if q.get("forced") else ""))


def _print_graph_sizes(out: Any, manifest: dict[str, Any] | None) -> None:
    """The size of each ONNX graph of a decoder bundle (a client downloads one of them with the other files)."""
    files = (manifest or {}).get("files") or {}
    graphs = {name: e["bytes"] for name, e in files.items() if name.endswith(".onnx")}
    rest = sum(e["bytes"] for name, e in files.items() if name not in graphs)
    for name, size in graphs.items():
        out.print(f"  {name}: {size / 2**20:.1f} MiB (+ {rest / 2**20:.1f} MiB of config and tokenizer)")


def _print_control(out: Any, control: dict[str, Any]) -> None:
    """What --max-drop kept at full precision, and its cost against plain quantisation."""
    names = ", ".join(k["name"] for k in control["kept_float"]) or "none"
    verdict = "within" if control["reached"] else "NOT within (every operator float)"
    out.print(f"  --max-drop {control['max_drop']}: drop {control['drop']:.5f} {verdict} (plain: {control['plain_drop']:.5f}); "
              f"kept float: {len(control['kept_float'])} operator(s) [{names}]")
    line = f"  cost: {control['bytes'] / 2**20:.2f} MiB against {control['plain_bytes'] / 2**20:.2f} MiB plain"
    if control.get("plain_latency_ms"):
        line += f", plain batch 1 {control['plain_latency_ms']['batch_1']:.2f} ms"
    out.print(line)


@bundle_app.command("verify")
def verify_command(path: Annotated[Path, typer.Argument(help="A bundle directory or .tar.gz.")]) -> None:
    """Check every file of a bundle against the sha256 in its manifest."""
    from rich.console import Console

    from mlcompress.export.bundle import verify

    manifest = verify(path)
    files = manifest["files"]
    quantization = (manifest.get("quantization") or {}).get("name", "unknown quantisation")
    size = sum(e["bytes"] for e in files.values())
    Console().print(f"ok: {path} ({manifest['head']['task']}, {quantization}, "
                    f"{len(files)} files, {size / 1e6:.1f} MB) matches its manifest")


@bundle_app.command("encode")
def encode_command(
    bundle: Annotated[Path, typer.Argument(help="A sentence-embedding bundle directory or .tar.gz.")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to embed (or --input).")] = None,
    input: Annotated[Optional[Path], typer.Option("-i", "--input", help="A file of texts, one a line ('-': standard input).")] = None,
    prompt_name: Annotated[Optional[str], typer.Option("--prompt-name", help="The bundle's prompt to put before each text: query or document for E5 (default: the bundle's default prompt, as sentence-transformers).")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Text to put before each text instead of a named prompt ('' for none).")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the embeddings as a .npy array (float32, one row a text) instead of JSON lines on standard output.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    batch_size: Annotated[int, typer.Option(help="Texts per model run.")] = 32,
) -> None:
    """Embed texts with a bundle, torch-free: one JSON line per text ({"text", "embedding"}), or a .npy array."""
    from mlcompress.export import runtime

    lines = _read_texts(texts or [], input)
    model = runtime.load(bundle)
    if not hasattr(model, "encode") or getattr(model, "task", None) != "sentence-embedding":
        raise InputError(f"{bundle} is not a sentence-embedding bundle", "export an embedding model with `mlcompress export --bundle`")
    if output is not None:
        from mlcompress.artifacts import check_output

        check_output(output, overwrite, what="embeddings file")
    emb = model.encode(lines, batch_size=batch_size, prompt_name=prompt_name, prompt=prompt)
    if output is None:
        for text, row in zip(lines, emb):
            typer.echo(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in row]}, ensure_ascii=False))
        return
    _save_npy(emb, output)
    typer.echo(f"wrote {emb.shape[0]} embeddings of dimension {emb.shape[1]} to {output}", err=True)


def _read_texts(texts: list[str], source: Path | None) -> list[str]:
    """The texts to embed: those given, then the non-empty lines of ``source`` ('-': standard input)."""
    import sys

    lines = list(texts)
    if source is not None:
        try:
            text = sys.stdin.read() if str(source) == "-" else source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read texts from {source} ({exc})", "pass a UTF-8 text file, one text a line") from exc
        lines += [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError("no texts to embed", "pass texts as arguments, or --input FILE (one a line; '-' for standard input)")
    return lines


def _save_npy(array: Any, output: Path) -> None:
    """Write ``array`` to ``output`` (.npy) through a temporary sibling, so a failed write leaves nothing half-written."""
    import os

    import numpy as np

    output = output.expanduser().absolute()
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


@bundle_app.command("demo")
def demo_command(
    bundle: Annotated[Path, typer.Argument(help="A sentence-embedding bundle directory or .tar.gz.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write the page into (serve it over http).")],
    sentences: Annotated[Optional[Path], typer.Option("--sentences", help="Sentences to rank, one a line (plain or .gz). Default: Tatoeba lines in the bundle's languages from --data.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="A folder laid out like ../shared/data, for the default sentences (default: $MLCOMPRESS_DATA or ../shared/data).")] = None,
    per_language: Annotated[int, typer.Option(help="Default sentences per bundle language.")] = 20,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists (only once the new one is complete).")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Cache for the npm packages the page runs (onnxruntime-web, @huggingface/tokenizers).")] = None,
) -> None:
    """Write a static web page that runs the bundle in the browser (onnxruntime-web, wasm) and ranks sentences by similarity."""
    from rich.console import Console

    from mlcompress.export.web_demo import write_demo

    out = write_demo(bundle, output, sentences, data=data, per_language=per_language, overwrite=overwrite,
                     cache_dir=cache_dir)
    console = Console(soft_wrap=True)
    console.print(f"wrote the demo of {bundle} to {out}")
    console.print(f"  serve it: python -m http.server -d {out} 8000", highlight=False)
    console.print("  and open: http://localhost:8000/", highlight=False)


@bundle_app.command("generate")
def generate_command(
    bundle: Annotated[Path, typer.Argument(help="A generative bundle (mlcompress export of a causal LM or an encoder-decoder) directory or .tar.gz.")],
    prompt: Annotated[str, typer.Argument(help="The text to continue (decoder-only), or to translate / transform (encoder-decoder; with --chat: the user's message).")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Most tokens to generate (stops earlier at an end-of-sequence id).")] = 64,
    to: Annotated[Optional[str], typer.Option("--to", help="Encoder-decoder translation models (mBART, M2M100, NLLB): the language to write, e.g. de (or its code token: de_DE, deu_Latn). Default: the model's forced_bos_token_id.")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt as a user message in the tokenizer's chat template.")] = False,
    sample: Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding (temperature, top-k, top-p from generation_config.json unless given).")] = False,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature.")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Sample among the k most likely tokens.")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Sample within the smallest set of tokens of this probability.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling (the same seed gives the same text).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Which graph of the bundle: fp32, q8 or q4 (default: the one config.json's transformers.js_config names).")] = None,
) -> None:
    """Continue PROMPT with a decoder bundle, or translate it with an encoder-decoder bundle (--to LANG), torch-free
    (onnxruntime, tokenizers, numpy), streaming to the terminal."""
    import sys

    from mlcompress.export.generate import load as load_generator
    from mlcompress.export.seq2seq_generate import Seq2SeqGenerator

    model = load_generator(bundle, dtype=dtype)
    options = {"max_new_tokens": max_new_tokens, "do_sample": sample, "temperature": temperature, "top_k": top_k,
               "top_p": top_p, "seed": seed, "stream": lambda piece: (sys.stdout.write(piece), sys.stdout.flush())}
    if isinstance(model, Seq2SeqGenerator):
        if chat:
            raise InputError("--chat: encoder-decoder bundles have no chat template", "pass the text to translate")
        model.generate(prompt, target_language=to, **options)  # type: ignore[arg-type]
    else:
        if to is not None:
            raise InputError("--to: a decoder-only bundle is not told a target language",
                             "ask for the language in the prompt, or export an encoder-decoder translation model")
        if not chat:
            sys.stdout.write(prompt)
        model.generate([{"role": "user", "content": prompt}] if chat else prompt, **options)  # type: ignore[arg-type]
    sys.stdout.write("\n")


def register(app: typer.Typer) -> None:
    """Add `export` and the `bundle` sub-commands to the root app."""
    app.command("export")(export_command)
    app.add_typer(bundle_app, name="bundle")
