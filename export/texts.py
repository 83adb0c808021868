"""Target-language text for an export: parity, calibration, held-out (--max-drop) and timing sentences, read through
`mlcompress.corpus` and `mlcompress.languages` (given corpora, or those the model's trim recorded), and tokenised batches."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlcompress.artifacts import read_provenance
from mlcompress.corpus import Corpus, parse_corpora
from mlcompress.errors import CorpusError, InputError, LanguageError, ModelSourceError
from mlcompress.languages import normalize_language


def _lines(corpora: list[Corpus], n: int, skip: int) -> list[str]:
    """Non-empty lines ``skip``..``skip+n`` of one language's corpora (files, folders, datasets, word lists), in order."""
    out: list[str] = []
    for corpus in corpora:
        for line in corpus.lines():
            line = line.strip()
            if not line:
                continue
            if skip:
                skip -= 1
                continue
            out.append(line[:1000])
            if len(out) >= n:
                return out
    return out


def _recorded_corpora(model_dir: Path, languages: list[str]) -> dict[str, list[Corpus]]:
    """The corpora the model's trim recorded in mlcompress.json that can still be read here, per language."""
    try:
        record = read_provenance(model_dir) or {}
    except (OSError, ValueError, InputError) as exc:
        raise ModelSourceError(f"{model_dir / 'mlcompress.json'} is corrupt ({exc}), so the corpora the model was trimmed on "
                               "are unknown", "pass --text LANG=PATH per target language, or re-save the model") from exc
    found: dict[str, list[Corpus]] = {}
    for entry in record.get("inputs", []) if isinstance(record, dict) else []:
        if not (isinstance(entry, dict) and entry.get("language") and entry.get("corpus")):
            continue
        try:
            lang, corpus = normalize_language(str(entry["language"])), Corpus.parse(str(entry["corpus"]))
        except (CorpusError, LanguageError):
            continue  # recorded on another machine, or since moved: --text names it
        if not languages or lang in languages:
            found.setdefault(lang, []).append(corpus)
    return found


def text_sources(texts: Mapping[str, Any] | list[str] | None, model_dir: Path, languages: list[str]) -> dict[str, Any]:
    """Where target-language text comes from: given (sentences, or corpus specs per language read through
    `mlcompress.corpus`), or the corpora the model's trim recorded in mlcompress.json."""
    if isinstance(texts, list):
        if not texts:
            raise InputError("no parity texts given", "pass sentences in the target languages")
        return {"given": texts}
    found = parse_corpora(texts) if texts else _recorded_corpora(model_dir, languages)
    if not found:
        raise InputError("no target-language text to check the export against (and to calibrate static int8)",
                         "pass --text LANG=SPEC per language (a plain or .gz file, a folder, hf://NAME or wordfreq:LANG), "
                         "e.g. --text de=de.txt.gz")
    return found


def languages_in(sources: dict[str, Any]) -> int:
    """How many languages the text comes from (given sentences count as one): the counts of parity, calibration and
    held-out sentences are split across them."""
    return max(1, len(sources) if "given" not in sources else 1)


def take(sources: dict[str, Any], n: int, skip: int) -> list[str]:
    """``n`` lines per language after ``skip`` (or a slice of given sentences)."""
    if "given" in sources:
        return list(sources["given"][skip:skip + n]) or list(sources["given"][:n])
    lines: list[str] = []
    for lang, corpora in sources.items():
        got = _lines(corpora, n, skip) or _lines(corpora, n, 0)
        if not got:
            specs = ", ".join(c.spec for c in corpora)
            raise CorpusError(f"text for {lang} ({specs}) is empty", "pass a corpus with at least one sentence")
        lines.extend(got)
    return lines


def sentences(texts: list[str], limit: int = 300) -> list[str]:
    """Texts cut to about a sentence (``limit`` characters, at a space): inputs of the length users embed, and a
    validation that takes seconds, not minutes, on corpora of whole paragraphs."""
    return [t if len(t) <= limit else (t[:limit].rsplit(" ", 1)[0] or t[:limit]) for t in texts]


def batches(tok: Any, texts: list[str], prefix: str, size: int) -> list[dict[str, Any]]:
    """``texts`` tokenised in batches of ``size``, with ``prefix`` before each."""
    from .runtime import tokenize

    return [tokenize(tok, texts[i:i + size], prefix) for i in range(0, len(texts), size)]


def common_length(feeds: list[dict[str, Any]], pad_id: int) -> list[dict[str, Any]]:
    """Pad every batch to the longest one: ORT's histogram calibrators (percentile, entropy) stack all batches."""
    import numpy as np

    width = max(f["input_ids"].shape[1] for f in feeds)
    out = []
    for f in feeds:
        extra = width - f["input_ids"].shape[1]
        out.append({"input_ids": np.pad(f["input_ids"], ((0, 0), (0, extra)), constant_values=pad_id),
                    "attention_mask": np.pad(f["attention_mask"], ((0, 0), (0, extra)), constant_values=0)})
    return out

