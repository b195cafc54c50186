"""emosup.study.agreement: cluster/label agreement metrics against scikit-learn and by hand;
the chance assignment."""
import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from emosup.study import agreement


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    worst = 0.0
    for t in range(200):
        n = int(rng.integers(1, 50))
        a = rng.integers(0, rng.integers(1, 6), n)
        b = a.copy() if t % 9 == 0 else rng.integers(0, rng.integers(1, 7), n)
        worst = max(worst, abs(agreement.nmi(a, b) - normalized_mutual_info_score(a, b)),
                    abs(agreement.ari(a, b) - adjusted_rand_score(a, b)))
    assert worst < 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in ([[0, 0, 0], [1, 1, 1]], [[0, 0, 1], [3, 3, 3]], [[0, 1], [0, 1]]):
            assert agreement.nmi(a, b) == normalized_mutual_info_score(a, b)
            assert agreement.ari(a, b) == adjusted_rand_score(a, b)


def test_hand_computed_purity_and_accuracy():
    true = np.array(["a", "a", "a", "a", "b", "b"])
    pred = np.array([0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(agreement.contingency(true, pred), [[2, 2, 0], [0, 0, 2]])
    assert agreement.purity(true, pred) == 1.0                    # every cluster is pure
    assert agreement.cluster_accuracy(true, pred) == pytest.approx(4 / 6)  # one-to-one: a->0, b->2
    true2 = np.array([0, 0, 0, 1, 1, 2])
    pred2 = np.array([1, 1, 0, 0, 0, 0])  # k=2 < 3 classes
    assert agreement.cluster_accuracy(true2, pred2) == pytest.approx(4 / 6)
    assert agreement.purity(true2, pred2) == pytest.approx(4 / 6)
    m = agreement.agreement(true, pred)
    assert set(m) == {"cluster_accuracy", "purity", "nmi", "ari"}
    assert m == agreement.agreement_from_contingency(agreement.contingency(true, pred))


def test_cluster_accuracy_permutation_invariant():
    rng = np.random.default_rng(3)
    true, pred = rng.integers(0, 4, 80), rng.integers(0, 5, 80)
    perm = rng.permutation(5) + 10
    for f in (agreement.cluster_accuracy, agreement.purity, agreement.nmi, agreement.ari):
        assert f(true, perm[pred]) == pytest.approx(f(true, pred), abs=1e-12)


def test_chance_assignment_keeps_sizes_and_is_seeded():
    rng = np.random.default_rng(0)
    spk = rng.integers(0, 4, 100)
    pred = rng.integers(0, 3, 100)
    a = agreement.chance_assignment(pred, 5, spk)
    for s in range(4):
        np.testing.assert_array_equal(np.sort(a[spk == s]), np.sort(pred[spk == s]))
    assert not np.array_equal(a, pred)
    np.testing.assert_array_equal(a, agreement.chance_assignment(pred, 5, spk))
    assert not np.array_equal(a, agreement.chance_assignment(pred, 6, spk))
