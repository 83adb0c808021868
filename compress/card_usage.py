"""The model card's "How to use it": a few lines per client that loads the artifact, from the artifact's own files
(the sentence-transformers layout of a model folder; a bundle's manifest and client files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .st_layout import SentenceLayout

EXAMPLE = "How do I get to the station?"
ST_ONNX_BLOCKED = ("sentence-transformers' own ONNX backend (`backend=\"onnx\"`) cannot be installed beside transformers 5 "
                   "(optimum-onnx 0.1.0 needs transformers < 4.58): that is for upstream to fix.")
# a transformers.js dtype for each graph name suffix (onnx/model_<suffix>.onnx; onnx/model.onnx is fp32)
_DTYPES = {"": "fp32", "quantized": "q8", "int8": "int8", "uint8": "uint8", "fp16": "fp16", "q4": "q4", "q4f16": "q4f16",
           "bnb4": "bnb4"}


def _block(lang: str, lines: list[str]) -> str:
    return "\n".join([f"```{lang}", *lines, "```"])


def prompt_note(prompts: dict[str, str]) -> str:
    """What a user of a client without prompts must do: put the model's prompts before the text themselves."""
    if not prompts:
        return ""
    named = ", ".join(f'"{text}" before {"passages" if key == "document" else key + " texts"}' for key, text in prompts.items())
    return (f"**Prompts.** This model expects {named}. sentence-transformers and the mlcompress runtime add them by "
            "name; FastEmbed and transformers.js add none: put them before the text yourself.")


def st_usage(name: str, layout: SentenceLayout) -> str:
    """Loading a model folder with a sentence-transformers layout."""
    lines = ["from sentence_transformers import SentenceTransformer", "",
             f'model = SentenceTransformer("{name}")  # this folder, or its Hub id once uploaded']
    if "query" in layout.prompts:
        lines.append(f'queries = model.encode_query(["{EXAMPLE}"])  # adds "{layout.prompts["query"]}"')
    if "document" in layout.prompts:
        lines.append(f'passages = model.encode_document(["The station is two streets away."])  # adds "{layout.prompts["document"]}"')
    if not layout.prompts:
        lines.append(f'vectors = model.encode(["{EXAMPLE}"])')
    return "### sentence-transformers\n\n" + _block("python", lines)


def transformers_usage(name: str, auto_class: str) -> str:
    """Loading a model folder with plain transformers."""
    return "### transformers\n\n" + _block("python", [
        f"from transformers import {auto_class}, AutoTokenizer", "",
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")', f'model = {auto_class}.from_pretrained("{name}")'])


def onnx_clients_for_folder(name: str, embedding: bool) -> str:
    """Where the ONNX clients (FastEmbed and transformers.js for embeddings, the mlcompress runtime) come in for a
    PyTorch folder: they load its export bundle."""
    clients = "FastEmbed, transformers.js and the mlcompress runtime" if embedding else "The mlcompress runtime"
    return (f"### {clients}\n\n{'These load' if embedding else 'It loads'} an ONNX export bundle of this model; make one "
            f"with `mlcompress export {name} --bundle -o {name}-onnx`, whose card shows how.")


_RUNTIME_CALLS = {"text-generation": 'texts = model.generate(["{text}"], max_new_tokens=32)',
                  "token-classification": 'labels = model.predict(["{text}"])  # a label per token of each text',
                  "sequence-classification": 'labels = model.predict(["{text}"])  # a label per text',
                  "masked-lm": 'logits = model.run(["{text}"])'}


def runtime_usage(name: str, task: str) -> str:
    """Loading a bundle of another task than sentence embeddings with the mlcompress runtime."""
    call = _RUNTIME_CALLS.get(task, 'outputs = model.run(["{text}"])').format(text=EXAMPLE)
    return "### mlcompress runtime (no torch)\n\n" + _block("python", [
        "from mlcompress.export import runtime", "", f'model = runtime.load("{name}")  # checks every file\'s sha256', call])


def transformers_js_dtype(model_file: str) -> str:
    """The transformers.js dtype that loads a graph named onnx/model[_suffix].onnx."""
    stem = Path(model_file).name.removesuffix(".onnx")
    return _DTYPES.get(stem.removeprefix("model").lstrip("_"), "fp32")


def bundle_usage(name: str, directory: Path, manifest: dict[str, Any], dim: int | None) -> list[str]:
    """The sections for a sentence-embedding bundle: the mlcompress runtime, FastEmbed, transformers.js, and why not
    sentence-transformers."""
    prompts, default = manifest.get("prompts") or {}, manifest.get("default_prompt_name")
    model_file = str(manifest.get("model") or "model.onnx")
    head = manifest.get("head") or {}
    runtime = ["from mlcompress.export import runtime", "", f'model = runtime.load("{name}")  # checks every file\'s sha256',
               f'queries = model.encode(["{EXAMPLE}"])' + (f'  # adds "{prompts[default]}"' if default in prompts else "")]
    if "document" in prompts:
        runtime.append(f'passages = model.encode(["The station is two streets away."], prompt_name="document")  # adds "{prompts["document"]}"')
    query = prompts.get("query", "")
    sections = ["### mlcompress runtime (onnxruntime, tokenizers and numpy; no torch)\n\n" + _block("python", runtime)]
    if (directory / "tokenizer_config.json").is_file():
        sections.append("### FastEmbed\n\n" + _block("python", [
            "from fastembed import TextEmbedding", "from fastembed.common.model_description import ModelSource, PoolingType", "",
            f'TextEmbedding.add_custom_model(model="local/{name}", pooling=PoolingType.DISABLED, normalization=False,',
            f'                               sources=ModelSource(hf="local/{name}"), dim={dim},',
            f'                               model_file="{model_file}", output_name="{head.get("output", "sentence_embedding")}")',
            f'model = TextEmbedding(model_name="local/{name}", specific_model_path="{name}")  # no network',
            f'vectors = list(model.embed(["{query}{EXAMPLE}"]))  # the prompt is yours to add']))
    if (directory / "config.json").is_file():
        sections.append("### transformers.js\n\n" + _block("js", [
            'import { pipeline, env } from "@huggingface/transformers";', "",
            'env.localModelPath = "./";  // the folder that holds this one', "env.allowRemoteModels = false;",
            f'const extractor = await pipeline("feature-extraction", "{name}", {{ dtype: "{transformers_js_dtype(model_file)}" }});',
            f'const vectors = await extractor(["{query}{EXAMPLE}"], {{ pooling: "{head.get("pooling") or "mean"}", '
            f'normalize: {str(bool(head.get("normalize"))).lower()} }});  // the prompt is yours to add']))
        if head.get("dense"):
            sections[-1] += ("\n\nThis model has Dense modules after its pooling, which transformers.js does not run: its vectors "
                             "differ from the model's. Use the `sentence_embedding` output (FastEmbed, the runtime) instead.")
    sections.append("### sentence-transformers\n\nLoad the PyTorch folder this bundle was exported from. " + ST_ONNX_BLOCKED)
    return sections
