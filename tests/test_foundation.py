"""Foundation: packaging into one namespace, atomic artifact writes, provenance, the error family."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mlcompress.artifacts import atomic_output_dir, read_provenance, write_provenance
from mlcompress.errors import GateError, InputError, MlcompressError, OutputExistsError

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_dir_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_existing_unless_asked(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "good.txt").write_text("good")
    with pytest.raises(OutputExistsError, match="already exists"):
        with atomic_output_dir(target):
            pass
    with pytest.raises(ValueError):
        with atomic_output_dir(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise ValueError("failed half way")
    assert (target / "good.txt").read_text() == "good" and not (target / "new.txt").exists()
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_provenance_round_trip(tmp_path: Path) -> None:
    write_provenance(tmp_path, "trim", {"languages": ["en"]}, [{"path": "x", "sha256": "0" * 64}], {"vocab_after": 3})
    record = read_provenance(tmp_path)
    assert record["stage"] == "trim" and record["metrics"] == {"vocab_after": 3}
    assert record["versions"]["torch"] and record["versions"]["transformers"].startswith("5.")
    assert read_provenance(tmp_path / "missing") is None


def test_error_family_exit_codes_and_hints() -> None:
    err = InputError("bad thing", "do this")
    assert isinstance(err, MlcompressError) and err.exit_code == 2
    assert str(err) == "bad thing\nhint: do this"
    assert GateError("below bar").exit_code == 1


def test_wheel_maps_folders_into_one_namespace(tmp_path: Path) -> None:
    """A built wheel holds mlcompress.* (never a top-level eval/export) and imports from where it is installed."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("mlcompress-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("mlcompress/__init__.py", "mlcompress/orchestrate/cli.py", "mlcompress/vocab_trim/trim.py",
                   "mlcompress/distill/__init__.py", "mlcompress/export/__init__.py", "mlcompress/eval/__init__.py"):
        assert module in names
    assert not any(n.startswith(("eval/", "export/", "compress/", "vocab_trim/", "tests/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "import mlcompress.vocab_trim, mlcompress.eval, json; print(json.dumps([mlcompress.__file__, mlcompress.vocab_trim.__file__]))"
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                         check=True, capture_output=True, text=True, cwd=tmp_path)
    files = json.loads(out.stdout)
    assert all(f.startswith(str(site)) for f in files), files


def test_editable_install_imports_from_the_repository() -> None:
    import mlcompress
    import mlcompress.vocab_trim

    assert Path(mlcompress.__file__).resolve() == ROOT / "compress" / "__init__.py"
    assert Path(mlcompress.vocab_trim.__file__).resolve() == ROOT / "vocab_trim" / "__init__.py"
