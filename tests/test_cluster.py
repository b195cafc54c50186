"""emosup.cluster: batched k-means == scikit-learn per speaker; agreement metrics."""
import warnings

import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from emosup import cluster as C

SIZES = (40, 75, 13, 120, 9)


def _speaker_data(dtype, seed=0, d=6):
    """Speakers of different sizes, each a mixture of 3 overlapping blobs."""
    rng = np.random.default_rng(seed)
    xs, spk = [], []
    for s, n in enumerate(SIZES):
        centres = rng.normal(size=(3, d))
        xs.append(centres[rng.integers(0, 3, n)] + rng.normal(size=(n, d)) * 0.8)
        spk += [f"spk{s}"] * n
    return np.concatenate(xs).astype(dtype), np.array(spk)


def _compare_with_sklearn(dtype, max_iter, tol, centre_tol):
    x, spk = _speaker_data(dtype)
    padded, mask, index, names = C.group_by_speaker(x, spk)
    k = 4
    init = np.array(C.kmeans_plusplus_init(3, padded, mask, k), dtype=dtype)
    # Empty clusters on the first E-step: one far centre for speaker 0, two for speaker 3.
    init[0, 1] = 100.0
    init[3, 0], init[3, 2] = 60.0, -80.0
    lab, cen, inertia, n_iter = map(np.asarray, C.batched_kmeans(padded, mask, init,
                                                                 max_iter=max_iter, tol=tol))
    assert lab.shape == mask.shape and cen.shape == init.shape and cen.dtype == dtype
    assert np.all(lab[~mask] == -1)
    for s in range(len(names)):
        pts = padded[s][mask[s]]
        km = KMeans(n_clusters=k, init=init[s], n_init=1, algorithm="lloyd",
                    max_iter=max_iter, tol=tol).fit(pts)
        np.testing.assert_array_equal(lab[s][mask[s]], km.labels_)
        assert n_iter[s] == km.n_iter_
        np.testing.assert_allclose(cen[s], km.cluster_centers_, rtol=0, atol=centre_tol)
        np.testing.assert_allclose(inertia[s], km.inertia_, rtol=10 * centre_tol)
        # labels map back to the right rows of x
        np.testing.assert_array_equal(spk[index[s][mask[s]]], names[s])
    # The far centres were relocated onto data (not left at +-60..100).
    assert np.abs(cen[0, 1]).max() < 10 and np.abs(cen[3, [0, 2]]).max() < 10


def test_batched_kmeans_equals_sklearn_float32():
    _compare_with_sklearn(np.float32, 300, 1e-4, 1e-5)


def test_batched_kmeans_equals_sklearn_float64():
    with jax.enable_x64(True):
        _compare_with_sklearn(np.float64, 300, 1e-4, 1e-12)


@pytest.mark.parametrize("max_iter,tol", [(2, 1e-4), (300, 0.5)])
def test_batched_kmeans_equals_sklearn_early_stop(max_iter, tol):
    # No strict convergence: the labels come from a final E-step with the final centres.
    _compare_with_sklearn(np.float32, max_iter, tol, 1e-5)


def test_batched_kmeans_unrelocatable_empty_cluster_matches_sklearn():
    # Two distinct points repeated, k=3: a cluster stays empty (every point sits on its
    # centre, so sklearn does not relocate) and takes row argmax(weights) -- here still the
    # raw sum of that cluster because the row comes after it (sklearn _average_centers).
    a, b = [1.0, 2.0], [-1.0, 0.5]
    x = np.array([a] * 5 + [b] * 5, np.float32)
    init = np.array([[9.0, 9.0], a, b], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn: "Number of distinct clusters (2) found ..."
        km = KMeans(3, init=init, n_init=1, algorithm="lloyd").fit(x)
    lab, cen, _, n_iter = map(np.asarray, C.batched_kmeans(x[None], np.ones((1, 10), bool),
                                                           init[None]))
    np.testing.assert_array_equal(lab[0], km.labels_)
    np.testing.assert_allclose(cen[0], km.cluster_centers_, atol=1e-6)
    np.testing.assert_allclose(cen[0, 0], [5.0, 5.0], atol=1e-6)  # 5 * (a - mean) + mean
    assert n_iter[0] == km.n_iter_


def test_batched_kmeans_rejects_small_speaker():
    x, spk = _speaker_data(np.float32)
    padded, mask, _, _ = C.group_by_speaker(x, spk)
    init = np.zeros((len(SIZES), 10, x.shape[1]), np.float32)
    with pytest.raises(ValueError, match=r"speaker row 4 has 9 points < k=10"):
        C.batched_kmeans(padded, mask, init)


def test_group_by_speaker_layout():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    padded, mask, index, names = C.group_by_speaker(x, np.array(["b", "a", "b", "b", "a"]))
    assert names == ["a", "b"] and padded.shape == (2, 3, 2)
    np.testing.assert_array_equal(index, [[1, 4, -1], [0, 2, 3]])
    np.testing.assert_array_equal(mask, [[True, True, False], [True, True, True]])
    np.testing.assert_array_equal(padded[0], [[2, 3], [8, 9], [0, 0]])


def test_kmeans_plusplus_deterministic_and_unmasked():
    x, spk = _speaker_data(np.float32)
    x = x + 5.0  # pads are zeros, far from every real point
    padded, mask, _, _ = C.group_by_speaker(x, spk)
    a = np.asarray(C.kmeans_plusplus_init(7, padded, mask, 4))
    np.testing.assert_array_equal(a, np.asarray(C.kmeans_plusplus_init(7, padded, mask, 4)))
    assert not np.array_equal(a, np.asarray(C.kmeans_plusplus_init(8, padded, mask, 4)))
    # Independent of batching: speakers 1 and 3 alone, with their ids.
    sub = np.asarray(C.kmeans_plusplus_init(7, padded[[1, 3]], mask[[1, 3]], 4,
                                            speaker_ids=[1, 3]))
    np.testing.assert_array_equal(sub, a[[1, 3]])
    for s in range(len(SIZES)):
        pts = padded[s][mask[s]]
        # every centre is one of the speaker's real points, and all are distinct
        d = ((a[s][:, None, :] - pts[None]) ** 2).sum(-1).min(axis=1)
        assert d.max() == 0.0
        assert len({tuple(c) for c in a[s]}) == 4
    sk = C.kmeans_plusplus_init(2, padded, mask, 3, backend="sklearn")
    assert sk.shape == (len(SIZES), 3, x.shape[1])


def _sse(x, labels):
    return sum(((x[labels == c] - x[labels == c].mean(0)) ** 2).sum() for c in np.unique(labels))


def test_per_speaker_kmeans_determinism_small_speakers_and_n_init():
    x, spk = _speaker_data(np.float32, seed=1, d=8)
    x = np.concatenate([x, np.ones((3, 8), np.float32)])
    spk = np.concatenate([spk, ["tiny"] * 3])
    a = C.per_speaker_kmeans(x, spk, 4, seed=0)
    np.testing.assert_array_equal(a, C.per_speaker_kmeans(x, spk, 4, seed=0))
    assert not np.array_equal(a, C.per_speaker_kmeans(x, spk, 4, seed=1))
    np.testing.assert_array_equal(a[spk == "tiny"], [0, 1, 2])  # n <= k: singletons
    assert a.min() == 0 and a.max() == 3
    # A batch budget that forces one speaker per batch gives the same labels.
    np.testing.assert_array_equal(a, C.per_speaker_kmeans(x, spk, 4, seed=0, budget=1))
    b = C.per_speaker_kmeans(x, spk, 4, seed=0, n_init=4)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    better = 0
    for s in np.unique(spk)[:-1]:
        sel = spk == s
        s1, s4 = _sse(xn[sel], a[sel]), _sse(xn[sel], b[sel])
        assert s4 <= s1 * (1 + 1e-5) + 1e-7
        better += s4 < s1 * (1 - 1e-4)
    assert better >= 1  # the extra restarts found a better optimum somewhere


def test_global_kmeans_finds_speakers():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(30, 5)) * 0.1 + 3, rng.normal(size=(20, 5)) * 0.1 - 3])
    lab = C.global_kmeans(x, 2, seed=0, l2_normalize=False)
    assert len(set(lab[:30])) == 1 and len(set(lab[30:])) == 1 and lab[0] != lab[-1]


def test_silhouette_k_finds_blob_count():
    rng = np.random.default_rng(0)
    xs, spk = [], []
    for s in range(3):
        centres = rng.normal(size=(3, 6)) * 3
        xs.append(np.repeat(centres, 12, axis=0) + rng.normal(size=(36, 6)) * 0.05)
        spk += [s] * 36
    best, scores = C.silhouette_k(np.concatenate(xs), np.array(spk), [2, 3, 4],
                                  l2_normalize=False)
    assert best == 3 and scores[3] > 0.9 and set(scores) == {2, 3, 4}


# ------------------------------------------------------------------------------ metrics
def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    worst = 0.0
    for t in range(200):
        n = int(rng.integers(1, 50))
        a = rng.integers(0, rng.integers(1, 6), n)
        b = a.copy() if t % 9 == 0 else rng.integers(0, rng.integers(1, 7), n)
        worst = max(worst, abs(C.nmi(a, b) - normalized_mutual_info_score(a, b)),
                    abs(C.ari(a, b) - adjusted_rand_score(a, b)))
    assert worst < 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in ([[0, 0, 0], [1, 1, 1]], [[0, 0, 1], [3, 3, 3]], [[0, 1], [0, 1]]):
            assert C.nmi(a, b) == normalized_mutual_info_score(a, b)
            assert C.ari(a, b) == adjusted_rand_score(a, b)


def test_hand_computed_purity_and_accuracy():
    true = np.array(["a", "a", "a", "a", "b", "b"])
    pred = np.array([0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(C.contingency(true, pred), [[2, 2, 0], [0, 0, 2]])
    assert C.purity(true, pred) == 1.0                    # every cluster is pure
    assert C.cluster_accuracy(true, pred) == pytest.approx(4 / 6)  # one-to-one: a->0, b->2
    true2 = np.array([0, 0, 0, 1, 1, 2])
    pred2 = np.array([1, 1, 0, 0, 0, 0])  # k=2 < 3 classes
    assert C.cluster_accuracy(true2, pred2) == pytest.approx(4 / 6)
    assert C.purity(true2, pred2) == pytest.approx(4 / 6)
    m = C.agreement(true, pred)
    assert set(m) == {"cluster_accuracy", "purity", "nmi", "ari"}
    assert m == C.agreement_from_contingency(C.contingency(true, pred))


def test_cluster_accuracy_permutation_invariant():
    rng = np.random.default_rng(3)
    true, pred = rng.integers(0, 4, 80), rng.integers(0, 5, 80)
    perm = rng.permutation(5) + 10
    for f in (C.cluster_accuracy, C.purity, C.nmi, C.ari):
        assert f(true, perm[pred]) == pytest.approx(f(true, pred), abs=1e-12)


def test_chance_assignment_keeps_sizes_and_is_seeded():
    rng = np.random.default_rng(0)
    spk = rng.integers(0, 4, 100)
    pred = rng.integers(0, 3, 100)
    a = C.chance_assignment(pred, 5, spk)
    for s in range(4):
        np.testing.assert_array_equal(np.sort(a[spk == s]), np.sort(pred[spk == s]))
    assert not np.array_equal(a, pred)
    np.testing.assert_array_equal(a, C.chance_assignment(pred, 5, spk))
    assert not np.array_equal(a, C.chance_assignment(pred, 6, spk))
