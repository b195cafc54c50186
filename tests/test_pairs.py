"""emosup.pairs: pair-table invariants, determinism, storage, errors, and the service."""
import logging
import threading
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from sklearn.metrics import silhouette_score

from emosup.pairs import build as pair_build
from emosup.pairs import kmeans, service, table
from emosup.study import agreement

D = 16


def _corpus(seed=0):
    """Speakers a-e: 4 tight emotion blobs x 5 utterances; f: 3 blobs x 4; g: 2 blobs x 6;
    odd: 3 blobs x 3 plus one far outlier (a singleton cluster at k=4); one: 1 utterance;
    same: 10 identical utterances (1 cluster); two rows without a speaker. Rows shuffled."""
    rng = np.random.default_rng(seed)
    xs, spk, emo = [], [], []

    def add(name, n_blobs, per, scale=3.0):
        centres = rng.normal(size=(n_blobs, D)) * scale
        lab = np.repeat(np.arange(n_blobs), per)
        xs.append(centres[lab] + 0.05 * rng.normal(size=(len(lab), D)))
        spk.extend([name] * len(lab))
        emo.extend(lab.tolist())

    for name in "abcde":
        add(name, 4, 5)
    add("f", 3, 4)
    add("g", 2, 6)
    add("odd", 3, 3)
    xs.append(rng.normal(size=(1, D)) * 30.0)
    spk.append("odd")
    emo.append(3)
    add("one", 1, 1)
    add("same", 1, 10, scale=1.0)
    xs[-1][:] = xs[-1][0]
    xs.append(rng.normal(size=(2, D)))
    spk.extend([None, None])
    emo.extend([-1, -1])
    perm = rng.permutation(sum(len(v) for v in xs))
    return (np.concatenate(xs).astype(np.float32)[perm], np.array(spk, dtype=object)[perm],
            np.array(emo)[perm])


X, SPK, EMO = _corpus()
NAMES = sorted({s for s in SPK if s is not None})


def _check_definition(t, spk_labels, cross=0):
    """Independent, loop-by-loop check of the pair definition. Returns #rows with repeats."""
    k = t.num_negatives
    repeats = 0
    for i, (a, p) in enumerate(zip(t.anchors, t.positives)):
        assert spk_labels[a] is not None and t.clusters[a] >= 0
        assert p != a
        assert spk_labels[p] == spk_labels[a] and t.clusters[p] == t.clusters[a]
        for j, n in enumerate(t.negatives[i]):
            assert n != a
            if j < k - cross:  # same speaker, another cluster
                assert spk_labels[n] == spk_labels[a] and t.clusters[n] != t.clusters[a]
                assert t.clusters[n] >= 0
            else:  # another known speaker
                assert spk_labels[n] is not None and spk_labels[n] != spk_labels[a]
        repeats += len(set(t.negatives[i].tolist())) < k
    return repeats


def test_invariants_skips_and_clusters_fixed_k():
    t = pair_build.build_pair_table(X, SPK, k=4, num_negatives=4)
    n = len(X)
    assert t.num_negatives == 4 and t.negatives.shape == (len(t), 4)
    assert t.negatives.dtype == t.anchors.dtype == np.int32
    assert _check_definition(t, SPK) == t.stats["anchors_with_repeated_negatives"] == 0
    # speakers: index into sorted labels, -1 without one; cluster ids never shared by speakers
    np.testing.assert_array_equal(t.speakers, [NAMES.index(s) if s is not None else -1 for s in SPK])
    for c in np.unique(t.clusters[t.clusters >= 0]):
        assert len(set(SPK[t.clusters == c])) == 1
    # which speakers were clustered, and why the others were not
    assert t.stats["speakers_skipped"] == {pair_build.SPEAKER_TOO_FEW: 1, pair_build.SPEAKER_ONE_CLUSTER: 1}
    assert t.stats["speakers_clustered"] == len(NAMES) - 2 == 8
    assert np.all(t.clusters[(SPK == "one") | (SPK == "same")] == -1)
    assert np.all(t.clusters[[s is None for s in SPK]] == -1)
    np.testing.assert_array_equal(t.k_per_speaker,
                                  [0 if s == "one" else 4 for s in NAMES])
    # anchors: exactly the clustered utterances whose cluster has >= 2 members
    clustered = t.clusters >= 0
    size = np.bincount(t.clusters[clustered])
    expect = np.nonzero(clustered & (size[np.maximum(t.clusters, 0)] >= 2))[0]
    np.testing.assert_array_equal(t.anchors, expect)
    outlier = int(np.nonzero((SPK == "odd") & (EMO == 3))[0][0])
    assert size[t.clusters[outlier]] == 1 and outlier not in t.anchors
    skipped = t.stats["anchors_skipped"]
    assert skipped[pair_build.ANCHOR_NO_SPEAKER] == 2 and skipped[pair_build.ANCHOR_SPEAKER_SKIPPED] == 11
    assert skipped[pair_build.ANCHOR_SINGLETON] == int(np.sum(clustered) - len(expect)) >= 1
    assert t.stats["anchors"] == len(t) and len(t) + sum(skipped.values()) == n
    # the clusters are the emotion blobs for the 4-blob speakers (ARI 1)
    for s in "abcde":
        rows = SPK == s
        assert agreement.ari(EMO[rows], t.clusters[rows]) == 1.0
    # positives are drawn, not always the first other member of the cluster
    assert len({(int(t.clusters[a]), int(p)) for a, p in zip(t.anchors, t.positives)}) > \
        len(np.unique(t.clusters[t.anchors])) * 2


def test_cross_speaker_negatives_and_few_negatives():
    t = pair_build.build_pair_table(X, SPK, k=4, num_negatives=6, cross_speaker_negatives=2)
    assert t.stats["cross_speaker"] and t.stats["cross_speaker_negatives"] == 2
    _check_definition(t, SPK, cross=2)
    last, first = SPK[t.negatives[:, 4:]], SPK[t.negatives[:, :4]]
    assert np.all(last != SPK[t.anchors][:, None]) and np.all(first == SPK[t.anchors][:, None])
    # 'g' (2 blobs x 6 at k=4): the other clusters may hold < 4 utterances. Then every one of
    # them appears and the row repeats some; rows with enough candidates never repeat.
    t = pair_build.build_pair_table(X, SPK, k=2, num_negatives=8)
    repeats = _check_definition(t, SPK)
    assert repeats == t.stats["anchors_with_repeated_negatives"] > 0
    for i, a in enumerate(t.anchors):
        pool = np.nonzero((t.speakers == t.speakers[a]) & (t.clusters >= 0)
                          & (t.clusters != t.clusters[a]))[0]
        got = set(t.negatives[i].tolist())
        assert got == set(pool.tolist()) if len(pool) < 8 else len(got) == 8


def test_draw_is_uniform_without_replacement():
    rng = np.random.default_rng(0)
    out = pair_build._draw(rng, np.full(30000, 5), 2)
    assert np.all(out[:, 0] != out[:, 1]) and out.min() == 0 and out.max() == 4
    subsets = np.bincount(np.sort(out, axis=1) @ [5, 1], minlength=25)
    counts = subsets[subsets > 0]
    assert len(counts) == 10 and np.abs(counts / 3000 - 1).max() < 0.06
    firsts = np.bincount(out[:, 0], minlength=5)  # columns are in random order too
    assert np.abs(firsts / 6000 - 1).max() < 0.06
    few = pair_build._draw(rng, np.array([1, 2, 3]), 4)
    for row, p in zip(few, [1, 2, 3]):
        assert set(row.tolist()) == set(range(p))


def test_deterministic_given_seed_and_version():
    t1 = pair_build.build_pair_table(X, SPK, k=4, seed=3, version=2)
    t2 = pair_build.build_pair_table(X.copy(), SPK.copy(), k=4, seed=3, version=2)
    assert t1.fingerprint() == t2.fingerprint()
    for name, a in t1.to_arrays().items():
        np.testing.assert_array_equal(a, t2.to_arrays()[name])
    t3 = pair_build.build_pair_table(X, SPK, k=4, seed=3, version=3)
    t4 = pair_build.build_pair_table(X, SPK, k=4, seed=4, version=2)
    assert t3.version == 3 and len({t1.fingerprint(), t3.fingerprint(), t4.fingerprint()}) == 3
    assert not np.array_equal(t1.negatives, t3.negatives)
    assert not np.array_equal(t1.positives, t4.positives)


def test_k_chosen_by_silhouette_per_speaker():
    t = pair_build.build_pair_table(X, SPK, k=None)
    _check_definition(t, SPK)
    k = dict(zip(NAMES, t.k_per_speaker.tolist()))
    assert [k[s] for s in "abcdefg"] == [4, 4, 4, 4, 4, 3, 2]
    assert k["one"] == 0 and t.stats["min_utterances"] == 4 and t.stats["k"] is None
    assert t.stats["speakers_skipped"] == {pair_build.SPEAKER_TOO_FEW: 1, pair_build.SPEAKER_ONE_CLUSTER: 1}
    assert t.stats["k_counts"]["4"] == 5 + (k["odd"] == 4) and t.stats["k_counts"]["2"] == 1
    assert sum(t.stats["k_counts"].values()) == t.stats["speakers_clustered"] == 8
    for s in "abcdefg":  # every blob found
        rows = SPK == s
        assert agreement.ari(EMO[rows], t.clusters[rows]) == 1.0


def test_silhouettes_equal_sklearn():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5))
    spk = np.repeat([0, 1, 2, 3], [20, 17, 13, 10])
    spk[[0, 1]] = -1  # not used
    lab_a = rng.integers(0, 3, 60)
    lab_b = lab_a.copy()
    lab_b[spk == 2] = 0  # one cluster: undefined
    lab_b[spk == 3] = np.arange(10)  # all distinct: undefined
    lab_b[np.nonzero(spk == 1)[0][0]] = 4  # a singleton cluster scores 0
    got = kmeans.silhouettes(x, spk, 5, [lab_a, lab_b])
    assert got.shape == (2, 5) and np.isnan(got[:, 4]).all()
    for li, lab in enumerate([lab_a, lab_b]):
        for s in range(4):
            rows = spk == s
            if 2 <= len(np.unique(lab[rows])) <= rows.sum() - 1:
                np.testing.assert_allclose(got[li, s], silhouette_score(x[rows], lab[rows]),
                                           rtol=0, atol=1e-12)
            else:
                assert np.isnan(got[li, s])
    assert np.isnan(got[1, 2]) and np.isnan(got[1, 3])


def test_silhouettes_float32_sharded_match_sklearn():
    """float32 embeddings (what build_pair_table passes) take the device path: speakers
    sharded over the 8 fake devices, the same numbers on 1 device, sklearn's to float32."""
    import jax

    from emosup import parallel

    rng = np.random.default_rng(2)
    sizes = [20, 17, 13, 10, 3, 2, 1, 9, 33, 6, 12]  # 11 speakers: not a multiple of 8
    spk = np.repeat(np.arange(11), sizes)
    x = rng.normal(size=(len(spk), 5)).astype(np.float32)
    lab_a = rng.integers(0, 3, len(spk))
    lab_b = lab_a.copy()
    lab_b[spk == 2] = 0  # one cluster: undefined
    lab_b[spk == 3] = np.arange(10)  # all distinct: undefined
    spk[[0, 1]] = -1  # not used
    got = kmeans.silhouettes(x, spk, 12, [lab_a, lab_b])
    one = kmeans.silhouettes(x, spk, 12, [lab_a, lab_b], mesh=parallel.make_mesh(jax.devices()[:1]))
    np.testing.assert_array_equal(got, one)
    assert got.shape == (2, 12) and np.isnan(got[:, 11]).all()
    checked = 0
    for li, lab in enumerate([lab_a, lab_b]):
        for s in range(11):
            rows = spk == s
            if 2 <= len(np.unique(lab[rows])) <= rows.sum() - 1:
                ref = silhouette_score(x[rows].astype(np.float64), lab[rows])
                np.testing.assert_allclose(got[li, s], ref, rtol=0, atol=2e-6)
                checked += 1
            else:
                assert np.isnan(got[li, s])
    assert checked >= 12 and np.isnan(got[1, 2]) and np.isnan(got[1, 3])


def test_storage_round_trips(tmp_path):
    t = pair_build.build_pair_table(X, SPK, k=4, num_negatives=3, cross_speaker_negatives=1, version=5)
    arrays = t.to_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "iu" for v in arrays.values())
    for back in (table.PairTable.from_arrays(arrays),
                 table.PairTable.from_arrays({**arrays, "stats_json": str(
                     arrays["stats_json"].tobytes().decode())})):
        assert back.fingerprint() == t.fingerprint() and back.stats == t.stats
    path = tmp_path / "pairs.bin"  # saved at exactly this path, no suffix added
    t.save(path)
    back = table.PairTable.load(path)
    assert back.fingerprint() == t.fingerprint() and back.version == 5 and len(back) == len(t)
    np.testing.assert_array_equal(back.negatives, t.negatives)
    ckpt = ocp.StandardCheckpointer()  # what emosup.checkpoint saves the table with
    ckpt.save(tmp_path / "orbax", arrays)
    ckpt.wait_until_finished()
    back = table.PairTable.from_arrays({k: np.asarray(v) for k, v in ckpt.restore(tmp_path / "orbax").items()})
    assert back.fingerprint() == t.fingerprint() and back.cross_speaker_negatives == 1
    with pytest.raises(ValueError, match="read-only"):
        t.anchors[0] = 1
    bad = dict(arrays, positives=arrays["anchors"].copy())
    with pytest.raises(ValueError, match="invalid: positive is the anchor .anchor row 0"):
        table.PairTable.from_arrays(bad)
    neg = arrays["negatives"].copy()
    neg[3, 0] = arrays["positives"][3]
    with pytest.raises(ValueError, match="same-speaker negative .* in its cluster .anchor row 3"):
        table.PairTable.from_arrays(dict(arrays, negatives=neg))
    with pytest.raises(ValueError, match=r"lack \['stats_json'\]"):
        table.PairTable.from_arrays({k: v for k, v in arrays.items() if k != "stats_json"})


def test_bad_input_errors():
    n = len(X)
    with pytest.raises(ValueError, match=f"no speaker labels: all {n} utterances have an empty"):
        pair_build.build_pair_table(X, [None] * n, k=4)
    with pytest.raises(ValueError, match="one speaker label 'x', which looks like a corpus without"):
        pair_build.build_pair_table(X, ["x"] * n, k=4)
    t = pair_build.build_pair_table(X[:40], ["x"] * 40, k=2, allow_single_speaker=True)
    assert t.stats["speakers"] == 1 and len(t) > 0
    rng = np.random.default_rng(0)
    same = np.repeat(rng.normal(size=(2, 1, D)), 10, axis=1).reshape(20, D)
    x = np.concatenate([same, rng.normal(size=(3, D))])
    with pytest.raises(ValueError, match=(r"no speaker can yield a pair: of 3 speakers, 1 have fewer "
                                          r"than min_utterances=4 utterances, 2 end with fewer than "
                                          r"2 non-empty clusters")):
        pair_build.build_pair_table(x, ["p"] * 10 + ["q"] * 10 + ["r"] * 3, k=2)
    x_nan = X.copy()
    x_nan[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"embeddings row 7 is not finite \(1 rows"):
        pair_build.build_pair_table(x_nan, SPK, k=4)
    with pytest.raises(ValueError, match=rf"one label per embedding row \(N={n}\), got shape \(3,\)"):
        pair_build.build_pair_table(X, ["a", "b", "c"], k=4)
    with pytest.raises(ValueError, match="cross_speaker_negatives=5 > num_negatives=4"):
        pair_build.build_pair_table(X, SPK, k=4, cross_speaker_negatives=5)
    with pytest.raises(ValueError, match=r"k must be >= 2 .*k=1"):
        pair_build.build_pair_table(X, SPK, k=1)
    with pytest.raises(ValueError, match=r"embeddings must be a non-empty numeric \[N, D\]"):
        pair_build.build_pair_table(X[:, 0], SPK, k=4)


# --------------------------------------------------------------------------- PairService
def _table(v):
    """A tiny valid table standing in for a build (no clustering): version v."""
    return table.PairTable(version=v, seed=0, anchors=[0, 2], positives=[1, 3], negatives=[[2], [v % 2]],
                           clusters=[0, 0, 1, 1], speakers=[0, 0, 0, 0], k_per_speaker=[2], stats={})


def _drive(svc, steps):
    """A trainer loop: table for the step, then a refresh request with that step as snapshot."""
    used = []
    for s in range(steps):
        used.append(svc.table_for_step(s))
        svc.maybe_refresh(s, snapshot=s)
    return used


def test_service_fixed_mode_returns_initial():
    def never(v, snap):
        raise AssertionError("fixed mode must not build")
    init = _table(0)
    svc = service.PairService(never, refresh_every=0, initial=init)
    assert all(t is init for t in _drive(svc, 50)) and svc.current is init
    assert not svc.maybe_refresh(0, None) and not svc.maybe_refresh(10, None)
    svc.close()


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_service_version_is_a_function_of_step(delay):
    r = 3
    calls = []

    def build(v, snap):
        calls.append((v, snap, threading.current_thread() is threading.main_thread()))
        time.sleep(delay)
        return pair_build.build_pair_table(X, SPK, k=4, version=v)

    init = pair_build.build_pair_table(X, SPK, k=4, version=0)
    svc = service.PairService(build, refresh_every=r, initial=init)
    used = _drive(svc, 5 * r + 1)
    assert [t.version for t in used] == [max(0, s // r - 1) for s in range(5 * r + 1)]
    assert calls == [(v, v * r, False) for v in range(1, 6)]  # snapshot taken at step v*r
    direct = {v: pair_build.build_pair_table(X, SPK, k=4, version=v).fingerprint() for v in range(5)}
    assert [t.fingerprint() for t in used] == [direct[max(0, s // r - 1)] for s in range(5 * r + 1)]
    svc.close()  # waits for version 5, started at step 15
    assert svc.current.version == 5


def test_service_never_blocks_a_refresh_and_warns_when_training_waits(caplog):
    go, done = threading.Event(), threading.Event()

    def build(v, snap):
        assert go.wait(30)
        done.set()
        return _table(v)

    svc = service.PairService(build, refresh_every=2, initial=_table(0))
    assert svc.maybe_refresh(2, None)
    assert not done.is_set()  # maybe_refresh returned while the build was still blocked
    assert svc.table_for_step(3).version == 0 and svc.current.version == 0
    threading.Timer(0.3, go.set).start()
    with caplog.at_level(logging.WARNING):
        assert svc.table_for_step(4).version == 1
    assert "training waited" in caplog.text and "step 4 needs version 1" in caplog.text
    svc.close()


def test_service_errors_propagate():
    def build(v, snap):
        if v == 2:
            raise ValueError("boom")
        return _table(v)

    svc = service.PairService(build, refresh_every=1, initial=_table(0))
    svc.maybe_refresh(1, None)
    assert svc.table_for_step(2).version == 1
    svc.maybe_refresh(2, None)
    with pytest.raises(RuntimeError, match="building pair table version 2 failed: ValueError"
                                           r"\('boom'\)") as e:
        svc.table_for_step(3)
    assert isinstance(e.value.__cause__, ValueError)
    with pytest.raises(RuntimeError, match="version 2 failed"):
        svc.current
    svc.close()  # already reported: close does not raise it again

    svc = service.PairService(lambda v, s: _table(v + 1), refresh_every=1, initial=_table(0))
    svc.maybe_refresh(1, None)
    with pytest.raises(RuntimeError, match="version 1 failed: TypeError.*must return a PairTable "
                                           "with version 1, got PairTable version 2"):
        svc.close()  # never reported before: close raises it
    with pytest.raises(TypeError, match=r"build_fn must accept \(version, snapshot\)"):
        service.PairService(lambda v: _table(v), refresh_every=1, initial=_table(0))


def test_service_resume_from_checkpointed_tables():
    r = 2
    svc = service.PairService(lambda v, s: _table(v), refresh_every=r, initial=_table(0))
    first = _drive(svc, 2 * r + 1)  # steps 0..4; version 2 started at step 4
    saved = svc.tables_for_checkpoint(2 * r + 1)
    assert [t.version for t in saved] == [1, 2]
    resumed = service.PairService(lambda v, s: _table(v), refresh_every=r,
                            initial=table.PairTable.from_arrays(saved[0].to_arrays()))
    resumed.publish(saved[1])
    rest = [resumed.table_for_step(s) for s in range(2 * r + 1, 3 * r)]
    assert [t.version for t in first + rest] == [max(0, s // r - 1) for s in range(3 * r)]
    broken = service.PairService(lambda v, s: _table(v), refresh_every=r, initial=saved[0])
    with pytest.raises(RuntimeError, match=r"step 6 needs pair table version 2, which was never "
                                           r"built: maybe_refresh\(4, ...\) was not called"):
        broken.table_for_step(3 * r)
    for s in (svc, resumed, broken):
        s.close()


def test_pair_quality_counts_by_hand():
    """A hand-made table: speaker 0 has emotions [x, x, y, y, y], speaker 1 [x, y]."""
    emo = ["x", "x", "y", "y", "y", "x", "y"]
    t = table.PairTable(version=0, seed=0,
                        anchors=[0, 1, 2, 5], positives=[1, 2, 3, 6],
                        negatives=[[2, 3], [0, 4], [0, 1], [6, 6]],
                        clusters=[0, 0, 1, 1, 1, 2, 3], speakers=[0, 0, 0, 0, 0, 1, 1], k_per_speaker=[2, 2],
                        stats={"cross_speaker_negatives": 0})
    q = table.pair_quality(t, emo, speaker_names=["s0", "s1"])
    # positives: 0-1 same, 1-2 other, 2-3 same, 5-6 other -> 2 of 4
    assert q["anchors"] == 4 and q["positive_same_emotion"] == 0.5
    # negatives (anchor emotion vs each): 0:x vs y,y -> 2; 1:x vs x,y -> 1; 2:y vs x,x -> 2; 5:x vs y,y -> 2
    assert q["negative_other_emotion"] == 7 / 8
    # chance that another utterance of the speaker shares the anchor's emotion:
    # anchor 0 (x in [x,x,y,y,y]) 1/4, anchor 1 1/4, anchor 2 (y) 2/4, anchor 5 (x in [x,y]) 0/1
    assert q["chance_positive_same_emotion"] == pytest.approx((0.25 + 0.25 + 0.5 + 0.0) / 4)
    assert q["chance_negative_other_emotion"] == pytest.approx(1 - 0.25)
    assert q["per_speaker"]["s0"]["positive_same_emotion"] == pytest.approx(2 / 3)
    assert q["per_speaker"]["s1"] == {"anchors": 1, "positive_same_emotion": 0.0,
                                      "chance_positive_same_emotion": 0.0,
                                      "negative_other_emotion": 1.0, "chance_negative_other_emotion": 1.0}
    # Unknown emotions take no part; none known -> None.
    q2 = table.pair_quality(t, ["", "x", "y", "y", "y", "x", "y"], speaker_names=["s0", "s1"])
    assert q2["anchors"] == 3
    assert table.pair_quality(t, [""] * 7) is None
    with pytest.raises(ValueError, match="7 rows"):
        table.pair_quality(t, emo[:6])


def test_pair_quality_of_emotion_clusters():
    """Blobs that are the emotions: at the true k every positive shares its anchor's emotion and
    every negative does not, far above the chance rates."""
    t = pair_build.build_pair_table(X, SPK, k=4, num_negatives=2)
    q = table.pair_quality(t, [str(e) if s in tuple("abcde") else "" for s, e in zip(SPK, EMO)])
    assert q["anchors"] == 5 * 4 * 5
    assert q["positive_same_emotion"] == 1.0 and q["negative_other_emotion"] == 1.0
    assert q["chance_positive_same_emotion"] == pytest.approx(4 / 19)  # 4 others of 19 share it
    assert set(q["per_speaker"]) == {"0", "1", "2", "3", "4"}  # speaker indices without names


def test_size_rule_over_clusters():
    """k = round(n / cluster_size) per speaker, between 2 and n // 2: with clusters of ~2, the
    5-blob speakers split each blob; positives stay inside the blob (the emotion)."""
    assert pair_build.size_rule_k([4, 5, 20, 21, 100], 5).tolist() == [2, 2, 4, 4, 20]
    assert pair_build.size_rule_k([4, 10], 2).tolist() == [2, 5]
    t = pair_build.build_pair_table(X, SPK, k=None, k_rule="size", cluster_size=2, num_negatives=2)
    names = NAMES
    k_of = dict(zip(names, t.k_per_speaker.tolist()))
    assert [k_of[s] for s in "abcde"] == [10] * 5 and k_of["g"] == 6
    assert t.stats["k_rule"] == "size" and t.stats["cluster_size"] == 2
    q = table.pair_quality(t, [str(e) if s in tuple("abcde") else "" for s, e in zip(SPK, EMO)])
    assert q["positive_same_emotion"] == 1.0
    # Same-emotion utterances now also sit in other clusters: some negatives share the emotion.
    assert q["negative_other_emotion"] < 1.0
    _check_definition(t, SPK)
    with pytest.raises(ValueError, match="k_rule='elbow'"):
        pair_build.build_pair_table(X, SPK, k=None, k_rule="elbow")
