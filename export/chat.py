"""Render a tokenizer's chat template without transformers: jinja2's sandbox, set up as transformers sets it up
(trim_blocks, lstrip_blocks, loop controls, ``tojson``, ``raise_exception``, ``strftime_now``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from mlcompress.errors import InputError

SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def template_of(tokenizer_config: dict[str, Any], extra: str | None = None) -> str | None:
    """The default chat template of a tokenizer_config.json (or of a chat_template.jinja's text ``extra``), or None."""
    found = tokenizer_config.get("chat_template") or extra
    if isinstance(found, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in found if isinstance(t, dict)}
        found = named.get("default") or next(iter(named.values()), None)
    return found if isinstance(found, str) and found.strip() else None


def special_tokens(tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """bos/eos/pad/unk token strings of a tokenizer_config.json (a template may print them)."""
    out = {}
    for key in SPECIAL_KEYS:
        value = tokenizer_config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


def _raise(message: str) -> None:
    raise InputError(f"the chat template refused the messages: {message}", "check the roles and their order")


def render(template: str, messages: Sequence[dict[str, Any]], specials: dict[str, str],
           add_generation_prompt: bool = True) -> str:
    """The prompt text of ``messages`` ([{"role": ..., "content": ...}, ...]) under ``template``."""
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:
        raise InputError("rendering the chat template needs jinja2, which is not installed",
                         "pip install jinja2, or pass plain text prompts") from exc
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False, ensure_ascii=False: json.dumps(
        x, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                                **specials)
    except TemplateError as exc:
        raise InputError(f"the bundle's chat template cannot be rendered ({type(exc).__name__}: {exc})",
                         "pass plain text prompts, or fix chat_template in tokenizer_config.json and re-export") from exc
