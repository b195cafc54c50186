"""Pair tables for intra-speaker contrastive pretraining: what a table holds, the rules every
table keeps, its storage, and how well its pairs follow emotion where labels exist.

A table gives, for every anchor utterance, one positive from the **same speaker and same
cluster** and K negatives from the **same speaker, other clusters** (optionally c of the K
from other speakers); ``emosup.pairs.build`` makes them from per-speaker k-means clusters.
Because anchor, positive and negatives share the speaker, what separates them is what the
clusters encode.

Definition kept by every table (checked by ``PairTable.validate`` after every build and load):
  * an anchor has a speaker label and a cluster with >= 2 members;
  * its positive is another utterance (never itself) of the same speaker and cluster;
  * negatives ``[:, :K-c]`` share the speaker but not the cluster (so never the anchor);
    negatives ``[:, K-c:]`` (the c cross-speaker ones) have another known speaker.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

_ARRAYS = ("anchors", "positives", "negatives", "clusters", "speakers", "k_per_speaker")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value; compare fingerprints
class PairTable:
    """One version of the pairs. A = anchors, K = negatives per anchor, N = utterances (the
    rows the table was built from), S = labelled speakers (sorted-label order).

    anchors int32 [A], positives int32 [A], negatives int32 [A, K]: row indices into N.
    clusters int32 [N]: cluster id, unique across speakers (0..C-1 ordered by speaker, then
      by k-means label), -1 = not clustered. speakers int32 [N]: speaker index, -1 = no label.
    k_per_speaker int32 [S]: k used per speaker (0 = not clustered: too few utterances).
    stats: JSON-able counts (see ``build.build_pair_table``). Arrays are made read-only.
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
            raise ValueError(f"pairs/table.py: pair-table arrays lack {missing}; have {sorted(d)}")
        raw = d["stats_json"]
        if isinstance(raw, (str, np.str_)) or np.asarray(raw).dtype.kind == "U":
            text = str(np.asarray(raw))
        else:
            text = np.asarray(raw, np.uint8).tobytes().decode("utf-8")
        for name in _ARRAYS:
            a = np.asarray(d[name])
            if a.dtype.kind not in "iu":
                raise ValueError(f"pairs/table.py: pair-table array {name!r} must be integer, got {a.dtype}")
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
            raise ValueError(f"pairs/table.py: pair table v{self.version} is invalid: {msg} "
                             f"(anchor row {i}, utterance {int(a[i])}; {int(rows.sum())} rows)")

        if (self.speakers.shape != (n,) or a.ndim != 1 or p.shape != a.shape
                or neg.ndim != 2 or neg.shape[0] != a.shape[0] or not 0 <= c <= neg.shape[1]):
            raise ValueError(f"pairs/table.py: pair table shapes do not fit: clusters {self.clusters.shape}, "
                             f"speakers {self.speakers.shape}, anchors {a.shape}, positives {p.shape}, "
                             f"negatives {neg.shape}, cross_speaker_negatives {c}")
        for name, idx in (("anchors", a), ("positives", p), ("negatives", neg)):
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"pairs/table.py: pair table {name} index outside [0, {n})")
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
        raise ValueError(f"pairs/table.py: pair_quality got {len(emo)} emotion labels for a table "
                         f"of {n} rows")
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
