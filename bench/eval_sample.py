"""Build (or check) the eval sample shipped in the package, eval/data_sample/, from ../shared/data/tatoeba.

The first 200 pairs of each language in ``mlcompress.eval.sample.SAMPLE_LANGUAGES`` with English (LASER's Tatoeba v1
test set, sentences CC BY 2.0 FR), written as reproducible gzip files (no name, mtime 0). ``--check`` compares the
shipped files with what the data folder gives and prints the total size.

    .venv/bin/python bench/eval_sample.py [--data ../shared/data] [--check]
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sample_bytes(source: Path, n: int) -> bytes:
    """The first ``n`` lines of a gzip text file, gzip-compressed reproducibly."""
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(n)]
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as out:
        out.write("".join(lines).encode("utf-8"))
    return buffer.getvalue()


def main() -> int:
    from mlcompress.eval.sample import SAMPLE_DIR, SAMPLE_LANGUAGES, SAMPLE_PAIRS
    from mlcompress.languages import tatoeba_code

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--check", action="store_true", help="compare the shipped files, write nothing")
    args = parser.parse_args()
    differ, total = [], 0
    for lang in SAMPLE_LANGUAGES:
        if lang == "en":
            continue
        code = tatoeba_code(lang)
        for side in (code, "eng"):
            name = f"tatoeba/tatoeba.{code}-eng.{side}.gz"
            blob = sample_bytes(args.data / name, SAMPLE_PAIRS)
            target = SAMPLE_DIR / name
            total += len(blob)
            if args.check:
                if not target.is_file() or target.read_bytes() != blob:
                    differ.append(name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blob)
    print(f"{len(SAMPLE_LANGUAGES) - 1} languages with English, {SAMPLE_PAIRS} pairs each, {total:,} bytes"
          + (f"; differ: {', '.join(differ)}" if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
