"""Run the ``mlcompress`` CLI in this (child) process with one fault injected, for the fault matrix.

    python fault_child.py --disk-full BYTES -- trim ...     every write past BYTES in a file fails (RLIMIT_FSIZE, EFBIG),
                                                             as on a full disk
    python fault_child.py --kill write:MARK[:N] -- ...      SIGKILL half-way through the N-th text file written to a path
                                                             containing MARK (default the first)
    python fault_child.py --kill rename:MARK -- ...         SIGKILL just before a path containing MARK is renamed into place
    python fault_child.py --kill archive -- ...             SIGKILL after the first member of a bundle archive is written

The kill is the process's own SIGKILL: no handler, no ``finally``, no cleanup runs, as when the OOM killer or a power
cut stops a run. The parent checks what is left on disk.
"""

from __future__ import annotations

import os
import pathlib
import resource
import signal
import sys
import tarfile


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_on_write(mark: str, nth: int = 1) -> None:
    """Write half of the ``nth`` matching text file, then die."""
    original = pathlib.Path.write_text
    seen = [0]

    def write_text(self: pathlib.Path, data: str, *args: object, **kwargs: object) -> int:
        if mark in str(self):
            seen[0] += 1
            if seen[0] == nth:
                original(self, data[: len(data) // 2], *args, **kwargs)
                _die()
        return original(self, data, *args, **kwargs)

    pathlib.Path.write_text = write_text  # type: ignore[method-assign]


def kill_on_rename(mark: str) -> None:
    """Die just before a staged path containing ``mark`` is renamed (os.rename, os.replace, or the atomic exchange
    that replaces a previous artifact) into place."""
    import mlcompress.artifacts as artifacts

    for owner, name in ((os, "rename"), (os, "replace"), (artifacts, "_exchange")):
        original = getattr(owner, name)

        def patched(src: object, dst: object, *args: object, _original=original, **kwargs: object) -> object:
            if mark in os.path.basename(os.fspath(src)):
                _die()
            return _original(src, dst, *args, **kwargs)

        setattr(owner, name, patched)


def kill_in_archive() -> None:
    """Die once the first file member has gone into a .tar.gz (the archive is half written)."""
    original = tarfile.TarFile.add

    def add(self: tarfile.TarFile, name: str, *args: object, **kwargs: object) -> None:
        original(self, name, *args, **kwargs)
        if os.path.isfile(name):
            self.fileobj.flush()
            _die()

    tarfile.TarFile.add = add  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    split = argv.index("--")
    opts, args = argv[:split], argv[split + 1:]
    if opts[0] == "--disk-full":
        limit = int(opts[1])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    elif opts[0] == "--kill":
        kind, _, rest = opts[1].partition(":")
        if kind == "write":
            mark, _, nth = rest.partition(":")
            kill_on_write(mark, int(nth or 1))
        elif kind == "rename":
            kill_on_rename(rest)
        elif kind == "archive":
            kill_in_archive()
        else:
            raise SystemExit(f"unknown kill point {opts[1]}")
    from mlcompress.orchestrate.cli import main as cli_main

    sys.argv = ["mlcompress", *args]
    cli_main()


if __name__ == "__main__":
    main(sys.argv[1:])
