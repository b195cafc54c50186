"""Host-side layout of per-speaker work: rows grouped by speaker, padded [S, M, D] blocks, and
the plan of device calls (speakers bucketed by padded length M) that ``emosup.pairs.kmeans``
runs. Everything here is numpy; nothing depends on the devices."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Points x features per sub-batch (128 KiB of float32): k-means' passes over a sub-batch hit
# cache, and few speakers wait for the slowest of their sub-batch. On 100k utterances
# (emosup.bench) 2^14..2^18 were within noise, one sub-batch per call (2^26) 3x slower.
_SUB_ELEMS = 1 << 15
# A bucket of speakers is padded up to the next larger length M in use when that costs at most
# this many extra elements (~0.05 s of Lloyd on one CPU core, well under one compile).
_MERGE_ELEMS = 1 << 22


def speaker_rows(speakers):
    """-> (sorted unique names, order [N] = rows sorted by speaker (stable), starts [S], sizes [S])."""
    speakers = np.asarray(speakers)
    if speakers.ndim != 1:
        raise ValueError(f"pairs/packing.py: speakers must be 1-D (N,), got shape {speakers.shape}")
    names, inverse = np.unique(speakers, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse, minlength=len(names))
    starts = np.cumsum(sizes) - sizes
    return names, order, starts, sizes


def speaker_groups(speakers) -> tuple[list, list[np.ndarray]]:
    """Sorted unique speaker names and, per speaker, the row indices (ascending)."""
    names, order, starts, _ = speaker_rows(speakers)
    return list(names), np.split(order, starts[1:])


def slots(order, starts, sizes, ids):
    """Speakers ``ids`` (-1 = empty slot) laid out one per slot -> (slot, pos, row) of every
    real point: row ``row`` of x goes to ``[slot, pos]`` of the padded array."""
    ids = np.asarray(ids)
    n = np.where(ids >= 0, sizes[np.maximum(ids, 0)], 0)
    slot = np.repeat(np.arange(len(ids)), n)
    pos = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    return slot, pos, order[np.repeat(starts[np.maximum(ids, 0)], n) + pos]


def row_index(order, starts, sizes, ids, m: int) -> np.ndarray:
    """Speakers ``ids`` (-1 = empty slot) -> their rows of x, [len(ids), m] int32, -1 = pad."""
    slot, pos, row = slots(order, starts, sizes, ids)
    out = np.full((len(ids), m), -1, np.int32)
    out[slot, pos] = row
    return out


def pack(x, order, starts, sizes, ids, m: int):
    """x [N, D] -> padded [len(ids), m, D] (zeros in pads and empty slots), mask [len(ids), m]."""
    slot, pos, row = slots(order, starts, sizes, ids)
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
    padded, mask = pack(x, order, starts, sizes, ids, m)
    slot, pos, row = slots(order, starts, sizes, ids)
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
        raise ValueError(f"pairs/packing.py: x must be [N, D] with N == len(speakers); got "
                         f"x {x.shape}, speakers {np.shape(speakers)}")
    names, groups = speaker_groups(speakers)
    padded, mask, index = _pad(x, groups, max(len(g) for g in groups))
    return padded, mask, index, names


def inv_norms(x) -> np.ndarray:
    """1 / max(||x_i||, 1e-12) per row, in x's dtype. Rows are normalised by multiplying with
    it, on the host (l2n) and in the k-means programs alike, so both see the same numbers."""
    return (1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)).astype(x.dtype)


def l2n(x):
    """Rows of x L2-normalised (x * inv_norms(x))."""
    return x * inv_norms(x)[:, None]


def _round_up(n: int) -> int:
    """n rounded up to 4..7 times a power of two (at most 25% more): few distinct shapes
    (e.g. across the k of a silhouette choice) without padding a call to twice its size."""
    step = 1 << max(0, n.bit_length() - 3)
    return -(-n // step) * step


def sub_size(m: int, d: int, count: int) -> int:
    """Speakers per sub-batch for ``count`` speakers of padded length m: the largest power
    of two with b*m*d <= _SUB_ELEMS, at most count rounded up to a power of two, and at
    least 2: with b = 1 XLA's CPU dots lose their batch axis and Lloyd ran 3-4x slower
    (M=128 and 256, 1M-utterance bench; b=2 pads a lone speaker with an empty one)."""
    v = max(1, _SUB_ELEMS // max(1, m * d))
    return max(2, min(1 << (v.bit_length() - 1), 1 << max(0, int(count - 1).bit_length())))


def plan(sizes: np.ndarray, width: int, budget: int, n_dev: int, square: bool = False):
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
        b = sub_size(1, cost(m), len(sel))
        q = min(max(1, budget // (n_dev * b * cost(m))), _round_up(-(-len(sel) // (n_dev * b))))
        s_call = n_dev * q * b
        for i in range(0, len(sel), s_call):
            part = sel[i:i + s_call]
            calls.append((np.concatenate([part, np.full(s_call - len(part), -1)]), m, b))
    return calls
