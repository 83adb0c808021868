"""Readers for each eval task's data: the layouts of ``../shared/data`` and ``datasets`` ids.

The train/test rules of the data README are kept here, in one place:
- POS: train on English (``xtreme_udpos/train-en``), test on ``xtreme_udpos/dev-<lang>``.
- NLI: train on the first rows of ``xnli/dev-en``; test on the *other* rows of ``xnli/dev-<lang>``
  (the rows are translations of the same items, so a trained row index is never tested).
- STS: SemEval-2017 tracks 1-5 (track 6 is not line-aligned and is never read); STSb-multi-mt
  (machine-translated) only where no human STS17 track exists, labelled as such.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from mlcompress.errors import InputError
from mlcompress.languages import tatoeba_code

TASKS = ("fidelity", "retrieval", "pos", "nli", "sts", "efficiency")

_STS17 = {  # track file stem -> (lang1, lang2); track 6 (tr-en) is left out: its gold file is not line-aligned
    "track1.ar-ar": ("ar", "ar"), "track2.ar-en": ("ar", "en"), "track3.es-es": ("es", "es"),
    "track4a.es-en": ("es", "en"), "track4b.es-en": ("es", "en"), "track5.en-en": ("en", "en"),
}
_NLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}


def parse_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Validate a task list ("retrieval,pos" or a list) and return it in canonical order."""
    items = [t.strip().lower() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    unknown = [t for t in items if t not in TASKS]
    if unknown or not items:
        raise InputError(f"unknown task(s): {', '.join(unknown) or '(none given)'}",
                         f"choose from {','.join(TASKS)}, e.g. --tasks retrieval,pos,sts")
    return [t for t in TASKS if t in items]


def read_lines(path: Path, n: int | None = None, skip: int = 0) -> list[str]:
    """Lines of a plain or gzip text file (newline stripped, empty lines kept): skip ``skip``, take ``n``."""
    opener = gzip.open if path.name.endswith(".gz") else open
    out: list[str] = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for i, raw in enumerate(handle):
            if i < skip:
                continue
            if n is not None and len(out) >= n:
                break
            out.append(raw.rstrip("\r\n"))
    return out


def _find(base: Path, stem: str) -> Path | None:
    """``base/stem.gz`` or ``base/stem``, whichever exists."""
    for candidate in (base / f"{stem}.gz", base / stem):
        if candidate.is_file():
            return candidate
    return None


@dataclass
class Bitext:
    """Line-aligned translation pairs: ``src[i]`` translates ``tgt[i]``."""

    src: list[str]
    tgt: list[str]
    origin: str


@dataclass
class TaggedSentences:
    """Pre-tokenised sentences with one tag per word."""

    words: list[list[str]]
    tags: list[list[str]]
    origin: str


@dataclass
class SentencePairs:
    """Sentence pairs with a label (class index) or a gold score."""

    a: list[str]
    b: list[str]
    labels: list[float]
    origin: str
    note: str = ""
    key: str = ""  # the language or language pair it measures, e.g. "ar-en"


@dataclass
class DataSource:
    """Where each task reads its data: a folder laid out like ``../shared/data``, plus optional ``datasets`` ids."""

    root: Path | None
    hub: dict[str, str] = field(default_factory=dict)  # "retrieval:de" -> "hf://NAME?config=..&split=..&columns=a,b"

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None, hub: dict[str, str] | None = None) -> DataSource:
        """Check the data folder exists (when given) and return the source."""
        path = Path(root).expanduser() if root is not None else None
        if path is not None and not path.is_dir():
            raise InputError(f"data folder {path} does not exist",
                             "pass --data DIR, a folder laid out like ../shared/data (tatoeba/, xtreme_udpos/, xnli/, sts/)")
        if path is None and not hub:
            raise InputError("no data given", "pass --data DIR (a folder laid out like ../shared/data) or datasets ids")
        return cls(path, dict(hub or {}))

    # ------------------------------------------------------------------ availability (checked before any work)
    def missing(self, task: str, lang: str) -> str | None:
        """Why ``task`` has no data for ``lang`` (None when it has)."""
        if task in ("efficiency",):
            return None
        if f"{task}:{lang}" in self.hub:
            return None
        if self.root is None:
            return f"no datasets id for {task}:{lang} and no --data folder"
        r = self.root
        if task in ("retrieval", "fidelity"):
            if lang == "en" and task == "retrieval":
                return "Tatoeba pairs are <lang>-English; English has no pair of its own"
            if lang == "en":
                return None if _find(r / "tatoeba", "tatoeba.deu-eng.eng") else "missing tatoeba/tatoeba.deu-eng.eng.gz"
            code = tatoeba_code(lang)
            stem = f"tatoeba.{code}-eng.{code}"
            return None if _find(r / "tatoeba", stem) else f"missing tatoeba/{stem}.gz"
        if task == "pos":
            if not _find(r / "xtreme_udpos", "train-en.tsv"):
                return "missing xtreme_udpos/train-en.tsv.gz (English training set)"
            return None if _find(r / "xtreme_udpos", f"dev-{lang}.tsv") else f"missing xtreme_udpos/dev-{lang}.tsv.gz"
        if task == "nli":
            if not _find(r / "xnli", "dev-en.tsv"):
                return "missing xnli/dev-en.tsv.gz (English training rows)"
            return None if _find(r / "xnli", f"dev-{lang}.tsv") else f"missing xnli/dev-{lang}.tsv.gz"
        if task == "sts":
            return None if self.sts_sets(lang) else f"no STS17 track and no stsb_multi_mt file for {lang}"
        raise InputError(f"unknown task {task!r}", f"choose from {','.join(TASKS)}")

    # ------------------------------------------------------------------ readers
    def bitext(self, lang: str, n: int | None) -> Bitext:
        """Tatoeba pairs ``lang``-English (first ``n``)."""
        hub = self.hub.get(f"retrieval:{lang}")
        if hub:
            a, b = hub_columns(hub, 2, n)
            return Bitext(a, b, hub)
        code = tatoeba_code(lang)
        base = self.root / "tatoeba"
        src_path = _find(base, f"tatoeba.{code}-eng.{code}")
        tgt_path = _find(base, f"tatoeba.{code}-eng.eng")
        src, tgt = read_lines(src_path, n), read_lines(tgt_path, n)
        if len(src) != len(tgt):
            raise InputError(f"{src_path} and {tgt_path} have different line counts", "the two sides must be line-aligned")
        return Bitext(src, tgt, str(src_path))

    def sentences(self, lang: str, n: int) -> tuple[list[str], str]:
        """Target-language sentences for fidelity (the Tatoeba side of ``lang``, held out from any trim corpus)."""
        hub = self.hub.get(f"fidelity:{lang}")
        if hub:
            (a,) = hub_columns(hub, 1, n)
            return a, hub
        if lang == "en":
            path = _find(self.root / "tatoeba", "tatoeba.deu-eng.eng")
            return [x for x in read_lines(path, n) if x], str(path)
        bt = self.bitext(lang, n)
        return [x for x in bt.src if x], bt.origin

    def pos_train(self, n: int | None) -> TaggedSentences:
        """English POS training sentences (XTREME UD-POS train-en)."""
        path = _find(self.root / "xtreme_udpos", "train-en.tsv")
        return read_conll_tsv(path, n)

    def pos_test(self, lang: str, n: int | None) -> TaggedSentences:
        """Target-language POS test sentences (XTREME UD-POS dev-<lang>)."""
        path = _find(self.root / "xtreme_udpos", f"dev-{lang}.tsv")
        return read_conll_tsv(path, n)

    def nli_train(self, n: int) -> SentencePairs:
        """Rows ``[0, n)`` of ``xnli/dev-en`` (at most half the file, so rows are left to test on): the English training split."""
        path = _find(self.root / "xnli", "dev-en.tsv")
        total = sum(1 for _ in read_lines(path))
        return read_xnli(path, 0, min(n, total // 2))

    def nli_test(self, lang: str, skip: int, n: int | None) -> SentencePairs:
        """Rows ``[skip, skip + n)`` of ``xnli/dev-<lang>``: never a row index that was trained on."""
        pairs = read_xnli(_find(self.root / "xnli", f"dev-{lang}.tsv"), skip, n)
        if not pairs.a:
            raise InputError(f"xnli/dev-{lang}: no rows after the {skip} English training rows",
                             "give a longer dev file (rows are parallel across languages), or fewer training rows")
        return pairs

    def sts_sets(self, lang: str) -> list[tuple[str, str, Path, Path | None]]:
        """The STS sets that involve ``lang``: (name, language pair, input, gold or None for the STSb-multi-mt CSV)."""
        if self.root is None:
            return []
        out = []
        base = self.root / "sts" / "sts17_crosslingual"
        for stem, (l1, l2) in _STS17.items():
            if lang in (l1, l2):
                inp, gold = _find(base, f"STS.input.{stem}.txt"), _find(base, f"STS.gs.{stem}.txt")
                if inp and gold:
                    track = stem.split(".")[0]
                    suffix = f" ({track[-2:]})" if track[-1] in "ab" else ""
                    out.append((f"sts17 {track} {l1}-{l2}", f"{l1}-{l2}{suffix}", inp, gold))
        if not out:
            mt = _find(self.root / "sts" / "stsb_multi_mt", f"stsb-{lang}-test.csv")
            if mt:
                out.append((f"stsb-multi-mt {lang}-{lang} (machine-translated)", f"{lang}-{lang}", mt, None))
        return out

    def sts(self, lang: str, n: int | None) -> list[SentencePairs]:
        """Every STS set for ``lang`` (first ``n`` pairs of each)."""
        hub = self.hub.get(f"sts:{lang}")
        if hub:
            a, b, s = hub_columns(hub, 3, n)
            return [SentencePairs(a, b, [float(x) for x in s], hub, key=lang)]
        sets = []
        for name, key, inp, gold in self.sts_sets(lang):
            if gold is None:
                a, b, s = [], [], []
                text = gzip.open(inp, "rt", encoding="utf-8").read() if inp.name.endswith(".gz") else inp.read_text("utf-8")
                for row in csv.reader(io.StringIO(text)):
                    if len(row) >= 3:
                        a.append(row[0]), b.append(row[1]), s.append(float(row[2]))
                note = "machine-translated (STSb-multi-mt, DeepL); gold scores from English STSb"
            else:
                pairs = [line.split("\t") for line in read_lines(inp)]
                golds = read_lines(gold)
                if len(pairs) != len(golds):
                    raise InputError(f"{inp} has {len(pairs)} pairs but {gold} {len(golds)} scores",
                                     "STS input and gold files must be line-aligned")
                a, b, s = [], [], []
                for (pair, g) in zip(pairs, golds):
                    if len(pair) >= 2 and g.strip():
                        a.append(pair[0]), b.append(pair[1]), s.append(float(g))
                note = ""
            k = len(a) if n is None else min(n, len(a))
            sets.append(SentencePairs(a[:k], b[:k], s[:k], name, note, key))
        return sets


def read_conll_tsv(path: Path, n: int | None = None) -> TaggedSentences:
    """XTREME ``token<TAB>tag`` files, a blank line between sentences (first ``n`` sentences)."""
    words: list[list[str]] = []
    tags: list[list[str]] = []
    cur_w: list[str] = []
    cur_t: list[str] = []
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for raw in handle:
            line = raw.rstrip("\r\n")
            if not line.strip():
                if cur_w:
                    words.append(cur_w), tags.append(cur_t)
                    cur_w, cur_t = [], []
                    if n is not None and len(words) >= n:
                        break
                continue
            parts = line.split("\t")
            if len(parts) < 2 or not parts[0].strip():
                continue
            cur_w.append(parts[0]), cur_t.append(parts[-1])
    if cur_w and (n is None or len(words) < n):
        words.append(cur_w), tags.append(cur_t)
    return TaggedSentences(words, tags, str(path))


def read_xnli(path: Path, skip: int, n: int | None) -> SentencePairs:
    """Rows ``[skip, skip+n)`` of an XTREME XNLI ``premise<TAB>hypothesis<TAB>label`` file."""
    a, b, y = [], [], []
    for line in read_lines(path, n, skip):
        parts = line.split("\t")
        if len(parts) < 3 or parts[2].strip().lower() not in _NLI_LABELS:
            raise InputError(f"{path}: row without an NLI label: {line[:80]!r}",
                             "use a labelled XNLI dev file (premise<TAB>hypothesis<TAB>label)")
        a.append(parts[0]), b.append(parts[1]), y.append(_NLI_LABELS[parts[2].strip().lower()])
    return SentencePairs(a, b, y, f"{path} rows {skip}-{skip + len(a)}")


def parse_hub_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``hf://NAME?config=C&split=S&columns=a,b`` (or a ``save_to_disk`` folder) -> (name or path, options)."""
    parsed = urlparse(spec)
    if parsed.scheme not in ("hf", "disk"):
        raise InputError(f"bad datasets id {spec!r}", "write hf://NAME?config=C&split=S&columns=COL1,COL2 or disk://PATH?columns=...")
    name = (parsed.netloc + parsed.path) if parsed.scheme == "hf" else (parsed.netloc + parsed.path)
    opts = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    if "columns" not in opts:
        raise InputError(f"datasets id {spec!r} names no columns", "add &columns=COL1,COL2 (text columns in order; a score column last for STS)")
    return name, opts


def hub_columns(spec: str, k: int, n: int | None) -> list[list]:
    """The first ``n`` rows of ``k`` columns of a ``datasets`` dataset (hf://...) or a save_to_disk folder (disk://...)."""
    import datasets

    name, opts = parse_hub_spec(spec)
    cols = opts["columns"].split(",")
    if len(cols) != k:
        raise InputError(f"datasets id {spec!r} names {len(cols)} columns, this task needs {k}", "list them in &columns=")
    try:
        if spec.startswith("disk://"):
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[opts.get("split", "test")]
        else:
            ds = datasets.load_dataset(name, opts.get("config"), split=opts.get("split", "test"))
    except Exception as exc:
        raise InputError(f"could not load {spec}: {type(exc).__name__}: {exc}",
                         "check the dataset id, its config and split, and your network") from exc
    missing = [c for c in cols if c not in ds.column_names]
    if missing:
        raise InputError(f"{spec}: no column(s) {missing}", f"its columns are {ds.column_names}")
    if n is not None:
        ds = ds.select(range(min(n, len(ds))))
    return [list(ds[c]) for c in cols]
