"""Held-out target-language text for the generative tasks, and the greedy prompts cut from it.

The rule, in one place: the premises of ``xnli/dev-<lang>`` (deduplicated, in file order: 830 natural sentences of
about 20 words per language, 15 languages) where XNLI has the language, else the ``<lang>`` side of Tatoeba
(``tatoeba/tatoeba.<xxx>-eng.<xxx>``, 112 languages, short sentences; English: the English side of deu-eng). Neither is
trim text: ``mono/``, the trim and distillation corpus, holds no evaluation text (data README). A datasets id under
the key ``lm:<lang>`` (``--hub-data lm:de=hf://NAME?split=S&columns=text``) replaces both for that language.
"""

from __future__ import annotations

from mlcompress.errors import InputError
from mlcompress.languages import tatoeba_code

from .data import DataSource, _find, hub_columns, read_lines

HUB_KEY = "lm"


def lm_missing(data: DataSource, lang: str) -> str | None:
    """Why ``lang`` has no held-out text (None when it has)."""
    if f"{HUB_KEY}:{lang}" in data.hub:
        return None
    if data.root is None:
        return f"no datasets id for {HUB_KEY}:{lang} and no --data folder"
    if _find(data.root / "xnli", f"dev-{lang}.tsv"):
        return None
    code = "deu" if lang == "en" else tatoeba_code(lang)
    side = "eng" if lang == "en" else code
    if _find(data.root / "tatoeba", f"tatoeba.{code}-eng.{side}"):
        return None
    return f"missing xnli/dev-{lang}.tsv.gz and tatoeba/tatoeba.{code}-eng.{side}.gz"


def _cut(text: str, max_chars: int) -> str:
    """``text`` up to ``max_chars`` characters, cut at a space (whole words only)."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    return head[: head.rfind(" ")] if " " in head else head


def lm_texts(data: DataSource, lang: str, n: int, max_chars: int = 600) -> tuple[list[str], str]:
    """Up to ``n`` distinct non-empty held-out texts of ``lang`` (each cut to ``max_chars``) and where they came from."""
    hub = data.hub.get(f"{HUB_KEY}:{lang}")
    if hub:
        (column,) = hub_columns(hub, 1, 4 * n)  # rows may repeat; enough for n distinct texts
        raw, origin = [str(x) for x in column], hub
    else:
        xnli = _find(data.root / "xnli", f"dev-{lang}.tsv")
        if xnli is not None:
            raw, origin = [line.split("\t")[0] for line in read_lines(xnli)], f"{xnli} premises"
        else:
            code = "deu" if lang == "en" else tatoeba_code(lang)
            path = _find(data.root / "tatoeba", f"tatoeba.{code}-eng.{'eng' if lang == 'en' else code}")
            raw, origin = read_lines(path), str(path)
    texts = list(dict.fromkeys(_cut(t.strip(), max_chars) for t in raw if t.strip()))[:n]
    if not texts:
        raise InputError(f"no held-out text for {lang} in {origin}", "check --data, or give --hub-data lm:<lang>=...")
    return texts, origin


def prompts_of(texts: list[str], n: int) -> list[str]:
    """Greedy prompts: the first half of the words of each of the first ``n`` texts (2 to 12 words; for text written
    without spaces, such as Chinese or Japanese, the first half of its characters, at most 24)."""
    out = []
    for t in texts:
        words = t.split()
        if len(words) >= 3:
            out.append(" ".join(words[: max(2, min(12, len(words) // 2))]))
        elif len(t) >= 6:
            out.append(t[: min(24, len(t) // 2)])
        if len(out) >= n:
            break
    return out
