"""The sentences a bundle's web demo ranks: a file the user gives, or Tatoeba lines in each of the bundle's languages."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from mlcompress.corpus import default_data_dir
from mlcompress.errors import InputError, LanguageError
from mlcompress.languages import normalize_language, tatoeba_code

MAX_SENTENCES = 5000  # the page embeds each one as it loads
_HINT = "pass --sentences FILE (one sentence per line, plain or .gz)"


def _lines(path: Path, n: int | None) -> list[str]:
    """The first ``n`` non-empty lines of a plain or gzip UTF-8 file, stripped."""
    opener = gzip.open if path.name.endswith(".gz") else open
    out: list[str] = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for raw in handle:
                if line := raw.strip():
                    out.append(line)
                if n is not None and len(out) >= n:
                    break
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"cannot read sentences from {path} ({exc})", "pass a UTF-8 text file, plain or .gz") from exc
    return out


def file_sentences(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Every non-empty line of ``path`` (plain or .gz), as demo sentences of no stated language."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"sentences file {p} not found", _HINT)
    lines = _lines(p, MAX_SENTENCES + 1)
    if not lines:
        raise InputError(f"sentences file {p} holds no sentence", _HINT)
    if len(lines) > MAX_SENTENCES:
        raise InputError(f"sentences file {p} holds more than {MAX_SENTENCES:,} sentences; the page embeds each as it loads",
                         "pass a shorter list")
    return [{"lang": "", "text": line} for line in lines]


def _tatoeba_file(root: Path, lang: str, pair: str) -> Path:
    """tatoeba/tatoeba.<pair>-eng.<lang-or-eng>.gz (or unzipped) under ``root``, or a clear error."""
    side = "eng" if lang == "en" else pair
    for name in (f"tatoeba.{pair}-eng.{side}.gz", f"tatoeba.{pair}-eng.{side}"):
        if (root / "tatoeba" / name).is_file():
            return root / "tatoeba" / name
    raise InputError(f"no Tatoeba sentences for {lang}: {root / 'tatoeba' / f'tatoeba.{pair}-eng.{side}.gz'} not found", _HINT)


def tatoeba_sentences(languages: list[str], data: str | os.PathLike[str] | None = None,
                      per_language: int = 20) -> list[dict[str, str]]:
    """The first ``per_language`` Tatoeba lines of each language (English: the English side of the first other
    language's pairs, so that translations meet in the ranking); ``data`` defaults to ../shared/data."""
    root = Path(data).expanduser() if data is not None else default_data_dir()
    if root is None or not root.is_dir():
        where = f"data folder {root} not found" if root is not None else "../shared/data not found (nor $MLCOMPRESS_DATA)"
        raise InputError(f"no demo sentences: {where}", f"{_HINT}, or --data DIR (a folder laid out like ../shared/data)")
    try:
        langs = list(dict.fromkeys(normalize_language(x) for x in languages))
    except LanguageError as exc:
        raise InputError(f"the bundle names a language this mlcompress does not know: {exc.message}", _HINT) from exc
    others = [x for x in langs if x != "en"]
    out: list[dict[str, str]] = []
    for lang in langs:
        pair = tatoeba_code(lang if lang != "en" else others[0] if others else "de")  # English: another's pair
        out += [{"lang": lang, "text": t} for t in _lines(_tatoeba_file(root, lang, pair), per_language)]
    return out


def demo_sentences(languages: list[str] | None, sentences: str | os.PathLike[str] | None = None,
                   data: str | os.PathLike[str] | None = None, per_language: int = 20) -> list[dict[str, str]]:
    """The demo's list: ``sentences`` (a file) when given, else Tatoeba lines in the bundle's ``languages``."""
    if sentences is not None:
        return file_sentences(sentences)
    if per_language < 1:
        raise InputError(f"--per-language must be at least 1 (got {per_language})", "e.g. --per-language 20")
    if not languages:
        raise InputError("the bundle records no languages, so there is no default sentence list", _HINT)
    return tatoeba_sentences(languages, data, per_language)
