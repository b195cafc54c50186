"""Per-speaker k-means in JAX, batched over speakers and sharded over devices, and the
per-speaker silhouette.

* ``kmeans_plusplus_init`` / ``batched_kmeans``: k-means++ seeding and Lloyd's algorithm
  for many speakers at once (``packing.group_by_speaker`` makes the padded input).
  ``batched_kmeans`` reproduces scikit-learn's ``KMeans(init=centres, n_init=1,
  algorithm="lloyd")`` step by step (tolerance scaling, convergence test, empty-cluster
  relocation, final E-step); see its docstring.
* ``per_speaker_kmeans`` / ``global_kmeans`` / ``silhouette_k``: the clusterings of the pair
  tables and of the clustering study; ``silhouettes``: the mean silhouette of each speaker
  under several labelings (the pair tables' choice of k).

Scale. Speakers are independent, so the speaker axis S is sharded over a 1-D
device mesh (``emosup.parallel``) with ``shard_map``: each device clusters S/N speakers with
no communication. Default mesh: every device of this process (``_default_mesh``). Each
device has all embeddings (once; no copy on CPU) and gets per call only row indices: it
gathers and L2-normalises its speakers in sub-batches of b (``lax.map``) small enough to
stay in cache while k-means++ and Lloyd iterate, each with its own ``while_loop``, so a slow
speaker holds back only its sub-batch. ``per_speaker_kmeans`` sorts speakers by size and
buckets them by padded length M (``packing.plan``: a power of two; tiny buckets join the
next): padding stays below 2x and one program is compiled per bucket, shared by every
k <= k_max. A speaker's result depends only on its own points, M and b -- never on the mesh
or the other speakers -- so labels are identical on 1 and on N devices (tested on 8).
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

from emosup import parallel
from emosup.pairs import kernels, packing


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
                return kernels.silhouette(jnp, jnp.take(x, rows, axis=0), idx >= 0, lab, n_clusters)
            return _by_sub_batch(one, b, idx)
        in_specs = (spec, rep, rep)
    elif kind == "cluster":
        def local(idx, u, x, inv_norms, tol, k, t):
            def one(idx, u):
                rows = jnp.maximum(idx, 0)
                xb = jnp.take(x, rows, axis=0)
                if l2:  # the same product as packing.l2n, so the same numbers
                    xb = xb * jnp.take(inv_norms, rows)[..., None]
                return kernels.best_of_runs(u, xb, idx >= 0, tol, k, t, max_iter)
            return _by_sub_batch(one, b, idx, u)
        in_specs = (spec, spec, rep, rep, rep, rep, rep)
    elif kind == "kpp":
        def local(m, x, u, k, t):
            return _by_sub_batch(lambda m, x, u: kernels.kpp(u, x, m, k, t), b, m, x, u)
        in_specs = (spec, spec, spec, rep, rep)
    else:
        def local(m, x, c0, tol, k):
            return _by_sub_batch(lambda m, x, c0: kernels.lloyd(x, m, c0, tol, max_iter, k), b, m, x, c0)
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


def _padded_call(mesh, kind, arrays, k: int, max_iter: int = 0, tol: float = 0.0):
    """Run ``kind`` on caller-padded arrays [S, ...] (mask first): S is padded with empty
    speakers to a multiple of devices x sub-batch, results are cut back to S."""
    mesh = _default_mesh() if mesh is None else mesh
    s, m = arrays[0].shape
    b = packing.sub_size(m, arrays[1].shape[-1], s)
    unit = mesh.devices.size * b
    s_pad = -(-s // unit) * unit

    def padded(a):
        return lambda sl: np.concatenate([a[sl.start:min(sl.stop, s)],
                                          np.zeros((max(0, sl.stop - max(sl.start, s)),)
                                                   + a.shape[1:], a.dtype)])
    args = [_global(mesh, (s_pad,) + a.shape[1:], a.dtype, padded(a)) for a in arrays]
    scalars = (np.int32(k), np.int32(kernels.n_trials(k))) if kind == "kpp" else \
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
            raise ValueError("pairs/kmeans.py: backend='sklearn' needs an integer seed")
        out = np.zeros((s, k, x_padded.shape[2]), x_padded.dtype)
        for i in range(s):
            pts = x_padded[i][mask[i]]
            if len(pts):
                out[i] = kmeans_plusplus(pts, k, random_state=int(key_or_seed) + int(ids[i]),
                                         n_local_trials=kernels.n_trials(k))[0]
        return out
    if backend != "jax":
        raise ValueError(f"pairs/kmeans.py: backend must be 'jax' or 'sklearn', got {backend!r}")
    u = kernels.uniforms(kernels.entropy_words(key_or_seed), ids, k, k, x_padded.dtype)
    return _padded_call(mesh, "kpp", (mask, x_padded, u), k)


def _as_float(x) -> np.ndarray:
    """numpy array in the float dtype JAX computes in (float32 unless x64 is enabled)."""
    x = np.asarray(x)
    return x.astype(jax.dtypes.canonicalize_dtype(x.dtype if x.dtype.kind == "f" else np.float64))


def _check_counts(mask: np.ndarray, k: int):
    counts = mask.sum(axis=1)
    if mask.shape[1] < k:
        raise ValueError(f"pairs/kmeans.py: padded length M={mask.shape[1]} < k={k}")
    bad = np.nonzero((counts < k) & (counts > 0))[0]
    if len(bad):
        raise ValueError(f"pairs/kmeans.py: speaker row {int(bad[0])} has {int(counts[bad[0]])} "
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
        raise ValueError(f"pairs/kmeans.py: batched_kmeans expects x [S, M, D], mask [S, M], "
                         f"init [S, k, D]; got {x_padded.shape}, {mask_np.shape}, {c0.shape}")
    _check_counts(mask_np, c0.shape[1])
    lab, c, inertia, n_it = _padded_call(mesh, "lloyd", (mask_np, x_padded, c0), c0.shape[1],
                                         int(max_iter), tol)
    return np.where(mask_np, lab, -1).astype(np.int32), c, inertia, n_it



# --------------------------------------------------------------------------- clusterings
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
        raise ValueError(f"pairs/kmeans.py: x must be [N, D] with N == len(speakers); got "
                         f"x {x.shape}, speakers {np.shape(speakers)}")
    if k < 1 or n_init < 1:
        raise ValueError(f"pairs/kmeans.py: need k >= 1 and n_init >= 1, got k={k}, n_init={n_init}")
    mesh = _default_mesh() if mesh is None else mesh
    _, order, starts, sizes = packing.speaker_rows(speakers)
    labels = np.zeros(len(x), dtype=np.int64)
    small = np.nonzero(sizes <= k)[0]
    _, pos, row = packing.slots(order, starts, sizes, small)
    labels[row] = pos  # n <= k: singletons
    big = np.nonzero(sizes > k)[0]
    k_pad = max(k, k_max or k)
    u = np.stack([kernels.uniforms([seed, r], big, k, k_pad, np.float32) for r in range(n_init)], 1)
    gather, pending = _gathers(mesh), None
    # Every device gets all rows once (no copy on CPU) and per call only row indices; rows
    # are normalised in the program exactly as packing.l2n(x) does.
    x_all = _replicated(mesh, x)
    inv = _replicated(mesh, packing.inv_norms(x) if l2_normalize else np.ones(1, x.dtype))

    def collect(ids, out):
        slot, pos, row = packing.slots(order, starts, sizes, ids)
        labels[row] = np.asarray(out)[slot, pos]

    for slot_ids, m, b in packing.plan(sizes[big], x.shape[1], budget, mesh.devices.size):
        ids = np.where(slot_ids >= 0, big[np.maximum(slot_ids, 0)], -1)
        s = len(ids)
        args = (_global(mesh, (s, m), np.int32,
                        lambda sl: packing.row_index(order, starts, sizes, ids[sl], m)),
                _global(mesh, (s,) + u.shape[1:], np.float32,
                        lambda sl: np.where((slot_ids[sl] >= 0)[:, None, None, None],
                                            u[np.maximum(slot_ids[sl], 0)], 0)))
        out = _program(mesh, gather, "cluster", b, int(max_iter), bool(l2_normalize))(
            *args, x_all, inv, np.float32(tol), np.int32(k), np.int32(kernels.n_trials(k)))
        # Calls run asynchronously: this one computes while the previous one's labels are
        # read and the next one's indices are made.
        if pending is not None:
            collect(*pending)
        pending = (ids, out)
    if pending is not None:
        collect(*pending)
    return labels


def silhouettes(x, spk, s_count: int, labels_by_k: Sequence[np.ndarray], mesh=None,
                budget: int = 1 << 24) -> np.ndarray:
    """Mean euclidean silhouette of each speaker under L labelings -> [L, s_count]: per speaker
    scikit-learn's silhouette_score (a point alone in its cluster scores 0; 0/0 -> 0), NaN
    where undefined (fewer than 2 or all-distinct clusters).

    x [N, D]; spk int [N] in 0..s_count-1, -1 = row not used; labels_by_k: L arrays [N] of
    cluster ids (>= 0 on the used rows). float32 x (what build_pair_table passes): on the
    devices of ``mesh`` (default: this process's devices) in float32 (~1e-6 from float64),
    speakers sharded like per_speaker_kmeans; the numbers do not depend on the mesh. Other x:
    on the host in float64. Either way ``kernels.silhouette`` runs over ``packing.plan``'s
    calls and computes each speaker's distance matrix once for every labeling.
    """
    out = np.full((len(labels_by_k), s_count), np.nan)
    used = np.nonzero(spk >= 0)[0]
    names, order, starts, sizes = packing.speaker_rows(spk[used])
    order = used[order]  # rows of x, grouped by speaker
    labels = np.stack([np.maximum(np.asarray(lab), 0) for lab in labels_by_k]).astype(np.int32)  # [L, N]
    n_clusters = int(labels.max(initial=0)) + 1
    big = np.nonzero(sizes >= 3)[0]  # 2 <= clusters <= n - 1 needs n >= 3
    if np.asarray(x).dtype != np.float32:
        for slot_ids, m, _ in packing.plan(sizes[big], x.shape[1], budget, 1, square=True):
            ids = big[slot_ids[slot_ids >= 0]]
            # Pack in the input dtype, then widen only the packed rows (no float64 copy of x).
            xb, mask = packing.pack(x, order, starts, sizes, ids, m)
            rows = np.maximum(packing.row_index(order, starts, sizes, ids, m), 0)
            lab = np.moveaxis(labels[:, rows], 0, 1)  # [s, L, m]
            out[:, names[ids]] = kernels.silhouette(np, xb.astype(np.float64), mask, lab, n_clusters).T
        return out
    mesh = _default_mesh() if mesh is None else mesh
    x_all, lab_all, pending = _replicated(mesh, x), _replicated(mesh, labels), []
    for slot_ids, m, b in packing.plan(sizes[big], x.shape[1], budget, mesh.devices.size, square=True):
        ids = np.where(slot_ids >= 0, big[np.maximum(slot_ids, 0)], -1)
        idx = _global(mesh, (len(ids), m), np.int32,
                      lambda sl: packing.row_index(order, starts, sizes, ids[sl], m))
        prog = _program(mesh, _gathers(mesh), "silhouette", b, n_clusters=n_clusters)
        pending.append((ids, prog(idx, x_all, lab_all)))
    for ids, res in pending:
        out[:, names[ids[ids >= 0]]] = np.asarray(res)[ids >= 0].T
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
    The silhouettes are scikit-learn's ``silhouette_score`` on the host (the study's
    reference numbers); ``silhouettes`` computes the same definition batched on devices.
    """
    from sklearn.metrics import silhouette_score
    x = np.asarray(x, dtype=np.float32)
    xs = packing.l2n(x) if l2_normalize else x
    _, groups = packing.speaker_groups(speakers)
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
        raise ValueError("pairs/kmeans.py: silhouette undefined for every k and speaker")
    best = max(finite, key=lambda k: (finite[k], -k))
    return best, scores
