"""The per-speaker numerical kernels that ``emosup.pairs.kmeans`` runs on the devices, one
sub-batch of b speakers at a time: greedy k-means++ seeding from host-made uniforms, Lloyd's
algorithm mirroring scikit-learn's ``KMeans(algorithm="lloyd")`` step by step, the best of R
runs, and the mean silhouette of each speaker (the same function serves the devices, in JAX,
and the host, in numpy float64)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_HI = jax.lax.Precision.HIGHEST  # GPUs default to TF32 matmuls; k-means labels need full fp32.


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


def kpp(u, x, m, k, t):
    """Sub-batch k-means++: u [b, K, T], x [b, M, D], m [b, M] -> centres [b, K, D]."""
    return jax.vmap(_kpp_one, in_axes=(0, 0, 0, None, None))(u, x, m, k, t)


def entropy_words(key_or_seed) -> list[int]:
    """An int, a tuple of ints or a JAX PRNG key -> integer words for numpy's SeedSequence."""
    if isinstance(key_or_seed, (int, np.integer)):
        return [int(key_or_seed)]
    if isinstance(key_or_seed, tuple):
        return [int(v) for v in key_or_seed]
    arr = key_or_seed
    if jnp.issubdtype(getattr(arr, "dtype", np.int32), jax.dtypes.prng_key):
        arr = jax.random.key_data(arr)
    return [int(v) for v in np.asarray(arr, dtype=np.uint32).ravel()]


def n_trials(k: int) -> int:
    return 2 + int(np.log(k))  # sklearn _kmeans_plusplus: n_local_trials = 2 + int(log(k))


def _mix(z):
    """SplitMix64's finaliser (Steele, Lea & Flood 2014; constants from there): a bijective
    64-bit hash whose output bits look independent (uint64 arrays, wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(words, ids, k: int, k_pad: int, dtype) -> np.ndarray:
    """[len(ids), k_pad, T(k_pad)] k-means++ uniforms in [0, 1), zero outside [:k, :T(k)].

    Entry (s, j, t) is a hash of (SeedSequence(words), ids[s], j, t): a counter-based stream,
    so a speaker's draws depend on neither the other speakers nor k_pad, and all speakers'
    draws take one vectorised numpy pass (no generator object per speaker)."""
    key = np.random.SeedSequence(words).generate_state(1, np.uint64)[0]
    ids = np.asarray(ids, np.int64).astype(np.uint64)[:, None, None]
    j = np.arange(k, dtype=np.uint64)[None, :, None]
    t = np.arange(n_trials(k), dtype=np.uint64)[None, None, :]
    z = _mix(key ^ _mix((ids << np.uint64(16)) | (j << np.uint64(8)) | t))
    bits = 53 if np.dtype(dtype).itemsize >= 8 else 24  # exact in the dtype, so never 1.0
    out = np.zeros((len(ids), k_pad, n_trials(k_pad)), dtype)
    out[:, :k, :n_trials(k)] = (z >> np.uint64(64 - bits)).astype(np.float64) * 2.0 ** -bits
    return out


# --------------------------------------------------------------------------- Lloyd
def lloyd(x, m, c0, tol_rel, max_iter: int, k):
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


def best_of_runs(u, x, m, tol_rel, k, t, max_iter: int):
    """k-means++ then Lloyd for each of R runs, keeping per speaker the run with the lowest
    inertia (the first on ties): u [b, R, K, T], x [b, M, D], m [b, M] -> labels [b, M]."""
    def run(r):
        lab, _, inertia, _ = lloyd(x, m, kpp(u[:, r], x, m, k, t), tol_rel, max_iter, k)
        return lab, inertia

    def body(r, best):
        lab, inertia = run(r)
        better = inertia < best[1]
        return jnp.where(better[:, None], lab, best[0]), jnp.where(better, inertia, best[1])

    best = run(0)
    # fori_loop over further runs only when there are some: its body is a second copy of
    # k-means++ and Lloyd to compile.
    return best[0] if u.shape[1] == 1 else jax.lax.fori_loop(1, u.shape[1], body, best)[0]


def silhouette(xp, xb, m, lab, n_clusters: int):
    """Mean euclidean silhouette of each speaker of a sub-batch under L labelings, with
    scikit-learn's silhouette_score definition (a point alone in its cluster scores 0; 0/0
    -> 0): xb [b, M, D], m [b, M], lab [b, L, M] in 0..n_clusters-1 -> [b, L], NaN where
    undefined (fewer than 2, or all-distinct, clusters). The distances are computed once.
    xp: ``jax.numpy`` (traced, in xb's dtype, on the devices) or ``numpy`` (on the host)."""
    on_host = xp is np
    dot = (lambda spec, a, b: np.einsum(spec, a, b, optimize=True)) if on_host else \
        (lambda spec, a, b: jnp.einsum(spec, a, b, precision=_HI))
    dt = xb.dtype
    mf = m.astype(dt)
    sq = xp.sum(xb * xb, axis=2)
    d = sq[:, :, None] + sq[:, None, :] - 2.0 * dot("bmd,bnd->bmn", xb, xb)
    d = xp.where(m[:, None, :] & ~xp.eye(m.shape[1], dtype=bool), xp.sqrt(xp.maximum(d, 0.0)), 0.0)
    n = mf.sum(axis=1)
    ar = xp.arange(n_clusters)

    def one(lab):  # [b, M] -> [b]
        onehot = ((lab[..., None] == ar) & m[..., None]).astype(dt)  # [b, M, K]
        cnt = onehot.sum(axis=1)  # [b, K]
        sums = dot("bmn,bnk->bmk", d, onehot)  # distance to each cluster
        own_cnt = xp.sum(onehot * cnt[:, None, :], axis=2)
        a = xp.sum(sums * onehot, axis=2) / xp.maximum(own_cnt - 1, 1)
        other = xp.where((cnt[:, None, :] > 0) & (onehot == 0),
                         sums / xp.maximum(cnt[:, None, :], 1), xp.inf)
        b = xp.min(other, axis=2)
        b = xp.where(xp.isfinite(b), b, a)  # one cluster only: undefined, masked below
        den = xp.maximum(a, b)
        sil = xp.where((own_cnt > 1) & (den > 0), (b - a) / xp.where(den > 0, den, 1), 0.0)
        n_lab = xp.sum(cnt > 0, axis=1)
        mean = xp.sum(sil * mf, axis=1) / xp.maximum(n, 1)
        return xp.where((n_lab >= 2) & (n_lab <= n - 1), mean, xp.nan)
    if on_host:
        return np.stack([one(lab[:, i]) for i in range(lab.shape[1])], axis=1)
    return jax.vmap(one, in_axes=1, out_axes=1)(lab)
