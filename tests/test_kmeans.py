"""emosup.pairs.kmeans: batched k-means == scikit-learn per speaker; sharding and scale."""
import warnings

import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans

from emosup.pairs import kmeans, packing

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
    padded, mask, index, names = packing.group_by_speaker(x, spk)
    k = 4
    init = np.array(kmeans.kmeans_plusplus_init(3, padded, mask, k), dtype=dtype)
    # Empty clusters on the first E-step: one far centre for speaker 0, two for speaker 3.
    init[0, 1] = 100.0
    init[3, 0], init[3, 2] = 60.0, -80.0
    lab, cen, inertia, n_iter = map(np.asarray, kmeans.batched_kmeans(padded, mask, init,
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
    lab, cen, _, n_iter = map(np.asarray, kmeans.batched_kmeans(x[None], np.ones((1, 10), bool),
                                                           init[None]))
    np.testing.assert_array_equal(lab[0], km.labels_)
    np.testing.assert_allclose(cen[0], km.cluster_centers_, atol=1e-6)
    np.testing.assert_allclose(cen[0, 0], [5.0, 5.0], atol=1e-6)  # 5 * (a - mean) + mean
    assert n_iter[0] == km.n_iter_


def test_batched_kmeans_rejects_small_speaker():
    x, spk = _speaker_data(np.float32)
    padded, mask, _, _ = packing.group_by_speaker(x, spk)
    init = np.zeros((len(SIZES), 10, x.shape[1]), np.float32)
    with pytest.raises(ValueError, match=r"speaker row 4 has 9 points < k=10"):
        kmeans.batched_kmeans(padded, mask, init)


def test_group_by_speaker_layout():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    padded, mask, index, names = packing.group_by_speaker(x, np.array(["b", "a", "b", "b", "a"]))
    assert names == ["a", "b"] and padded.shape == (2, 3, 2)
    np.testing.assert_array_equal(index, [[1, 4, -1], [0, 2, 3]])
    np.testing.assert_array_equal(mask, [[True, True, False], [True, True, True]])
    np.testing.assert_array_equal(padded[0], [[2, 3], [8, 9], [0, 0]])


def test_kmeans_plusplus_deterministic_and_unmasked():
    x, spk = _speaker_data(np.float32)
    x = x + 5.0  # pads are zeros, far from every real point
    padded, mask, _, _ = packing.group_by_speaker(x, spk)
    a = np.asarray(kmeans.kmeans_plusplus_init(7, padded, mask, 4))
    np.testing.assert_array_equal(a, np.asarray(kmeans.kmeans_plusplus_init(7, padded, mask, 4)))
    assert not np.array_equal(a, np.asarray(kmeans.kmeans_plusplus_init(8, padded, mask, 4)))
    # Independent of batching: speakers 1 and 3 alone, with their ids.
    sub = np.asarray(kmeans.kmeans_plusplus_init(7, padded[[1, 3]], mask[[1, 3]], 4,
                                            speaker_ids=[1, 3]))
    np.testing.assert_array_equal(sub, a[[1, 3]])
    for s in range(len(SIZES)):
        pts = padded[s][mask[s]]
        # every centre is one of the speaker's real points, and all are distinct
        d = ((a[s][:, None, :] - pts[None]) ** 2).sum(-1).min(axis=1)
        assert d.max() == 0.0
        assert len({tuple(c) for c in a[s]}) == 4
    sk = kmeans.kmeans_plusplus_init(2, padded, mask, 3, backend="sklearn")
    assert sk.shape == (len(SIZES), 3, x.shape[1])


def _sse(x, labels):
    return sum(((x[labels == c] - x[labels == c].mean(0)) ** 2).sum() for c in np.unique(labels))


def test_per_speaker_kmeans_determinism_small_speakers_and_n_init():
    x, spk = _speaker_data(np.float32, seed=1, d=8)
    x = np.concatenate([x, np.ones((3, 8), np.float32)])
    spk = np.concatenate([spk, ["tiny"] * 3])
    a = kmeans.per_speaker_kmeans(x, spk, 4, seed=0)
    np.testing.assert_array_equal(a, kmeans.per_speaker_kmeans(x, spk, 4, seed=0))
    assert not np.array_equal(a, kmeans.per_speaker_kmeans(x, spk, 4, seed=1))
    np.testing.assert_array_equal(a[spk == "tiny"], [0, 1, 2])  # n <= k: singletons
    assert a.min() == 0 and a.max() == 3
    # A batch budget that forces one speaker per batch gives the same labels.
    np.testing.assert_array_equal(a, kmeans.per_speaker_kmeans(x, spk, 4, seed=0, budget=1))
    b = kmeans.per_speaker_kmeans(x, spk, 4, seed=0, n_init=4)
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
    lab = kmeans.global_kmeans(x, 2, seed=0, l2_normalize=False)
    assert len(set(lab[:30])) == 1 and len(set(lab[30:])) == 1 and lab[0] != lab[-1]


def test_silhouette_k_finds_blob_count():
    rng = np.random.default_rng(0)
    xs, spk = [], []
    for s in range(3):
        centres = rng.normal(size=(3, 6)) * 3
        xs.append(np.repeat(centres, 12, axis=0) + rng.normal(size=(36, 6)) * 0.05)
        spk += [s] * 36
    best, scores = kmeans.silhouette_k(np.concatenate(xs), np.array(spk), [2, 3, 4],
                                  l2_normalize=False)
    assert best == 3 and scores[3] > 0.9 and set(scores) == {2, 3, 4}


# ------------------------------------------------------------------------------ scale
def _ragged(seed=0, n_spk=37, d=8):
    """37 speakers (not a multiple of 8) of 1..16 utterances, so two length buckets and
    speakers with n <= k; rows shuffled."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 17, n_spk)
    spk = rng.permutation(np.repeat([f"s{i:02d}" for i in range(n_spk)], sizes))
    centres = rng.normal(size=(3, d))
    return (centres[rng.integers(0, 3, len(spk))] + rng.normal(size=(len(spk), d))).astype(np.float32), spk


_SMALL_SUB = 256  # elements per sub-batch in the sharding tests: 2-4 speakers, so every device gets some


def _one_device_labels():
    from emosup import parallel

    x, spk = _ragged()
    return kmeans.per_speaker_kmeans(x, spk, 3, seed=5, mesh=parallel.make_mesh(jax.devices()[:1]))


def test_sharded_equals_one_device(monkeypatch):
    assert len(jax.devices()) == 8  # conftest's fake CPU devices
    monkeypatch.setattr(packing, "_SUB_ELEMS", _SMALL_SUB)
    x, spk = _ragged()
    sizes = np.unique(spk, return_counts=True)[1]
    for slot_ids, m, b in packing.plan(sizes[sizes > 3], x.shape[1], 1 << 26, 8):
        per_device = (slot_ids.reshape(8, -1) >= 0).sum(axis=1)
        assert (per_device > 0).sum() >= 6, (m, b, per_device)  # the speakers really spread
    ref = _one_device_labels()
    # All 8 devices (the default mesh), compiled for up to 5 centres (as for a silhouette
    # choice of k): the same labels. (Outputs all-gathered on the devices, the multi-host
    # path, are tested by the 2-process test below; batched_kmeans and kmeans_plusplus_init
    # run on all 8 devices in the sklearn tests above.)
    np.testing.assert_array_equal(kmeans.per_speaker_kmeans(x, spk, 3, seed=5, k_max=5), ref)


def test_plan_buckets_and_shapes():
    sizes = np.array([5] * 30 + [9] * 1000 + [40] * 400 + [33] + [100] * 7)
    calls = packing.plan(sizes, 192, 1 << 26, 4)
    ms = [m for _, m, _ in calls]
    assert ms == sorted(ms, reverse=True) and set(ms) == {128, 64, 16}  # the 5s joined the 9s
    got = np.concatenate([ids[ids >= 0] for ids, _, _ in calls])
    np.testing.assert_array_equal(np.sort(got), np.arange(len(sizes)))  # each speaker once
    for ids, m, b in calls:
        assert len(ids) % (4 * b) == 0 and b >= 2 and (sizes[ids[ids >= 0]] <= m).all()
    # A small budget splits a bucket into calls of one shape.
    calls = packing.plan(np.full(1000, 9), 192, 1 << 16, 2)
    assert len(calls) > 1 and len({len(ids) for ids, _, _ in calls}) == 1


_WORKER = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
sys.path.insert(0, sys.argv[3])
from test_kmeans import _ragged
from emosup import parallel
from emosup.pairs import kmeans, packing
packing._SUB_ELEMS = int(sys.argv[4])
x, spk = _ragged()
lab = kmeans.per_speaker_kmeans(x, spk, 3, seed=5, mesh=parallel.make_mesh())
print("LABELS", jax.process_index(), jax.device_count(), " ".join(map(str, lab)), flush=True)
"""


def test_two_processes_global_mesh_equal_one_process(monkeypatch):
    """A real 2-host job on loopback (2 processes x 2 CPU devices, gloo): every host supplies
    its own shards, and both get every label, equal to one process's."""
    import os
    import pathlib
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    here = str(pathlib.Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, address, str(i), here, str(_SMALL_SUB)],
                              env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    monkeypatch.setattr(packing, "_SUB_ELEMS", _SMALL_SUB)
    ref = _one_device_labels()  # meanwhile
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
        line = [ln for ln in out.splitlines() if ln.startswith("LABELS")]
        assert p.returncode == 0 and line, out[-3000:]
        _, pid, n_dev, *lab = line[0].split()
        assert (int(pid), int(n_dev)) == (i, 4)
        np.testing.assert_array_equal(np.array(lab, np.int64), ref)


def test_bench_kmeans_rows_on_tiny_sizes(monkeypatch, capsys):
    """emosup.bench's k-means rows, each size's child run in-process instead of a fresh
    interpreter: the figures come back, and our labels equal scikit-learn's per speaker."""
    import contextlib
    import io
    import subprocess

    from emosup.bench import kmeans

    real_run = subprocess.run

    def fake_run(cmd, **kwargs):
        if "kmeans.kmeans_child(" not in cmd[-1]:
            return real_run(cmd, **kwargs)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(cmd[-1], {})
        return subprocess.CompletedProcess(cmd, 0, buf.getvalue(), "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    # Two sizes whose speakers, for every k, fill one padded shape: 3 programs to compile.
    rows = kmeans.bench_kmeans(sizes=(400, 480), n_speakers=40, dim=16, k=3, repeats=1, cap_s=60.0,
                              silhouette_sizes=(400,), target_size=480)
    out = capsys.readouterr().out
    assert [r["mode"] for r in rows] == ["fixed", "fixed", "silhouette"]
    for r in rows[:2]:
        assert r["reference_status"] == "ok" and r["reference_s"] > 0 and r["emosup_s"] > 0
        n_eq, n_spk = map(int, r["labels_equal_speakers"].split("/"))
        assert n_eq == n_spk > 0
        assert r["peak_rss_mb"] >= r["rss_after_data_mb"] > 0
        assert r["devices"].startswith(f"emosup: {jax.device_count()} cpu device(s); scikit-learn: the host")
    assert isinstance(rows[1]["meets_target"], bool) and "target >= 10x" in out
    assert rows[1]["target"].startswith(">= 10x") and "meets_target" not in rows[0]
    assert 0 < rows[1]["ratio_spread"][0] <= rows[1]["ratio_spread"][1]
    assert "growth, ms per 1k utterances" in out and "0k:" not in out.split("growth")[1][:10]
    assert set(rows[2]["k_counts"]) == {"2", "3", "4", "5", "6"}
