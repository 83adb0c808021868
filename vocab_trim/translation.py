"""Trimming a translation model (mBART-50, M2M100, NLLB): which language-code tokens stay, and the files that name them.

A translation model keeps the pieces of every chosen language (``-l en,de`` trims for both directions, en->de and
de->en, since each language's corpus is counted) and the code tokens of those languages (``en_XX``, ``de_DE``). The
codes of the other languages go by default: the model could not write those languages with the pieces left.
``keep_language_codes="all"`` keeps every code, and a list of languages (``"fr,es"``) keeps theirs as well.

Dropping codes touches more than the vocabulary: the generation config's ``forced_bos_token_id`` (cleared when it
names a dropped code), the tokenizer's post-processor (a dropped source-language code is replaced by a kept one), the
tokenizer config's special-token lists, ``src_lang`` / ``tgt_lang`` (which transformers would otherwise add back as new
tokens, or fail on), tokenizer classes that name every code of their family (saved as the generic fast tokenizer),
and ``lang_code_to_id``-style maps in the configs (re-indexed, dropped codes left out).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcompress.errors import InputError
from mlcompress.languages import parse_languages
from mlcompress.translation import LanguageCode, language_codes

# tokenizer classes whose __init__ adds every language code of their family (transformers 5): a trim that drops codes
# saves the generic class instead, or loading would add the dropped codes back as new ids past the embedding rows
_CODE_LISTING_CLASSES = {"MBart50Tokenizer", "MBart50TokenizerFast", "MBartTokenizer", "MBartTokenizerFast",
                         "NllbTokenizer", "NllbTokenizerFast", "M2M100Tokenizer"}
_GENERIC_CLASS = "TokenizersBackend"
_LANG_MAP_KEYS = ("lang_code_to_id", "lang_to_id", "language_code_to_id")
_CONFIG_FILES = ("config.json", "generation_config.json")
_SPECIAL_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def parse_keep_language_codes(spec: str | list[str] | tuple[str, ...] | None) -> str | list[str]:
    """``"targets"`` (the default: codes of the target languages), ``"all"``, or the canonical codes of extra languages
    whose codes are kept as well."""
    if spec is None:
        return "targets"
    if isinstance(spec, str) and spec.strip().lower() in ("targets", "all"):
        return spec.strip().lower()
    try:
        return parse_languages(spec)
    except Exception as exc:
        raise InputError(f"bad keep_language_codes {spec!r} ({exc})",
                         "give targets (the default), all, or languages whose codes to keep too, e.g. fr,es") from exc


@dataclass
class CodePlan:
    """Which language codes a trim keeps and drops (``style`` None: not a translation model, nothing to do)."""

    style: str | None = None
    kept: list[LanguageCode] = field(default_factory=list)
    dropped: list[LanguageCode] = field(default_factory=list)
    keep: str | list[str] = "targets"
    languages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def dropped_ids(self) -> set[int]:
        """Ids of the dropped codes."""
        return {c.id for c in self.dropped}

    @property
    def dropped_tokens(self) -> set[str]:
        """Strings of the dropped codes."""
        return {c.token for c in self.dropped}

    def record(self) -> dict[str, Any]:
        """What mlcompress.json says about the codes (`mlcompress.translation.available_target_languages` reads it)."""
        if self.style is None:
            return {}
        first = lambda codes: {c.language: c.token for c in reversed(codes)}  # noqa: E731 (first code per language)
        kept = first(self.kept)
        return {"style": self.style, "trimmed_for": self.languages, "keep_language_codes": self.keep,
                "target_languages": sorted(kept), "language_codes": dict(sorted(kept.items())),
                "dropped_languages": sorted(set(first(self.dropped)) - set(kept)),
                "dropped_codes": dict(sorted(first(self.dropped).items()))}


def plan_codes(tj: dict[str, Any], net: Any, languages: list[str], keep: str | list[str]) -> CodePlan:
    """The codes an encoder-decoder's trim keeps for ``languages`` (any other model: an empty plan)."""
    if not getattr(net.config, "is_encoder_decoder", False):
        return CodePlan(keep=keep, languages=languages)
    style, codes = language_codes(tj)
    if style is None:
        return CodePlan(keep=keep, languages=languages)
    wanted = set(languages) | (set(keep) if isinstance(keep, list) else set())
    kept = [c for c in codes if keep == "all" or c.language in wanted]
    plan = CodePlan(style, kept, [c for c in codes if c not in kept], keep, languages)
    missing = sorted(set(languages) - {c.language for c in codes})
    if missing:
        plan.notes.append(f"the model has no language code for {', '.join(missing)}: it cannot be asked to translate "
                          "into them (their pieces are kept all the same)")
    if plan.dropped:
        plan.notes.append(f"dropped the language codes of {len({c.language for c in plan.dropped})} language(s) not "
                          f"among the targets ({', '.join(c.token for c in plan.dropped[:4])}{', ...' if len(plan.dropped) > 4 else ''}); "
                          "--keep-language-codes all keeps them")
    return plan


def clear_dropped_config_ids(net: Any, plan: CodePlan) -> None:
    """Clear config and generation-config token ids that name a dropped code (``forced_bos_token_id``), with a note."""
    dropped = plan.dropped_ids
    configs = [net.config] + ([net.generation_config] if getattr(net, "generation_config", None) is not None else [])
    for cfg in configs:
        for key, value in cfg.to_dict().items():
            if key.endswith("_token_id") and isinstance(value, int) and not isinstance(value, bool) and value in dropped:
                setattr(cfg, key, None)
                token = next(c.token for c in plan.dropped if c.id == value)
                plan.notes.append(f"{key} named {token}, a dropped language's code: cleared (give the target language "
                                  "when generating)")


def retarget_processor(tj: dict[str, Any], plan: CodePlan) -> None:
    """Replace a dropped code in the post-processor (the source-language code a tokenizer appends or prepends) with
    the first kept code, in place, with a note."""
    if not plan.dropped:
        return
    dropped = {c.token: c for c in plan.dropped}
    if not plan.kept:  # no target language has a code: keep the one the tokenizer adds, so that it still encodes
        named = {n for node in _processors(tj.get("post_processor")) for n in node.get("special_tokens") or {}}
        plan.kept = [c for c in plan.dropped if c.token in named]
        plan.dropped = [c for c in plan.dropped if c.token not in named]
        return
    new = plan.kept[0]
    for node in _processors(tj.get("post_processor")):
        specials = node.get("special_tokens") or {}
        for name in [n for n in specials if n in dropped]:
            del specials[name]
            specials[new.token] = {"id": new.token, "ids": [new.id], "tokens": [new.token]}
            for key in ("single", "pair"):
                for piece in node.get(key) or []:
                    special = piece.get("SpecialToken") if isinstance(piece, dict) else None
                    if special and special.get("id") == name:
                        special["id"] = new.token
            plan.notes.append(f"the tokenizer added {name} (a dropped language's code) to every input: it adds "
                              f"{new.token} now")


def _processors(node: Any) -> list[dict[str, Any]]:
    """Every TemplateProcessing node in a post-processor (a Sequence's too)."""
    if isinstance(node, list):
        return [p for item in node for p in _processors(item)]
    if not isinstance(node, dict):
        return []
    own = [node] if node.get("type") == "TemplateProcessing" else []
    return own + [p for v in node.values() if isinstance(v, (dict, list)) for p in _processors(v)]


def _token_of(value: Any) -> str | None:
    """The token string of a special-token entry (a string or an AddedToken dict)."""
    return value if isinstance(value, str) else value.get("content") if isinstance(value, dict) else None


def _without(value: Any, dropped: set[str]) -> Any:
    """A special-token list (or name -> token map) with the dropped codes left out; any other value unchanged."""
    if isinstance(value, list):
        return [v for v in value if _token_of(v) not in dropped]
    if isinstance(value, dict) and "content" not in value and all(_token_of(v) for v in value.values()) and value:
        return {k: v for k, v in value.items() if _token_of(v) not in dropped}
    return value


def fix_tokenizer_files(dst: Path, plan: CodePlan) -> None:
    """Tokenizer config and special-tokens map: dropped codes out of their lists, ``src_lang`` / ``tgt_lang`` moved to
    kept codes, and a code-listing tokenizer class replaced by the generic one (each change noted)."""
    if not plan.dropped:
        return
    dropped, kept = plan.dropped_tokens, [c.token for c in plan.kept]
    for name in _SPECIAL_FILES:
        path = dst / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        out = {k: _without(v, dropped) for k, v in config.items()}
        for key in ("src_lang", "tgt_lang"):
            if out.get(key) in dropped:
                other = [k for k in kept if k != out.get("tgt_lang" if key == "src_lang" else "src_lang")] or kept
                plan.notes.append(f"{name}: {key} was {out[key]}, a dropped code: now {other[0] if other else None}")
                out[key] = other[0] if other else None
        if out.get("tokenizer_class") in _CODE_LISTING_CLASSES:
            plan.notes.append(f"{out['tokenizer_class']} names every language code of its family and would add the "
                              f"dropped ones back on load: the trimmed tokenizer is saved as {_GENERIC_CLASS}")
            out["tokenizer_class"] = _GENERIC_CLASS
        if out != config:
            path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def fix_language_maps(dst: Path, old_to_new: dict[int, int]) -> None:
    """Re-index ``lang_code_to_id``-style maps (code -> id) in the saved configs, leaving dropped codes out."""
    for name in _CONFIG_FILES:
        path = dst / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        out = copy.deepcopy(config)
        for key in _LANG_MAP_KEYS:
            if isinstance(out.get(key), dict):
                out[key] = {code: old_to_new[i] for code, i in out[key].items() if isinstance(i, int) and i in old_to_new}
        if out != config:
            path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

