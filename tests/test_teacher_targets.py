"""Teacher targets computed once, and the retrieval-preserving terms of the embedding objective, on a tiny teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from conftest import DATA, cpu_train_config, tiny_e5_teacher
from mlcompress import InputError
from mlcompress.distill import Phase1Losses, TrainConfig, distill_general
from mlcompress.distill.losses import contrastive_loss, crosslingual_ranking_loss, mean_pool
from mlcompress.distill.sentence_objective import sentence_loss, sentence_pool
from mlcompress.distill.student import hidden_pairs, make_student
from mlcompress.distill.teacher_targets import CHUNK, TeacherTargets, nearest, pair_by_teacher
from mlcompress.embedding_profile import E5_PREFIX

CORPORA = {"en": str(DATA / "mono" / "en.txt.gz"), "de": str(DATA / "mono" / "de.txt.gz")}
LOSSES = Phase1Losses(hidden=1.0, attention=0.0, pooled=10.0, relational=10.0, contrastive=1.0, crosslingual=1.0)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return tiny_e5_teacher(tmp_path_factory.mktemp("tiny-e5-targets") / "teacher")


@pytest.fixture(scope="module")
def pool(teacher_dir: Path):
    from mlcompress.corpus import parse_corpora

    texts = {lang: [line for c in cs for line in c.lines()][:400] for lang, cs in parse_corpora(CORPORA).items()}
    return sentence_pool(AutoTokenizer.from_pretrained(teacher_dir), texts, E5_PREFIX, 64, 0.3, 0, max_sentences=600)


def _cfg(**kw) -> TrainConfig:
    return cpu_train_config(**kw)


def test_cached_targets_are_the_teachers_outputs_and_give_the_same_loss(teacher_dir: Path, pool, tmp_path: Path) -> None:
    teacher = AutoModel.from_pretrained(teacher_dir).eval()
    student, mapping = make_student(teacher, 2)
    layers = [t for _, t in hidden_pairs(mapping)]
    targets = TeacherTargets(tmp_path / "t", layers)
    ids = {lang: pool.in_order(lang) for lang in pool.ids}
    assert targets.build(teacher, ids, {"en": 300, "de": 300}, pool.pad_id) == {"en": 2 * CHUNK, "de": 2 * CHUNK}
    batch = pool.first({"en": 300, "de": 300}).batch_for_step(16, 0)(5)
    with torch.no_grad():
        out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    emb, hidden = targets.lookup(["en", "de"], batch["language"], batch["position"], batch["input_ids"].shape[1])
    mask = batch["attention_mask"].bool()
    assert torch.allclose(emb, mean_pool(out.last_hidden_state, batch["attention_mask"]), atol=2e-2, rtol=1e-2)
    for t in layers:  # fp16 on real tokens, zeros on padding
        assert torch.allclose(hidden[t][mask], out.hidden_states[t][mask], atol=2e-2, rtol=1e-2)
        assert not hidden[t][~mask].any()
    online = sentence_loss(teacher, mapping, Phase1Losses.preset("embedding"))(student, batch)[0]
    cached = sentence_loss(teacher, mapping, Phase1Losses.preset("embedding"), targets=targets,
                           languages=["en", "de"])(student, batch)[0]
    assert torch.allclose(online, cached, rtol=1e-3), (online, cached)


def test_an_interrupted_cache_resumes_and_a_larger_run_extends_it(teacher_dir: Path, pool, tmp_path: Path) -> None:
    teacher = AutoModel.from_pretrained(teacher_dir).eval()
    ids = {lang: pool.in_order(lang) for lang in pool.ids}
    targets = TeacherTargets(tmp_path / "t", [0, 2])
    short = {lang: rows[:300] for lang, rows in ids.items()}  # a smaller pool: a full chunk and a short one
    targets.build(teacher, short, {"en": 300, "de": 300}, pool.pad_id)
    assert targets.done("en") == 300 and (tmp_path / "t" / "en" / "offsets-000001.npy").is_file()
    short_chunk = tmp_path / "t" / "en" / "pooled-000001.npy"
    marked = np.load(short_chunk)
    marked[:, 0] = 7.0  # a mark no teacher writes: extending must keep the stored rows, not recompute them
    np.save(short_chunk, marked)
    first = targets.pooled("en", 300)
    (tmp_path / "t" / "de" / "offsets-000001.npy").unlink()  # killed while writing de's second chunk
    again = TeacherTargets(tmp_path / "t", [0, 2])
    assert again.done("de") == CHUNK
    assert again.build(teacher, ids, {"en": 500, "de": 500}, pool.pad_id) == {"en": 512, "de": 512}  # whole chunks
    assert torch.equal(again.pooled("en", 300), first)  # what was kept is kept bit for bit
    assert not (again.pooled("en", 512)[300:, 0] == 7.0).any()  # the rows after it are the teacher's
    position = torch.tensor([10, 299, 300, 511, 40])  # after the extension, the same object reads the new chunk
    language = torch.tensor([0, 0, 0, 0, 1])
    emb, hidden = again.lookup(["en", "de"], language, position, 64)
    fresh = TeacherTargets(tmp_path / "t", [0, 2])
    assert torch.equal(emb, torch.cat([fresh.pooled("en", 512)[[10, 299, 300, 511]], fresh.pooled("de", 41)[40:]]))
    for k, row in enumerate([10, 299, 300, 511]):
        lo, hi = fresh._array("en", row // CHUNK, "offsets")[row % CHUNK:row % CHUNK + 2]
        stored = torch.from_numpy(np.asarray(fresh._array("en", row // CHUNK, "hidden")[lo:hi], dtype=np.float32))
        assert torch.equal(hidden[2][k, :hi - lo], stored[:, 1]) and not hidden[2][k, hi - lo:].any()
    with pytest.raises(ValueError, match="other settings"):
        TeacherTargets(tmp_path / "t", [0, 1, 2])


def test_partners_are_the_teachers_nearest_neighbours_and_come_next_to_their_sentence(teacher_dir: Path, pool,
                                                                                     tmp_path: Path) -> None:
    teacher = AutoModel.from_pretrained(teacher_dir).eval()
    targets = TeacherTargets(tmp_path / "t", [])
    targets.build(teacher, {lang: pool.in_order(lang) for lang in pool.ids}, {"en": 200, "de": 200}, pool.pad_id)
    small = pool.first({"en": 200, "de": 200})
    pair_by_teacher(small, targets)
    en, de = targets.pooled("en", 200), targets.pooled("de", 200)
    sims = torch.nn.functional.normalize(de, dim=-1) @ torch.nn.functional.normalize(en, dim=-1).T
    assert torch.equal(nearest(de, en), sims.argmax(1))
    lengths = {}
    for lang in ("en", "de"):  # token lengths by position
        lengths[lang] = torch.empty(200, dtype=torch.long)
        lengths[lang][small.positions[lang]] = small.lengths[lang]
    banded = nearest(de, en, lengths["de"], lengths["en"])
    gap = (lengths["en"][banded] - lengths["de"]).abs().float()
    assert (gap <= torch.clamp(0.25 * lengths["de"].float(), min=2.0)).float().mean() > 0.9  # similar lengths
    batch = small.batch_for_step(16, 0)(3)
    assert batch["input_ids"].shape[0] == 16 and batch["language"].tolist() == [0, 1] * 4 + [1, 0] * 4
    for i in range(0, 16, 2):  # each drawn sentence, then its partner: the teacher's nearest in the other language
        lang, pos, partner = int(batch["language"][i]), int(batch["position"][i]), int(batch["position"][i + 1])
        q, k = ("en", "de") if lang == 0 else ("de", "en")
        expected = nearest(targets.pooled(q, 200)[pos:pos + 1], targets.pooled(k, 200), lengths[q][pos:pos + 1], lengths[k])
        assert partner == int(expected)


def test_retrieval_terms_vanish_when_the_student_is_the_teacher() -> None:
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(12, 16, generator=gen)
    language = torch.tensor([0, 1] * 6)
    assert crosslingual_ranking_loss(teacher, teacher, language).abs() < 1e-5
    noisy = teacher + 2.0 * torch.randn(12, 16, generator=gen)
    assert crosslingual_ranking_loss(noisy, teacher, language) > 0.01
    assert contrastive_loss(teacher, teacher) < contrastive_loss(noisy, teacher)
    assert crosslingual_ranking_loss(teacher, teacher, torch.zeros(12, dtype=torch.long)) == 0  # one language


def test_cached_run_resumes_to_the_same_weights(teacher_dir: Path, tmp_path: Path) -> None:
    run = dict(objective="embedding", layers="0,3", max_sentences_per_language=300, losses=LOSSES)
    straight = distill_general(teacher_dir, "en,de", CORPORA, tmp_path / "straight", train_config=_cfg(), **run)
    assert straight.teacher_pass["sentences"] == {"en": 300, "de": 300}
    assert {"contrastive", "crosslingual", "hidden", "pooled"} <= set(straight.final)
    stopped = distill_general(teacher_dir, "en,de", CORPORA, tmp_path / "resumed", train_config=_cfg(), stop_after=4,
                              **run)
    assert stopped.steps == 4 and (tmp_path / ".resumed.work" / "pool.json").is_file()
    resumed = distill_general(teacher_dir, "en,de", CORPORA, tmp_path / "resumed", train_config=_cfg(), **run)
    assert resumed.resumed_from == 3 and resumed.teacher_pass["computed"] == {"en": 0, "de": 0}  # kept in the work dir
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / ".resumed.work").exists()  # the targets went with the work dir
    record = json.loads((tmp_path / "resumed" / "mlcompress.json").read_text())
    assert record["parameters"]["teacher_cache"] is True


def test_runs_share_targets_in_a_targets_dir_and_a_budget_sizes_the_pool(teacher_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "targets"
    run = dict(objective="embedding", layers="0,3", losses=LOSSES, targets_dir=shared)
    first = distill_general(teacher_dir, "en,de", CORPORA, tmp_path / "a", train_config=_cfg(steps=10**6, time_budget=15.0), **run)
    assert sum(first.teacher_pass["computed"].values()) > 0 and first.steps > 1
    second = distill_general(teacher_dir, "en,de", CORPORA, tmp_path / "b", max_sentences_per_language=200,
                             train_config=_cfg(), **run)
    assert second.teacher_pass["computed"] == {"en": 0, "de": 0} and second.teacher_pass["sentences"] == {"en": 200, "de": 200}
    assert len(list(shared.iterdir())) == 1  # one teacher, one text: one cache


def test_the_crosslingual_term_needs_the_teacher_cache(teacher_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cross-lingual ranking term"):
        distill_general(teacher_dir, "en,de", CORPORA, tmp_path / "s", objective="embedding", losses=LOSSES,
                        teacher_cache=False, train_config=_cfg())
    assert not (tmp_path / "s").exists() and not (tmp_path / ".s.work").exists()
    plain = Phase1Losses(**{**LOSSES.__dict__, "crosslingual": 0.0})
    result = distill_general(teacher_dir, "en,de", CORPORA, tmp_path / "s", objective="embedding", losses=plain,
                             teacher_cache=False, max_sentences_per_language=200, train_config=_cfg(steps=2))
    assert result.teacher_pass == {} and "contrastive" in result.final
