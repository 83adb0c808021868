"""Corpus specifications: local text files and folders (plain or .gz), or `datasets` datasets."""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from mlcompress.errors import CorpusError, InputError
from mlcompress.languages import normalize_language

_TEXT_SUFFIXES = (".txt", ".txt.gz", ".gz", ".text", ".tsv", ".tsv.gz")
_REPO_ROOT = Path(__file__).resolve().parents[1]
_SHARP_S = {"de"}  # word lists whose case folding wrote "ß" as "ss"
_WORD_FORMS = "forms-2: capitalised, German ss as ß"  # part of a word list's fingerprint: counts cached before differ


def default_data_dir() -> Path | None:
    """$MLCOMPRESS_DATA, else ../shared/data beside the repository (or the working directory), when present."""
    env = os.environ.get("MLCOMPRESS_DATA")
    for cand in ([Path(env)] if env else []) + [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
                                                 Path.cwd() / "shared" / "data"]:
        if cand.is_dir():
            return cand.absolute()
    return None


@dataclass(frozen=True)
class Corpus:
    """Text of one language: local files, or a `datasets` dataset read one column at a time.

    ``spec`` is what the user wrote: a file, a folder (every text file below it), or a dataset
    as ``NAME[?config=C&split=S&column=COL&max_lines=N]`` (``hf://`` prefix optional), or a
    word-frequency list, ``wordfreq:LANG[?n=N&wordlist=large]`` (the `wordfreq` package's lists,
    built from subtitles, Wikipedia, news, books, web text and social media): large-corpus
    statistics for languages with little raw text at hand.
    """

    spec: str
    files: tuple[Path, ...] = ()
    dataset: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    word_list: str | None = None

    @classmethod
    def parse(cls, spec: str | os.PathLike[str]) -> Corpus:
        """Read a corpus spec, checking that local files exist and are not empty."""
        text = str(spec)
        if text.startswith("wordfreq:"):
            return cls._word_list(text)
        path = Path(text.removeprefix("file://")).expanduser()
        if not text.startswith("hf://") and path.exists():
            if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
                return cls(text, dataset=str(path.absolute()), options={"from_disk": "1"})
            files = _text_files(path)
            if not files:
                raise CorpusError(f"corpus {text}: no text files found", "pass a .txt or .txt.gz file, or a folder of them")
            if all(f.stat().st_size == 0 for f in files):
                raise CorpusError(f"corpus {text} is empty", "pass a file with one sentence or paragraph per line")
            return cls(text, files=tuple(files))
        name, _, query = text.removeprefix("hf://").partition("?")
        if not name or "/" in name and (name.startswith((".", "/", "~")) or name.count("/") > 1):
            raise CorpusError(
                f"corpus {text}: no such file or folder",
                "pass an existing text file or folder, or a datasets id such as hf://wikimedia/wikipedia?config=20231101.de",
            )
        options = dict(parse_qsl(query))
        unknown = set(options) - {"config", "split", "column", "max_lines", "data_files"}
        if unknown:
            raise CorpusError(f"corpus {text}: unknown option(s) {sorted(unknown)}", "use config, split, column, max_lines, data_files")
        return cls(text, dataset=name, options=options)

    @classmethod
    def _word_list(cls, text: str) -> Corpus:
        lang, _, query = text.removeprefix("wordfreq:").partition("?")
        options = dict(parse_qsl(query))
        unknown = set(options) - {"n", "wordlist"}
        if unknown or not lang or ("n" in options and not options["n"].isdigit()):
            raise CorpusError(f"corpus {text}: bad word-list spec", "write wordfreq:LANG[?n=N&wordlist=large], e.g. wordfreq:pt?n=100000")
        try:
            import wordfreq
        except ImportError as exc:
            raise CorpusError(f"corpus {text} needs the wordfreq package", "pip install wordfreq (a dependency of mlcompress)") from exc
        if lang not in wordfreq.available_languages(options.get("wordlist", "large")):
            raise CorpusError(f"corpus {text}: wordfreq has no {options.get('wordlist', 'large')!r} list for {lang!r}",
                              "pick a language that wordfreq.available_languages() lists, or wordlist=best")
        return cls(text, options=options, word_list=lang)

    def word_counts(self) -> Iterator[tuple[str, int]]:
        """(word, count) of a word-frequency list: counts per 10 million words, at least 1.

        Each word is also counted capitalised (a tenth as often), as it is written at a sentence start. The lists are
        case-folded, which writes German "ß" as "ss": a German word with "ss" is counted with "ß" too ("weiss", "weiß").
        """
        import wordfreq

        freqs = wordfreq.get_frequency_dict(self.word_list, wordlist=self.options.get("wordlist", "large"))
        limit = int(self.options.get("n", len(freqs)))
        for listed, freq in list(freqs.items())[:limit]:
            count = max(1, round(freq * 1e7))
            forms = (listed, listed.replace("ss", "ß")) if self.word_list in _SHARP_S and "ss" in listed else (listed,)
            for word in forms:
                yield word, count
                cap = word[:1].upper() + word[1:]
                if cap != word:
                    yield cap, max(1, count // 10)

    def fingerprint(self) -> str:
        """A key that changes when the text may have changed (file sizes and times, or the dataset spec)."""
        digest = hashlib.sha256(self.spec.encode())
        for f in self.files:
            st = f.stat()
            digest.update(f"{f.absolute()}:{st.st_size}:{st.st_mtime_ns}".encode())
        digest.update(repr(sorted(self.options.items())).encode())
        if self.word_list is not None:
            digest.update(_WORD_FORMS.encode())  # how word_counts spells the list's words
        return digest.hexdigest()[:24]

    def lines(self) -> Iterator[str]:
        """Every non-empty line of text, without its line break (a word list yields its words)."""
        if self.word_list is not None:
            yield from (word for word, _ in self.word_counts())
            return
        if self.dataset is None:
            for f in self.files:
                opener = gzip.open if f.name.endswith(".gz") else open
                try:
                    with opener(f, "rt", encoding="utf-8") as handle:
                        for line in handle:
                            line = line.rstrip("\r\n")
                            if line:
                                yield line
                except (OSError, UnicodeDecodeError, EOFError) as exc:
                    raise CorpusError(f"corpus {f}: cannot read it as UTF-8 text ({exc})", "pass plain or gzip-compressed UTF-8 text") from exc
            return
        yield from self._dataset_lines()

    def _dataset_lines(self) -> Iterator[str]:
        import datasets

        opts = self.options
        limit = int(opts["max_lines"]) if "max_lines" in opts else None
        try:
            if opts.get("from_disk"):
                data = datasets.load_from_disk(self.dataset)
                if isinstance(data, datasets.DatasetDict):
                    data = data[opts.get("split", "train")]
            else:
                kwargs = {"split": opts.get("split", "train"), "streaming": True}
                if "data_files" in opts:
                    kwargs["data_files"] = opts["data_files"]
                data = datasets.load_dataset(self.dataset, opts.get("config"), **kwargs)
        except Exception as exc:
            raise CorpusError(
                f"corpus {self.spec}: could not load dataset ({type(exc).__name__}: {exc})",
                "check the dataset id, config and split, and your network; or pass local text files",
            ) from exc
        column = opts.get("column") or _text_column(data, self.spec)
        n = 0
        for row in data:
            value = row.get(column)
            if value is None:
                raise CorpusError(f"corpus {self.spec}: no column {column!r}", f"pick one of {sorted(row)} with column=NAME")
            for line in str(value).splitlines():
                if line:
                    yield line
                    n += 1
                    if limit is not None and n >= limit:
                        return


def _text_column(data: object, spec: str) -> str:
    """The dataset's text column: 'text' if present, else its only string column."""
    features = getattr(data, "features", None) or {}
    names = [k for k, v in features.items() if getattr(v, "dtype", None) in ("string", "large_string")]
    if "text" in features or not features:
        return "text"
    if len(names) == 1:
        return names[0]
    raise CorpusError(f"corpus {spec}: which column holds the text? {sorted(features)}", "add column=NAME to the corpus spec")


def _text_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(_TEXT_SUFFIXES) and not p.name.startswith("."))


def parse_corpora(corpora: Mapping[str, Any] | Iterable[str] | None) -> dict[str, list[Corpus]]:
    """Corpora per language from a mapping {lang: spec or [specs]} or CLI items 'lang=spec'."""
    if corpora is None:
        return {}
    items: list[tuple[str, Any]] = []
    if isinstance(corpora, Mapping):
        for lang, spec in corpora.items():
            specs = spec if isinstance(spec, (list, tuple)) else [spec]
            items += [(lang, s) for s in specs]
    else:
        for item in corpora:
            lang, sep, spec = str(item).partition("=")
            if not sep or not lang or not spec:
                raise InputError(f"bad --corpus {item!r}", "write it as LANG=PATH, e.g. --corpus de=data/de.txt.gz")
            items.append((lang, spec))
    out: dict[str, list[Corpus]] = {}
    for lang, spec in items:
        out.setdefault(normalize_language(lang), []).append(Corpus.parse(spec))
    return out
