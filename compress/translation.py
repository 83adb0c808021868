"""Translation models' language-code tokens, and which target languages a model (or its trim) can still produce.

Multilingual translation models pick their output language with a special token: mBART-50 ``de_DE`` (forced as the
first generated token), M2M100 ``__de__`` and NLLB-200 ``deu_Latn``. A trim for a few languages drops the codes of the
others by default (`mlcompress.vocab_trim.trim`, ``keep_language_codes``) and records what stays in its
``mlcompress.json``; :func:`available_target_languages` reads that record (else the tokenizer's own codes), so that a
later stage (the bundle runtime's ``--to``, eval) refuses a removed language with a clear error instead of generating
into a language whose words are gone. Core module: any stage may import it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import read_json_object
from .errors import LanguageError

# style -> pattern of its code tokens (group 1: the language part)
_PATTERNS = {"mbart": re.compile(r"^([a-z]{2,3})_([A-Z]{2})$"), "m2m100": re.compile(r"^__([a-z]{2,3})__$"),
             "nllb": re.compile(r"^([a-z]{3})_([A-Z][a-z]{3})$")}
# ISO 639-3 macrolanguage members and other codes NLLB / M2M100 use where mlcompress knows the language by another
_ALIASES = {"pes": "fa", "prs": "fa", "lvs": "lv", "swh": "sw", "zsm": "ms", "nob": "no", "arb": "ar", "cmn": "zh",
            "als": "sq", "uzn": "uz", "khk": "mn", "npi": "ne", "azj": "az", "ekk": "et"}
RECORD_KEY = "translation"  # the key of the trim's mlcompress.json metrics that holds the record


@dataclass(frozen=True)
class LanguageCode:
    """One language-code token: its string, its id, and the language it names (a canonical mlcompress code when known,
    else the token's own language part)."""

    token: str
    id: int
    language: str


def code_language(token: str, style: str) -> str | None:
    """The language a code token of ``style`` names (None when the token is not one)."""
    from .languages import normalize_language

    match = _PATTERNS[style].match(token)
    if match is None:
        return None
    base = match.group(1)
    try:
        return _ALIASES.get(base) or normalize_language(base)
    except LanguageError:
        return base


def language_codes(tj: dict[str, Any]) -> tuple[str | None, list[LanguageCode]]:
    """The code style of a tokenizer JSON and its language codes (special added tokens of the style most of them have;
    them: ``(None, [])`` when none: not a translation tokenizer)."""
    added = [(str(a.get("content", "")), int(a["id"])) for a in tj.get("added_tokens", []) if a.get("special")]
    best: tuple[str | None, list[LanguageCode]] = (None, [])
    for style in _PATTERNS:
        found = [LanguageCode(tok, i, lang) for tok, i in added if (lang := code_language(tok, style)) is not None]
        if len(found) > len(best[1]):
            best = (style, found)
    return best


def translation_record(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The trim's record of a translation model's language codes (mlcompress.json), or None when it has none."""
    record = read_json_object(Path(model_dir) / "mlcompress.json") or {}
    found = (record.get("metrics") or {}).get(RECORD_KEY)
    return found if isinstance(found, dict) and found.get("target_languages") is not None else None


def _codes_by_language(model_dir: Path) -> dict[str, str]:
    """Language -> code token, from the directory's tokenizer.json (the first code of each language)."""
    tj = read_json_object(model_dir / "tokenizer.json") or {}
    out: dict[str, str] = {}
    for code in language_codes(tj)[1]:
        out.setdefault(code.language, code.token)
    return out


def available_target_languages(model_dir: str | os.PathLike[str]) -> list[str]:
    """The languages a translation model in ``model_dir`` can translate into, sorted: the trim's record when it has
    one, else every language whose code its tokenizer.json has (empty: not a translation model)."""
    record = translation_record(model_dir)
    if record is not None:
        return sorted(record["target_languages"])
    return sorted(_codes_by_language(Path(model_dir)))


def target_language_code(model_dir: str | os.PathLike[str], language: str) -> str:
    """The code token that makes the model in ``model_dir`` translate into ``language`` (``de`` -> ``de_DE``,
    ``__de__`` or ``deu_Latn``); a language the model cannot produce (or a trim removed) is refused clearly."""
    from .languages import normalize_language

    path = Path(model_dir)
    try:
        lang = normalize_language(language)
    except LanguageError:
        lang = language.strip()
    codes = _codes_by_language(path)
    record = translation_record(path) or {}
    by_record = (record.get("language_codes") or {}).get(lang)
    if by_record and lang in available_target_languages(path):
        return str(by_record)
    if lang in codes and lang in available_target_languages(path):
        return codes[lang]
    available = ", ".join(available_target_languages(path)) or "none"
    if lang in (record.get("dropped_languages") or []):
        raise LanguageError(
            f"{path} cannot translate into {lang}: the trim to {', '.join(record.get('trimmed_for') or [])} removed its "
            f"language code {record['dropped_codes'].get(lang, '')!s} (available targets: {available})",
            "translate into one of the available languages, or trim the source again with the language in -l "
            "(or --keep-language-codes all)")
    raise LanguageError(f"{path} has no language code for {lang} (available targets: {available})",
                        "choose one of the available target languages")
