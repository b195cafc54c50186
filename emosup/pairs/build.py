"""Building a pair table (``emosup.pairs.table`` holds its definition) from utterance
embeddings and speaker labels: ``build_pair_table`` clusters each speaker's L2-normalised
embeddings (``kmeans.per_speaker_kmeans``; k fixed or chosen per speaker by a k rule) and
draws, for every anchor, its positive and its K negatives.

Determinism: a table is a pure function of (embeddings, speakers, the options, seed, version)
*as given* -- row order included: rows are indices into the inputs, each speaker's
k-means++ is seeded by (seed, version, its rank in sorted-label order among the speakers
with >= min_utterances), and every draw comes from one ``numpy.random.default_rng([seed, version, tag])``.
The same inputs give identical arrays (``fingerprint`` equal) on every host; another version
gives another draw. Permuting the rows gives a different, equally valid, table.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from absl import logging

from emosup.pairs import kmeans, packing
from emosup.pairs.table import PairTable

# Reasons a speaker is not clustered / an utterance is not an anchor (keys of PairTable.stats).
SPEAKER_TOO_FEW = "fewer than min_utterances"
SPEAKER_ONE_CLUSTER = "fewer than 2 non-empty clusters"
ANCHOR_NO_SPEAKER = "no speaker label"
ANCHOR_SPEAKER_SKIPPED = "speaker skipped"
ANCHOR_SINGLETON = "singleton cluster"

_TAG_SAMPLE, _TAG_KMEANS = 0x70616972, 0x6B6D6E73  # "pair", "kmns": separate random streams


def _speaker_index(speakers, n: int):
    """Labels (N,) -> (index int32 [N] into sorted labels, -1 where missing; names).

    Missing: None, "" or NaN. Object arrays are compared as strings (mixed types sort)."""
    arr = np.asarray(speakers)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"pairs/build.py: speakers must be 1-D with one label per embedding row "
                         f"(N={n}), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        missing = np.isnan(arr)
    elif arr.dtype.kind in "US":
        missing = arr == arr.dtype.type()
    elif arr.dtype.kind == "O":
        missing = np.array([v is None or v == "" or (isinstance(v, float) and np.isnan(v))
                            for v in arr], bool)
        arr = np.array(["" if m else str(v) for v, m in zip(arr, missing)])
    else:
        missing = np.zeros(n, bool)
    index = np.full(n, -1, np.int32)
    names, inv = np.unique(arr[~missing], return_inverse=True)
    index[~missing] = inv
    return index, names.tolist(), missing


def _draw(rng, pool: np.ndarray, k: int) -> np.ndarray:
    """Offsets [A, k] into pools of sizes pool [A] (>= 1), in random column order.

    Where pool >= k: k distinct offsets, uniform over k-subsets (Floyd's algorithm, vectorised
    over rows). Where pool < k: every offset once, the other k - pool drawn with replacement
    (duplicates are unavoidable; this keeps as many distinct negatives as there are).
    """
    a = len(pool)
    if k == 0:
        return np.zeros((a, 0), np.int64)
    sel = np.zeros((a, k), np.int64)
    for col in range(k):  # Floyd: for j = P-k .. P-1 draw t in [0, j]; take j if t was taken
        j = np.maximum(pool - k + col, 0)
        t = rng.integers(0, j + 1)
        taken = (sel[:, :col] == t[:, None]).any(axis=1)
        sel[:, col] = np.where(taken, j, t)
    cols = np.arange(k)[None, :]
    fill = np.where(cols < pool[:, None], cols, rng.integers(0, pool[:, None], size=(a, k)))
    out = np.where((pool >= k)[:, None], sel, fill)
    return np.take_along_axis(out, np.argsort(rng.random((a, k)), axis=1), axis=1)


# --------------------------------------------------------------------------- build
K_RULES = ("silhouette", "size")  # how k is chosen per speaker when no fixed k is given


def size_rule_k(n_utterances, cluster_size: int) -> np.ndarray:
    """k per speaker under the `size` rule: clusters of about `cluster_size` utterances,
    k = round(n / cluster_size), at least 2 and at most n // 2 (clusters of 2 on average)."""
    n = np.asarray(n_utterances, np.int64)
    return np.maximum(2, np.minimum(n // 2, np.rint(n / cluster_size).astype(np.int64)))


def build_pair_table(embeddings, speakers, *, k: int | None = None,
                     k_range: Sequence[int] = (2, 3, 4, 5, 6), k_rule: str = "silhouette",
                     cluster_size: int = 8, num_negatives: int = 4,
                     cross_speaker_negatives: int = 0, seed: int = 0, version: int = 0,
                     min_utterances: int | None = None,
                     allow_single_speaker: bool = False, mesh=None) -> PairTable:
    """Cluster each speaker and draw anchors, positives and negatives -> PairTable.

    embeddings [N, D] float (finite); speakers (N,) labels (None / "" / NaN = unknown: such
    rows are never used). k: clusters per speaker, or None = chosen per speaker by `k_rule`:
    "silhouette" = the k in k_range with the best mean silhouette (ties: smaller k; our
    choice), "size" = clusters of about `cluster_size` utterances (``size_rule_k``: more,
    purer clusters than silhouette, at the cost of more negatives that share the anchor's
    emotion). num_negatives = K;
    cross_speaker_negatives = c of the K from other speakers (any cluster, any labelled
    utterance), in the last c columns; 0 = all from the anchor speaker's other clusters
    (emosup's choice, docs/method.md §Pair tables). min_utterances: speakers with fewer are not clustered (default
    2*k, or 2*min(k_range) = 4 when k is None). allow_single_speaker: a corpus whose rows all
    carry one speaker label is refused unless this is set (it usually means "no labels").
    mesh: devices the per-speaker k-means and silhouettes are sharded over (default: this
    process's devices; see emosup.pairs.kmeans); the table does not depend on it.

    Every clustered utterance in a cluster of >= 2 is an anchor (ascending row order); its
    positive is uniform over the rest of its cluster; its K-c negatives are uniform without
    replacement over its speaker's other clusters, or, when those hold fewer than K-c
    utterances, all of them plus draws with replacement (counted in stats).

    stats: utterances, speakers (labelled), speakers_clustered, speakers_skipped {reason: n},
    anchors, anchors_skipped {reason: n}, clusters (non-empty), anchors_with_repeated_negatives,
    k (None = silhouette), k_range, k_counts {k: speakers} (k used by clustered speakers),
    num_negatives, cross_speaker_negatives, cross_speaker (bool), min_utterances, seed, version.
    Raises ValueError for bad input, a corpus without speaker labels, or when no pair exists.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] == 0 or x.dtype.kind not in "fiu":
        raise ValueError(f"pairs/build.py: embeddings must be a non-empty numeric [N, D] array, got "
                         f"shape {x.shape} dtype {x.dtype}")
    x = np.asarray(x, dtype=np.float32)  # no copy of float32 input: only xs below is kept
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"pairs/build.py: embeddings row {int(np.nonzero(bad)[0][0])} is not finite "
                         f"({int(bad.sum())} rows with NaN/Inf); fix the encoder or drop the rows")
    n = len(x)
    for name, v, lo in (("num_negatives", num_negatives, 1), ("seed", seed, 0), ("version", version, 0),
                        ("cross_speaker_negatives", cross_speaker_negatives, 0)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"pairs/build.py: {name} must be an integer >= {lo}, got {v!r}")
    if cross_speaker_negatives > num_negatives:
        raise ValueError(f"pairs/build.py: cross_speaker_negatives={cross_speaker_negatives} > "
                         f"num_negatives={num_negatives}")
    if k is None and k_rule not in K_RULES:
        raise ValueError(f"pairs/build.py: k_rule={k_rule!r}: expected one of {K_RULES} (or a fixed k)")
    if k is None and k_rule == "size" and not (isinstance(cluster_size, (int, np.integer)) and cluster_size >= 2):
        raise ValueError(f"pairs/build.py: cluster_size must be an integer >= 2, got {cluster_size!r}")
    spk, names, missing = _speaker_index(speakers, n)
    counts = np.bincount(spk[spk >= 0], minlength=len(names))
    if k is None and k_rule == "size":
        k_of = size_rule_k(counts, cluster_size)
        ks = sorted({int(v) for v in k_of})
    else:
        ks = [int(k)] if k is not None else sorted({int(v) for v in k_range})
    if not ks or min(ks) < 2:
        raise ValueError(f"pairs/build.py: k must be >= 2 (a negative needs another cluster); got "
                         f"k={k!r}, k_range={tuple(k_range)!r}")
    if min_utterances is None:
        min_utterances = 2 * min(ks) if k is not None or k_rule == "silhouette" else 4
    if len(names) == 0:
        raise ValueError(f"pairs/build.py: no speaker labels: all {n} utterances have an empty speaker; "
                         f"intra-speaker pairs need a speaker id per utterance")
    if len(names) == 1 and not allow_single_speaker:
        raise ValueError(f"pairs/build.py: all {int((~missing).sum())} labelled utterances have the one "
                         f"speaker label {names[0]!r}, which looks like a corpus without speaker "
                         f"labels; intra-speaker pairs need real speaker ids (pass "
                         f"allow_single_speaker=True if it truly is one speaker)")
    if cross_speaker_negatives and len(names) < 2:
        raise ValueError("pairs/build.py: cross_speaker_negatives > 0 needs at least 2 speakers")
    s_count = len(names)
    eligible = counts >= min_utterances
    rows = np.nonzero(eligible[np.maximum(spk, 0)] & (spk >= 0))[0]

    # -- cluster (one seed for every k: a speaker's k-means++ stream is (kseed, run, rank)).
    kseed = int(np.random.SeedSequence([seed, version, _TAG_KMEANS]).generate_state(1)[0])
    xs = packing.l2n(x)
    local = np.full(n, -1, np.int64)
    k_per = np.zeros(s_count, np.int32)
    if len(rows):
        by_k = []
        x_rows = xs if len(rows) == n else xs[rows]  # one copy for every k (if any)
        for kk in ks:
            lab = np.full(n, -1, np.int64)
            # The size rule needs each k for its own speakers only; silhouette scores every k.
            sub = (k_of[spk[rows]] == kk) if k is None and k_rule == "size" else slice(None)
            lab[rows[sub]] = kmeans.per_speaker_kmeans(x_rows[sub], spk[rows][sub], kk, seed=kseed,
                                                       l2_normalize=False, mesh=mesh, k_max=max(ks))
            by_k.append(lab)
        del x_rows
        choice = np.zeros(s_count, np.int64)
        if k is None and k_rule == "size":
            choice = np.searchsorted(ks, k_of)
        elif len(ks) > 1:
            used = np.where(eligible[np.maximum(spk, 0)] & (spk >= 0), spk, -1)
            sil = kmeans.silhouettes(xs, used, s_count, by_k, mesh=mesh)
            # NaN (undefined) loses to any score; argmax takes the first = the smaller k on ties.
            choice = np.argmax(np.where(np.isnan(sil), -np.inf, sil), axis=0)
        k_per[eligible] = np.asarray(ks)[choice][eligible]
        local[rows] = np.stack(by_k)[choice[spk[rows]], rows]
    key = spk.astype(np.int64) * (max(ks) + 1) + local  # (speaker, k-means label) as one int
    n_nonempty = np.bincount(np.unique(key[rows]) // (max(ks) + 1), minlength=s_count)
    one_cluster = eligible & (n_nonempty < 2)
    keep = eligible & ~one_cluster
    clustered = keep[np.maximum(spk, 0)] & (spk >= 0)
    clusters = np.full(n, -1, np.int64)
    _, clusters[clustered] = np.unique(key[clustered], return_inverse=True)

    # -- anchors: clustered rows whose cluster has >= 2 members.
    csize = np.bincount(clusters[clustered])
    is_anchor = clustered.copy()
    is_anchor[clustered] = csize[clusters[clustered]] >= 2
    anchors = np.nonzero(is_anchor)[0]
    skipped_speakers = {SPEAKER_TOO_FEW: int(np.sum(~eligible)),
                        SPEAKER_ONE_CLUSTER: int(np.sum(one_cluster))}
    skipped_anchors = {ANCHOR_NO_SPEAKER: int(missing.sum()),
                       ANCHOR_SPEAKER_SKIPPED: int(np.sum((spk >= 0) & ~clustered)),
                       ANCHOR_SINGLETON: int(np.sum(clustered & ~is_anchor))}
    if len(anchors) == 0:
        raise ValueError(
            f"pairs/build.py: no speaker can yield a pair: of {s_count} speakers, "
            f"{skipped_speakers[SPEAKER_TOO_FEW]} have fewer than min_utterances={min_utterances} "
            f"utterances, {skipped_speakers[SPEAKER_ONE_CLUSTER]} end with fewer than 2 non-empty "
            f"clusters, and every cluster of the other {int(keep.sum())} is a singleton "
            f"(k={'silhouette over ' + str(ks) if k is None else k}); provide more utterances per "
            f"speaker or lower k / min_utterances")

    # -- draws. `order` lists clustered rows by cluster id, so each speaker's rows (and within
    # them each cluster's rows) are one contiguous block of it.
    rng = np.random.default_rng([seed, version, _TAG_SAMPLE])
    order = np.nonzero(clustered)[0][np.argsort(clusters[clustered], kind="stable")]
    pos_of = np.empty(n, np.int64)
    pos_of[order] = np.arange(len(order))
    cstart = np.concatenate([[0], np.cumsum(csize)])
    ssize = np.bincount(spk[order], minlength=s_count)
    sstart = np.concatenate([[0], np.cumsum(ssize)])
    ca, sa = clusters[anchors], spk[anchors]
    cb, nc, sb, ns = cstart[ca], csize[ca], sstart[sa], ssize[sa]
    q = cb + rng.integers(0, nc - 1)  # uniform over the cluster minus the anchor
    positives = order[q + (q >= pos_of[anchors])]
    k_same = num_negatives - cross_speaker_negatives
    pool = ns - nc  # >= 1: a kept speaker has another non-empty cluster
    q = sb[:, None] + _draw(rng, pool, k_same)
    neg_same = order[q + (q >= cb[:, None]) * nc[:, None]]  # skip the anchor's cluster block
    c = cross_speaker_negatives
    lab_order = np.nonzero(spk >= 0)[0][np.argsort(spk[spk >= 0], kind="stable")]
    lstart = np.concatenate([[0], np.cumsum(counts)])
    off = _draw(rng, len(lab_order) - counts[sa], c)
    neg_cross = lab_order[off + (off >= lstart[sa][:, None]) * counts[sa][:, None]]
    negatives = np.concatenate([neg_same, neg_cross], axis=1)

    k_counts = np.bincount(k_per[keep], minlength=max(ks) + 1)
    stats = {
        "utterances": n, "speakers": s_count, "speakers_clustered": int(keep.sum()),
        "speakers_skipped": skipped_speakers, "anchors": int(len(anchors)),
        "anchors_skipped": skipped_anchors, "clusters": int(len(csize)),
        "anchors_with_repeated_negatives": int(np.sum(pool < k_same)),
        "k": None if k is None else int(k), "k_rule": "fixed" if k is not None else k_rule,
        "cluster_size": int(cluster_size) if k is None and k_rule == "size" else None, "k_range": ks,
        "k_counts": {str(v): int(k_counts[v]) for v in ks},
        "num_negatives": int(num_negatives), "cross_speaker_negatives": int(c),
        "cross_speaker": bool(c > 0), "min_utterances": int(min_utterances),
        "seed": int(seed), "version": int(version),
    }
    table = PairTable(version=version, seed=seed, anchors=anchors, positives=positives,
                      negatives=negatives, clusters=clusters, speakers=spk, k_per_speaker=k_per,
                      stats=stats)
    table.validate()  # cheap, and the definition must never be broken silently
    logging.info("pair table v%d: %d anchors from %d/%d speakers (%d clusters); skipped speakers %s, "
                 "skipped utterances %s", version, len(anchors), int(keep.sum()), s_count,
                 len(csize), skipped_speakers, skipped_anchors)
    return table
