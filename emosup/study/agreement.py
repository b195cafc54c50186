"""Agreement of a clustering with the emotion labels, as the clustering study scores it:
Hungarian-matched cluster accuracy, purity, NMI and ARI, all computed from the contingency
matrix (so per-shard matrices can be summed), and the chance baseline that permutes the
labels inside each speaker."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from emosup.pairs import packing


def chance_assignment(labels_pred, seed: int, speakers=None) -> np.ndarray:
    """Random relabelling that keeps cluster sizes: the labels of each speaker (or of all
    utterances if speakers is None) are randomly permuted among that speaker's rows."""
    labels_pred = np.asarray(labels_pred)
    rng = np.random.default_rng(seed)
    out = labels_pred.copy()
    groups = [np.arange(len(out))] if speakers is None else packing.speaker_groups(speakers)[1]
    for g in groups:
        out[g] = labels_pred[g][rng.permutation(len(g))]
    return out


def contingency(labels_true, labels_pred) -> np.ndarray:
    """Counts [n_classes, n_clusters] (rows: sorted unique true labels, cols: sorted pred)."""
    labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
    if labels_true.shape != labels_pred.shape or labels_true.ndim != 1:
        raise ValueError(f"study/agreement.py: labels must be 1-D of equal length, got "
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
