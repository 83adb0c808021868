"""Shared test fixtures: the real data under ../shared/data, a private cache, quiet transformers."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _share_the_cores() -> None:
    """Under pytest-xdist, give each worker its share of the CPU's cores for torch's OpenMP threads (set before torch
    loads, inherited by the processes tests start): two workers of two threads each on a 2-core CI machine fight for
    the cores while OpenMP threads spin between the tiny models' many small ops. ``OMP_NUM_THREADS`` set by the user
    wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


_share_the_cores()
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



def write_gz(path: Path, lines: list[str]) -> None:
    """A gzip text file of the lines (corpora and eval sets laid out like ../shared/data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def tiny_pipeline_data(base: Path, data_dir: Path) -> Path:
    """A data folder laid out like ../shared/data with a little of it: mono/en, mono/de, Tatoeba deu-eng."""
    data = base / "data"
    for lang in ("en", "de"):
        write_gz(data / f"mono/{lang}.txt.gz", read_lines(data_dir / f"mono/{lang}.txt.gz", 200, skip=1000))
    for side in ("deu", "eng"):
        name = f"tatoeba/tatoeba.deu-eng.{side}.gz"
        write_gz(data / name, read_lines(data_dir / name, 80))
    return data


def tiny_e5_teacher(path: Path) -> Path:
    """A tiny E5-style sentence encoder (``query: `` prefix, mean pooling, sentence-transformers layout) to distil."""
    from tiny_models import build_bert_teacher, training_lines

    from mlcompress.embedding_profile import E5_PREFIX, EmbeddingProfile
    from mlcompress.st_layout import layout_for, write_layout

    out = build_bert_teacher(path, training_lines(DATA), initializer_range=0.5)
    write_layout(out, layout_for(EmbeddingProfile(E5_PREFIX, "mean", True)), 32)
    return out


def cpu_train_config(**changes):
    """A few fp32 CPU steps of 16 sentences, checkpointed every 3, for distillation tests."""
    from mlcompress.distill import TrainConfig

    base = dict(steps=8, batch_size=16, lr=1e-3, checkpoint_every=3, log_every=1, progress=False, device="cpu",
                mixed_precision="no")
    return TrainConfig(**{**base, **changes})


def pipeline_app():
    """A root typer app with only the pipeline commands mounted (pipeline, inspect)."""
    import typer

    from mlcompress.orchestrate.pipeline_cli import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    register(app)
    return app

@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data; tests that need it fail loudly if it is missing (CI always has it)."""
    assert DATA.is_dir(), f"shared data not found at {DATA} (set MLCOMPRESS_DATA)"
    return DATA


def run_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shared by every worker of this run (and the processes its tests start): pytest's base temp folder's
    parent under xdist (popen-gwN's), the base temp folder itself otherwise."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "run-cache"


@pytest.fixture(scope="session", autouse=True)
def _run_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Caches for the whole run, shared by its workers: exported graphs (MLCOMPRESS_GRAPH_CACHE: the tiny models are
    exported again and again with other quantisations, and tracing one costs 10-25 s on a 2-core CPU) and the tiny
    models' trained tokenizers (tiny_models.TOKENIZER_CACHE_ENV). Set before any module fixture builds a model."""
    from tiny_models import TOKENIZER_CACHE_ENV

    os.environ["MLCOMPRESS_GRAPH_CACHE"] = str(run_cache(tmp_path_factory) / "graphs")
    os.environ[TOKENIZER_CACHE_ENV] = str(run_cache(tmp_path_factory) / "tokenizers")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test session gets its own count cache, so tests never read counts from a user's cache."""
    cache = tmp_path_factory.getbasetemp() / "mlcompress-cache"
    monkeypatch.setenv("MLCOMPRESS_CACHE", str(cache))


def pytest_configure(config: pytest.Config) -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
