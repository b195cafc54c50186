"""Per-speaker k-means in JAX and cluster/label agreement metrics (PAPER.md, Claim 1).

The clustering study asks whether, *within one speaker*, speaker embeddings fall into
clusters that follow emotion. This module holds the numerical parts:

* ``group_by_speaker``: pack a flat ``[N, D]`` set into per-speaker padded ``[S, M, D]``.
* ``kmeans_plusplus_init`` / ``batched_kmeans``: k-means++ seeding and Lloyd's algorithm
  for many speakers at once. ``batched_kmeans`` reproduces scikit-learn's
  ``KMeans(init=centres, n_init=1, algorithm="lloyd")`` step by step (tolerance scaling,
  convergence test, empty-cluster relocation, final E-step); see its docstring.
* ``per_speaker_kmeans`` / ``global_kmeans`` / ``silhouette_k``: the study's clusterings.
* ``contingency`` and the agreement metrics (Hungarian cluster accuracy, purity, NMI, ARI),
  all computed from the contingency matrix so per-shard matrices can be summed.

Scale (DESIGN.md §7). Speakers are independent, so the speaker axis S is sharded over a 1-D
device mesh (``emosup.parallel``) with ``shard_map``: each device clusters S/N speakers with
no communication. Default mesh: every device of this process (``_default_mesh``). Each
device has all embeddings (once; no copy on CPU) and gets per call only row indices: it
gathers and L2-normalises its speakers in sub-batches of b (``lax.map``) small enough to
stay in cache while k-means++ and Lloyd iterate, each with its own ``while_loop``, so a slow
speaker holds back only its sub-batch. ``per_speaker_kmeans`` sorts speakers by size and
buckets them by padded length M (a power of two; tiny buckets join the next): padding stays
below 2x and one program is compiled per bucket, shared by every k <= k_max. A speaker's
result depends only on its own points, M and b -- never on the mesh or the other speakers
-- so labels are identical on 1 and on N devices (tested on 8).
Several hosts: pass ``mesh=parallel.make_mesh()`` (all devices of all processes) and call
with the same inputs in every process (each holds all embeddings and supplies only its own
devices' shards, ``jax.make_array_from_callback``); the labels are all-gathered, so every
host gets all of them (tested with 2 processes). Every process must then make the same calls
in the same order, which is why that is not the default: the pair service rebuilds tables
in a background thread, whose collectives could interleave with the train step's.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from scipy.optimize import linear_sum_assignment

from emosup import parallel

_HI = jax.lax.Precision.HIGHEST  # GPUs default to TF32 matmuls; k-means labels need full fp32.
# Points x features per sub-batch (128 KiB of float32): k-means' passes over a sub-batch hit
# cache, and few speakers wait for the slowest of their sub-batch. On 100k utterances
# (emosup.bench) 2^14..2^18 were within noise, one sub-batch per call (2^26) 3x slower.
_SUB_ELEMS = 1 << 15
# A bucket of speakers is padded up to the next larger length M in use when that costs at most
# this many extra elements (~0.05 s of Lloyd on one CPU core, well under one compile).
_MERGE_ELEMS = 1 << 22


# --------------------------------------------------------------------------- grouping
def _speaker_rows(speakers):
    """-> (sorted unique names, order [N] = rows sorted by speaker (stable), starts [S], sizes [S])."""
    speakers = np.asarray(speakers)
    if speakers.ndim != 1:
        raise ValueError(f"cluster.py: speakers must be 1-D (N,), got shape {speakers.shape}")
    names, inverse = np.unique(speakers, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse, minlength=len(names))
    starts = np.cumsum(sizes) - sizes
    return names, order, starts, sizes


def _speaker_groups(speakers) -> tuple[list, list[np.ndarray]]:
    """Sorted unique speaker names and, per speaker, the row indices (ascending)."""
    names, order, starts, _ = _speaker_rows(speakers)
    return list(names), np.split(order, starts[1:])


def _slots(order, starts, sizes, ids):
    """Speakers ``ids`` (-1 = empty slot) laid out one per slot -> (slot, pos, row) of every
    real point: row ``row`` of x goes to ``[slot, pos]`` of the padded array."""
    ids = np.asarray(ids)
    n = np.where(ids >= 0, sizes[np.maximum(ids, 0)], 0)
    slot = np.repeat(np.arange(len(ids)), n)
    pos = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    return slot, pos, order[np.repeat(starts[np.maximum(ids, 0)], n) + pos]


def _index(order, starts, sizes, ids, m: int) -> np.ndarray:
    """Speakers ``ids`` (-1 = empty slot) -> their rows of x, [len(ids), m] int32, -1 = pad."""
    slot, pos, row = _slots(order, starts, sizes, ids)
    out = np.full((len(ids), m), -1, np.int32)
    out[slot, pos] = row
    return out


def _pack(x, order, starts, sizes, ids, m: int):
    """x [N, D] -> padded [len(ids), m, D] (zeros in pads and empty slots), mask [len(ids), m]."""
    slot, pos, row = _slots(order, starts, sizes, ids)
    padded = np.zeros((len(ids), m) + x.shape[1:], x.dtype)
    padded.reshape((len(ids) * m,) + x.shape[1:])[slot * m + pos] = np.take(x, row, axis=0)
    n = np.where(np.asarray(ids) >= 0, sizes[np.maximum(ids, 0)], 0)
    return padded, np.arange(m)[None, :] < n[:, None]


def _pad(x: np.ndarray, groups: Sequence[np.ndarray], m: int, s: int | None = None):
    """Pack ``x[groups[i]]`` into ``[S, m, D]`` (zeros where padded) with mask and index."""
    sizes = np.array([len(g) for g in groups], np.int64)
    order = np.concatenate(list(groups) + [np.zeros(0, np.int64)]).astype(np.int64)
    ids = np.concatenate([np.arange(len(groups)), np.full((s or len(groups)) - len(groups), -1)])
    starts = np.cumsum(sizes) - sizes
    padded, mask = _pack(x, order, starts, sizes, ids, m)
    slot, pos, row = _slots(order, starts, sizes, ids)
    index = np.full(mask.shape, -1, np.int64)
    index[slot, pos] = row
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
    padded, mask, index = _pad(x, groups, max(len(g) for g in groups))
    return padded, mask, index, names


# --------------------------------------------------------------------------- k-means++
def _kpp_one(u, x, m, k, t):
    """Greedy k-means++ for one speaker: u [K, T] uniforms in [0, 1), x [M, D], m [M]
    -> centres [K, D]. Row 0 of u picks the first centre, row j the first t candidates of
    centre j; k <= K and t <= T may be traced (one program serves several k), centres
    k..K-1 stay zero."""
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
    centres = jnp.zeros((u.shape[0], x.shape[1]), x.dtype).at[0].set(x[first[0]])
    d2 = sqdist(first)[0]

    def body(j, state):
        centres, d2 = state
        # Candidates drawn proportionally to D^2; if every point already sits on a centre
        # (duplicates), fall back to a uniform draw among real points.
        cand = sample(jnp.where(d2.sum() > 0, d2, mf), u[j])
        new = jnp.minimum(d2[None, :], sqdist(cand))
        pot = jnp.where(jnp.arange(u.shape[1]) < t, new.sum(axis=1), jnp.inf)
        best = jnp.argmin(pot)  # greedy: the candidate with the lowest potential
        return centres.at[j].set(x[cand[best]]), new[best]

    centres, _ = jax.lax.fori_loop(1, k, body, (centres, d2))
    return centres


def _kpp(u, x, m, k, t):
    """Sub-batch k-means++: u [b, K, T], x [b, M, D], m [b, M] -> centres [b, K, D]."""
    return jax.vmap(_kpp_one, in_axes=(0, 0, 0, None, None))(u, x, m, k, t)


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


def _n_trials(k: int) -> int:
    return 2 + int(np.log(k))  # sklearn _kmeans_plusplus: n_local_trials = 2 + int(log(k))


def _mix(z):
    """SplitMix64's finaliser (Steele, Lea & Flood 2014; constants from there): a bijective
    64-bit hash whose output bits look independent (uint64 arrays, wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniforms(words, ids, k: int, k_pad: int, dtype) -> np.ndarray:
    """[len(ids), k_pad, T(k_pad)] k-means++ uniforms in [0, 1), zero outside [:k, :T(k)].

    Entry (s, j, t) is a hash of (SeedSequence(words), ids[s], j, t): a counter-based stream,
    so a speaker's draws depend on neither the other speakers nor k_pad, and all speakers'
    draws take one vectorised numpy pass (no generator object per speaker)."""
    key = np.random.SeedSequence(words).generate_state(1, np.uint64)[0]
    ids = np.asarray(ids, np.int64).astype(np.uint64)[:, None, None]
    j = np.arange(k, dtype=np.uint64)[None, :, None]
    t = np.arange(_n_trials(k), dtype=np.uint64)[None, None, :]
    z = _mix(key ^ _mix((ids << np.uint64(16)) | (j << np.uint64(8)) | t))
    bits = 53 if np.dtype(dtype).itemsize >= 8 else 24  # exact in the dtype, so never 1.0
    out = np.zeros((len(ids), k_pad, _n_trials(k_pad)), dtype)
    out[:, :k, :_n_trials(k)] = (z >> np.uint64(64 - bits)).astype(np.float64) * 2.0 ** -bits
    return out


# --------------------------------------------------------------------------- Lloyd
def _lloyd(x, m, c0, tol_rel, max_iter: int, k):
    """Lloyd's algorithm for a sub-batch, mirroring sklearn ``_kmeans_single_lloyd`` per
    speaker: x [b, M, D], m [b, M], c0 [b, K, D] -> (labels [b, M], centres [b, K, D],
    inertia [b], n_iter [b]). Only centres 0..k-1 take part (k <= K may be traced).
    Speakers freeze once converged; the loop ends when all have."""
    dt = x.dtype
    kk = c0.shape[1]
    mf = m.astype(dt)
    live = jnp.any(m, axis=1)  # empty rows (padding) are done from the start
    n = jnp.maximum(mf.sum(axis=1), 1.0)
    mean = jnp.sum(x * mf[..., None], axis=1) / n[:, None]
    # sklearn centres X (and the init) by the mean before Lloyd for accuracy; we do the same
    # so that distances are computed from the same numbers.
    xc = (x - mean[:, None, :]) * mf[..., None]
    # sklearn _tolerance: tol * mean over features of the per-feature variance of X.
    tol = jnp.mean(jnp.sum(xc * xc, axis=1) / n[:, None], axis=1) * tol_rel
    ar = jnp.arange(kk)
    on = ar < k  # centres in use

    def at_labels(c, lab):  # c[s, lab[s, i]] -> [b, M, D]
        return jnp.take_along_axis(c, jnp.maximum(lab, 0)[..., None], axis=1)

    def estep(c):
        # argmin_j ||c_j||^2 - 2 x.c_j (the ||x||^2 term does not change the argmin; sklearn
        # _update_chunk_dense uses the same expression). argmin keeps the first on ties, as
        # sklearn's strict "<" scan does.
        d = jnp.sum(c * c, axis=2)[:, None, :] - 2.0 * jnp.einsum("bmd,bkd->bmk", xc, c,
                                                                   precision=_HI)
        d = jnp.where(on, d, jnp.inf)
        return jnp.where(m, jnp.argmin(d, axis=2), -1).astype(jnp.int32)

    def relocate(args):
        # Empty clusters (sklearn _relocate_empty_clusters_dense): the i-th empty cluster (in
        # id order) takes the i-th farthest point from its current centre; the point's own
        # label is left unchanged, only the sums and weights move. Skipped when every point
        # sits on its centre.
        c, lab, sums, w = args
        empty = (w == 0) & on
        dist = jnp.where(m, jnp.sum((xc - at_labels(c, lab)) ** 2, axis=2), -jnp.inf)
        sel = empty & (jnp.max(dist, axis=1) > 0)[:, None]
        far = jnp.take_along_axis(jax.lax.top_k(dist, min(kk, x.shape[1]))[1],
                                  jnp.maximum(jnp.cumsum(empty, axis=1) - 1, 0), axis=1)
        xf = jnp.take_along_axis(xc, far[..., None], axis=1)  # [b, k, D]
        move = (sel[..., None] & (jnp.take_along_axis(lab, far, axis=1)[..., None] == ar)
                ).astype(dt)  # [b, new, old]
        sums = jnp.where(sel[..., None], xf,
                         sums - jnp.einsum("bno,bnd->bod", move, xf, precision=_HI))
        return sums, jnp.where(sel, 1.0, w - move.sum(axis=1))

    def mstep(c, lab, active):
        onehot = (lab[..., None] == ar).astype(dt)  # pads (lab=-1) give zero rows
        sums = jnp.einsum("bmk,bmd->bkd", onehot, xc, precision=_HI)
        w = onehot.sum(axis=1)
        # Relocation is rare: compute it only when some still-running speaker needs it.
        sums, w = jax.lax.cond(jnp.any((w == 0) & on & active[:, None]), relocate,
                               lambda a: (a[2], a[3]), (c, lab, sums, w))
        # sklearn _average_centers: multiply by 1/w; a still-empty cluster copies row
        # argmax(w) -- already averaged if that row comes before it, else still a raw sum.
        a = jnp.argmax(w, axis=1)[:, None, None]
        inv = jnp.where(w > 0, 1.0 / jnp.where(w > 0, w, 1.0), 0.0)
        avg = sums * inv[..., None]
        fill = jnp.where((ar[None, :, None] > a), jnp.take_along_axis(avg, a, axis=1),
                         jnp.take_along_axis(sums, a, axis=1))
        c_new = jnp.where((w > 0)[..., None], avg, fill)
        c_new = jnp.where(on[:, None], c_new, c)  # unused centres stay put (no shift)
        shift = jnp.sqrt(jnp.sum((c_new - c) ** 2, axis=2))
        return c_new, jnp.sum(shift * shift, axis=1)

    def cond(st):
        it, _, _, _, done, _ = st
        return jnp.any(~done) & (it < max_iter)

    def body(st):
        it, c, lab_old, strict, done, n_it = st
        active = ~done
        lab = estep(c)
        c_new, shift_tot = mstep(c, lab, active)
        now_strict = jnp.all(lab == lab_old, axis=1)
        keep = lambda new, old: jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
        return (it + 1, keep(c_new, c), keep(lab, lab_old), keep(now_strict, strict),
                keep(now_strict | (shift_tot <= tol), done), n_it + active.astype(jnp.int32))

    init = (jnp.int32(0), c0 - mean[:, None, :], jnp.full(m.shape, -1, jnp.int32), ~live, ~live,
            jnp.zeros(live.shape, jnp.int32))
    _, c, lab, strict, _, n_it = jax.lax.while_loop(cond, body, init)
    # Without strict convergence sklearn reruns the E-step so labels match the final centres.
    lab = jax.lax.cond(jnp.all(strict), lambda: lab,
                       lambda: jnp.where(strict[:, None], lab, estep(c)))
    inertia = jnp.sum(jnp.sum((xc - at_labels(c, lab)) ** 2, axis=2) * mf, axis=1)
    return lab, c + mean[:, None, :], inertia, n_it


def _cluster(u, x, m, tol_rel, k, t, max_iter: int):
    """k-means++ then Lloyd for each of R runs, keeping per speaker the run with the lowest
    inertia (the first on ties): u [b, R, K, T], x [b, M, D], m [b, M] -> labels [b, M]."""
    def run(r):
        lab, _, inertia, _ = _lloyd(x, m, _kpp(u[:, r], x, m, k, t), tol_rel, max_iter, k)
        return lab, inertia

    def body(r, best):
        lab, inertia = run(r)
        better = inertia < best[1]
        return jnp.where(better[:, None], lab, best[0]), jnp.where(better, inertia, best[1])

    best = run(0)
    # fori_loop over further runs only when there are some: its body is a second copy of
    # k-means++ and Lloyd to compile.
    return best[0] if u.shape[1] == 1 else jax.lax.fori_loop(1, u.shape[1], body, best)[0]


def _silhouette(xb, m, lab, n_clusters: int):
    """Mean euclidean silhouette of each speaker of a sub-batch under L labelings, with
    scikit-learn's silhouette_score definition (a point alone in its cluster scores 0; 0/0
    -> 0): xb [b, M, D], m [b, M], lab [b, L, M] in 0..n_clusters-1 -> [b, L], NaN where
    undefined (fewer than 2, or all-distinct, clusters). The distances are computed once."""
    dt = xb.dtype
    mf = m.astype(dt)
    sq = jnp.sum(xb * xb, axis=2)
    d = sq[:, :, None] + sq[:, None, :] - 2.0 * jnp.einsum("bmd,bnd->bmn", xb, xb, precision=_HI)
    d = jnp.where(m[:, None, :] & ~jnp.eye(m.shape[1], dtype=bool), jnp.sqrt(jnp.maximum(d, 0.0)), 0.0)
    n = mf.sum(axis=1)
    ar = jnp.arange(n_clusters)

    def one(lab):  # [b, M] -> [b]
        onehot = ((lab[..., None] == ar) & m[..., None]).astype(dt)  # [b, M, K]
        cnt = onehot.sum(axis=1)  # [b, K]
        sums = jnp.einsum("bmn,bnk->bmk", d, onehot, precision=_HI)  # distance to each cluster
        own_cnt = jnp.sum(onehot * cnt[:, None, :], axis=2)
        a = jnp.sum(sums * onehot, axis=2) / jnp.maximum(own_cnt - 1, 1)
        other = jnp.where((cnt[:, None, :] > 0) & (onehot == 0),
                          sums / jnp.maximum(cnt[:, None, :], 1), jnp.inf)
        b = jnp.min(other, axis=2)
        b = jnp.where(jnp.isfinite(b), b, a)  # one cluster only: undefined, masked below
        den = jnp.maximum(a, b)
        sil = jnp.where((own_cnt > 1) & (den > 0), (b - a) / jnp.where(den > 0, den, 1), 0.0)
        n_lab = jnp.sum(cnt > 0, axis=1)
        mean = jnp.sum(sil * mf, axis=1) / jnp.maximum(n, 1)
        return jnp.where((n_lab >= 2) & (n_lab <= n - 1), mean, jnp.nan)
    return jax.vmap(one, in_axes=1, out_axes=1)(lab)


# --------------------------------------------------------------------------- sharding
def _by_sub_batch(fn, b: int, *args):
    """``fn`` applied to consecutive sub-batches of b speakers of ``args`` (leading axis S;
    the first is the mask, or the row index with -1 = pad); sub-batches without a real
    point (padding) are skipped and give zeros."""
    s = args[0].shape[0]
    split = [a.reshape((s // b, b) + a.shape[1:]) for a in args]
    shapes = jax.eval_shape(fn, *[jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in split])
    zeros = lambda: jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), shapes)
    live = (lambda a: jnp.any(a)) if args[0].dtype == bool else (lambda a: jnp.any(a >= 0))
    out = jax.lax.map(lambda a: jax.lax.cond(live(a[0]), lambda: fn(*a), zeros), split)
    return jax.tree.map(lambda a: a.reshape((s,) + a.shape[2:]), out)


def _default_mesh():
    """Every device of this process: all devices in a one-process job; on several hosts each
    host clusters alone (no cross-host collective unless a global mesh is passed)."""
    return parallel.make_mesh(jax.local_devices())


def _gathers(mesh) -> bool:
    """Whether outputs are all-gathered on the devices: needed when the mesh spans processes
    (a host cannot read another host's shards); on one host numpy collects the shards."""
    return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


@functools.lru_cache(maxsize=None)
def _program(mesh, gather: bool, kind: str, b: int, max_iter: int = 0, l2: bool = False,
             n_clusters: int = 0):
    """A jitted SPMD program over ``mesh``; speaker-axis inputs sharded, the rest replicated;
    each device runs ``kind`` on its speakers in sub-batches of b:
    "cluster" (idx [S, M] rows of x, -1 = pad; u [S, R, K, T]; x [N, D]; inv_norms [N]; tol,
    k, n_trials) -> labels [S, M]: a sub-batch gathers its rows of x (times inv_norms if l2)
    in cache, so the host never builds padded copies;
    "kpp" (mask [S, M], x [S, M, D], u [S, K, T]; k, n_trials) -> centres [S, K, D];
    "lloyd" (mask, x, c0 [S, K, D]; tol, k) -> (labels, centres, inertia, n_iter);
    "silhouette" (idx [S, M]; x [N, D]; labels [L, N] in 0..n_clusters-1) -> mean
    silhouettes [S, L]."""
    spec, rep = P(parallel.DATA_AXIS), P()
    if kind == "silhouette":
        def local(idx, x, labels):
            def one(idx):
                rows = jnp.maximum(idx, 0)
                lab = jnp.moveaxis(jnp.take(labels, rows, axis=1), 0, 1)  # [b, L, M]
                return _silhouette(jnp.take(x, rows, axis=0), idx >= 0, lab, n_clusters)
            return _by_sub_batch(one, b, idx)
        in_specs = (spec, rep, rep)
    elif kind == "cluster":
        def local(idx, u, x, inv_norms, tol, k, t):
            def one(idx, u):
                rows = jnp.maximum(idx, 0)
                xb = jnp.take(x, rows, axis=0)
                if l2:  # the same product as _l2n, so the same numbers
                    xb = xb * jnp.take(inv_norms, rows)[..., None]
                return _cluster(u, xb, idx >= 0, tol, k, t, max_iter)
            return _by_sub_batch(one, b, idx, u)
        in_specs = (spec, spec, rep, rep, rep, rep, rep)
    elif kind == "kpp":
        def local(m, x, u, k, t):
            return _by_sub_batch(lambda m, x, u: _kpp(u, x, m, k, t), b, m, x, u)
        in_specs = (spec, spec, spec, rep, rep)
    else:
        def local(m, x, c0, tol, k):
            return _by_sub_batch(lambda m, x, c0: _lloyd(x, m, c0, tol, max_iter, k), b, m, x, c0)
        in_specs = (spec, spec, spec, rep, rep)
    f = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)
    return jax.jit(f, out_shardings=NamedSharding(mesh, P() if gather else spec))


def _global(mesh, shape, dtype, make):
    """The global array [shape] sharded on axis 0, built from ``make(slice) -> np.ndarray``
    for this process's shards only."""
    def cb(index):
        lo, hi, _ = index[0].indices(shape[0])
        return np.asarray(make(slice(lo, hi)), dtype)
    return jax.make_array_from_callback(shape, NamedSharding(mesh, P(parallel.DATA_AXIS)), cb)


def _replicated(mesh, a: np.ndarray):
    """``a`` on every device of ``mesh`` (each process supplies its own; on CPU no copy)."""
    return jax.make_array_from_callback(a.shape, NamedSharding(mesh, P()), lambda index: a[index])


def _sub_size(m: int, d: int, count: int) -> int:
    """Speakers per sub-batch for ``count`` speakers of padded length m: the largest power
    of two with b*m*d <= _SUB_ELEMS, at most count rounded up to a power of two, and at
    least 2: with b = 1 XLA's CPU dots lose their batch axis and Lloyd ran 3-4x slower
    (M=128 and 256, 1M-utterance bench; b=2 pads a lone speaker with an empty one)."""
    v = max(1, _SUB_ELEMS // max(1, m * d))
    return max(2, min(1 << (v.bit_length() - 1), 1 << max(0, int(count - 1).bit_length())))


def _padded_call(mesh, kind, arrays, k: int, max_iter: int = 0, tol: float = 0.0):
    """Run ``kind`` on caller-padded arrays [S, ...] (mask first): S is padded with empty
    speakers to a multiple of devices x sub-batch, results are cut back to S."""
    mesh = _default_mesh() if mesh is None else mesh
    s, m = arrays[0].shape
    b = _sub_size(m, arrays[1].shape[-1], s)
    unit = mesh.devices.size * b
    s_pad = -(-s // unit) * unit

    def padded(a):
        return lambda sl: np.concatenate([a[sl.start:min(sl.stop, s)],
                                          np.zeros((max(0, sl.stop - max(sl.start, s)),)
                                                   + a.shape[1:], a.dtype)])
    args = [_global(mesh, (s_pad,) + a.shape[1:], a.dtype, padded(a)) for a in arrays]
    scalars = (np.int32(k), np.int32(_n_trials(k))) if kind == "kpp" else \
        (arrays[1].dtype.type(tol), np.int32(k))
    out = _program(mesh, _gathers(mesh), kind, b, max_iter)(*args, *scalars)
    return jax.tree.map(lambda a: np.asarray(a)[:s], out)


def kmeans_plusplus_init(key_or_seed, x_padded, mask, k: int, *, speaker_ids=None,
                         backend: str = "jax", mesh=None):
    """Deterministic k-means++ seeding per speaker -> centres [S, k, D] (numpy).

    key_or_seed: an int, a tuple of ints or a JAX PRNG key.
    backend="jax": greedy k-means++ (Arthur & Vassilvitskii with 2 + int(ln k) candidates
    per centre, the number scikit-learn uses) batched over speakers in JAX, speakers sharded
    over ``mesh`` (default: this process's devices). Its uniforms are a hash of (seed words,
    speaker_ids[s], centre, candidate), made on the host so no PRNG is compiled; a speaker's
    centres do not depend on the other speakers in the batch or on the mesh. Masked points
    are never chosen.
    backend="sklearn": ``sklearn.cluster.kmeans_plusplus`` per speaker (numpy side) with
    ``random_state = seed + speaker_ids[s]`` (key_or_seed must be an int).
    """
    x_padded, mask = _as_float(x_padded), np.asarray(mask, dtype=bool)
    s = x_padded.shape[0]
    ids = np.arange(s) if speaker_ids is None else np.asarray(speaker_ids)
    _check_counts(mask, k)
    if backend == "sklearn":
        from sklearn.cluster import kmeans_plusplus
        if not isinstance(key_or_seed, (int, np.integer)):
            raise ValueError("cluster.py: backend='sklearn' needs an integer seed")
        out = np.zeros((s, k, x_padded.shape[2]), x_padded.dtype)
        for i in range(s):
            pts = x_padded[i][mask[i]]
            if len(pts):
                out[i] = kmeans_plusplus(pts, k, random_state=int(key_or_seed) + int(ids[i]),
                                         n_local_trials=_n_trials(k))[0]
        return out
    if backend != "jax":
        raise ValueError(f"cluster.py: backend must be 'jax' or 'sklearn', got {backend!r}")
    u = _uniforms(_entropy_words(key_or_seed), ids, k, k, x_padded.dtype)
    return _padded_call(mesh, "kpp", (mask, x_padded, u), k)


def _as_float(x) -> np.ndarray:
    """numpy array in the float dtype JAX computes in (float32 unless x64 is enabled)."""
    x = np.asarray(x)
    return x.astype(jax.dtypes.canonicalize_dtype(x.dtype if x.dtype.kind == "f" else np.float64))


def _check_counts(mask: np.ndarray, k: int):
    counts = mask.sum(axis=1)
    if mask.shape[1] < k:
        raise ValueError(f"cluster.py: padded length M={mask.shape[1]} < k={k}")
    bad = np.nonzero((counts < k) & (counts > 0))[0]
    if len(bad):
        raise ValueError(f"cluster.py: speaker row {int(bad[0])} has {int(counts[bad[0]])} "
                         f"points < k={k}; cluster such speakers separately (per_speaker_kmeans "
                         f"does) or lower k")


def batched_kmeans(x_padded, mask, init_centres, max_iter: int = 300, tol: float = 1e-4,
                   mesh=None):
    """Lloyd's k-means for S speakers at once, speakers sharded over ``mesh`` (default: this
    process's devices; the results do not depend on it).

    x_padded [S, M, D], mask [S, M] bool, init_centres [S, k, D] -> numpy
    (labels [S, M] int32 (-1 at pads), centres [S, k, D], inertia [S], n_iter [S]).

    Per speaker this is scikit-learn's ``KMeans(n_clusters=k, init=init_centres[s],
    n_init=1, algorithm="lloyd", max_iter, tol)`` on that speaker's points: tol is scaled by
    the mean per-feature variance of the speaker's data, iteration stops on identical labels
    or a total squared centre shift <= tol, the returned labels come from an E-step with the
    returned centres, and empty clusters are relocated to the farthest points. Speakers
    freeze independently once they converge. Every non-empty speaker needs >= k points.
    Computes in the dtype of x_padded (float32 unless x64 is enabled).
    """
    x_padded = _as_float(x_padded)
    mask_np = np.asarray(mask, dtype=bool)
    c0 = np.asarray(init_centres, dtype=x_padded.dtype)
    if x_padded.ndim != 3 or mask_np.shape != x_padded.shape[:2] or c0.ndim != 3 \
            or c0.shape[0] != x_padded.shape[0] or c0.shape[2] != x_padded.shape[2]:
        raise ValueError(f"cluster.py: batched_kmeans expects x [S, M, D], mask [S, M], "
                         f"init [S, k, D]; got {x_padded.shape}, {mask_np.shape}, {c0.shape}")
    _check_counts(mask_np, c0.shape[1])
    lab, c, inertia, n_it = _padded_call(mesh, "lloyd", (mask_np, x_padded, c0), c0.shape[1],
                                         int(max_iter), tol)
    return np.where(mask_np, lab, -1).astype(np.int32), c, inertia, n_it


# --------------------------------------------------------------------------- study clusterings
def _inv_norms(x) -> np.ndarray:
    """1 / max(||x_i||, 1e-12) per row, in x's dtype. Rows are normalised by multiplying with
    it, on the host (_l2n) and in the k-means programs alike, so both see the same numbers."""
    return (1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)).astype(x.dtype)


def _l2n(x):
    return x * _inv_norms(x)[:, None]


def _round_up(n: int) -> int:
    """n rounded up to 4..7 times a power of two (at most 25% more): few distinct shapes
    (e.g. across the k of a silhouette choice) without padding a call to twice its size."""
    step = 1 << max(0, n.bit_length() - 3)
    return -(-n // step) * step


def _plan(sizes: np.ndarray, width: int, budget: int, n_dev: int, square: bool = False):
    """Calls for speakers of ``sizes``: [(positions into sizes, -1 = empty slot), M, b].

    Largest first; M = the next power of two >= size (< 2x padding, few compiled shapes);
    a bucket whose padding to the next larger M in use costs <= _MERGE_ELEMS elements joins
    it (one compile less). b = speakers per sub-batch; a call holds n_dev * q * b slots, q
    (sub-batches per device) with about S*M*width <= budget (``_round_up``). Every call of a
    bucket has one shape. The plan depends on sizes and width only, not on the devices
    (n_dev changes S per call, never M or b), so results do not depend on the mesh.
    square: a speaker also holds an [M, M] matrix (silhouettes): it costs M*(width+M).
    """
    cost = (lambda m: m * (width + m)) if square else (lambda m: m * width)
    order = np.argsort(-sizes, kind="stable")
    ms = 1 << np.ceil(np.log2(np.maximum(sizes[order], 1))).astype(np.int64)
    buckets = []  # [M, speakers]
    for m in sorted(set(ms.tolist()), reverse=True):
        sel = order[ms == m]
        if buckets and len(sel) * (cost(buckets[-1][0]) - cost(m)) <= _MERGE_ELEMS:
            buckets[-1][1] = np.concatenate([buckets[-1][1], sel])
        else:
            buckets.append([m, sel])
    calls = []
    for m, sel in buckets:
        b = _sub_size(1, cost(m), len(sel))
        q = min(max(1, budget // (n_dev * b * cost(m))), _round_up(-(-len(sel) // (n_dev * b))))
        s_call = n_dev * q * b
        for i in range(0, len(sel), s_call):
            part = sel[i:i + s_call]
            calls.append((np.concatenate([part, np.full(s_call - len(part), -1)]), m, b))
    return calls


def per_speaker_kmeans(x, speakers, k: int, seed: int = 0, l2_normalize: bool = True,
                       n_init: int = 1, max_iter: int = 300, tol: float = 1e-4,
                       budget: int = 1 << 24, mesh=None, k_max: int | None = None) -> np.ndarray:
    """k-means inside each speaker -> cluster labels (N,) int, ids 0..k-1 per speaker.

    L2-normalises x first (the study clusters L2-normalised embeddings). A speaker with
    n <= k utterances gets min(k, n) = n singleton clusters (labels 0..n-1 in row order):
    that is what k-means with k >= n distinct points gives. With n_init > 1 each speaker
    keeps the run with the lowest inertia (first on ties). Deterministic given seed: the
    k-means++ of run r for speaker s (in sorted-name order) is seeded by (seed, r, s).
    Speakers are sharded over ``mesh`` (default: this process's devices; a global mesh
    shards them over hosts, see the module doc); the labels do not depend on the mesh.
    budget caps S*M*D elements per call (each device also holds all of x, once).
    k_max (>= k): compile for up to k_max centres, so that calls with several k (e.g. a
    silhouette choice of k) share compiled programs; the unused centres are masked out
    (the labels were identical in every check, tests included).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(np.asarray(speakers)):
        raise ValueError(f"cluster.py: x must be [N, D] with N == len(speakers); got "
                         f"x {x.shape}, speakers {np.shape(speakers)}")
    if k < 1 or n_init < 1:
        raise ValueError(f"cluster.py: need k >= 1 and n_init >= 1, got k={k}, n_init={n_init}")
    mesh = _default_mesh() if mesh is None else mesh
    _, order, starts, sizes = _speaker_rows(speakers)
    labels = np.zeros(len(x), dtype=np.int64)
    small = np.nonzero(sizes <= k)[0]
    _, pos, row = _slots(order, starts, sizes, small)
    labels[row] = pos  # n <= k: singletons
    big = np.nonzero(sizes > k)[0]
    k_pad = max(k, k_max or k)
    u = np.stack([_uniforms([seed, r], big, k, k_pad, np.float32) for r in range(n_init)], 1)
    gather, pending = _gathers(mesh), None
    # Every device gets all rows once (no copy on CPU) and per call only row indices; rows
    # are normalised in the program exactly as _l2n(x) does.
    x_all = _replicated(mesh, x)
    inv = _replicated(mesh, _inv_norms(x) if l2_normalize else np.ones(1, x.dtype))

    def collect(ids, out):
        slot, pos, row = _slots(order, starts, sizes, ids)
        labels[row] = np.asarray(out)[slot, pos]

    for slot_ids, m, b in _plan(sizes[big], x.shape[1], budget, mesh.devices.size):
        ids = np.where(slot_ids >= 0, big[np.maximum(slot_ids, 0)], -1)
        s = len(ids)
        args = (_global(mesh, (s, m), np.int32, lambda sl: _index(order, starts, sizes, ids[sl], m)),
                _global(mesh, (s,) + u.shape[1:], np.float32,
                        lambda sl: np.where((slot_ids[sl] >= 0)[:, None, None, None],
                                            u[np.maximum(slot_ids[sl], 0)], 0)))
        out = _program(mesh, gather, "cluster", b, int(max_iter), bool(l2_normalize))(
            *args, x_all, inv, np.float32(tol), np.int32(k), np.int32(_n_trials(k)))
        # Calls run asynchronously: this one computes while the previous one's labels are
        # read and the next one's indices are made.
        if pending is not None:
            collect(*pending)
        pending = (ids, out)
    if pending is not None:
        collect(*pending)
    return labels


def _silhouettes_by_rows(x, order, starts, sizes, labels_by_k, mesh=None, budget: int = 1 << 24):
    """Mean euclidean silhouette of each speaker (``_speaker_rows`` layout: rows ``order``
    of x) under L labelings (arrays [N] of ints >= 0) -> [L, S], NaN where undefined (fewer
    than 2 or all-distinct clusters); scikit-learn's silhouette_score per speaker, computed
    in x's dtype (float32: ~1e-6 from float64) with the speakers sharded over ``mesh`` (default:
    this process's devices) like per_speaker_kmeans; the numbers do not depend on the mesh."""
    mesh = _default_mesh() if mesh is None else mesh
    labels = np.stack([np.asarray(lab) for lab in labels_by_k]).astype(np.int32)  # [L, N]
    n_clusters = int(labels.max(initial=0)) + 1
    out = np.full((len(labels), len(sizes)), np.nan)
    big = np.nonzero(sizes >= 3)[0]  # 2 <= clusters <= n - 1 needs n >= 3
    x_all, lab_all, pending = _replicated(mesh, x), _replicated(mesh, labels), []
    for slot_ids, m, b in _plan(sizes[big], x.shape[1], budget, mesh.devices.size, square=True):
        ids = np.where(slot_ids >= 0, big[np.maximum(slot_ids, 0)], -1)
        idx = _global(mesh, (len(ids), m), np.int32, lambda sl: _index(order, starts, sizes, ids[sl], m))
        prog = _program(mesh, _gathers(mesh), "silhouette", b, n_clusters=n_clusters)
        pending.append((ids, prog(idx, x_all, lab_all)))
    for ids, res in pending:
        out[:, ids[ids >= 0]] = np.asarray(res)[ids >= 0].T
    return out


def global_kmeans(x, k_total: int, seed: int = 0, l2_normalize: bool = True,
                  max_iter: int = 300, tol: float = 1e-4, mesh=None) -> np.ndarray:
    """One k-means over all utterances of all speakers (the same Lloyd code with S = 1).

    Baseline for the study: with k_total = k it tends to find speakers, not emotions. The
    study scores it per speaker like the per-speaker clustering: inside each speaker the
    global cluster ids of that speaker's utterances are compared with the emotions.
    """
    x = np.asarray(x, dtype=np.float32)
    # One speaker cannot be split over devices: one device, not empty slots on the others.
    mesh = parallel.make_mesh(jax.local_devices()[:1]) if mesh is None else mesh
    return per_speaker_kmeans(x, np.zeros(len(x), np.int64), k_total, seed=seed,
                              l2_normalize=l2_normalize, max_iter=max_iter, tol=tol, mesh=mesh)


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
               per_speaker_kmeans(x, speakers, k, seed=seed, l2_normalize=l2_normalize,
                                  k_max=max(k_range)))  # one compiled program for all k
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
