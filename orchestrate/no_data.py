"""The built-in job without a data folder (a plain install): the trim reads wordfreq's word lists, eval the Tatoeba
sample shipped in the package (retrieval, fidelity, efficiency), and distillation, which needs running text, is skipped.

Importing this module is light: no torch, no transformers.
"""

from __future__ import annotations

from typing import Any

from mlcompress.errors import InputError
from mlcompress.languages import parse_languages

WORD_LIST_WORDS = 50_000
"""Words per language the trim counts when there is no text. On e5-small en+de: 37,410 tokens (the trim on
../shared/data/mono keeps 36,641), and 99.0% of the Tatoeba deu-eng sentences keep every token (mono: 97.2%); the top
20,000 words alone keep 25,687 tokens and miss a token in 7% of those sentences."""
WORD_LIST_PREFIX = "wordfreq:"


def word_list_spec(language: str) -> str:
    """The corpus spec of ``language``'s word-frequency list (``mlcompress.corpus``)."""
    return f"{WORD_LIST_PREFIX}{language}?wordlist=best&n={WORD_LIST_WORDS}"


def word_list_only(corpora: dict[str, list[str]]) -> list[str]:
    """The languages whose corpora are all word-frequency lists: no running text to distil on."""
    return [lang for lang, specs in corpora.items() if specs and all(s.startswith(WORD_LIST_PREFIX) for s in specs)]


def sample_config(languages: str | list[str], source: str) -> dict[str, Any]:
    """The built-in job's raw config when no data folder is found: word lists for the trim, the packaged sample for eval.

    Languages the sample has no Tatoeba pairs for are refused, naming ``--data``.
    """
    from mlcompress.eval import SAMPLE_LANGUAGES, SAMPLE_TASKS, sample_data_dir

    langs = parse_languages(languages)
    outside = [lang for lang in langs if lang not in SAMPLE_LANGUAGES]
    if outside:
        raise InputError(f"no data folder (no --data, no $MLCOMPRESS_DATA, no ../shared/data), and the eval sample "
                         f"packaged with mlcompress has no text for {', '.join(outside)}",
                         "pass --data DIR, a folder laid out like ../shared/data (mono/<lang>.txt.gz, tatoeba/, sts/), "
                         "or set MLCOMPRESS_DATA; without one, the built-in job runs on " + ", ".join(SAMPLE_LANGUAGES))
    return {"source": source, "languages": langs, "data": str(sample_data_dir()),
            "corpora": {lang: [word_list_spec(lang)] for lang in langs},
            "stages": {"trim": {}, "distill": {}, "export": {}, "eval": {"tasks": ",".join(SAMPLE_TASKS)}}}


def export_texts(cfg: dict[str, Any], corpora: dict[str, list[str]]) -> dict[str, list[str]]:
    """The text an export checks parity and times latency on: the corpora, except a word list on the packaged sample,
    whose sentences stand in for it (a word is no sentence-length input)."""
    from mlcompress.eval import is_sample_data, sample_sentences

    if not is_sample_data(cfg["data"]):
        return corpora
    lists = word_list_only(corpora)
    return {lang: [str(sample_sentences(lang))] if lang in lists else specs for lang, specs in corpora.items()}


def sample_announcement(cfg: dict[str, Any]) -> str | None:
    """What a run on the packaged sample does differently, said before it starts (None for any other data folder)."""
    from mlcompress.eval import is_sample_data, sample_note

    if not is_sample_data(cfg["data"]):
        return None
    lists = word_list_only(cfg["corpora"] or {})
    trim = (f"trim on wordfreq's word lists of {', '.join(lists)} (no running text), export checked on the sample's "
            "sentences" if lists else None)
    return "no data folder: " + "; ".join(x for x in (trim, sample_note(cfg["languages"])) if x)
