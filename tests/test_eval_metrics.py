"""eval's metrics against values computed independently: CKA, Tatoeba retrieval, Spearman, MLM agreement, retention and the gate."""

from __future__ import annotations

import numpy as np
import pytest

from mlcompress.eval.fidelity import embedding_cosine, layer_cka, linear_cka, matching_layers, top1_agreement
from mlcompress.eval.retention import Score, gate, gate_error, summary
from mlcompress.eval.retrieval import retrieval_accuracy
from mlcompress.eval.sts import rankdata, spearman, sts_spearman

RNG = np.random.default_rng(0)


def _cka_by_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """CKA from its kernel definition: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = XX^T, L = YY^T, H the centring matrix."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.trace(k @ l) / np.sqrt(np.trace(k @ k) * np.trace(l @ l)))


def test_cka_of_a_representation_with_itself_and_its_rotation_is_one() -> None:
    x = RNG.normal(size=(60, 16))
    q, _ = np.linalg.qr(RNG.normal(size=(16, 16)))  # a random orthogonal matrix
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.5 * x + 2.0) == pytest.approx(1.0, abs=1e-12)  # isotropic scaling and shift
    y = RNG.normal(size=(60, 24))
    assert linear_cka(x, y) == pytest.approx(_cka_by_hsic(x, y), rel=1e-9)
    assert linear_cka(x, y) < 0.6  # independent noise is far from 1
    z = x.copy()
    z[:, 0] *= 10  # anisotropic scaling changes CKA
    assert linear_cka(x, z) == pytest.approx(_cka_by_hsic(x, z), rel=1e-9)
    assert linear_cka(x, z) < 0.99


def test_layer_cka_matches_depths_of_a_shallower_candidate() -> None:
    assert matching_layers(13, 7) == [(0, 0), (2, 1), (4, 2), (6, 3), (8, 4), (10, 5), (12, 6)]
    assert matching_layers(3, 3) == [(0, 0), (1, 1), (2, 2)]
    layers = [RNG.normal(size=(30, 8)) for _ in range(3)]
    res = layer_cka(layers, layers)
    assert res["mean"] == pytest.approx(1.0) and res["last"] == pytest.approx(1.0)
    assert set(res["per_layer"]) == {"s0-c0", "s1-c1", "s2-c2"}


def test_retrieval_accuracy_on_a_permuted_pair_set_is_the_share_of_fixed_points() -> None:
    n = 40
    src = RNG.normal(size=(n, 64))
    perm = np.arange(n)
    moved = RNG.choice(n, size=10, replace=False)
    perm[moved] = np.roll(moved, 1)  # a 10-cycle: exactly 10 rows lose their own translation
    tgt = src[perm] * RNG.uniform(0.5, 2.0, size=(n, 1))  # scale does not matter to cosine
    res = retrieval_accuracy(src, tgt)
    assert res["accuracy"] == pytest.approx(30 / 40)
    assert res["src_to_en"] == pytest.approx(30 / 40) and res["en_to_src"] == pytest.approx(30 / 40)
    assert retrieval_accuracy(src, src)["accuracy"] == 1.0
    with pytest.raises(ValueError):
        retrieval_accuracy(src, src[:5])


def test_retrieval_directions_differ_when_one_target_is_a_hub() -> None:
    src = np.eye(4)
    tgt = np.eye(4)
    tgt[1] = [1.0, 0.1, 0, 0]  # target 1 sits next to source 0
    # src->tgt: row 0 -> tgt 0 (cos 1), row 1 -> tgt 1 (0.0995 vs 0 elsewhere): 4/4; tgt->src: tgt 1 -> src 0: 3/4
    res = retrieval_accuracy(src, tgt)
    assert res["src_to_en"] == 1.0 and res["en_to_src"] == 0.75 and res["accuracy"] == 0.875


def test_spearman_against_a_hand_computation_with_ties() -> None:
    a = [1.0, 2.0, 2.0, 4.0, 3.0]
    b = [0.5, 0.4, 0.9, 1.0, 0.7]
    assert list(rankdata(np.array(a))) == [1.0, 2.5, 2.5, 5.0, 4.0]
    # by hand: ranks a = [1, 2.5, 2.5, 5, 4], ranks b = [2, 1, 4, 5, 3]; means 3 and 3
    # deviations a = [-2, -.5, -.5, 2, 1], b = [-1, -2, 1, 2, 0]; sum of products = 2 + 1 - .5 + 4 + 0 = 6.5
    # sum of squares a = 4 + .25 + .25 + 4 + 1 = 9.5; b = 1 + 4 + 1 + 4 + 0 = 10
    assert spearman(np.array(a), np.array(b)) == pytest.approx(6.5 / np.sqrt(9.5 * 10))
    x = RNG.normal(size=50)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -x**3) == pytest.approx(-1.0)


def test_sts_spearman_uses_pair_cosines() -> None:
    a = RNG.normal(size=(20, 8))
    b = RNG.normal(size=(20, 8))
    cos = [float(u @ v / np.linalg.norm(u) / np.linalg.norm(v)) for u, v in zip(a, b)]
    gold = list(np.argsort(np.argsort(cos)) * 0.25)  # gold in the order of the cosines: Spearman 1
    assert sts_spearman(a, b, gold) == pytest.approx(1.0)
    assert embedding_cosine(a, a) == pytest.approx(1.0)
    assert embedding_cosine(a, -a) == pytest.approx(-1.0)


def test_top1_agreement() -> None:
    assert top1_agreement([["a", "b"], ["c"]], [["a", "x"], ["c"]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        top1_agreement([[]], [[]])


def test_retention_and_the_gate_both_ways() -> None:
    good = Score("retrieval", "de-en", "accuracy", 0.90, 0.891, 100)
    bad = Score("pos", "de", "accuracy", 0.80, 0.60, 100)
    diag = Score("fidelity", "de", "cka_mean", 1.0, 0.1, 10, gated=False)
    zero = Score("sts", "de-de", "spearman", -0.1, 0.2, 10)
    assert good.retention == pytest.approx(0.99) and bad.retention == pytest.approx(0.75)
    assert zero.retention is None and not zero.gated and "undefined" in zero.note
    passed = gate([good, diag, zero], 0.97)
    assert passed["passed"] is True and passed["checked"] == 1
    failed = gate([good, bad, diag], 0.97)
    assert failed["passed"] is False and [f["task"] for f in failed["failures"]] == ["pos"]
    assert gate([bad], None)["passed"] is None
    err = gate_error(failed, "/tmp/r")
    assert err.exit_code == 1 and "pos de accuracy: retention 0.750" in err.message and "/tmp/r" in err.hint
    assert summary([good, bad, diag])["pos"]["min_retention"] == pytest.approx(0.75)


def test_word_positions_skip_a_bare_word_boundary_piece() -> None:
    from mlcompress.eval.encoders import word_positions

    # <s> ▁ 同 樣 ▁施 力 ▁ ， </s>: word 0 starts with a bare ▁ (id 6), word 1 does not, word 2 is only ▁ + piece
    word_ids = [None, 0, 0, 0, 1, 1, 2, 2, None]
    input_ids = [0, 6, 100, 101, 200, 201, 6, 300, 2]
    assert word_positions(word_ids, input_ids, {6}) == {0: 2, 1: 4, 2: 7}
    assert word_positions([None, 0, None], [0, 6, 2], {6}) == {0: 1}  # a word that is only the marker keeps it
    assert word_positions(word_ids, input_ids, set()) == {0: 1, 1: 4, 2: 6}  # no markers: first sub-token
