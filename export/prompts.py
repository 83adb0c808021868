"""A sentence-embedding bundle's prompts: the text put before a query or a document, by name, as sentence-transformers
keeps them (``config_sentence_transformers.json``; E5: query "query: ", document "passage: ", query by default).

The export reads them from the source (`export_prompts`) and writes them in the manifest (``prompts``,
``default_prompt_name``); the torch-free runtime picks one by name (`manifest_prompts`, `resolve_prompt`). Reading a
manifest needs the standard library only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlcompress.errors import InputError

from .bundle import BundleError


def export_prompts(model_dir: Path, spec: str, task: str, given: str | None) -> tuple[dict[str, str], str | None]:
    """The prompts a bundle of the model in ``model_dir`` (named ``spec``) carries, and its default prompt's name.

    Sentence embeddings only (other heads get none: a tagger or classifier is trained without them): the model's
    sentence-transformers prompts as `mlcompress.st_layout` reads them (E5: "query: " / "passage: " by name or
    provenance); a ``given`` prefix (--prefix) becomes the default "query" prompt ("" for no default prompt).
    """
    if task != "sentence-embedding":
        return {}, None
    from mlcompress.st_layout import read_layout, with_prefix

    layout = read_layout(model_dir, spec)
    if layout is None:
        return ({"query": given}, "query") if given else ({}, None)
    if given is not None:
        layout = with_prefix(layout, given)
    return dict(layout.prompts), layout.default_prompt_name


def manifest_prompts(manifest: dict[str, Any]) -> tuple[dict[str, str], str | None]:
    """A manifest's prompts and default prompt name; a bundle written before prompts were recorded has its one
    tokenizer prefix as the default "query" prompt."""
    prompts, default = manifest.get("prompts"), manifest.get("default_prompt_name")
    if prompts is None:
        prefix = (manifest.get("tokenizer") or {}).get("prefix") or ""
        return ({"query": prefix}, "query") if prefix else ({}, None)
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()) \
            or (default is not None and default not in prompts):
        raise BundleError("the bundle's manifest has malformed prompts (a name -> text object, and a default among them)",
                          "re-export the bundle with `mlcompress export --bundle`")
    return dict(prompts), default


def resolve_prompt(prompts: dict[str, str], default: str | None, prompt_name: str | None = None,
                   prompt: str | None = None) -> str:
    """The text to put before each input: ``prompt`` itself when given, else the prompt named ``prompt_name``, else
    the default prompt ("" when the bundle has none), as sentence-transformers' encode() picks it."""
    if prompt is not None:
        if prompt_name is not None:
            raise InputError("both a prompt and a prompt name were given", "pass one of them")
        return prompt
    if prompt_name is None:
        return prompts.get(default, "") if default is not None else ""
    if prompt_name not in prompts:
        known = ", ".join(repr(k) for k in prompts) or "none"
        raise InputError(f"this bundle has no prompt named {prompt_name!r} (its prompts: {known})",
                         "pick one of its prompt names, or pass the text itself (prompt='...'; --prompt in the shell)")
    return prompts[prompt_name]
