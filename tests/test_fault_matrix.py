"""The fault matrix: what a user sees when a stage meets bad input, one row per (stage, fault).

Every row expects the same outcome, checked the same way:

- a clear error: the CLI (``mlcompress.cli.main``, run in this process) exits 2 and prints ``error:`` and ``hint:``
  with no traceback; the Python API raises an ``MlcompressError`` with a hint;
- nothing changed on disk: every file under the row's work folder (inputs, outputs, the previous artifact) has
  the same bytes afterwards, no temporary folder is left beside the output or in the system temp folder;
- a previous artifact left intact: each row runs with ``--overwrite`` onto an existing artifact, which a failed
  or killed run must not touch.

A SIGKILL of a pipeline in each of its stages (the distill stage included) is in test_pipeline.py.

| stage | fault | expected error (fragment) |
| --- | --- | --- |
| trim, export, distill, eval | config.json missing / corrupt | no config.json / unreadable config.json |
| trim, export, distill, eval | model.safetensors corrupt (truncated) | could not load |
| trim, export, distill, eval | tokenizer.json corrupt | could not load its tokenizer |
| trim, export, distill | corpus: truncated gzip / not UTF-8 / empty | cannot read it as UTF-8 / is empty |
| trim, export | corpus: a 1 MB line | no error: the stage reads it and writes its artifact |
| trim, export, distill, eval | unknown language / existing output without --overwrite | unknown language / already exists |
| trim, export, distill, eval | a read-only output folder | cannot write into (before any model is loaded) |
| trim, export, distill, eval | a full disk (a file-size limit in a child process) | the disk ran out of space |
| trim, export, distill, eval | SIGKILL half-way through a write (trim also: just before the rename; export also: the .tar.gz; distill: a checkpoint) | none: the previous artifact is intact, the rerun completes and sweeps the leftovers |
| (any) | a replacement killed between its two renames (no atomic exchange) | none: the next run puts the previous artifact back |
| export | the quantiser or ONNX Runtime raises | ... failed (an ExportError) |
| bundle verify, runtime.load | changed byte, manifest changed by hand | sha256 / digest |
| bundle verify, runtime.load | manifest model outside the bundle (`..`, absolute), not a verified file | outside / not among |
| bundle verify, runtime.load | tokenizer.json a symlink out of the bundle, manifest missing fields | link / lacks field |
| bundle verify, runtime.load | .tar.gz: truncated, `..` member, absolute member, symlink, hardlink, device | refusing / not readable |
| bundle verify, runtime.load | .tar.gz: member larger than the manifest declares, decompression bomb | declares / limit |

Faults in the order of events (another process, rank or host acting in between): nothing is lost.

| stage | fault | expected outcome |
| --- | --- | --- |
| pipeline | `--force` (also after a damaged pipeline.json) on an interrupted distillation | it resumes from its checkpoints |
| pipeline | interrupted distillation, its model changed since | started from other inputs (until `restart: true`) |
| trim | a corrupt token-count cache file / two processes saving the same entry at once | recount with a warning / both saved |
| bundled model | a build another process renamed into place just after this one looked | that build is kept and used |
| distill task, teacher | another rank returns before the output is written | a barrier after the write |
| distill | work dir held on another host / by a live process here | in use by process PID on host H / on this host |
| distill | work dir whose owner exited, a reused pid, another host silent for 20 min | none: taken over (control rows) |
| distill (loop) | the checkpoint marker written before another rank finished its part | marker only after the barrier |
| distill | fp16 on a CPU / bf16 on a GPU without bf16 | fp16 / bf16 |
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import read_lines
from mlcompress.errors import MlcompressError, OutputExistsError

# ----------------------------------------------------------------------------------------------- shared inputs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny mBERT-style masked LM that both trim and export accept."""
    from tiny_models import build_bert, training_lines

    return build_bert(tmp_path_factory.mktemp("fault-model") / "bert", training_lines(data_dir)).path


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """Small English and German corpora (real text), as plain files."""
    base = tmp_path_factory.mktemp("fault-texts")
    out = {}
    for lang in ("en", "de"):
        out[lang] = base / f"{lang}.txt"
        out[lang].write_text("\n".join(read_lines(data_dir / "mono" / f"{lang}.txt.gz", 60, skip=500)) + "\n", encoding="utf-8")
    return out


GRAPH = "onnx/model.onnx"  # an unquantised export's graph (transformers.js's fp32 name)


@pytest.fixture(scope="module")
def good_bundle(model_dir: Path, texts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verified, unquantised edge bundle of the tiny model."""
    from mlcompress.export import export

    out = tmp_path_factory.mktemp("fault-bundle") / "bundle"
    export(model_dir, out, quantize="none", bundle=True, texts={k: str(v) for k, v in texts.items()},
           measure_latency=False, parity_texts=8, calibration_texts=8)
    return out


@dataclass
class Work:
    """One row's folder: its inputs, and the output path where a previous artifact already sits."""

    root: Path
    model: Path
    corpora: dict[str, Path]
    output: Path
    source: Path  # an untouched copy of the model (eval compares the row's model against it)
    data: Path
    system_temp: Path


@pytest.fixture()
def work(tmp_path: Path, model_dir: Path, texts: dict[str, Path], monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> Work:
    """A private copy of the model and corpora, a previous artifact at the output, and a private system temp folder."""
    root = tmp_path / "work"
    shutil.copytree(model_dir, root / "model")
    corpora = {lang: Path(shutil.copy(p, root / p.name)) for lang, p in texts.items()}
    output = root / "out"
    output.mkdir()
    (output / "model.safetensors").write_bytes(b"previous weights")
    (output / "mlcompress.json").write_text('{"stage": "previous"}\n', encoding="utf-8")
    systmp = tmp_path / "system-temp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    return Work(root, root / "model", corpora, output, model_dir, data_dir, systmp)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the sha256 of its bytes (folders and links marked as such)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + str(p.readlink())
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the console entry point in this process; return (exit code, stderr). Any non-mlcompress error propagates."""
    from mlcompress.orchestrate.cli import main

    monkeypatch.setattr(sys, "argv", ["mlcompress", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return int(info.value.code or 0), capsys.readouterr().err


def assert_clear_cli_error(code: int, stderr: str, fragment: str) -> None:
    assert code == 2, stderr
    assert "error:" in stderr and "hint:" in stderr and "Traceback" not in stderr, stderr
    assert fragment.lower() in stderr.lower().replace("\n", " "), stderr


# ------------------------------------------------------------------------------------------ faults on inputs


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_json(path: Path) -> None:
    path.write_text('{"model_type": "bert", "vocab_size": ', encoding="utf-8")


def truncated_gzip(path: Path) -> None:
    data = gzip.compress(path.read_bytes())
    path.with_suffix(".txt.gz").write_bytes(data[: len(data) // 2])


def not_utf8(path: Path) -> None:
    path.write_bytes("Grüße aus München\n".encode("latin-1") * 20)


# (name, what to break, which corpus file the stage reads for English, expected fragment)
INPUT_FAULTS: list[tuple[str, Callable[[Work], None], str, str]] = [
    ("config.json missing", lambda w: (w.model / "config.json").unlink(), "en.txt", "no config.json"),
    ("config.json corrupt", lambda w: corrupt_json(w.model / "config.json"), "en.txt", "config.json"),
    ("model.safetensors corrupt", lambda w: truncate(w.model / "model.safetensors"), "en.txt", "could not load"),
    ("tokenizer.json corrupt", lambda w: corrupt_json(w.model / "tokenizer.json"), "en.txt", "tokenizer"),
    ("corpus: truncated gzip", lambda w: truncated_gzip(w.corpora["en"]), "en.txt.gz", "cannot read it as UTF-8"),
    ("corpus: not UTF-8", lambda w: not_utf8(w.corpora["en"]), "en.txt", "cannot read it as UTF-8"),
    ("corpus: empty", lambda w: w.corpora["en"].write_bytes(b""), "en.txt", "empty"),
]


STAGES = ["trim", "export", "distill", "eval"]
# a few optimizer steps on short blocks: enough to reach the write, in seconds
DISTILL_QUICK = ["--objective", "bistil", "--steps", "2", "--batch-size", "4", "--block-size", "32", "--max-blocks", "8",
                 "--checkpoint-every", "1", "--device", "cpu", "--precision", "no"]
EVAL_QUICK = ["--tasks", "retrieval", "--max-examples", "16", "--transfer", "probe"]


def stage_args(stage: str, w: Work, en: str, languages: str = "en,de", overwrite: bool = True,
               output: Path | None = None) -> list[str]:
    """The command line of ``stage`` on the row's inputs, writing onto the previous artifact (eval: the row's model is
    the candidate, compared with an untouched copy on Tatoeba, for the target language only)."""
    out = str(output or w.output)
    corpora = [f"en={w.root / en}", f"de={w.corpora['de']}"]
    if stage == "trim":
        args = ["trim", str(w.model), "-l", languages, "-o", out] + [a for c in corpora for a in ("--corpus", c)]
    elif stage == "export":
        args = ["export", str(w.model), "-o", out, "--quantize", "none", "-l", languages]
        args += [a for c in corpora for a in ("--text", c)] + (["--bundle"] if out.endswith(".tar.gz") else [])
    elif stage == "distill":
        args = ["distill", "general", str(w.model), "-l", languages, "-o", out, *DISTILL_QUICK]
        args += [a for c in corpora for a in ("--corpus", c)]
    else:
        target = ",".join(lang for lang in languages.split(",") if lang != "en")
        args = ["eval", str(w.source), str(w.model), "-l", target, "-o", out, "--data", str(w.data), *EVAL_QUICK]
    return args + (["--overwrite"] if overwrite else [])


# eval reads benchmark data, not corpora: the corpus rows are for the other stages
INPUT_ROWS = [(stage, *row) for row in INPUT_FAULTS for stage in STAGES if stage != "eval" or not row[0].startswith("corpus")]


@pytest.mark.parametrize(("stage", "fault", "breaker", "en", "fragment"), INPUT_ROWS, ids=[f"{r[0]}: {r[1]}" for r in INPUT_ROWS])
def test_input_fault(stage: str, fault: str, breaker: Callable[[Work], None], en: str, fragment: str, work: Work,
                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    breaker(work)
    before = snapshot(work.root)
    code, stderr = run_cli(stage_args(stage, work, en), monkeypatch, capsys)
    assert_clear_cli_error(code, stderr, fragment)
    assert snapshot(work.root) == before  # the previous artifact, the inputs, no leftovers
    assert not list(Path(tempfile.tempdir).iterdir())


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(("fault", "languages", "overwrite", "fragment"), [
    ("unknown language", "en,xx", True, "unknown language"),
    ("existing output without --overwrite", "en,de", False, "already exists"),
], ids=["unknown language", "existing output"])
def test_option_fault(stage: str, fault: str, languages: str, overwrite: bool, fragment: str, work: Work,
                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(work.root)
    code, stderr = run_cli(stage_args(stage, work, "en.txt", languages, overwrite), monkeypatch, capsys)
    assert_clear_cli_error(code, stderr, fragment)
    assert snapshot(work.root) == before
    assert not list(Path(tempfile.tempdir).iterdir())


@pytest.mark.parametrize("stage", ["trim", "export"])
def test_a_one_megabyte_line_is_read_not_refused(stage: str, work: Work, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A corpus with a 1 MB line (no line breaks in a scraped page) is text like any other: the stage succeeds."""
    words = (read_lines(work.corpora["en"], 50)[0] + " ").encode()
    line = (words * (2**20 // len(words) + 1))[: 2**20].decode("utf-8", "ignore")
    with open(work.corpora["en"], "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    code, stderr = run_cli(stage_args(stage, work, "en.txt"), monkeypatch, capsys)
    assert code == 0, stderr
    assert (work.output / ("model.safetensors" if stage == "trim" else GRAPH)).stat().st_size > 1000
    assert not list(Path(tempfile.tempdir).iterdir())


def _raise(*args: object, **kwargs: object) -> None:
    raise RuntimeError("simulated library failure")


# (name, what to replace with a function that raises, expected fragment)
LIBRARY_FAULTS = [
    ("quantiser crashes", "mlcompress.export.quantize.quantize_int8_dynamic", "int8-dynamic quantisation failed"),
    ("ONNX Runtime cannot load the graph", "onnxruntime.InferenceSession", "ONNX Runtime failed"),
]


@pytest.mark.parametrize(("fault", "target", "fragment"), LIBRARY_FAULTS, ids=[row[0] for row in LIBRARY_FAULTS])
def test_export_library_fault(fault: str, target: str, fragment: str, work: Work, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """A failure inside ONNX Runtime or its quantiser is an ExportError with a hint, not a traceback."""
    monkeypatch.setattr(target, _raise)
    args = stage_args("export", work, "en.txt")
    args[args.index("none")] = "int8-dynamic"
    before = snapshot(work.root)
    code, stderr = run_cli(args, monkeypatch, capsys)
    assert_clear_cli_error(code, stderr, fragment)
    assert snapshot(work.root) == before
    assert not list(Path(tempfile.tempdir).iterdir())


# ------------------------------------------------------------------------------------------- faults on bundles


def _digest(manifest: dict) -> str:
    """The manifest's self-digest, as anyone can recompute it: it detects accidents, not attackers."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _edit_manifest(bundle: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    edit(manifest)
    manifest["manifest_sha256"] = _digest(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def changed_byte(b: Path, root: Path) -> Path:
    data = bytearray((b / GRAPH).read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / GRAPH).write_bytes(bytes(data))
    return b


def manifest_edited_by_hand(b: Path, root: Path) -> Path:
    text = (b / "manifest.json").read_text(encoding="utf-8")
    (b / "manifest.json").write_text(text.replace('"masked-lm"', '"sentence-embedding"', 1), encoding="utf-8")
    return b


def model_outside(b: Path, root: Path) -> Path:
    """The attacker's model sits beside the bundle, listed with its true sha256, and the manifest points at it."""
    shutil.copy(b / GRAPH, root / "evil.onnx")
    def edit(m: dict) -> None:
        m["files"]["../evil.onnx"] = dict(m["files"][GRAPH])
        m["model"] = "../evil.onnx"
    _edit_manifest(b, edit)
    return b


def model_absolute(b: Path, root: Path) -> Path:
    shutil.copy(b / GRAPH, root / "evil.onnx")
    def edit(m: dict) -> None:
        m["files"][str(root / "evil.onnx")] = dict(m["files"][GRAPH])
        m["model"] = str(root / "evil.onnx")
    _edit_manifest(b, edit)
    return b


def model_not_verified(b: Path, root: Path) -> Path:
    shutil.copy(b / GRAPH, b / "unlisted.onnx")
    _edit_manifest(b, lambda m: m.update(model="unlisted.onnx"))
    return b


def tokenizer_symlink_out(b: Path, root: Path) -> Path:
    """Same bytes (so the sha256 matches), but the file is a link to outside the bundle."""
    shutil.move(b / "tokenizer.json", root / "outside-tokenizer.json")
    (b / "tokenizer.json").symlink_to(root / "outside-tokenizer.json")
    return b


def manifest_missing_field(b: Path, root: Path) -> Path:
    _edit_manifest(b, lambda m: m.pop("head"))
    return b


def _archive(b: Path, root: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]], manifest_first: bool = True) -> Path:
    """A .tar.gz of the bundle (manifest first, as `pack` writes it) plus crafted members."""
    path = root / "crafted.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        names = sorted((p.name for p in b.iterdir()), key=lambda n: (n != "manifest.json" if manifest_first else 0, n))
        for name in names:
            tar.add(b / name, arcname=f"bundle/{name}")
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def archive_truncated(b: Path, root: Path) -> Path:
    path = _archive(b, root, [])
    truncate(path)
    return path


def archive_traversal(b: Path, root: Path) -> Path:
    return _archive(b, root, [_member("bundle/../../escaped.txt", b"owned")])


def archive_absolute(b: Path, root: Path) -> Path:
    return _archive(b, root, [_member(str(root / "escaped-absolute.txt"), b"owned")])


def archive_symlink(b: Path, root: Path) -> Path:
    return _archive(b, root, [_member("bundle/passwd", kind=tarfile.SYMTYPE, link="/etc/passwd")])


def archive_hardlink(b: Path, root: Path) -> Path:
    return _archive(b, root, [_member("bundle/passwd", kind=tarfile.LNKTYPE, link="/etc/passwd")])


def archive_device(b: Path, root: Path) -> Path:
    return _archive(b, root, [_member("bundle/null", kind=tarfile.CHRTYPE)])


def archive_larger_than_declared(b: Path, root: Path) -> Path:
    """The manifest (read first) declares tokenizer.json's size; the archive's member is 8 MB of zeros instead."""
    crafted = root / "crafted-bundle"
    shutil.copytree(b, crafted)
    (crafted / "tokenizer.json").write_bytes(bytes(8 << 20))
    return _archive(crafted, root, [])


def archive_bomb(b: Path, root: Path) -> Path:
    """A member that unpacks to 64 MB (a few dozen KB compressed), beyond a 32 MB cap set for this row."""
    return _archive(b, root, [_member("bundle/padding.bin", bytes(64 << 20))], manifest_first=False)


BUNDLE_FAULTS: list[tuple[str, Callable[[Path, Path], Path], str]] = [
    ("changed byte", changed_byte, "sha256"),
    ("manifest edited by hand", manifest_edited_by_hand, "digest"),
    ("model outside the bundle (..)", model_outside, "outside the bundle"),
    ("model at an absolute path", model_absolute, "outside the bundle"),
    ("model not among the verified files", model_not_verified, "not among the files"),
    ("tokenizer.json a symlink out of the bundle", tokenizer_symlink_out, "points outside the bundle"),
    ("manifest missing a field", manifest_missing_field, "lacks field"),
    ("archive truncated", archive_truncated, "not a readable bundle archive"),
    ("archive member with ..", archive_traversal, "outside the bundle"),
    ("archive member at an absolute path", archive_absolute, "outside the bundle"),
    ("archive symlink member", archive_symlink, "is a link"),
    ("archive hardlink member", archive_hardlink, "is a link"),
    ("archive device member", archive_device, "device"),
    ("archive member larger than declared", archive_larger_than_declared, "manifest declares"),
    ("archive decompression bomb", archive_bomb, "limit"),
]


@pytest.mark.parametrize("stage", ["bundle verify", "runtime.load"])
@pytest.mark.parametrize(("fault", "make", "fragment"), BUNDLE_FAULTS, ids=[row[0] for row in BUNDLE_FAULTS])
def test_bundle_fault(stage: str, fault: str, make: Callable[[Path, Path], Path], fragment: str, good_bundle: Path,
                      work: Work, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLCOMPRESS_MAX_BUNDLE_BYTES", str(32 << 20))
    target = make(shutil.copytree(good_bundle, work.root / "bundle", symlinks=True), work.root)
    before = snapshot(work.root)
    if stage == "bundle verify":
        code, stderr = run_cli(["bundle", "verify", str(target)], monkeypatch, capsys)
        assert_clear_cli_error(code, stderr, fragment)
    else:
        from mlcompress.export import runtime

        with pytest.raises(MlcompressError, match=fragment) as info:
            runtime.load(target)
        assert info.value.hint
    assert snapshot(work.root) == before  # nothing escaped the archive, nothing was changed
    assert not list(Path(tempfile.tempdir).iterdir())  # the unpacked copy is gone
    assert not (work.root.parent / "escaped.txt").exists()


def test_good_bundle_and_its_archive_pass(good_bundle: Path, work: Work, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The control row: the untouched bundle, as a folder and as the archive `pack` writes, verifies and loads."""
    from mlcompress.export import runtime
    from mlcompress.export.bundle import pack

    archive = pack(good_bundle, work.root / "good.tar.gz")
    with tarfile.open(archive) as tar:
        assert tar.getnames()[1] == "good/manifest.json"  # the manifest leads, so sizes are known before the files
    for target in (good_bundle, archive):
        code, _ = run_cli(["bundle", "verify", str(target)], monkeypatch, capsys)
        assert code == 0
        assert runtime.load(target).run(["Guten Morgen"])[0][0].shape[-1] > 0
    assert not list(Path(tempfile.tempdir).iterdir())


def test_a_file_swapped_after_verification_is_not_loaded(good_bundle: Path, tmp_path: Path) -> None:
    """runtime.load reads each file once and checks those bytes: a model changed between the check and the load
    (a time-of-check / time-of-use race) is refused, not run."""
    from mlcompress.export import BundleError
    from mlcompress.export.bundle import verify_dir
    from mlcompress.export.runtime import Bundle

    bundle = Path(shutil.copytree(good_bundle, tmp_path / "b"))
    manifest = verify_dir(bundle)  # the check passes...
    data = bytearray((bundle / GRAPH).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / GRAPH).write_bytes(bytes(data))  # ...then the file changes before the load
    with pytest.raises(BundleError, match="changed after it was verified"):
        Bundle(bundle, manifest)


# --------------------------------------------------------------------------------------- faults on the output side


def _read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``folder`` unwritable: its permissions, or (as root, whom permissions do not stop) the OS's refusal to
    create anything in it, as on a read-only mount."""
    import errno
    import os

    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    real_mkdir = os.mkdir

    def mkdir(path: object, *args: object, **kwargs: object) -> None:
        if Path(os.fspath(path)).absolute().parent == folder:
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("stage", STAGES)
def test_read_only_output_folder(stage: str, work: Work, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The output's folder cannot be written: the stage says so before it loads a model or trains."""
    before = snapshot(work.root)
    _read_only(work.root, monkeypatch)
    try:
        code, stderr = run_cli(stage_args(stage, work, "en.txt"), monkeypatch, capsys)
    finally:
        work.root.chmod(0o755)
    assert_clear_cli_error(code, stderr, "cannot write into")
    assert snapshot(work.root) == before
    assert not list(work.system_temp.iterdir())


def run_child(fault: list[str], args: list[str], w: Work) -> subprocess.CompletedProcess:
    """``mlcompress ARGS`` in a child process with ``fault`` injected (see fault_child.py)."""
    import os

    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TMPDIR": str(w.system_temp), "PYTHONPATH": path}
    return subprocess.run([sys.executable, str(Path(__file__).with_name("fault_child.py")), *fault, "--", *args],
                          capture_output=True, text=True, env=env, timeout=600)


# bytes any one file may hold: less than the model files the stages write (eval: its report)
DISK_LIMIT = {"trim": 64 << 10, "export": 64 << 10, "distill": 64 << 10, "eval": 4 << 10}


@pytest.mark.parametrize("stage", STAGES)
def test_full_disk(stage: str, work: Work) -> None:
    """Writes fail part-way (a file-size limit stands in for a full disk): a clear error, the previous artifact kept."""
    before = snapshot(work.root)
    run = run_child(["--disk-full", str(DISK_LIMIT[stage])], stage_args(stage, work, "en.txt"), work)
    assert_clear_cli_error(run.returncode, run.stderr, "ran out of space")
    assert snapshot(work.root) == before
    assert not list(work.system_temp.glob("mlcompress-*"))  # (libraries the child loads may keep files of their own)


def _leftovers(w: Work, output: Path) -> list[str]:
    """What a run to ``output`` may leave beside it: hidden temporary siblings and scratch folders of dead processes."""
    beside = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]
    return beside + [p.name for p in w.system_temp.glob("mlcompress-*")]


# (stage, where the SIGKILL lands, output name, what the row shows)
KILL_ROWS = [
    ("trim", "write:.out.tmp-", "out", "half-way through a file of the new trim"),
    ("trim", "rename:.out.tmp-", "out", "with the new trim complete, just before it is renamed into place"),
    ("export", "write:.out.tmp-", "out", "half-way through a file of the new export"),
    ("export", "archive", "out.tar.gz", "half-way through the bundle archive"),
    ("distill", "write:.out.work:2", "out", "half-way through writing the second checkpoint"),
    ("eval", "write:.out.tmp-", "out", "half-way through the report"),
]


@pytest.mark.parametrize(("stage", "kill", "name", "moment"), KILL_ROWS, ids=[f"{r[0]}: {r[1]}" for r in KILL_ROWS])
def test_sigkill_during_the_write(stage: str, kill: str, name: str, moment: str, work: Work,
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL (no cleanup runs) leaves the previous artifact intact; rerunning the command completes the artifact and
    removes what the killed run left (a distillation resumes from its last complete checkpoint)."""
    output = work.root / name
    if name != "out":
        output.write_bytes(b"previous archive")
    previous = snapshot(work.root)
    run = run_child(["--kill", kill], stage_args(stage, work, "en.txt", output=output), work)
    assert run.returncode == -9, run.stderr[-3000:]
    after = snapshot(work.root)
    assert {k: v for k, v in after.items() if not k.startswith(f".{name}.")} == previous  # artifact and inputs intact
    assert _leftovers(work, output)  # the kill did leave something behind...
    code, stderr = run_cli(stage_args(stage, work, "en.txt", output=output), monkeypatch, capsys)
    assert code == 0, stderr
    assert output.read_bytes() != b"previous archive" if name != "out" else \
        json.loads((output / "mlcompress.json").read_text())["stage"] != "previous"
    assert not _leftovers(work, output)  # ...which the rerun cleared away


def test_a_replacement_killed_between_its_two_renames_is_repaired(tmp_path: Path) -> None:
    """Where the OS cannot swap two folders atomically, a replacement is two renames; a kill between them leaves the
    previous artifact in a hidden folder, and the next run to that output puts it back before anything else."""
    from mlcompress.artifacts import atomic_output_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    aside = tmp_path / f".out.old-{pid}-abc" / "previous"
    aside.mkdir(parents=True)
    (aside / "model.safetensors").write_bytes(b"previous weights")
    (tmp_path / f".out.tmp-{pid}-def").mkdir()  # the killed run's half-written new artifact
    with pytest.raises(OutputExistsError):
        with atomic_output_dir(tmp_path / "out"):  # the repaired output exists again: not replaced without overwrite
            pass
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"previous weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------------------------------------ faults in the order of events
# Nothing is lost whatever the order of events: another process, another rank or another host acting in between.


def _pipeline_config(w: Work, **distill: object) -> Path:
    """A trim -> distill pipeline on the row's model and corpora (distillation on the CPU, a checkpoint every step)."""
    cfg = {"source": str(w.model), "languages": "en,de", "corpora": {k: str(v) for k, v in w.corpora.items()},
           "stages": {"trim": {"scripts": True},
                      "distill": {"enabled": True, "device": "cpu", "objective": "bistil", "steps": 2, "batch_size": 4,
                                  "block_size": 32, "max_blocks_per_language": 8, "checkpoint_every": 1,
                                  "mixed_precision": "no", **distill}}}
    path = w.root / "pipe.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def _interrupted_distillation(w: Work, config: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the pipeline until its distillation has written its first checkpoint, then fail as an interruption would;
    return the distillation's work dir (which holds that checkpoint)."""
    import mlcompress.distill.general as general
    from mlcompress.orchestrate.runner import Pipeline

    real = general.distill_general

    def interrupted(*args: object, **kwargs: object) -> None:
        real(*args, **{**kwargs, "stop_after": 1})
        raise RuntimeError("simulated interruption after the first checkpoint")

    with monkeypatch.context() as m:
        m.setattr(general, "distill_general", interrupted)
        with pytest.raises(RuntimeError, match="simulated interruption"):
            Pipeline(config).run(out)
    work_dir = out / ".02-distill.work"
    assert (work_dir / "checkpoints" / "step-0000001" / "trainer_state.json").is_file()
    return work_dir


@pytest.mark.parametrize("damaged", [False, True], ids=["--force", "--force on a damaged pipeline.json"])
def test_pipeline_force_resumes_the_distillation_from_its_checkpoints(
        damaged: bool, work: Work, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`pipeline --force` (redo every stage), and the --force that the error for a damaged pipeline.json suggests, keep
    an interrupted distillation's checkpoints: the distillation resumes from them, it does not start over."""
    config, out = _pipeline_config(work), work.root / "pipe"
    _interrupted_distillation(work, config, out, monkeypatch)
    if damaged:
        (out / "pipeline.json").write_text('{"stages": {"trim": ', encoding="utf-8")
        code, stderr = run_cli(["pipeline", str(config), "-o", str(out)], monkeypatch, capsys)
        assert_clear_cli_error(code, stderr, "pipeline.json is damaged")
        assert "--force" in stderr and "resumes from its checkpoints" in stderr.replace("\n", " ")
    code, stderr = run_cli(["pipeline", str(config), "-o", str(out), "--force"], monkeypatch, capsys)
    assert code == 0, stderr
    distill = json.loads((out / "pipeline.json").read_text())["stages"]["distill"]
    assert distill["action"] == "ran" and distill["metrics"]["resumed_from"] == 1  # not started over
    assert distill["metrics"]["steps"] == 2 and (out / "02-distill" / "model.safetensors").is_file()
    assert not (out / ".02-distill.work").exists()


def test_pipeline_distillation_from_other_inputs_is_refused_until_restart_is_named(
        work: Work, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An interrupted distillation whose model has changed since (another trim) is neither resumed on the wrong model
    nor thrown away unasked: a clear error, its checkpoints and pipeline.json kept; `restart: true` discards them."""
    out = work.root / "pipe"
    work_dir = _interrupted_distillation(work, _pipeline_config(work), out, monkeypatch)
    config = _pipeline_config(work)
    cfg = json.loads(config.read_text())
    cfg["stages"]["trim"] = {"frequent_words": 0, "word_variants": False}  # a corpus trim: another model to distil
    config.write_text(json.dumps(cfg), encoding="utf-8")
    checkpoints, state = snapshot(work_dir), (out / "pipeline.json").read_text()
    code, stderr = run_cli(["pipeline", str(config), "-o", str(out)], monkeypatch, capsys)
    assert_clear_cli_error(code, stderr, "started from other inputs")
    assert "restart: true" in stderr
    assert snapshot(work_dir) == checkpoints
    assert json.loads((out / "pipeline.json").read_text())["stages"]["distill"] == json.loads(state)["stages"]["distill"]
    cfg["stages"]["distill"]["restart"] = True
    config.write_text(json.dumps(cfg), encoding="utf-8")
    code, stderr = run_cli(["pipeline", str(config), "-o", str(out)], monkeypatch, capsys)
    assert code == 0, stderr
    assert json.loads((out / "pipeline.json").read_text())["stages"]["distill"]["metrics"]["resumed_from"] is None


def _counts_cache(w: Work) -> Path:
    return w.root.parent / "counts-cache"  # outside the row's folder, which the snapshot compares


def test_trim_recounts_over_a_corrupt_token_count_cache(work: Work, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A token-count cache file that is damaged (a crash, a full disk, a copy cut short) is a cache miss with a
    warning: the trim recounts and overwrites it, instead of every later trim failing on it."""
    import numpy as np

    args = stage_args("trim", work, "en.txt") + ["--cache-dir", str(_counts_cache(work))]
    code, stderr = run_cli(args, monkeypatch, capsys)
    assert code == 0, stderr
    cached = sorted(_counts_cache(work).rglob("*.npz"))
    assert cached
    for i, path in enumerate(cached):
        path.write_bytes([b"", b"PK\x03\x04 cut short", b"not a zip file at all"][i % 3])
    with pytest.warns(RuntimeWarning, match="unreadable"):
        code, stderr = run_cli(args, monkeypatch, capsys)
    assert code == 0, stderr
    for path in cached:
        with np.load(path) as data:
            assert data["counts"].sum() > 0  # rewritten whole


def test_two_trims_writing_the_same_token_count_cache_entry_at_once(work: Work, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Another process saves the same cache entry while this one is between writing and renaming it: each writes a
    temporary file of its own, so neither renames the other's (or a half-written) file, and no temporary is left."""
    import os

    import numpy as np

    from mlcompress.vocab_trim.counting import TokenCounts

    cache = _counts_cache(work)
    real_replace, raced = os.replace, []

    def replace(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if str(dst).startswith(str(cache)) and str(dst).endswith(".npz") and not raced:
            raced.append(dst)  # the other process: the same counts, saved in full, just now
            TokenCounts.load(Path(os.fspath(src))).save(Path(os.fspath(dst)))
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    code, stderr = run_cli(stage_args("trim", work, "en.txt") + ["--cache-dir", str(cache)], monkeypatch, capsys)
    assert code == 0, stderr
    assert raced
    with np.load(raced[0]) as data:
        assert data["counts"].sum() > 0
    assert [p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".npz")] == []


def test_a_bundled_build_another_process_just_finished_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes ask for the bundled model at once; one finishes its build and renames it into place just after
    the other looked and found none: that complete build is used, never deleted as a damaged leftover."""
    import mlcompress.bundled as bundled
    from mlcompress.artifacts import write_provenance

    def build(name: str) -> Callable[[object, Path], None]:
        def build_checkpoint(bin_path: object, out_dir: Path) -> None:  # a stand-in build (the real one takes minutes)
            Path(out_dir, "built-by").write_text(name, encoding="utf-8")
        return build_checkpoint

    real_complete, looks = bundled._complete, []

    def complete(target: Path) -> bool:
        looks.append(target)
        if len(looks) == 1:  # this process finds no build; in that moment the other one renames its own into place
            with bundled.atomic_output_dir(target) as tmp:
                build("the other process")(None, tmp)
                write_provenance(tmp, "bundled", {"name": "multilingual-e5-small"}, [], {})
            return False
        return real_complete(target)

    monkeypatch.setattr(bundled, "_complete", complete)
    monkeypatch.setattr(bundled, "build_checkpoint", build("this process"))
    target = bundled.ensure_bundled("multilingual-e5-small", cache_dir=tmp_path)
    assert (target / "built-by").read_text(encoding="utf-8") == "the other process"
    assert real_complete(target)
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")) == [target.name]


class _BarrierSpy:
    """An accelerator that records, at each barrier, whether the output exists: what another rank would find there."""

    def __init__(self, accelerator: object, output: Path) -> None:
        self._accelerator, self.output, self.barriers = accelerator, output, []

    def wait_for_everyone(self) -> None:
        self.barriers.append((self.output / "mlcompress.json").is_file())
        self._accelerator.wait_for_everyone()

    def __getattr__(self, name: str) -> object:
        return getattr(self._accelerator, name)


def test_task_runs_end_with_a_barrier_after_the_output_is_written(work: Work, monkeypatch: pytest.MonkeyPatch,
                                                                   data_dir: Path) -> None:
    """finetune_teacher and distill_task: the main process writes the output, and only then do all ranks leave
    together, so no other rank returns (and reads the output) before it exists."""
    import mlcompress.distill.task as task
    from mlcompress.distill import TrainConfig

    spies: list[_BarrierSpy] = []
    real = task.make_accelerator

    def make_accelerator(config: TrainConfig) -> _BarrierSpy:
        spies.append(_BarrierSpy(real(config), output))
        return spies[-1]

    monkeypatch.setattr(task, "make_accelerator", make_accelerator)
    config = TrainConfig(steps=2, batch_size=4, checkpoint_every=1, device="cpu", mixed_precision="no", progress=False)
    train_file = data_dir / "xtreme_udpos" / "train-en.tsv.gz"
    output = work.root / "teacher"
    task.finetune_teacher(work.model, "token-classification", train_file, output, max_examples=16, max_length=32,
                          train_config=config)
    output = work.root / "task"
    task.distill_task(work.root / "teacher", work.model, "token-classification", train_file, output, max_examples=16,
                      max_length=32, train_config=config)
    assert [spy.output.name for spy in spies] == ["teacher", "task"]
    for spy in spies:
        assert spy.barriers[-1], f"the last barrier came before {spy.output} was written: {spy.barriers}"


def _owner(w: Work, host: str, pid: int, started: str | None = None, age_s: float = 0.0) -> Path:
    """A distillation work dir held by process ``pid`` on ``host``, last refreshed ``age_s`` seconds ago."""
    import os
    import time

    lock = w.root / ".out.work" / "owner.json"
    lock.parent.mkdir()
    lock.write_text(json.dumps({"host": host, "pid": pid, "started": started, "token": "theirs"}), encoding="utf-8")
    os.utime(lock, (time.time() - age_s,) * 2)
    return lock


def test_a_work_dir_held_by_a_run_on_another_host_is_not_taken(work: Work, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """On a shared file system a pid from another host says nothing about the processes here: a work dir that a run
    on another host holds (and refreshed lately) is refused with its host and pid; deleting the lock, as the hint
    says, lets the run go on."""
    lock = _owner(work, "gpu-node-17", 4242)
    before = snapshot(work.root)
    code, stderr = run_cli(stage_args("distill", work, "en.txt"), monkeypatch, capsys)
    assert_clear_cli_error(code, stderr, "in use by process 4242 on host gpu-node-17")
    assert str(lock) in stderr.replace("\n", "")
    assert snapshot(work.root) == before
    lock.unlink()
    code, stderr = run_cli(stage_args("distill", work, "en.txt"), monkeypatch, capsys)
    assert code == 0, stderr


def test_a_work_dir_held_by_a_live_process_on_this_host_is_not_taken(work: Work, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A work dir whose owner still runs on this host (same pid and start time) is refused, not trained into twice."""
    import socket

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stat = Path(f"/proc/{other.pid}/stat")
        started = stat.read_text().rsplit(")", 1)[1].split()[19] if stat.is_file() else None  # as the owner records it
        _owner(work, socket.gethostname(), other.pid, started)
        before = snapshot(work.root)
        code, stderr = run_cli(stage_args("distill", work, "en.txt"), monkeypatch, capsys)
        assert_clear_cli_error(code, stderr, f"in use by process {other.pid} on this host")
        assert snapshot(work.root) == before
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("owner", ["a process of this host that has exited", "a reused pid (another start time)",
                                   "another host, silent for 20 min"])
def test_a_work_dir_whose_owner_is_gone_is_taken_over(owner: str, work: Work, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The control rows: an owner that is gone (dead here, or silent on another host past the threshold) does not
    block the rerun, which takes the work dir over and completes."""
    import os
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    if owner.startswith("a process"):
        _owner(work, socket.gethostname(), int(dead.stdout))
    elif owner.startswith("a reused"):
        _owner(work, socket.gethostname(), os.getppid(), started="1")  # a live pid, started at another time
    else:
        _owner(work, "gpu-node-17", 4242, age_s=20 * 60)
    code, stderr = run_cli(stage_args("distill", work, "en.txt"), monkeypatch, capsys)
    assert code == 0, stderr
    assert not (work.root / ".out.work").exists()


def test_a_checkpoint_is_marked_complete_only_after_every_rank_wrote_its_part(tmp_path: Path) -> None:
    """trainer_state.json marks a checkpoint complete (a resume trusts it): the main process writes it only once the
    other ranks have written their part of the checkpoint, i.e. after the barrier, never before."""
    from mlcompress.distill.loop import TrainState, _save_checkpoint
    from mlcompress.distill.workdir import complete_checkpoints

    target = tmp_path / "checkpoints" / "step-0000003"
    seen: list[tuple[bool, bool]] = []  # at each barrier: (marker there, the other rank's part there)

    class TwoRanks:
        is_main_process = True

        def save_state(self, directory: str) -> None:  # rank 0's part; rank 1 is still writing its own
            Path(directory).mkdir(parents=True)
            Path(directory, "model.safetensors").write_bytes(b"weights")

        def wait_for_everyone(self) -> None:
            seen.append(((target / "trainer_state.json").exists(), (target / "random_states_1.pkl").exists()))
            (target / "random_states_1.pkl").write_bytes(b"rank 1's RNG state")  # rank 1 reaches the barrier done

    _save_checkpoint(TwoRanks(), tmp_path, TrainState(step=3, planned=6), keep=2)
    assert seen and seen[0] == (False, False), f"the checkpoint was marked complete before the barrier: {seen}"
    assert complete_checkpoints(tmp_path) == [target]


def _distill_args(w: Work, device: str, precision: str) -> list[str]:
    args = stage_args("distill", w, "en.txt")
    args[args.index("--device") + 1], args[args.index("--precision") + 1] = device, precision
    return args


def test_fp16_on_a_cpu_is_a_clear_error(work: Work, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """fp16 autocast is asked for on a CPU, where it would silently train in fp32: a clear error before anything is
    written, whose hint names what runs there."""
    before = snapshot(work.root)
    code, stderr = run_cli(_distill_args(work, "cpu", "fp16"), monkeypatch, capsys)
    assert_clear_cli_error(code, stderr, "fp16")
    assert "bf16" in stderr.split("hint:")[1] and "no" in stderr.split("hint:")[1]
    assert snapshot(work.root) == before
    assert not list(Path(tempfile.tempdir).iterdir())


def test_bf16_on_a_gpu_without_bf16_is_a_clear_error(work: Work, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """bf16 is asked for on a GPU that has none (a V100, a T4): a clear error, not a traceback from deep in torch."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100-SXM2-16GB")
    before = snapshot(work.root)
    code, stderr = run_cli(_distill_args(work, "cuda", "bf16"), monkeypatch, capsys)
    assert_clear_cli_error(code, stderr, "bf16")
    assert snapshot(work.root) == before
    assert not list(Path(tempfile.tempdir).iterdir())
