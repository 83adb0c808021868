"""Shared test fixtures: the real data under ../shared/data, a private cache, quiet transformers."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MLCOMPRESS_DATA", ROOT.parent / "shared" / "data"))


def read_lines(path: Path, n: int | None = None, skip: int = 0) -> list[str]:
    """Non-empty lines of a (gzip) text file: skip the first ``skip``, then take ``n``."""
    opener = gzip.open if path.name.endswith(".gz") else open
    out: list[str] = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for i, line in enumerate(x for x in (raw.rstrip("\r\n") for raw in handle) if x):
            if i < skip:
                continue
            out.append(line)
            if n is not None and len(out) >= n:
                break
    return out


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data; tests that need it fail loudly if it is missing (CI always has it)."""
    assert DATA.is_dir(), f"shared data not found at {DATA} (set MLCOMPRESS_DATA)"
    return DATA


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test session gets its own count cache, so tests never read counts from a user's cache."""
    cache = tmp_path_factory.getbasetemp() / "mlcompress-cache"
    monkeypatch.setenv("MLCOMPRESS_CACHE", str(cache))


def pytest_configure(config: pytest.Config) -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
