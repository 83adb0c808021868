"""Several distillation runs in one process, each in its own precision, and how ``auto`` picks one (both ways)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA
from mlcompress.distill import TrainConfig, distill_general
from mlcompress.distill import loop
from tiny_models import build_bert_teacher, training_lines

CORPORA = {"en": str(DATA / "mono" / "en.txt.gz"), "de": str(DATA / "mono" / "de.txt.gz")}
RUN = ("import sys, torch\n"
       "torch.set_num_threads(int(sys.argv[3]))\n"
       "from mlcompress.distill import TrainConfig, distill_general\n"
       "distill_general(sys.argv[4], 'en,de', {corpora!r}, sys.argv[1], block_size=32, max_blocks_per_language=32,\n"
       "    train_config=TrainConfig(steps=4, batch_size=8, lr=1e-3, checkpoint_every=4, progress=False, device='cpu',\n"
       "    mixed_precision=sys.argv[2]))\n")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return build_bert_teacher(tmp_path_factory.mktemp("tiny-bert") / "teacher", training_lines(DATA))


def _precisions(out: Path) -> set[str]:
    return {json.loads(x)["precision"] for x in (out / "metrics.jsonl").read_text().splitlines()}


def test_bf16_then_fp32_then_bf16_in_one_process_equal_fresh_processes(teacher_dir: Path, tmp_path: Path) -> None:
    """accelerate's state is a process-wide singleton; each run must get its own, so a deployment pipeline can run
    distillations of several precisions in one process, and each gives what a fresh process gives, bit for bit."""
    from accelerate import Accelerator

    Accelerator(cpu=True, mixed_precision="no")  # state that a user's code (or an earlier test) left behind
    order = ["bf16", "no", "bf16"]
    here = []
    for i, precision in enumerate(order):
        out = tmp_path / f"here-{i}-{precision}"
        distill_general(teacher_dir, "en,de", CORPORA, out, block_size=32, max_blocks_per_language=32,
                        train_config=TrainConfig(steps=4, batch_size=8, lr=1e-3, checkpoint_every=4, progress=False,
                                                 device="cpu", mixed_precision=precision))
        assert _precisions(out) == {precision}
        here.append(load_file(out / "model.safetensors"))
    script = tmp_path / "run.py"
    script.write_text(RUN.format(corpora=CORPORA))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    fresh = {}
    for precision in ("bf16", "no"):
        out = tmp_path / f"fresh-{precision}"
        run = subprocess.run([sys.executable, str(script), str(out), precision, str(torch.get_num_threads()),
                              str(teacher_dir)], capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert _precisions(out) == {precision}
        fresh[precision] = load_file(out / "model.safetensors")
    assert any(not torch.equal(fresh["bf16"][k], fresh["no"][k]) for k in fresh["no"])  # the precisions really differ
    for weights, precision in zip(here, order):
        assert set(weights) == set(fresh[precision])
        for k in weights:
            assert torch.equal(weights[k], fresh[precision][k]), (precision, k)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_follows_the_cpu_and_an_explicit_choice_does_not(monkeypatch, native_bf16: bool) -> None:
    """``auto`` trains in bf16 only on a CPU that computes it natively; an explicit precision holds on any CPU."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: native_bf16)
    auto = loop.make_accelerator(TrainConfig(device="cpu"))
    assert auto.mixed_precision == ("bf16" if native_bf16 else "no")
    for precision in ("no", "bf16"):
        assert loop.make_accelerator(TrainConfig(device="cpu", mixed_precision=precision)).mixed_precision == precision


def test_bf16_is_not_native_when_torch_kernels_are_capped_below_avx512() -> None:
    """``ATEN_CPU_CAPABILITY=avx2`` (how the suite emulates an AVX2-only CPU on a newer one) makes ``auto`` pick fp32:
    torch would emulate bf16 there, as on a CPU without AVX512-BF16."""
    code = "from mlcompress.distill import loop; print(loop.cpu_has_bf16(), loop.auto_precision(True))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "no"]


@pytest.mark.parametrize("launched", ["no", "bf16"])
def test_auto_keeps_what_accelerate_launch_set(monkeypatch, launched: str) -> None:
    """Under ``accelerate launch --mixed_precision P`` (or its config file) ``auto`` is the launcher's P, whatever the
    CPU has; an explicit precision in the config still wins."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched)
    for native in (True, False):
        monkeypatch.setattr(loop, "cpu_has_bf16", lambda native=native: native)
        assert loop.make_accelerator(TrainConfig(device="cpu")).mixed_precision == launched
    other = "bf16" if launched == "no" else "no"
    assert loop.make_accelerator(TrainConfig(device="cpu", mixed_precision=other)).mixed_precision == other
