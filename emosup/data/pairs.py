"""Pair tables for intra-speaker contrastive pretraining (PAPER.md, Claim 2), and their service.

From utterance embeddings and speaker labels, ``build_pair_table`` clusters each speaker's
L2-normalised embeddings (``emosup.cluster.per_speaker_kmeans``) and draws, for every anchor
utterance, one positive from the **same speaker and same cluster** and K negatives from the
**same speaker, other clusters** (optionally c of the K from other speakers). Because anchor,
positive and negatives share the speaker, what separates them is what the clusters encode.

Definition kept by every table (checked by ``PairTable.validate`` after every build and load):
  * an anchor has a speaker label and a cluster with >= 2 members;
  * its positive is another utterance (never itself) of the same speaker and cluster;
  * negatives ``[:, :K-c]`` share the speaker but not the cluster (so never the anchor);
    negatives ``[:, K-c:]`` (the c cross-speaker ones) have another known speaker.

Determinism: a table is a pure function of (embeddings, speakers, the options, seed, version)
*as given* -- row order included: rows are indices into the inputs, each speaker's
k-means++ is seeded by (seed, version, its rank in sorted-label order among the speakers
with >= min_utterances), and every draw comes from one ``numpy.random.default_rng([seed, version, tag])``.
The same inputs give identical arrays (``fingerprint`` equal) on every host; another version
gives another draw. Permuting the rows gives a different, equally valid, table.

``PairService`` publishes tables to the trainer: a fixed one (the default), or one rebuilt
every N steps in a background thread, with the version used at each step a pure function of
the step so that training never depends on how long a build took.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import threading
import time
from typing import Callable, Sequence

import numpy as np
from absl import logging

from emosup import cluster

# Reasons a speaker is not clustered / an utterance is not an anchor (keys of PairTable.stats).
SPEAKER_TOO_FEW = "fewer than min_utterances"
SPEAKER_ONE_CLUSTER = "fewer than 2 non-empty clusters"
ANCHOR_NO_SPEAKER = "no speaker label"
ANCHOR_SPEAKER_SKIPPED = "speaker skipped"
ANCHOR_SINGLETON = "singleton cluster"

_ARRAYS = ("anchors", "positives", "negatives", "clusters", "speakers", "k_per_speaker")
_TAG_SAMPLE, _TAG_KMEANS = 0x70616972, 0x6B6D6E73  # "pair", "kmns": separate random streams


# --------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value; compare fingerprints
class PairTable:
    """One version of the pairs. A = anchors, K = negatives per anchor, N = utterances (the
    rows the table was built from), S = labelled speakers (sorted-label order).

    anchors int32 [A], positives int32 [A], negatives int32 [A, K]: row indices into N.
    clusters int32 [N]: cluster id, unique across speakers (0..C-1 ordered by speaker, then
      by k-means label), -1 = not clustered. speakers int32 [N]: speaker index, -1 = no label.
    k_per_speaker int32 [S]: k used per speaker (0 = not clustered: too few utterances).
    stats: JSON-able counts (see ``build_pair_table``). Arrays are made read-only.
    """
    version: int
    seed: int
    anchors: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    clusters: np.ndarray
    speakers: np.ndarray
    k_per_speaker: np.ndarray
    stats: dict

    def __post_init__(self):
        for name in _ARRAYS:
            a = np.array(getattr(self, name), dtype=np.int32)  # a private copy
            a.setflags(write=False)  # tables are shared between threads: nobody may edit one
            object.__setattr__(self, name, a)
        object.__setattr__(self, "version", int(self.version))
        object.__setattr__(self, "seed", int(self.seed))

    def __len__(self) -> int:
        return int(self.anchors.shape[0])

    @property
    def num_negatives(self) -> int:
        return int(self.negatives.shape[1])

    @property
    def cross_speaker_negatives(self) -> int:
        return int(self.stats.get("cross_speaker_negatives", 0))

    def to_arrays(self) -> dict:
        """Plain numpy arrays (no strings: Orbax/TensorStore cannot store them): the int32
        tables, version and seed as int64 scalars, stats as UTF-8 JSON bytes (uint8 [L])."""
        out = {name: getattr(self, name) for name in _ARRAYS}
        out["version"] = np.array(self.version, np.int64)
        out["seed"] = np.array(self.seed, np.int64)
        out["stats_json"] = np.frombuffer(
            json.dumps(self.stats, sort_keys=True).encode("utf-8"), np.uint8).copy()
        return out

    @classmethod
    def from_arrays(cls, d) -> "PairTable":
        """Inverse of ``to_arrays`` (also accepts stats_json as a str); validates the table."""
        missing = [k for k in _ARRAYS + ("version", "seed", "stats_json") if k not in d]
        if missing:
            raise ValueError(f"pairs.py: pair-table arrays lack {missing}; have {sorted(d)}")
        raw = d["stats_json"]
        if isinstance(raw, (str, np.str_)) or np.asarray(raw).dtype.kind == "U":
            text = str(np.asarray(raw))
        else:
            text = np.asarray(raw, np.uint8).tobytes().decode("utf-8")
        for name in _ARRAYS:
            a = np.asarray(d[name])
            if a.dtype.kind not in "iu":
                raise ValueError(f"pairs.py: pair-table array {name!r} must be integer, got {a.dtype}")
        t = cls(version=int(np.asarray(d["version"])), seed=int(np.asarray(d["seed"])),
                stats=json.loads(text), **{k: np.asarray(d[k]) for k in _ARRAYS})
        t.validate()
        return t

    def save(self, path) -> None:
        """Writes a .npz (no pickles) atomically at exactly ``path``."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **self.to_arrays())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> "PairTable":
        with np.load(os.fspath(path), allow_pickle=False) as z:
            return cls.from_arrays({k: z[k] for k in z.files})

    def fingerprint(self) -> str:
        """sha256 over every array of ``to_arrays`` (name, dtype, shape, bytes): equal on all
        hosts iff they hold the same table."""
        h = hashlib.sha256()
        for name, a in sorted(self.to_arrays().items()):
            a = np.ascontiguousarray(a)
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def validate(self) -> None:
        """Raises ValueError naming the first broken rule of the definition (module doc)."""
        n, a, p, neg = len(self.clusters), self.anchors, self.positives, self.negatives
        c = self.cross_speaker_negatives

        def fail(msg, rows):
            i = int(np.nonzero(rows)[0][0])
            raise ValueError(f"pairs.py: pair table v{self.version} is invalid: {msg} "
                             f"(anchor row {i}, utterance {int(a[i])}; {int(rows.sum())} rows)")

        if (self.speakers.shape != (n,) or a.ndim != 1 or p.shape != a.shape
                or neg.ndim != 2 or neg.shape[0] != a.shape[0] or not 0 <= c <= neg.shape[1]):
            raise ValueError(f"pairs.py: pair table shapes do not fit: clusters {self.clusters.shape}, "
                             f"speakers {self.speakers.shape}, anchors {a.shape}, positives {p.shape}, "
                             f"negatives {neg.shape}, cross_speaker_negatives {c}")
        for name, idx in (("anchors", a), ("positives", p), ("negatives", neg)):
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"pairs.py: pair table {name} index outside [0, {n})")
        spk, clu = self.speakers, self.clusters
        if a.size and ((clu[a] < 0) | (spk[a] < 0)).any():
            fail("anchor without cluster or speaker", (clu[a] < 0) | (spk[a] < 0))
        fail_rows = p == a
        if fail_rows.any():
            fail("positive is the anchor", fail_rows)
        fail_rows = (spk[p] != spk[a]) | (clu[p] != clu[a])
        if fail_rows.any():
            fail("positive not of the anchor's speaker and cluster", fail_rows)
        same, cross = neg[:, :neg.shape[1] - c], neg[:, neg.shape[1] - c:]
        fail_rows = ((spk[same] != spk[a][:, None]) | (clu[same] == clu[a][:, None])
                     | (clu[same] < 0)).any(axis=1)
        if fail_rows.any():
            fail("same-speaker negative not of the anchor's speaker, or in its cluster", fail_rows)
        fail_rows = ((spk[cross] == spk[a][:, None]) | (spk[cross] < 0)).any(axis=1)
        if fail_rows.any():
            fail("cross-speaker negative of the anchor's speaker or of no speaker", fail_rows)


# --------------------------------------------------------------------------- helpers
def _speaker_index(speakers, n: int):
    """Labels (N,) -> (index int32 [N] into sorted labels, -1 where missing; names).

    Missing: None, "" or NaN. Object arrays are compared as strings (mixed types sort)."""
    arr = np.asarray(speakers)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"pairs.py: speakers must be 1-D with one label per embedding row "
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


def _silhouettes(xs, spk, s_count: int, labels_by_k: Sequence[np.ndarray], budget: int = 1 << 24,
                 mesh=None):
    """Per-speaker mean euclidean silhouette for several labelings -> [len(labels_by_k), S].

    xs [N, D] (rows with spk >= 0 are used), spk int [N] in 0..S-1 (S = s_count). Same definition as
    scikit-learn's silhouette_score (a point alone in its cluster scores 0; 0/0 -> 0); NaN
    where undefined (fewer than 2 or all-distinct clusters). float32 xs (what build_pair_table
    passes): on the devices of ``mesh`` in float32, speakers sharded
    (cluster._silhouettes_by_rows). Other xs: on the host in float64, speakers batched and
    padded to powers of two. Either way the distance matrix is computed once for every labeling.
    """
    out = np.full((len(labels_by_k), s_count), np.nan)
    used = np.nonzero(spk >= 0)[0]
    names, order, starts, sizes = cluster._speaker_rows(spk[used])
    order = used[order]  # rows of xs, grouped by speaker
    if np.asarray(xs).dtype == np.float32:
        labels = [np.maximum(np.asarray(lab), 0) for lab in labels_by_k]  # unused rows: -1
        out[:, names] = cluster._silhouettes_by_rows(xs, order, starts, sizes, labels, mesh, budget)
        return out
    by_size, i = np.argsort(-sizes, kind="stable"), 0
    eye = {}
    while i < len(by_size):
        m = 1 << int(np.ceil(np.log2(max(int(sizes[by_size[i]]), 1))))
        cap = max(1, budget // (m * (m + xs.shape[1])))
        ids = by_size[i:i + cap]
        i += cap
        # Pack in the input dtype, then widen only the packed rows (no float64 copy of xs).
        x, mask = cluster._pack(xs, order, starts, sizes, ids, m)
        x = x.astype(np.float64)
        slot, pos, row = cluster._slots(order, starts, sizes, ids)
        index = np.zeros(mask.shape, np.int64)
        index[slot, pos] = row
        sq = np.einsum("smd,smd->sm", x, x)
        d = x @ x.transpose(0, 2, 1)  # -> pairwise distances, in place (few [s, m, m] temporaries)
        d *= -2.0
        d += sq[:, :, None]
        d += sq[:, None, :]
        np.sqrt(np.maximum(d, 0, out=d), out=d)
        if m not in eye:
            eye[m] = ~np.eye(m, dtype=bool)
        d *= mask[:, None, :] & eye[m]
        n = mask.sum(axis=1)
        for li, labels in enumerate(labels_by_k):
            lab = np.where(mask, labels[index], -1)
            kk = int(lab.max()) + 1
            onehot = (lab[:, :, None] == np.arange(kk)).astype(np.float64)  # [s, m, k]
            cnt = onehot.sum(axis=1)  # [s, k]
            sums = d @ onehot  # [s, m, k]: total distance from each point to each cluster
            own = np.maximum(lab, 0)[:, :, None]
            own_cnt = np.take_along_axis(cnt[:, None, :].repeat(m, 1), own, 2)[..., 0]
            a = np.take_along_axis(sums, own, 2)[..., 0] / np.maximum(own_cnt - 1, 1)
            mean_other = np.where((cnt[:, None, :] > 0) & (onehot == 0),
                                  sums / np.maximum(cnt[:, None, :], 1), np.inf)
            b = mean_other.min(axis=2)
            b = np.where(np.isfinite(b), b, a)  # one cluster only: undefined, masked below
            den = np.maximum(a, b)
            sil = np.where((own_cnt > 1) & (den > 0), (b - a) / np.where(den > 0, den, 1), 0.0)
            mean = np.sum(sil * mask, axis=1) / np.maximum(n, 1)
            n_lab = (cnt > 0).sum(axis=1)
            ok = (n_lab >= 2) & (n_lab <= n - 1)
            out[li, np.asarray(names)[ids]] = np.where(ok, mean, np.nan)
    return out


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
    utterance), in the last c columns; 0 = all from the anchor speaker's other clusters (the
    definition in PAPER.md). min_utterances: speakers with fewer are not clustered (default
    2*k, or 2*min(k_range) = 4 when k is None). allow_single_speaker: a corpus whose rows all
    carry one speaker label is refused unless this is set (it usually means "no labels").
    mesh: devices the per-speaker k-means and silhouettes are sharded over (default: this
    process's devices; see emosup.cluster); the table does not depend on it.

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
        raise ValueError(f"pairs.py: embeddings must be a non-empty numeric [N, D] array, got "
                         f"shape {x.shape} dtype {x.dtype}")
    x = np.asarray(x, dtype=np.float32)  # no copy of float32 input: only xs below is kept
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"pairs.py: embeddings row {int(np.nonzero(bad)[0][0])} is not finite "
                         f"({int(bad.sum())} rows with NaN/Inf); fix the encoder or drop the rows")
    n = len(x)
    for name, v, lo in (("num_negatives", num_negatives, 1), ("seed", seed, 0), ("version", version, 0),
                        ("cross_speaker_negatives", cross_speaker_negatives, 0)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"pairs.py: {name} must be an integer >= {lo}, got {v!r}")
    if cross_speaker_negatives > num_negatives:
        raise ValueError(f"pairs.py: cross_speaker_negatives={cross_speaker_negatives} > "
                         f"num_negatives={num_negatives}")
    if k is None and k_rule not in K_RULES:
        raise ValueError(f"pairs.py: k_rule={k_rule!r}: expected one of {K_RULES} (or a fixed k)")
    if k is None and k_rule == "size" and not (isinstance(cluster_size, (int, np.integer)) and cluster_size >= 2):
        raise ValueError(f"pairs.py: cluster_size must be an integer >= 2, got {cluster_size!r}")
    spk, names, missing = _speaker_index(speakers, n)
    counts = np.bincount(spk[spk >= 0], minlength=len(names))
    if k is None and k_rule == "size":
        k_of = size_rule_k(counts, cluster_size)
        ks = sorted({int(v) for v in k_of})
    else:
        ks = [int(k)] if k is not None else sorted({int(v) for v in k_range})
    if not ks or min(ks) < 2:
        raise ValueError(f"pairs.py: k must be >= 2 (a negative needs another cluster); got "
                         f"k={k!r}, k_range={tuple(k_range)!r}")
    if min_utterances is None:
        min_utterances = 2 * min(ks) if k is not None or k_rule == "silhouette" else 4
    if len(names) == 0:
        raise ValueError(f"pairs.py: no speaker labels: all {n} utterances have an empty speaker; "
                         f"intra-speaker pairs need a speaker id per utterance")
    if len(names) == 1 and not allow_single_speaker:
        raise ValueError(f"pairs.py: all {int((~missing).sum())} labelled utterances have the one "
                         f"speaker label {names[0]!r}, which looks like a corpus without speaker "
                         f"labels; intra-speaker pairs need real speaker ids (pass "
                         f"allow_single_speaker=True if it truly is one speaker)")
    if cross_speaker_negatives and len(names) < 2:
        raise ValueError("pairs.py: cross_speaker_negatives > 0 needs at least 2 speakers")
    s_count = len(names)
    eligible = counts >= min_utterances
    rows = np.nonzero(eligible[np.maximum(spk, 0)] & (spk >= 0))[0]

    # -- cluster (one seed for every k: a speaker's k-means++ stream is (kseed, run, rank)).
    kseed = int(np.random.SeedSequence([seed, version, _TAG_KMEANS]).generate_state(1)[0])
    xs = cluster._l2n(x)
    local = np.full(n, -1, np.int64)
    k_per = np.zeros(s_count, np.int32)
    if len(rows):
        by_k = []
        x_rows = xs if len(rows) == n else xs[rows]  # one copy for every k (if any)
        for kk in ks:
            lab = np.full(n, -1, np.int64)
            # The size rule needs each k for its own speakers only; silhouette scores every k.
            sub = (k_of[spk[rows]] == kk) if k is None and k_rule == "size" else slice(None)
            lab[rows[sub]] = cluster.per_speaker_kmeans(x_rows[sub], spk[rows][sub], kk, seed=kseed,
                                                        l2_normalize=False, mesh=mesh, k_max=max(ks))
            by_k.append(lab)
        del x_rows
        choice = np.zeros(s_count, np.int64)
        if k is None and k_rule == "size":
            choice = np.searchsorted(ks, k_of)
        elif len(ks) > 1:
            used = np.where(eligible[np.maximum(spk, 0)] & (spk >= 0), spk, -1)
            sil = _silhouettes(xs, used, s_count, by_k, mesh=mesh)
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
            f"pairs.py: no speaker can yield a pair: of {s_count} speakers, "
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


def pair_quality(table: PairTable, emotions, speaker_names=None) -> dict | None:
    """How well a pair table's clusters follow emotion, where emotion labels exist (they are
    measured here, never used to build a table).

    emotions (N,): a label per table row, "" / None = unknown. Over the anchors with a known
    emotion: `positive_same_emotion` = fraction of positives that share the anchor's emotion,
    `negative_other_emotion` = fraction of same-speaker negatives that do not (cross-speaker
    negatives are not counted). The chance rates beside them are what uniform draws from the
    anchor's speaker would give: another utterance of the speaker shares the anchor's emotion
    with probability (n_se - 1) / (n_s - 1) (n_s clustered utterances of known emotion, n_se of
    them with the anchor's emotion). Returned overall (mean over anchors) and per speaker
    (keys: `speaker_names[i]`, or the speaker index); None when no anchor has a known emotion.
    """
    emo = np.array(["" if e is None or (isinstance(e, float) and np.isnan(e)) else str(e)
                    for e in emotions], dtype=object)
    n = len(table.clusters)
    if len(emo) != n:
        raise ValueError(f"pairs.py: pair_quality got {len(emo)} emotion labels for a table of {n} rows")
    known = emo != ""
    a = table.anchors
    a = a[known[a]]
    if len(a) == 0:
        return None
    _, code = np.unique(emo, return_inverse=True)
    spk = table.speakers
    k_same = table.num_negatives - table.cross_speaker_negatives
    pos, neg = table.positives[known[table.anchors]], table.negatives[known[table.anchors], :k_same]
    pos_ok = known[pos]
    pos_same = np.where(pos_ok, code[pos] == code[a], False)
    neg_ok = known[neg]
    neg_other = np.where(neg_ok, code[neg] != code[a][:, None], False)
    # Chance: over the speaker's clustered utterances of known emotion.
    pool = known & (table.clusters >= 0)
    n_s = np.bincount(spk[pool], minlength=spk.max() + 1)
    n_se = {}
    for s_i, c_i in zip(spk[pool], code[pool]):
        n_se[(s_i, c_i)] = n_se.get((s_i, c_i), 0) + 1
    same_chance = np.array([(n_se[(spk[i], code[i])] - 1) / max(n_s[spk[i]] - 1, 1) for i in a])

    def rates(sel):
        out = {"anchors": int(sel.sum()),
               "positive_same_emotion": float(pos_same[sel].sum() / max(pos_ok[sel].sum(), 1)),
               "chance_positive_same_emotion": float(same_chance[sel].mean()),
               "negative_other_emotion": (float(neg_other[sel].sum() / neg_ok[sel].sum())
                                          if neg_ok[sel].sum() else None),
               "chance_negative_other_emotion": float(1.0 - same_chance[sel].mean())}
        return out

    result = rates(np.ones(len(a), bool))
    result["per_speaker"] = {
        str(speaker_names[s_i] if speaker_names is not None else int(s_i)): rates(spk[a] == s_i)
        for s_i in np.unique(spk[a])}
    return result


# --------------------------------------------------------------------------- service
class PairService:
    """Host-side publisher of pair tables to the trainer.

    refresh_every = R = 0: the ``initial`` table for every step (the default; PAPER.md).
    R > 0: ``maybe_refresh(step, snapshot)`` at step v*R (v >= 1) starts building version v
    with ``build_fn(v, snapshot)`` in a background thread (snapshot: e.g. a host copy of the
    encoder params at that step) and returns at once. That table is used from step (v+1)*R:
    ``table_for_step(s)`` returns version max(0, s // R - 1), a pure function of s, waiting
    (with a warning saying for how long) if that build has not finished. So a build has R
    steps of training to hide behind, and results never depend on its timing.
    One build runs at a time. An exception in a build is re-raised (as RuntimeError, the
    original as its cause) by every later call. For exact resume, checkpoint
    ``tables_for_checkpoint(step)`` and give them back with ``initial=`` and ``publish``.
    """

    def __init__(self, build_fn: Callable, *, refresh_every: int = 0, initial: PairTable):
        if not isinstance(refresh_every, (int, np.integer)) or refresh_every < 0:
            raise ValueError(f"pairs.py: refresh_every must be an integer >= 0, got {refresh_every!r}")
        if not isinstance(initial, PairTable):
            raise TypeError(f"pairs.py: initial must be a PairTable, got {type(initial).__name__}")
        if refresh_every:
            try:
                inspect.signature(build_fn).bind(0, None)
            except (TypeError, ValueError) as e:
                raise TypeError(f"pairs.py: build_fn must accept (version, snapshot): {e}") from None
        self.refresh_every = int(refresh_every)
        self._build_fn = build_fn
        self._initial = initial
        self._tables = {initial.version: initial}
        self._lock = threading.Lock()
        self._thread = None
        self._pending = None  # version being built
        self._error = None  # (version, exception) from the build thread
        self._reported = False

    def version_for_step(self, step: int) -> int:
        if self.refresh_every == 0:
            return self._initial.version
        return max(0, int(step) // self.refresh_every - 1)

    @property
    def current(self) -> PairTable:
        """The newest finished table (does not wait)."""
        self._check()
        with self._lock:
            return self._tables[max(self._tables)]

    def maybe_refresh(self, step: int, snapshot) -> bool:
        """Start building version step // R when step is a positive multiple of R (and that
        version is neither built nor building). Returns whether a build was started."""
        self._check()
        step = int(step)
        if self.refresh_every == 0 or step <= 0 or step % self.refresh_every:
            return False
        v = step // self.refresh_every
        with self._lock:
            if v in self._tables or self._pending == v:
                return False
        self._join("starting version %d" % v)  # one build at a time
        self._check()
        with self._lock:
            self._pending = v
        self._thread = threading.Thread(target=self._run, args=(v, snapshot),
                                        name=f"pair-table-v{v}", daemon=True)
        self._thread.start()
        return True

    def table_for_step(self, step: int) -> PairTable:
        """The table step ``step`` must use (see class doc); waits for it if still building."""
        self._check()
        v = self.version_for_step(step)
        with self._lock:
            ready, pending = v in self._tables, self._pending == v
        if not ready and pending:
            self._join("step %d needs version %d" % (step, v))
        self._check()  # a build that failed meanwhile explains a missing version best
        with self._lock:
            if v not in self._tables:
                raise RuntimeError(
                    f"pairs.py: step {step} needs pair table version {v}, which was never built: "
                    f"maybe_refresh({v * self.refresh_every}, ...) was not called, or a resumed "
                    f"run's checkpoint lacks it (have versions {sorted(self._tables)})")
            for old in [u for u in self._tables if u < v]:
                del self._tables[old]  # steps only move forward; keep memory bounded
            return self._tables[v]

    def tables_for_checkpoint(self, step: int) -> list:
        """Every table that steps >= ``step`` may need (waits for a running build), oldest first."""
        self._join("checkpoint at step %d" % step)
        self._check()
        v = self.version_for_step(step)
        with self._lock:
            return [self._tables[u] for u in sorted(self._tables) if u >= v]

    def publish(self, table: PairTable) -> None:
        """Adds an already built table (e.g. restored from a checkpoint)."""
        if not isinstance(table, PairTable):
            raise TypeError(f"pairs.py: publish needs a PairTable, got {type(table).__name__}")
        with self._lock:
            self._tables[table.version] = table

    def close(self) -> None:
        """Waits for a running build; re-raises its error unless it was already reported."""
        self._join(None)
        if self._error is not None and not self._reported:
            self._check()

    # -- internals
    def _run(self, v, snapshot):
        try:
            table = self._build_fn(v, snapshot)
            if not isinstance(table, PairTable) or table.version != v:
                raise TypeError(f"build_fn({v}, snapshot) must return a PairTable with version {v}, "
                                f"got {type(table).__name__} version {getattr(table, 'version', None)}")
            with self._lock:
                self._tables[v] = table
        except BaseException as e:  # noqa: BLE001 -- handed to the training thread
            with self._lock:
                self._error = (v, e)
        finally:
            with self._lock:
                self._pending = None

    def _join(self, why):
        t = self._thread
        if t is None:
            return
        if t.is_alive() and why is not None:
            t0 = time.monotonic()
            t.join()
            logging.warning("pairs: training waited %.2f s for pair table build %s (%s); "
                            "raise refresh_every or speed up the build", time.monotonic() - t0,
                            t.name, why)
        t.join()
        self._thread = None

    def _check(self):
        if self._error is not None:
            self._reported = True
            v, e = self._error
            raise RuntimeError(f"pairs.py: building pair table version {v} failed: {e!r}") from e
