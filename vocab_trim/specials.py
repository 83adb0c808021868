"""Unused special placeholders: the added tokens a trimmed decoder can drop, and the ids its files name.

Decoders carry thousands of added tokens reserved for later use or for other modalities: Gemma 3 has
``<unused0>`` .. ``<unused6241>``, ``[multimodal]``, ``<start_of_image>`` and ``<end_of_image>``; Llama 3 has
``<|reserved_special_token_N|>``; Qwen has ``<|vision_start|>``, ``<|image_pad|>`` and kin. A text model trimmed to
a few languages never reads or writes them unless something names them, so their embedding rows only cost size
(6,249 of Gemma 3's 262,144 rows). A placeholder is dropped only when nothing names it: not ``config.json`` or
``generation_config.json`` (checked by the caller), not the tokenizer's special tokens (``tokenizer_config.json``,
``special_tokens_map.json``, the loaded tokenizer), not its post-processor or padding, and no chat template
mentions it literally; and when no corpus line uses it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# non-special added tokens that stand for another modality (Gemma 3 writes these without the special flag)
_MODALITY = re.compile(r"image|audio|video|vision|multimodal|soft_token", re.IGNORECASE)
_TAG = re.compile(r"^(<\|?[^<>\s]+\|?>|\[[^\[\]\s]+\])$")
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
_SPECIAL_LISTS = ("additional_special_tokens", "extra_special_tokens")


def placeholder_ids(tj: dict[str, Any]) -> set[int]:
    """Added tokens that are placeholders: every special one, and non-special tags of other modalities.

    Non-special added tokens that are text (Gemma's ``<strong>``, runs of newlines or tabs) are not placeholders:
    they stay kept, as every added token was before.
    """
    out = set()
    for added in tj.get("added_tokens", []):
        content = added.get("content", "")
        if added.get("special") or (_TAG.match(content) and _MODALITY.search(content)):
            out.add(int(added["id"]))
    return out


def _token_strings(value: Any) -> Iterable[str]:
    """Token strings inside a tokenizer-config value: a string, an AddedToken dict, or lists / dicts of them."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        if isinstance(value.get("content"), str):
            yield value["content"]
        else:
            for item in value.values():
                yield from _token_strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _token_strings(item)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def named_special_tokens(source: Path, tok: Any) -> set[str]:
    """Token strings the tokenizer's configuration names: its ``*_token`` entries and special-token lists."""
    names: set[str] = set(getattr(tok, "all_special_tokens", []) or [])
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = _read_json(source / name)
        for key, value in config.items():
            if key.endswith("_token") or key in _SPECIAL_LISTS:
                names.update(_token_strings(value))
    return names


def chat_templates(source: Path, tok: Any) -> list[str]:
    """Every chat template the source directory holds (tokenizer_config.json, chat_template.jinja / .json,
    additional_chat_templates/) and the loaded tokenizer's own."""
    found: list[Any] = [getattr(tok, "chat_template", None), _read_json(source / "tokenizer_config.json").get("chat_template")]
    for name in _TEMPLATE_FILES:
        path = source / name
        if path.is_file():
            found.append(_read_json(path).get("chat_template") if name.endswith(".json") else path.read_text(encoding="utf-8"))
    extra = source / "additional_chat_templates"
    if extra.is_dir():
        found += [p.read_text(encoding="utf-8") for p in sorted(extra.glob("*.jinja"))]
    texts: list[str] = []
    for item in found:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):  # {name: template}
            texts += [v for v in item.values() if isinstance(v, str)]
        elif isinstance(item, list):  # [{"name": ..., "template": ...}]
            texts += [d["template"] for d in item if isinstance(d, dict) and isinstance(d.get("template"), str)]
    return texts


def _processor_ids(node: Any) -> set[int]:
    """Ids the post-processor inserts (TemplateProcessing special tokens, Roberta/Bert cls and sep)."""
    out: set[int] = set()
    if isinstance(node, list):
        for item in node:
            out |= _processor_ids(item)
    elif isinstance(node, dict):
        if node.get("type") == "TemplateProcessing":
            out.update(int(i) for spec in node.get("special_tokens", {}).values() for i in spec.get("ids", []))
        elif node.get("type") in ("RobertaProcessing", "BertProcessing"):
            out.update(int(node[key][1]) for key in ("cls", "sep") if key in node)
        for value in node.values():
            if isinstance(value, (dict, list)):
                out |= _processor_ids(value)
    return out


def tokenizer_named_ids(tj: dict[str, Any], source: Path, tok: Any, candidates: set[int]) -> set[int]:
    """Which of the ``candidates`` (placeholder ids) the tokenizer's files name or a chat template mentions."""
    content = {int(a["id"]): a["content"] for a in tj.get("added_tokens", []) if int(a["id"]) in candidates}
    names = named_special_tokens(source, tok)
    templates = chat_templates(source, tok)
    named = {i for i, text in content.items() if text in names or any(text in t for t in templates)}
    named |= _processor_ids(tj.get("post_processor")) & candidates
    padding = tj.get("padding") or {}
    if isinstance(padding.get("pad_id"), int):
        named |= {padding["pad_id"]} & candidates
    unk = tj.get("model", {}).get("unk_token")  # the tokenizer model's own unknown token
    named |= {i for i, text in content.items() if text == unk}
    return named


def unused_specials(tj: dict[str, Any], source: Path, tok: Any, keep: set[int]) -> set[int]:
    """Placeholder ids that nothing names: what a decoder's trim drops. ``keep``: ids kept whatever this says
    (those the model's configs name, the user's keep-tokens, tokens a corpus or the model's own samples use)."""
    candidates = placeholder_ids(tj) - keep
    return candidates - tokenizer_named_ids(tj, source, tok, candidates)
