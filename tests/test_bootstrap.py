"""Retention intervals from a paired bootstrap, and scores at chance level that are reported but never gated."""

from __future__ import annotations

import numpy as np
import pytest

from mlcompress.eval.bootstrap import mean_interval, paired_bootstrap, ratio_interval, sts_interval
from mlcompress.eval.retention import Score, gate
from mlcompress.eval.transfer import Accuracy


def test_bootstrap_matches_a_hand_computed_case() -> None:
    # two examples: source right on both, candidate right on the first only. A resample draws each of the
    # four index pairs with probability 1/4: (0,0) -> 1/1, (1,1) -> 0/1, (0,1) and (1,0) -> 0.5/1.
    # Retention is 1.0 with p 1/4, 0.5 with p 1/2 and 0.0 with p 1/4; the source score is always 1.
    iv = mean_interval((np.array([1.0, 1.0]), np.array([1.0, 0.0])), chance=0.5, seed=1)
    assert iv.retention_low == 0.0 and iv.retention_high == 1.0
    draws = np.random.default_rng(1)
    ratios = [np.array([1.0, 0.0])[draws.integers(0, 2, 2)].mean() for _ in range(iv.resamples)]
    assert abs(np.mean(ratios) - 0.5) < 0.05  # the distribution the interval is read from
    assert iv.source_low == iv.source_high == 1.0 and iv.above_chance


def test_identical_models_have_a_degenerate_interval_at_one() -> None:
    right = np.array([1, 0, 1, 1, 0, 1, 1, 1], dtype=float)
    iv = mean_interval((right, right), chance=1 / 8)
    assert iv.retention_low == iv.retention_high == 1.0


def test_pooled_accuracy_resamples_units_with_their_sizes() -> None:
    # units of 10 and 1 tokens: a resample of the big unit twice weighs it fully
    iv = ratio_interval((np.array([10.0, 0.0]), np.array([5.0, 0.0])), np.array([10.0, 1.0]), chance=0.1)
    assert iv.retention_low == pytest.approx(0.5) and iv.retention_high == pytest.approx(0.5)


def test_interval_narrows_with_more_examples() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 800):
        s = (rng.random(n) < 0.9).astype(float)
        c = s * (rng.random(n) < 0.95)
        iv = mean_interval((s, c), chance=1 / n)
        widths.append(iv.retention_high - iv.retention_low)
    assert widths[1] < widths[0] / 2


def test_a_chance_level_source_score_is_never_gated() -> None:
    rng = np.random.default_rng(0)
    gold = rng.random(250).tolist()
    noise = lambda: (rng.normal(size=(250, 8)), rng.normal(size=(250, 8)))  # noqa: E731  embeddings unrelated to gold
    iv = sts_interval((noise(), noise()), gold)
    assert not iv.above_chance and iv.source_low < 0 < iv.source_high
    score = Score("sts", "es-en (4b)", "spearman", 0.015, 0.0045, 250, interval=iv.as_dict())
    assert not score.gated and "not significantly above chance" in score.note
    verdict = gate([score], 0.95)
    assert verdict["passed"] and verdict["checked"] == 0 and "chance" in verdict["rule"]


def test_a_clear_score_is_gated_and_can_fail() -> None:
    s = np.ones(200)
    c = np.r_[np.ones(150), np.zeros(50)]
    iv = mean_interval((s, c), chance=1 / 200).as_dict()
    score = Score("retrieval", "de-en", "accuracy", 1.0, 0.75, 200, interval=iv)
    assert score.gated and iv["retention_high"] < 0.95
    assert not gate([score], 0.95)["passed"]


def test_accuracy_is_a_float_that_keeps_its_units() -> None:
    acc = Accuracy(np.array([3, 1]), np.array([4, 2]))
    assert acc == pytest.approx(4 / 6) and list(acc.right) == [3, 1] and isinstance(acc, float)
    assert paired_bootstrap(lambda idx, m: 1.0, 3, chance=0.0, resamples=10).retention_low == 1.0


def test_accuracy_survives_copy_and_the_report_record() -> None:
    import copy
    import json
    import pickle

    acc = Accuracy(np.array([3, 1]), np.array([4, 2]))
    for clone in (copy.deepcopy(acc), pickle.loads(pickle.dumps(acc))):
        assert clone == acc and list(clone.total) == [4, 2]
    score = Score("pos", "el", "accuracy", float(acc), float(acc), 6,
                  interval=ratio_interval((acc.right, acc.right), acc.total, chance=0.2).as_dict())
    json.dumps(score.as_dict())
