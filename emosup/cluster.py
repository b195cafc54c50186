"""Per-speaker k-means in JAX and cluster/label agreement metrics (PAPER.md, Claim 1).

The clustering study asks whether, *within one speaker*, speaker embeddings fall into
clusters that follow emotion. This module holds the numerical parts:

* ``group_by_speaker``: pack a flat ``[N, D]`` set into per-speaker padded ``[S, M, D]``.
* ``kmeans_plusplus_init`` / ``batched_kmeans``: k-means++ seeding and Lloyd's algorithm
  for all speakers at once (``vmap`` over speakers, ``lax.while_loop`` that freezes each
  speaker when it converges). ``batched_kmeans`` reproduces scikit-learn's
  ``KMeans(init=centres, n_init=1, algorithm="lloyd")`` step by step (tolerance scaling,
  convergence test, empty-cluster relocation, final E-step); see its docstring.
* ``per_speaker_kmeans`` / ``global_kmeans`` / ``silhouette_k``: the study's clusterings.
* ``contingency`` and the agreement metrics (Hungarian cluster accuracy, purity, NMI, ARI),
  all computed from the contingency matrix so per-shard matrices can be summed.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

_HI = jax.lax.Precision.HIGHEST  # GPUs default to TF32 matmuls; k-means labels need full fp32.


# --------------------------------------------------------------------------- grouping
def _speaker_groups(speakers) -> tuple[list, list[np.ndarray]]:
    """Sorted unique speaker names and, per speaker, the row indices (ascending)."""
    speakers = np.asarray(speakers)
    if speakers.ndim != 1:
        raise ValueError(f"cluster.py: speakers must be 1-D (N,), got shape {speakers.shape}")
    names, inverse = np.unique(speakers, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(names)))[:-1]
    return list(names), np.split(order, bounds)


def _pad(x: np.ndarray, groups: Sequence[np.ndarray], m: int, s: int | None = None):
    """Pack ``x[groups[i]]`` into ``[S, m, D]`` (zeros where padded) with mask and index."""
    s = len(groups) if s is None else s
    padded = np.zeros((s, m, x.shape[1]), dtype=x.dtype)
    mask = np.zeros((s, m), dtype=bool)
    index = np.full((s, m), -1, dtype=np.int64)
    for i, g in enumerate(groups):
        padded[i, : len(g)] = x[g]
        mask[i, : len(g)] = True
        index[i, : len(g)] = g
    return padded, mask, index


def group_by_speaker(x, speakers):
    """Group rows of ``x`` [N, D] by speaker.

    Returns ``(padded [S, M, D], mask [S, M] bool, index [S, M] int (-1 = pad), names)``
    with speakers in sorted order, M = the largest utterance count, rows in original order.
    """
    x = np.asarray(x)
    if x.ndim != 2 or len(x) != len(np.asarray(speakers)):
        raise ValueError(f"cluster.py: x must be [N, D] with N == len(speakers); got "
                         f"x {x.shape}, speakers {np.shape(speakers)}")
    names, groups = _speaker_groups(speakers)
    m = max(len(g) for g in groups)
    padded, mask, index = _pad(x, groups, m)
    return padded, mask, index, names


# --------------------------------------------------------------------------- k-means++
def _kpp_one(u, x, m, k: int):
    """Greedy k-means++ for one speaker: u [k, T] uniforms in [0, 1), x [M, D], m [M]
    -> centres [k, D]. Row 0 of u picks the first centre, row j the T candidates of centre j."""
    xn = jnp.sum(x * x, axis=1)
    mf = m.astype(x.dtype)

    def sqdist(idx):  # squared distances from points x[idx] (T,) to all points -> [T, M]
        d = xn[None, :] + xn[idx][:, None] - 2.0 * jnp.matmul(x[idx], x.T, precision=_HI)
        return jnp.maximum(d, 0.0) * mf[None, :]

    def sample(w, uu):  # inverse-CDF draw of len(uu) indices with probability ~ w (w >= 0)
        cw = jnp.cumsum(w)
        idx = jnp.sum(cw[None, :] <= (uu * cw[-1])[:, None], axis=1)  # searchsorted, right
        last = w.shape[0] - 1 - jnp.argmax((w > 0)[::-1])  # rounding at u*total ~ total
        return jnp.minimum(idx, last)

    first = sample(mf, u[0, :1])  # uniform over real points
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first[0]])
    d2 = sqdist(first)[0]

    def body(j, state):
        centres, d2 = state
        # Candidates drawn proportionally to D^2; if every point already sits on a centre
        # (duplicates), fall back to a uniform draw among real points.
        cand = sample(jnp.where(d2.sum() > 0, d2, mf), u[j])
        new = jnp.minimum(d2[None, :], sqdist(cand))
        best = jnp.argmin(new.sum(axis=1))  # greedy: the candidate with the lowest potential
        return centres.at[j].set(x[cand[best]]), new[best]

    centres, _ = jax.lax.fori_loop(1, k, body, (centres, d2))
    return centres


@functools.partial(jax.jit, static_argnames=("k",))
def _kpp_batched(u, x, mask, k):
    return jax.vmap(_kpp_one, in_axes=(0, 0, 0, None))(u, x, mask, k)


def _entropy_words(key_or_seed) -> list[int]:
    """An int, a tuple of ints or a JAX PRNG key -> integer words for numpy's SeedSequence."""
    if isinstance(key_or_seed, (int, np.integer)):
        return [int(key_or_seed)]
    if isinstance(key_or_seed, tuple):
        return [int(v) for v in key_or_seed]
    arr = key_or_seed
    if jnp.issubdtype(getattr(arr, "dtype", np.int32), jax.dtypes.prng_key):
        arr = jax.random.key_data(arr)
    return [int(v) for v in np.asarray(arr, dtype=np.uint32).ravel()]


def kmeans_plusplus_init(key_or_seed, x_padded, mask, k: int, *, speaker_ids=None,
                         backend: str = "jax"):
    """Deterministic k-means++ seeding per speaker -> centres [S, k, D].

    key_or_seed: an int, a tuple of ints or a JAX PRNG key.
    backend="jax": greedy k-means++ (Arthur & Vassilvitskii with 2 + int(ln k) candidates
    per centre, the number scikit-learn uses) batched over speakers in JAX. Its uniforms
    come from ``numpy.random.default_rng([*seed words, speaker_ids[s]])``, drawn on the host
    so no PRNG is compiled, and a speaker's centres do not depend on how speakers are
    batched. Masked points are never chosen.
    backend="sklearn": ``sklearn.cluster.kmeans_plusplus`` per speaker (numpy side) with
    ``random_state = seed + speaker_ids[s]`` (key_or_seed must be an int).
    """
    x_padded, mask = np.asarray(x_padded), np.asarray(mask, dtype=bool)
    s = x_padded.shape[0]
    ids = np.arange(s) if speaker_ids is None else np.asarray(speaker_ids)
    _check_counts(mask, k)
    n_trials = 2 + int(np.log(k))  # sklearn _kmeans_plusplus: n_local_trials = 2 + int(log(k))
    if backend == "sklearn":
        from sklearn.cluster import kmeans_plusplus
        if not isinstance(key_or_seed, (int, np.integer)):
            raise ValueError("cluster.py: backend='sklearn' needs an integer seed")
        out = np.zeros((s, k, x_padded.shape[2]), x_padded.dtype)
        for i in range(s):
            pts = x_padded[i][mask[i]]
            if len(pts):
                out[i] = kmeans_plusplus(pts, k, random_state=int(key_or_seed) + int(ids[i]),
                                         n_local_trials=n_trials)[0]
        return out
    if backend != "jax":
        raise ValueError(f"cluster.py: backend must be 'jax' or 'sklearn', got {backend!r}")
    words = _entropy_words(key_or_seed)
    u = np.stack([np.random.default_rng(words + [int(i)]).random((k, n_trials))
                  for i in ids]).astype(x_padded.dtype)
    return _kpp_batched(jnp.asarray(u), jnp.asarray(x_padded), jnp.asarray(mask), k)


def _check_counts(mask: np.ndarray, k: int):
    counts = mask.sum(axis=1)
    if mask.shape[1] < k:
        raise ValueError(f"cluster.py: padded length M={mask.shape[1]} < k={k}")
    bad = np.nonzero((counts < k) & (counts > 0))[0]
    if len(bad):
        raise ValueError(f"cluster.py: speaker row {int(bad[0])} has {int(counts[bad[0]])} "
                         f"points < k={k}; cluster such speakers separately (per_speaker_kmeans "
                         f"does) or lower k")


# --------------------------------------------------------------------------- Lloyd
def _lloyd_one(x, m, c0, tol_rel, max_iter: int):
    """Lloyd's algorithm for one speaker, mirroring sklearn ``_kmeans_single_lloyd``."""
    dt = x.dtype
    k = c0.shape[0]
    mf = m.astype(dt)
    n = jnp.maximum(mf.sum(), 1.0)
    mean = jnp.sum(x * mf[:, None], axis=0) / n
    # sklearn centres X (and the init) by the mean before Lloyd for accuracy; we do the same
    # so that distances are computed from the same numbers.
    xc = (x - mean) * mf[:, None]
    # sklearn _tolerance: tol * mean over features of the per-feature variance of X.
    tol = jnp.mean(jnp.sum(xc * xc, axis=0) / n) * tol_rel
    ar = jnp.arange(k)

    def estep(c):
        # argmin_j ||c_j||^2 - 2 x.c_j (the ||x||^2 term does not change the argmin; sklearn
        # _update_chunk_dense uses the same expression). argmin keeps the first on ties, as
        # sklearn's strict "<" scan does.
        d = jnp.sum(c * c, axis=1)[None, :] - 2.0 * jnp.matmul(xc, c.T, precision=_HI)
        return jnp.where(m, jnp.argmin(d, axis=1), -1).astype(jnp.int32)

    def mstep(c, lab):
        onehot = (lab[:, None] == ar[None, :]).astype(dt)  # pads (lab=-1) give zero rows
        sums = jnp.matmul(onehot.T, xc, precision=_HI)
        w = onehot.sum(axis=0)
        # Empty clusters (sklearn _relocate_empty_clusters_dense): the i-th empty cluster (in
        # id order) takes the i-th farthest point from its current centre; the point's own
        # label is left unchanged, only the sums and weights move. Skipped when every point
        # sits on its centre.
        empty = w == 0
        dist = jnp.sum((xc - c[jnp.maximum(lab, 0)]) ** 2, axis=1)
        dist = jnp.where(m, dist, -jnp.inf)
        do = jnp.any(empty) & (jnp.max(dist) > 0)
        far = jax.lax.top_k(dist, k)[1][jnp.maximum(jnp.cumsum(empty) - 1, 0)]  # [k]
        sel = empty & do
        xf = xc[far]
        move = (sel[:, None] & (lab[far][:, None] == ar[None, :])).astype(dt)  # [new, old]
        sums = jnp.where(sel[:, None], xf, sums - jnp.matmul(move.T, xf, precision=_HI))
        w = jnp.where(sel, 1.0, w - move.sum(axis=0))
        # sklearn _average_centers: multiply by 1/w; a still-empty cluster copies row
        # argmax(w) -- already averaged if that row comes before it, else still a raw sum.
        a = jnp.argmax(w)
        inv = jnp.where(w > 0, 1.0 / jnp.where(w > 0, w, 1.0), 0.0)
        avg = sums * inv[:, None]
        fill = jnp.where((ar > a)[:, None], avg[a][None, :], sums[a][None, :])
        c_new = jnp.where((w > 0)[:, None], avg, fill)
        shift = jnp.sqrt(jnp.sum((c_new - c) ** 2, axis=1))
        return c_new, jnp.sum(shift * shift)

    def cond(st):
        it, _, _, _, done = st
        return (~done) & (it < max_iter)

    def body(st):
        it, c, lab_old, _, _ = st
        lab = estep(c)
        c_new, shift_tot = mstep(c, lab)
        strict = jnp.all(lab == lab_old)
        return it + 1, c_new, lab, strict, strict | (shift_tot <= tol)

    init = (jnp.int32(0), c0 - mean, jnp.full(m.shape, -1, jnp.int32), jnp.bool_(False),
            jnp.bool_(False))
    it, c, lab, strict, _ = jax.lax.while_loop(cond, body, init)
    # Without strict convergence sklearn reruns the E-step so labels match the final centres.
    lab = jnp.where(strict, lab, estep(c))
    inertia = jnp.sum(jnp.sum((xc - c[jnp.maximum(lab, 0)]) ** 2, axis=1) * mf)
    return lab, c + mean, inertia, it


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _lloyd_batched(x, mask, c0, tol, max_iter):
    return jax.vmap(_lloyd_one, in_axes=(0, 0, 0, None, None))(x, mask, c0, tol, max_iter)


def batched_kmeans(x_padded, mask, init_centres, max_iter: int = 300, tol: float = 1e-4):
    """Lloyd's k-means for S speakers at once.

    x_padded [S, M, D], mask [S, M] bool, init_centres [S, k, D] ->
    (labels [S, M] int32 (-1 at pads), centres [S, k, D], inertia [S], n_iter [S]).

    Per speaker this is scikit-learn's ``KMeans(n_clusters=k, init=init_centres[s],
    n_init=1, algorithm="lloyd", max_iter, tol)`` on that speaker's points: tol is scaled by
    the mean per-feature variance of the speaker's data, iteration stops on identical labels
    or a total squared centre shift <= tol, the returned labels come from an E-step with the
    returned centres, and empty clusters are relocated to the farthest points. Speakers
    freeze independently once they converge. Every non-empty speaker needs >= k points.
    Computes in the dtype of x_padded (float32 unless x64 is enabled).
    """
    x_padded = jnp.asarray(x_padded)
    mask_np = np.asarray(mask, dtype=bool)
    c0 = jnp.asarray(init_centres, dtype=x_padded.dtype)
    if x_padded.ndim != 3 or mask_np.shape != x_padded.shape[:2] or c0.ndim != 3 \
            or c0.shape[0] != x_padded.shape[0] or c0.shape[2] != x_padded.shape[2]:
        raise ValueError(f"cluster.py: batched_kmeans expects x [S, M, D], mask [S, M], "
                         f"init [S, k, D]; got {x_padded.shape}, {mask_np.shape}, {c0.shape}")
    _check_counts(mask_np, c0.shape[1])
    return _lloyd_batched(x_padded, jnp.asarray(mask_np), c0,
                          jnp.asarray(tol, x_padded.dtype), int(max_iter))


# --------------------------------------------------------------------------- study clusterings
def _l2n(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _chunks(sizes: np.ndarray, width: int, budget: int):
    """Split speakers (largest first) into batches whose padded S*M*width stays <= budget.

    M and S are rounded up to powers of two so that few distinct shapes get compiled.
    """
    order = np.argsort(-sizes, kind="stable")
    out, i = [], 0
    while i < len(order):
        m = 1 << int(np.ceil(np.log2(max(int(sizes[order[i]]), 1))))
        cap = max(1, budget // (m * width))
        out.append((order[i: i + cap], m))
        i += cap
    return out


def per_speaker_kmeans(x, speakers, k: int, seed: int = 0, l2_normalize: bool = True,
                       n_init: int = 1, max_iter: int = 300, tol: float = 1e-4,
                       budget: int = 1 << 26) -> np.ndarray:
    """k-means inside each speaker -> cluster labels (N,) int, ids 0..k-1 per speaker.

    L2-normalises x first (the study clusters L2-normalised embeddings). A speaker with
    n <= k utterances gets min(k, n) = n singleton clusters (labels 0..n-1 in row order):
    that is what k-means with k >= n distinct points gives. With n_init > 1 each speaker
    keeps the run with the lowest inertia (first on ties). Deterministic given seed: the
    k-means++ of run r for speaker s (in sorted-name order) is seeded by (seed, r, s).
    budget caps S*M*D elements per batch of speakers (memory).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(np.asarray(speakers)):
        raise ValueError(f"cluster.py: x must be [N, D] with N == len(speakers); got "
                         f"x {x.shape}, speakers {np.shape(speakers)}")
    if k < 1 or n_init < 1:
        raise ValueError(f"cluster.py: need k >= 1 and n_init >= 1, got k={k}, n_init={n_init}")
    if l2_normalize:
        x = _l2n(x)
    _, groups = _speaker_groups(speakers)
    sizes = np.array([len(g) for g in groups])
    labels = np.zeros(len(x), dtype=np.int64)
    for g in groups:
        if len(g) <= k:
            labels[g] = np.arange(len(g))
    big = np.nonzero(sizes > k)[0]
    for chunk, m in _chunks(sizes[big], x.shape[1], budget):
        ids = big[chunk]
        s_pad = 1 << int(np.ceil(np.log2(len(ids))))
        padded, mask, index = _pad(x, [groups[i] for i in ids], m, s_pad)
        sid = np.concatenate([ids, np.zeros(s_pad - len(ids), ids.dtype)])
        best_lab, best_in = None, None
        for r in range(n_init):
            c0 = kmeans_plusplus_init((seed, r), padded, mask, k, speaker_ids=sid)
            lab, _, inertia, _ = batched_kmeans(padded, mask, c0, max_iter, tol)
            lab, inertia = np.asarray(lab), np.asarray(inertia)
            if best_lab is None:
                best_lab, best_in = lab, inertia
            else:
                better = inertia < best_in
                best_lab = np.where(better[:, None], lab, best_lab)
                best_in = np.where(better, inertia, best_in)
        valid = index >= 0
        labels[index[valid]] = best_lab[valid]
    return labels


def global_kmeans(x, k_total: int, seed: int = 0, l2_normalize: bool = True,
                  max_iter: int = 300, tol: float = 1e-4) -> np.ndarray:
    """One k-means over all utterances of all speakers (the same Lloyd code with S = 1).

    Baseline for the study: with k_total = k it tends to find speakers, not emotions. The
    study scores it per speaker like the per-speaker clustering: inside each speaker the
    global cluster ids of that speaker's utterances are compared with the emotions.
    """
    x = np.asarray(x, dtype=np.float32)
    return per_speaker_kmeans(x, np.zeros(len(x), np.int64), k_total, seed=seed,
                              l2_normalize=l2_normalize, max_iter=max_iter, tol=tol)


def silhouette_k(x, speakers, k_range: Sequence[int], seed: int = 0,
                 l2_normalize: bool = True, labels_by_k: dict | None = None):
    """Choose k for unlabelled data by the mean within-speaker silhouette.

    For each k, speakers are clustered with ``per_speaker_kmeans`` (or ``labels_by_k[k]``
    if given) and the euclidean silhouette of each speaker's clustering (on the vectors
    k-means saw) is averaged over speakers weighted by utterances. Speakers where the
    silhouette is undefined (fewer than 2 or all-distinct clusters) are left out.
    Returns ``(best_k, {k: mean silhouette or nan})``; ties go to the smaller k.
    """
    from sklearn.metrics import silhouette_score
    x = np.asarray(x, dtype=np.float32)
    xs = _l2n(x) if l2_normalize else x
    _, groups = _speaker_groups(speakers)
    scores = {}
    for k in k_range:
        lab = (labels_by_k[k] if labels_by_k is not None and k in labels_by_k else
               per_speaker_kmeans(x, speakers, k, seed=seed, l2_normalize=l2_normalize))
        tot, wsum = 0.0, 0
        for g in groups:
            nl = len(np.unique(lab[g]))
            if 2 <= nl <= len(g) - 1:
                tot += silhouette_score(xs[g], lab[g], metric="euclidean") * len(g)
                wsum += len(g)
        scores[int(k)] = tot / wsum if wsum else float("nan")
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    if not finite:
        raise ValueError("cluster.py: silhouette undefined for every k and speaker")
    best = max(finite, key=lambda k: (finite[k], -k))
    return best, scores


def chance_assignment(labels_pred, seed: int, speakers=None) -> np.ndarray:
    """Random relabelling that keeps cluster sizes: the labels of each speaker (or of all
    utterances if speakers is None) are randomly permuted among that speaker's rows."""
    labels_pred = np.asarray(labels_pred)
    rng = np.random.default_rng(seed)
    out = labels_pred.copy()
    groups = [np.arange(len(out))] if speakers is None else _speaker_groups(speakers)[1]
    for g in groups:
        out[g] = labels_pred[g][rng.permutation(len(g))]
    return out


# --------------------------------------------------------------------------- agreement metrics
def contingency(labels_true, labels_pred) -> np.ndarray:
    """Counts [n_classes, n_clusters] (rows: sorted unique true labels, cols: sorted pred)."""
    labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
    if labels_true.shape != labels_pred.shape or labels_true.ndim != 1:
        raise ValueError(f"cluster.py: labels must be 1-D of equal length, got "
                         f"{labels_true.shape} and {labels_pred.shape}")
    _, ti = np.unique(labels_true, return_inverse=True)
    _, pi = np.unique(labels_pred, return_inverse=True)
    c = np.zeros((ti.max(initial=-1) + 1, pi.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(c, (ti, pi), 1)
    return c


def _as_cont(labels_true, labels_pred=None):
    return np.asarray(labels_true) if labels_pred is None and np.ndim(labels_true) == 2 \
        else contingency(labels_true, labels_pred)


def cluster_accuracy(labels_true, labels_pred=None) -> float:
    """Accuracy after the best one-to-one cluster->class matching (Hungarian); for k !=
    #classes the unmatched clusters/classes count as wrong. Also accepts a contingency."""
    c = _as_cont(labels_true, labels_pred)
    if c.sum() == 0:
        return float("nan")
    r, cc = linear_sum_assignment(c, maximize=True)
    return float(c[r, cc].sum() / c.sum())


def purity(labels_true, labels_pred=None) -> float:
    """Fraction of points whose cluster's majority class is their class."""
    c = _as_cont(labels_true, labels_pred)
    return float(c.max(axis=0).sum() / c.sum()) if c.sum() else float("nan")


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(labels_true, labels_pred=None) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (sklearn's default),
    with sklearn's conventions: 1 when both sides have a single group, 0 when MI is 0."""
    c = _as_cont(labels_true, labels_pred).astype(np.float64)
    n = c.sum()
    a, b = c.sum(axis=1), c.sum(axis=0)
    a, b = a[a > 0], b[b > 0]
    if len(a) == len(b) and len(a) <= 1:
        return 1.0
    if len(a) == 1 or len(b) == 1:
        return 0.0
    i, j = np.nonzero(c)
    pij = c[i, j] / n
    terms = pij * (np.log(c[i, j] * n) - np.log(c.sum(axis=1)[i] * c.sum(axis=0)[j]))
    # Like sklearn, drop terms below machine epsilon (rounding noise) and clip at 0.
    mi = max(float(np.where(np.abs(terms) < np.finfo(np.float64).eps, 0.0, terms).sum()), 0.0)
    if mi == 0.0:
        return 0.0
    return mi / (0.5 * (_entropy(a) + _entropy(b)))


def ari(labels_true, labels_pred=None) -> float:
    """Adjusted Rand index from pair counts (exact integer arithmetic); 1 when no pair is
    split or merged differently by the two labelings (sklearn's special case)."""
    c = _as_cont(labels_true, labels_pred)
    n = int(c.sum())
    sum_sq = int((c.astype(object) ** 2).sum())
    a = c.sum(axis=1).astype(object)
    b = c.sum(axis=0).astype(object)
    # Ordered-pair counts: same class & same cluster, same cluster only, same class only.
    tp = sum_sq - n
    fp = int((b * b).sum()) - sum_sq
    fn = int((a * a).sum()) - sum_sq
    tn = n * n - tp - fp - fn - n
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


METRICS = ("cluster_accuracy", "purity", "nmi", "ari")


def agreement_from_contingency(c) -> dict:
    c = np.asarray(c)
    return {"cluster_accuracy": cluster_accuracy(c), "purity": purity(c), "nmi": nmi(c),
            "ari": ari(c)}


def agreement(labels_true, labels_pred) -> dict:
    """dict(cluster_accuracy, purity, nmi, ari) of a clustering against the true labels."""
    return agreement_from_contingency(contingency(labels_true, labels_pred))
