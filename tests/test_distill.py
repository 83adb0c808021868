"""Distillation on a CPU with tiny models: student init, falling loss, exact resume, sparse updates, two processes.

Every run pins its precision (never ``auto``, which depends on the CPU); the precision-sensitive tests run under
both fp32 and bf16 autocast (torch runs bf16 on any x86 CPU, natively with AVX512-BF16 or AMX, emulated without).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer, BertModel

from mlcompress.errors import CorpusError

from conftest import DATA, ROOT
from mlcompress import InputError, LanguageError, OutputExistsError
from mlcompress.distill import Phase1Losses, TrainConfig, distill_general, distill_task, finetune_teacher, make_student
from mlcompress.distill.student import layer_map
from tiny_models import build_bert_teacher, training_lines

CORPORA = {"en": str(DATA / "mono" / "en.txt.gz"), "de": str(DATA / "mono" / "de.txt.gz")}
PRECISIONS = pytest.mark.parametrize("precision", ["no", "bf16"])


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A 4-layer BERT teacher (no dropout, so runs compare exactly) with a real WordPiece tokenizer."""
    return build_bert_teacher(tmp_path_factory.mktemp("tiny-bert") / "teacher", training_lines(DATA))


def _config(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=8, lr=1e-3, checkpoint_every=3, log_every=1, progress=False, device="cpu",
                mixed_precision="no")
    return TrainConfig(**{**base, **kw})


def _small(teacher_dir: Path, out: Path, **kw):
    return distill_general(teacher_dir, "en,de", CORPORA, out, block_size=32, max_blocks_per_language=64,
                           train_config=kw.pop("train_config", _config()), **kw)


def test_student_layers_equal_mapped_teacher_layers_at_step_zero(teacher_dir: Path) -> None:
    teacher = AutoModel.from_pretrained(teacher_dir)
    student, mapping = make_student(teacher, every_k=2)
    assert mapping == [1, 3] and layer_map(12, 2) == [1, 3, 5, 7, 9, 11] and layer_map(12, 3) == [2, 5, 8, 11]
    assert student.config.num_hidden_layers == 2
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for name, value in s_state.items():
        if name.startswith("encoder.layer."):
            i, rest = name[len("encoder.layer."):].split(".", 1)
            assert torch.equal(value, t_state[f"encoder.layer.{mapping[int(i)]}.{rest}"]), name
        else:
            assert torch.equal(value, t_state[name]), name
    ids = AutoTokenizer.from_pretrained(teacher_dir)("Ein kleiner Test.", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(student.embeddings(ids["input_ids"]),
                           teacher.embeddings(ids["input_ids"]))


@PRECISIONS
def test_phase1_loss_falls_on_real_text(teacher_dir: Path, tmp_path: Path, precision: str) -> None:
    result = _small(teacher_dir, tmp_path / "student",
                    train_config=_config(steps=40, lr=3e-3, checkpoint_every=40, mixed_precision=precision))
    records = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in records[:5]) / 5
    last = sum(r["loss"] for r in records[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert result.layer_map == [1, 3] and result.params_student < result.params_teacher
    reloaded = AutoModel.from_pretrained(tmp_path / "student")
    assert reloaded.config.num_hidden_layers == 2 and reloaded.config.mlcompress_layer_map == [1, 3]
    record = json.loads((tmp_path / "student" / "mlcompress.json").read_text())
    assert record["stage"] == "distill-general" and record["metrics"]["blocks_per_language"] == {"en": 64, "de": 64}
    assert not (tmp_path / ".student.work").exists()


@PRECISIONS
def test_kill_and_resume_gives_the_same_weights(teacher_dir: Path, tmp_path: Path, precision: str) -> None:
    """Bit for bit in either precision: a resumed run repeats the same kernels on the same data."""
    config = _config(mixed_precision=precision)
    _small(teacher_dir, tmp_path / "straight", train_config=config)
    stopped = _small(teacher_dir, tmp_path / "resumed", stop_after=5, train_config=config)  # dies after step 5
    assert stopped.steps == 5 and not (tmp_path / "resumed").exists()  # its last checkpoint: step 3
    assert (tmp_path / ".resumed.work" / "checkpoints" / "step-0000003").is_dir()
    resumed = _small(teacher_dir, tmp_path / "resumed", train_config=config)
    assert resumed.resumed_from == 3 and resumed.steps == 6
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_run_with_other_settings_is_refused(teacher_dir: Path, tmp_path: Path) -> None:
    _small(teacher_dir, tmp_path / "s", stop_after=3)
    with pytest.raises(InputError, match="interrupted run with other settings") as info:
        _small(teacher_dir, tmp_path / "s", train_config=_config(lr=5e-4))
    assert "--restart" in info.value.hint
    done = _small(teacher_dir, tmp_path / "s", train_config=_config(lr=5e-4), restart=True)
    assert done.resumed_from is None and (tmp_path / "s" / "config.json").is_file()


@PRECISIONS
def test_sparse_finetuning_changes_only_selected_parameters(teacher_dir: Path, tmp_path: Path, precision: str) -> None:
    student_dir = tmp_path / "general"
    _small(teacher_dir, student_dir, train_config=_config(mixed_precision=precision))
    train_file = DATA / "xtreme_udpos" / "train-en.tsv.gz"
    finetune_teacher(teacher_dir, "token-classification", train_file, tmp_path / "teacher-pos", max_examples=64,
                     max_length=32, train_config=_config(steps=4, checkpoint_every=4, mixed_precision=precision))
    density = 0.05
    result = distill_task(tmp_path / "teacher-pos", student_dir, "token-classification", train_file, tmp_path / "pos",
                          density=density, dense_steps=4, max_examples=64, max_length=32,
                          train_config=_config(steps=4, checkpoint_every=4, mixed_precision=precision))
    assert result.layer_map == [1, 3]
    before = load_file(student_dir / "model.safetensors")
    after = load_file(tmp_path / "pos" / "model.safetensors")
    masks = {k: v.bool() for k, v in load_file(tmp_path / "pos" / "sparse_mask.safetensors").items()}
    body = [k for k in masks if not k.startswith("classifier")]
    total = sum(masks[k].numel() for k in body)
    assert sum(int(masks[k].sum()) for k in body) == round(density * total)
    changed = 0
    for k in body:
        src = "bert." + k if ("bert." + k) in before else k.removeprefix("bert.")
        moved = after[k] != before[src]
        assert not (moved & ~masks[k]).any(), f"{k} changed outside its mask"
        changed += int(moved.sum())
    assert 0 < changed <= round(density * total)


# One process against two: fp32 differs only in the order of the gradient sum (atol 1e-4). Under bf16 each process's
# half-batch matmuls round differently, so the runs drift apart within bf16's resolution; they must still make the same
# update: the distance between the two updates stays under BF16_UPDATE_GAP of the update's size. Measured on this tiny
# run (AVX2 CPU): two processes against one 0.018; bf16 against fp32 0.14; another seed, or a half batch (ranks on the
# same half, gradients not averaged) 1.09.
BF16_UPDATE_GAP = 0.05


def _update_gap(a: dict, b: dict, start: dict) -> float:
    """||(a - start) - (b - start)|| / ||a - start||: how differently two runs moved the student from its start."""
    diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in start) ** 0.5
    moved = sum(float((a[k].double() - start[k].double()).pow(2).sum()) for k in start) ** 0.5
    return diff / moved


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process run")
@PRECISIONS
def test_two_processes_under_accelerate_launch_match_one(teacher_dir: Path, tmp_path: Path, precision: str) -> None:
    """Two processes launched with ``--mixed_precision P`` (the config says auto: the launcher's choice is kept) against
    one process that asks for P itself."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "from mlcompress.distill import TrainConfig, distill_general\n"
        f"distill_general({str(teacher_dir)!r}, 'en,de', {CORPORA!r}, sys.argv[1], block_size=32,\n"
        "    max_blocks_per_language=64, train_config=TrainConfig(steps=6, batch_size=8, lr=1e-3,\n"
        "    checkpoint_every=3, progress=False, device='cpu', mixed_precision=sys.argv[2]))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env["OMP_NUM_THREADS"] = "1"
    accelerate = Path(sys.executable).with_name("accelerate")
    two = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", precision, "--dynamo_backend", "no", str(script), str(tmp_path / "two"),
                          "auto"], capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), precision], capture_output=True, text=True,
                         env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    for run in ("one", "two"):
        records = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert {r["precision"] for r in records} == {precision}, run
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    start = {k: v.detach() for k, v in make_student(AutoModel.from_pretrained(teacher_dir), every_k=2)[0].state_dict().items()}
    assert set(start) == set(a) and any(not torch.equal(a[k], start[k]) for k in a)  # it trained
    if precision == "no":
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4)
    else:
        assert _update_gap(a, b, start) < BF16_UPDATE_GAP


def test_bad_input_gets_clear_errors(teacher_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(LanguageError, match="source and a target"):
        distill_general(teacher_dir, "en", CORPORA, tmp_path / "x")
    with pytest.raises(LanguageError, match="no text for language"):
        distill_general(teacher_dir, "en,el", CORPORA, tmp_path / "x")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="GPU was asked for"):
            _small(teacher_dir, tmp_path / "x", train_config=_config(device="cuda"))
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputExistsError):
        _small(teacher_dir, tmp_path / "exists")
    with pytest.raises(InputError, match="attention loss"):
        _small(teacher_dir, tmp_path / "x", losses=Phase1Losses(attention_kind="cosine"))
    with pytest.raises(InputError, match="multiple of its 2 attention heads") as info:
        _small(teacher_dir, tmp_path / "x", hidden_size=15)
    assert "16" in info.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_cli_distill_general(teacher_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-student"
    run = subprocess.run([sys.executable, "-m", "mlcompress.orchestrate.cli", "distill", "general", str(teacher_dir), "-l", "en,de",
                          "--corpus", f"en={CORPORA['en']}", "--corpus", f"de={CORPORA['de']}", "-o", str(out),
                          "--block-size", "32", "--max-blocks", "32", "--steps", "3", "--batch-size", "4",
                          "--device", "cpu"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["steps"] == 3 and (out / "model.safetensors").is_file()
    bad = subprocess.run([sys.executable, "-m", "mlcompress.orchestrate.cli", "distill", "general", str(teacher_dir), "-l", "en,de",
                          "--corpus", f"en={CORPORA['en']}", "-o", str(tmp_path / "y")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "no text for language" in bad.stderr and "hint:" in bad.stderr


def test_captured_attention_equals_eager_attention_probabilities(teacher_dir: Path) -> None:
    """The SDPA-capturing backend recovers exactly the probabilities eager attention returns, padding included."""
    from mlcompress.distill.attention import attention_log_probs, capture_attention, use_capture_backend

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    batch = tok(["Ein kurzer Satz.", "A rather longer English sentence with more tokens in it."], padding=True,
                return_tensors="pt")
    eager = AutoModel.from_pretrained(teacher_dir, attn_implementation="eager").eval()
    captured = AutoModel.from_pretrained(teacher_dir).eval()
    use_capture_backend(captured)
    with torch.no_grad():
        reference = eager(**batch, output_attentions=True).attentions
        with capture_attention(captured, [1, 3]) as stores:
            hidden = captured(**batch).last_hidden_state
        assert torch.allclose(hidden, eager(**batch).last_hidden_state, atol=1e-5)
    real = batch["attention_mask"].bool()
    for layer, store in zip([1, 3], stores):
        probs = attention_log_probs(*store[-1]).exp()
        # compare where both query and key are real tokens (rows of padded queries are arbitrary in both)
        keep = real[:, None, :, None] & real[:, None, None, :]
        assert torch.allclose(probs[keep.expand_as(probs)], reference[layer][keep.expand_as(probs)], atol=1e-5)


def _hidden_error(teacher, student, basis, ids, mapping) -> float:
    from mlcompress.distill.losses import hidden_mse
    from mlcompress.distill.student import hidden_pairs

    with torch.no_grad():
        t = teacher(input_ids=ids, output_hidden_states=True).hidden_states
        s = student(input_ids=ids, output_hidden_states=True).hidden_states
        return float(hidden_mse(s, t, hidden_pairs(mapping), projection=lambda h: h @ basis.T))


def test_narrower_student_is_initialised_by_projection(teacher_dir: Path) -> None:
    """A half-width student projected from the teacher starts far closer to it than a fresh one of the same shape."""
    from mlcompress.distill.general import teacher_basis
    from mlcompress.distill.student import narrow_student

    teacher = AutoModel.from_pretrained(teacher_dir).eval()
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    deep, mapping = make_student(teacher, every_k=2)
    ids = tok(training_lines(DATA)[:16], padding="max_length", truncation=True, max_length=32,
              return_tensors="pt")["input_ids"]
    basis = teacher_basis(teacher, ids[:8], mapping, 16)
    narrow, P = narrow_student(deep, 16, basis)
    assert narrow.config.hidden_size == 16 and narrow.config.intermediate_size == 32
    assert narrow.config.num_attention_heads == 2 and narrow.config.num_hidden_layers == 2
    assert torch.allclose(P.T @ P, torch.eye(16), atol=1e-5)
    assert narrow.num_parameters() < 0.55 * deep.num_parameters()
    torch.manual_seed(0)
    fresh = BertModel(narrow.config).eval()
    projected_error = _hidden_error(teacher, narrow.eval(), P, ids[8:], mapping)
    fresh_error = _hidden_error(teacher, fresh, P, ids[8:], mapping)
    assert projected_error < 0.5 * fresh_error, (projected_error, fresh_error)
    with pytest.raises(InputError, match="multiple of its 2 attention heads"):
        narrow_student(deep, 15)
    with pytest.raises(InputError, match="below the teacher"):
        narrow_student(deep, 32)


def test_narrower_student_through_both_phases(teacher_dir: Path, tmp_path: Path) -> None:
    """Phase 1 closes the part of the hidden-state gap a half-width student can close; phase 2 reuses its basis."""
    from mlcompress.distill.losses import hidden_mse
    from mlcompress.distill.student import hidden_pairs, narrow_student

    result = _small(teacher_dir, tmp_path / "narrow", hidden_size=16,
                    train_config=_config(steps=80, lr=3e-3, checkpoint_every=80))
    assert result.params_student < 0.45 * result.params_teacher  # half the depth, half the width
    trained = AutoModel.from_pretrained(tmp_path / "narrow").eval()
    assert trained.config.hidden_size == 16
    P = load_file(tmp_path / "narrow" / "hidden_projection.safetensors")["basis"]
    assert P.shape == (32, 16)
    teacher = AutoModel.from_pretrained(teacher_dir).eval()
    start, mapping = narrow_student(make_student(teacher, 2)[0], 16, P)[0].eval(), result.layer_map
    ids = AutoTokenizer.from_pretrained(teacher_dir)(training_lines(DATA)[-16:], padding="max_length", truncation=True,
                                                     max_length=32, return_tensors="pt")["input_ids"]
    with torch.no_grad():  # what no 16-wide student can match: the teacher's states outside span(P)
        states = teacher(input_ids=ids, output_hidden_states=True).hidden_states
        floor = float(hidden_mse(tuple(h @ P for h in states), states, hidden_pairs(mapping), projection=lambda h: h @ P.T))
    gap_before = _hidden_error(teacher, start, P, ids, mapping) - floor
    gap_after = _hidden_error(teacher, trained, P, ids, mapping) - floor
    assert 0 < gap_after < 0.8 * gap_before, (floor, gap_before, gap_after)
    train_file = DATA / "xtreme_udpos" / "train-en.tsv.gz"
    finetune_teacher(teacher_dir, "token-classification", train_file, tmp_path / "teacher-pos", max_examples=32,
                     max_length=32, train_config=_config(steps=2, checkpoint_every=2))
    task = distill_task(tmp_path / "teacher-pos", tmp_path / "narrow", "token-classification", train_file,
                        tmp_path / "pos", max_examples=32, max_length=32, train_config=_config(steps=2, checkpoint_every=2))
    assert task.steps == 2 and "hidden" in task.final
    (tmp_path / "narrow" / "hidden_projection.safetensors").unlink()
    with pytest.raises(InputError, match="hidden_projection.safetensors is missing"):
        distill_task(tmp_path / "teacher-pos", tmp_path / "narrow", "token-classification", train_file,
                     tmp_path / "pos2", max_examples=32, max_length=32, train_config=_config(steps=2))
    assert not (tmp_path / "pos2").exists()


@PRECISIONS
def test_narrower_student_resumes_exactly(teacher_dir: Path, tmp_path: Path, precision: str) -> None:
    config = _config(mixed_precision=precision)
    _small(teacher_dir, tmp_path / "straight", hidden_size=16, train_config=config)
    _small(teacher_dir, tmp_path / "resumed", hidden_size=16, stop_after=5, train_config=config)
    assert (tmp_path / ".resumed.work" / "hidden_projection.safetensors").is_file()
    assert _small(teacher_dir, tmp_path / "resumed", hidden_size=16, train_config=config).resumed_from == 3
    for name in ("model.safetensors", "hidden_projection.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "resumed" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_failed_task_starts_leave_no_work_dir(teacher_dir: Path, tmp_path: Path) -> None:
    """finetune_teacher and distill_task: a failure before the first checkpoint (here: no train file) leaves nothing."""
    missing = tmp_path / "no-such-train.tsv.gz"
    with pytest.raises(CorpusError, match="no-such-train"):  # raised after the work dir was opened
        finetune_teacher(teacher_dir, "token-classification", missing, tmp_path / "teacher", max_examples=8,
                         train_config=_config(steps=2, checkpoint_every=2))
    with pytest.raises(CorpusError, match="no-such-train"):
        distill_task(teacher_dir, teacher_dir, "token-classification", missing, tmp_path / "task", max_examples=8,
                     train_config=_config(steps=2, checkpoint_every=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
