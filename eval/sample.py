"""The eval sample shipped in the package: the first 200 Tatoeba pairs of each of a few languages with English (CC BY 2.0 FR,
attribution in its LICENSE.md), laid out like ``../shared/data`` (``tatoeba/tatoeba.<xxx>-eng.<xxx>.gz``), so that the
built-in job evaluates after a plain install. It supports retrieval, fidelity and efficiency; STS, POS and NLI need the
full data folder (``--data``)."""

from __future__ import annotations

import os
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "data_sample"
SAMPLE_PAIRS = 200
SAMPLE_TASKS = ("retrieval", "fidelity", "efficiency")
# English is paired with each of these (fidelity on English reads the English side of the German pairs)
SAMPLE_LANGUAGES = ("en", "de", "es", "fr", "it", "pt", "nl", "sv", "pl", "ru", "uk", "el", "tr", "fi", "ar", "he",
                    "hi", "ja", "zh", "ko", "vi")


def sample_data_dir() -> Path:
    """The packaged sample folder (a data folder with ``tatoeba/`` only)."""
    return SAMPLE_DIR


def sample_sentences(language: str) -> Path:
    """The sample's file of ``language`` sentences (English: the English side of the German pairs)."""
    from mlcompress.languages import tatoeba_code

    if language == "en":
        return SAMPLE_DIR / "tatoeba" / "tatoeba.deu-eng.eng.gz"
    code = tatoeba_code(language)
    return SAMPLE_DIR / "tatoeba" / f"tatoeba.{code}-eng.{code}.gz"


def is_sample_data(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is the packaged sample folder."""
    if path is None:
        return False
    try:
        return Path(path).expanduser().resolve() == SAMPLE_DIR
    except OSError:
        return False


def sample_note(languages: list[str], tasks: list[str] | None = None) -> str:
    """What a run on the sample measures (``tasks``: those that ran; None: not known yet), for the pipeline's output
    and report."""
    what = f"{', '.join(tasks)} on {', '.join(languages)}" if tasks else f"the tasks it supports, on {', '.join(languages)}"
    return (f"evaluated on the packaged Tatoeba sample ({SAMPLE_PAIRS} pairs per language with English, CC BY 2.0 FR): "
            f"{what}; STS, POS and NLI need the full data folder (--data DIR)")
