"""The embedding-preserving objective, time budgets, the prefix detector and CPU precision, on tiny models."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from conftest import DATA, read_lines
from mlcompress import InputError
from mlcompress.distill import Phase1Losses, TrainConfig, distill_general
from mlcompress.distill import loop
from mlcompress.distill.loop import BudgetPlan, LinearSchedule, parse_duration
from mlcompress.distill.sentences import SentencePool, add_short_spans, split_sentences
from mlcompress.distill.student import make_student
from mlcompress.embedding_profile import E5_PREFIX, embedding_profile, EmbeddingProfile
from mlcompress.st_layout import layout_for, write_layout
from mlcompress.orchestrate.runner import Pipeline
from tiny_models import build_bert_teacher, build_xlmr, training_lines

CORPORA = {"en": str(DATA / "mono" / "en.txt.gz"), "de": str(DATA / "mono" / "de.txt.gz")}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A 4-layer BERT teacher marked as an E5-style sentence-embedding model by its sentence-transformers config."""
    out = build_bert_teacher(tmp_path_factory.mktemp("tiny-e5") / "teacher", training_lines(DATA),
                             initializer_range=0.5)  # varied embeddings, so the student has something to learn
    write_layout(out, layout_for(EmbeddingProfile(E5_PREFIX, "mean", True)), 32)
    return out


# ---- durations, schedule and budget plan -------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("1.5h", 5400), ("1h30m", 5400), (45, 45)])
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "30 minutes", "-5m", "0m", "1x"])
def test_parse_duration_refuses_what_it_cannot_read(text) -> None:
    with pytest.raises(InputError, match="duration"):
        parse_duration(text)


def test_budget_plan_fits_the_schedule_into_the_budget() -> None:
    schedule = LinearSchedule(10**6, 0.1)
    plan = BudgetPlan(100.0, started_at=0.0, planned=None)
    now, changed = 5.0, []
    for step in range(1, 30):  # 5 s of set-up, then 2 s per step
        now += 2.0
        changed.append(plan.observe(step, now, schedule))
    assert any(changed) and plan.planned == schedule.total
    # the schedule ends inside the budget less the reserve: 97 s at 2 s/step after 5 s of set-up -> 46 steps
    assert 44 <= plan.planned <= 46
    assert schedule(plan.planned) == 0.0 and schedule(plan.planned // 2) > 0.0


def test_budget_plan_shrinks_when_the_run_slows_down() -> None:
    schedule = LinearSchedule(10**6, 0.0)
    plan = BudgetPlan(100.0, started_at=0.0, planned=None)
    now = 0.0
    for step in range(1, 8):
        now += 1.0
        plan.observe(step, now, schedule)
    first = plan.planned
    for step in range(8, 30):
        now += 4.0  # four times slower
        plan.observe(step, now, schedule)
    assert plan.planned < first and plan.planned * 1.0 <= 30 + (97 - now) / 1.0


def test_resumed_budget_plan_is_kept() -> None:
    plan = BudgetPlan(100.0, started_at=0.0, planned=40)
    schedule = LinearSchedule(40, 0.0)
    for step in range(21, 26):
        plan.observe(step, 10.0 + step, schedule)  # fast: would plan many more steps
    assert plan.planned == 40 and schedule.total == 40


def test_auto_precision_picks_bf16_only_where_the_cpu_has_it(monkeypatch) -> None:
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: True)
    assert loop.auto_precision(use_cpu=True) == "bf16"
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: False)
    assert loop.auto_precision(use_cpu=True) == "no"


# ---- sentence data ------------------------------------------------------------------------------------------------

def test_split_sentences_and_short_spans() -> None:
    lines = ["Das ist gut. Wirklich? Ja! Ein langer Satz folgt hier, mit vielen Wörtern darin.",
             "Τι κάνεις; Είμαι καλά, ευχαριστώ."]
    sentences = split_sentences(lines, min_words=2)
    assert sentences == ["Das ist gut.", "Ein langer Satz folgt hier, mit vielen Wörtern darin.", "Τι κάνεις;",
                         "Είμαι καλά, ευχαριστώ."]  # "Wirklich?" and "Ja!" are one word: dropped
    assert split_sentences(["a b c d e f g"], max_words=3) == ["a b c", "d e f"]  # the last single word is dropped
    more = add_short_spans(sentences, 1.0, seed=0, max_words=3)
    assert more[:4] == sentences and len(more) > 4
    assert all(2 <= len(s.split()) <= 3 and s in " ".join(sentences) for s in more[4:])
    assert add_short_spans(sentences, 1.0, seed=0, max_words=3) == more  # seeded


def test_sentence_batches_are_balanced_deterministic_and_of_similar_length(teacher_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    texts = {lang: split_sentences(read_lines(Path(p), 300)) for lang, p in CORPORA.items()}
    pool = SentencePool(tok, texts, prefix="query: ", max_length=64)
    batch = pool.batch_for_step(16, seed=3)
    a, b = batch(7), batch(7)
    assert torch.equal(a["input_ids"], b["input_ids"]) and a["input_ids"].shape[0] == 16
    lengths = a["attention_mask"].sum(1)
    assert lengths.max() - lengths.min() <= max(8, 0.5 * lengths.max())  # bucketed: little padding
    assert (a["attention_mask"].sum() / a["attention_mask"].numel()) > 0.6
    prefix_ids = tok("query: ", add_special_tokens=False)["input_ids"]
    assert a["input_ids"][0, 1:1 + len(prefix_ids)].tolist() == prefix_ids
    ids_en = {tuple(r) for r in pool.ids["en"]}
    rows = [tuple(r[m.bool()].tolist()) for r, m in zip(a["input_ids"], a["attention_mask"])]
    assert sum(r in ids_en for r in rows) == 8  # half from each language


# ---- the objective end to end --------------------------------------------------------------------------------------

def _cfg(**kw) -> TrainConfig:
    base = dict(steps=12, batch_size=16, lr=1e-3, checkpoint_every=4, log_every=1, progress=False, device="cpu",
                mixed_precision="no")  # pinned: auto depends on the CPU
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_embedding_objective_trains_toward_the_teachers_embeddings(teacher_dir: Path, tmp_path: Path, precision: str) -> None:
    result = distill_general(teacher_dir, "en,de", CORPORA, tmp_path / "student", objective="auto", layers="0,3",
                             max_sentences_per_language=400, train_config=_cfg(mixed_precision=precision), snapshots=(0.5,))
    assert result.objective == "embedding" and result.layer_map == [0, 3] and result.tokens > 0
    records = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert {"pooled", "relational", "hidden"} <= set(records[0])
    first, last = sum(r["loss"] for r in records[:3]) / 3, sum(r["loss"] for r in records[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    out = tmp_path / "student"
    assert embedding_profile(out).prefix == E5_PREFIX  # the student keeps the teacher's prompts and pooling
    snaps = sorted((out / "snapshots").iterdir())
    assert len(snaps) == 1 and json.loads((snaps[0] / "snapshot.json").read_text())["share"] == 0.5
    assert AutoModel.from_pretrained(snaps[0]).config.num_hidden_layers == 2
    record = json.loads((out / "mlcompress.json").read_text())
    assert record["parameters"]["objective"] == "embedding" and record["parameters"]["data"]["prefix"] == E5_PREFIX


def test_bistil_objective_stays_available(teacher_dir: Path, tmp_path: Path) -> None:
    result = distill_general(teacher_dir, "en,de", CORPORA, tmp_path / "s", objective="bistil", block_size=32,
                             max_blocks_per_language=32, train_config=_cfg(steps=3))
    assert result.objective == "bistil"
    assert Phase1Losses.preset("bistil") == Phase1Losses()


def test_time_budget_sizes_the_run_and_a_resume_keeps_the_plan(teacher_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(steps=10**6, time_budget=30.0, checkpoint_every=2)
    out = tmp_path / "budget"
    first = distill_general(teacher_dir, "en,de", CORPORA, out, objective="embedding", max_sentences_per_language=300,
                            train_config=cfg, stop_after=8)
    states = sorted((out.parent / f".{out.name}.work" / "checkpoints").glob("step-*"))
    plan = json.loads((states[-1] / "trainer_state.json").read_text())["planned_steps"]
    assert first.steps == 8 and 8 < plan < 10**6  # sized from the measured speed, not from --steps
    second = distill_general(teacher_dir, "en,de", CORPORA, out, objective="embedding", max_sentences_per_language=300,
                             train_config=cfg)
    assert second.resumed_from == 8 and second.steps == plan  # the resumed run ends where the first one planned
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["planned_steps"] == plan and records[-1]["lr"] == 0.0


def test_explicit_layers_are_checked(teacher_dir: Path) -> None:
    teacher = AutoModel.from_pretrained(teacher_dir)
    assert make_student(teacher, 2, "0,2")[1] == [0, 2]
    for bad in ("2,1", "0,4", "a,b", "1,1"):
        with pytest.raises(InputError, match="layers"):
            make_student(teacher, 2, bad)


# ---- one prefix detector -----------------------------------------------------------------------------------------

def test_prefix_comes_from_configuration_and_provenance_not_from_paths(tmp_path: Path, teacher_dir: Path) -> None:
    assert embedding_profile(teacher_dir).prefix == E5_PREFIX  # sentence-transformers prompts
    plain = tmp_path / "lr1e5-e5-run"  # a folder name that only looks like E5
    plain.mkdir()
    assert embedding_profile(plain) == EmbeddingProfile()
    named = tmp_path / "model"
    named.mkdir()
    (named / "mlcompress.json").write_text(json.dumps({"stage": "trim", "inputs": [{"source": "intfloat/multilingual-e5-small"}]}))
    assert embedding_profile(named).prefix == E5_PREFIX
    assert embedding_profile(plain, "intfloat/e5-base-v2").prefix == E5_PREFIX  # a Hub id names the model
    assert embedding_profile(plain, "bert-base-multilingual-cased").prefix == ""


# ---- the pipeline's distill stage on a CPU -----------------------------------------------------------------------

def _gz(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def test_pipeline_runs_distillation_on_a_cpu_within_its_budget(tmp_path: Path) -> None:
    src = build_xlmr(tmp_path / "src", training_lines(DATA)).path
    data = tmp_path / "data"
    for lang in ("en", "de"):
        _gz(data / f"mono/{lang}.txt.gz", read_lines(DATA / f"mono/{lang}.txt.gz", 200, skip=1000))
    for side in ("deu", "eng"):
        _gz(data / f"tatoeba/tatoeba.deu-eng.{side}.gz", read_lines(DATA / f"tatoeba/tatoeba.deu-eng.{side}.gz", 40))
    config = {"source": str(src), "languages": "en,de", "data": str(data), "stages": {
        "trim": {"scripts": True},
        "distill": {"enabled": True, "device": "cpu", "mixed_precision": "no", "time_budget": "20s", "batch_size": 8, "lr": 1e-3,
                    "objective": "embedding", "every_k": 2},
        "export": {"quantize": "none", "task": "sentence-embedding", "measure_latency": False},
        "eval": {"tasks": "retrieval", "max_examples": 20, "min_retention": None}}}
    Pipeline(config).run(tmp_path / "out")
    student = tmp_path / "out" / "02-distill"
    assert AutoModel.from_pretrained(student).config.num_hidden_layers < AutoModel.from_pretrained(src).config.num_hidden_layers
    record = json.loads((student / "mlcompress.json").read_text())
    assert record["parameters"]["train"]["time_budget"] == 20.0 and record["parameters"]["objective"] == "embedding"
    exported = json.loads((tmp_path / "out" / "03-export" / "mlcompress.json").read_text())
    assert str(student) in json.dumps(exported["inputs"])  # the student flows on to export
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("02-distill" in json.dumps(c) for c in report.get("candidates", report.get("artifacts", [report])))
    with pytest.raises(InputError, match="time_budget"):
        bad = json.loads(json.dumps(config))
        bad["stages"]["distill"]["time_budget"] = "soon"
        Pipeline(bad)


def test_budget_plan_grows_after_a_busy_warm_up() -> None:
    schedule = LinearSchedule(10**6, 0.0)
    plan = BudgetPlan(200.0, started_at=0.0, planned=None)
    now = 0.0
    for step in range(1, 8):
        now += 5.0  # timed while the machine was busy
        plan.observe(step, now, schedule)
    first = plan.planned
    for step in range(8, 40):
        now += 1.0
        plan.observe(step, now, schedule)
    assert plan.planned > 1.5 * first and schedule.total == plan.planned
    assert now + (plan.planned - 39) * 1.0 <= 200.0 * (1 - BudgetPlan.RESERVE) + 1.0  # still ends inside the budget
