"""The clustering study: do a speaker's embeddings cluster by emotion?

``run`` embeds the utterances of a split (speakers the encoder was not trained on) and of the
other labelled splits, runs ``run_study`` on each and writes the report (``study.report``).
``run_study`` is pure analysis on given arrays: per-utterance embeddings, speakers, emotions
and mean/std log-mel statistics in, the ``study.json`` dict out.

Methods compared on the same utterances (all scored *within each speaker* against the
emotion labels, then averaged over speakers weighted by utterance count):

* ``speaker_kmeans``: k-means per speaker on the L2-normalised embeddings.
* ``chance``: the speaker_kmeans labels randomly permuted inside each speaker (same
  cluster sizes), averaged over ``n_chance`` seeds.
* ``global_kmeans``: one k-means over all utterances with the same k; inside each speaker
  the global cluster ids of its utterances are compared with the emotions.
* ``logmel_kmeans``: k-means per speaker on the log-mel statistics, z-scored per feature
  over the study's utterances (our choice: the raw statistics mix scales) and not
  L2-normalised.
"""
from __future__ import annotations

import math
import pathlib

import numpy as np
from absl import logging

from emosup import progress
from emosup.data import pipeline
from emosup.models.encoders import Encoder, embed_paths
from emosup.pairs import build as pair_build
from emosup.pairs import kmeans, packing
from emosup.pairs.table import pair_quality
from emosup.study import agreement
from emosup.study.report import METHODS, write_study


def _check_inputs(embeddings, speakers, emotions, logmel_stats):
    emb = np.asarray(embeddings, dtype=np.float32)
    spk = np.asarray(speakers).astype(str)
    emo = np.asarray(emotions).astype(str)
    lm = np.asarray(logmel_stats, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"study/run.py: embeddings must be [N, D], got shape {emb.shape}")
    n = len(emb)
    for name, arr, nd in (("speakers", spk, 1), ("emotions", emo, 1), ("logmel_stats", lm, 2)):
        if arr.ndim != nd or len(arr) != n:
            raise ValueError(f"study/run.py: {name} must have {nd} dim(s) and N={n} rows "
                             f"(one per embedding), got shape {arr.shape}")
    if not (np.isfinite(emb).all() and np.isfinite(lm).all()):
        raise ValueError("study/run.py: embeddings/logmel_stats contain NaN or inf")
    return emb, spk, emo, lm


def _wmean_std(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    m = float(np.average(values, weights=weights))
    return m, float(math.sqrt(np.average((values - m) ** 2, weights=weights)))


def _per_speaker(groups, emo, labels) -> list[dict]:
    return [agreement.agreement(emo[g], labels[g]) for g in groups]


def _clean(obj):
    """JSON-safe: numpy scalars to Python, NaN to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else float(obj)
    return obj


def _kmeans_k_per_speaker(x, spk, names, k_of, seed, l2_normalize):
    """Per-speaker k-means with speaker names[i] in k_of[i] clusters (one call per distinct k;
    with one k for all speakers, exactly per_speaker_kmeans)."""
    out = np.zeros(len(x), np.int64)
    for kk in sorted(set(int(v) for v in k_of)):
        rows = np.isin(spk, np.asarray(names)[k_of == kk])
        out[rows] = kmeans.per_speaker_kmeans(x[rows], spk[rows], kk, seed=seed, l2_normalize=l2_normalize)
    return out


# The k rules whose pair tables the study scores: (name, build_pair_table keyword arguments).
PAIR_RULES = (("silhouette", dict(k=None, k_rule="silhouette", k_range=(2, 3, 4, 5, 6))),
              ("size 4", dict(k=None, k_rule="size", cluster_size=4)),
              ("size 8", dict(k=None, k_rule="size", cluster_size=8)),
              ("k 2", dict(k=2)), ("k 4", dict(k=4)), ("k 8", dict(k=8)))


def pair_quality_by_rule(emb, spk, emo, seed=0, rules=PAIR_RULES, num_negatives=4) -> dict:
    """{rule: pair quality} of the pair table each k rule builds from these embeddings (the
    emotions only score it); a rule that yields no pair (too few utterances) is left out."""
    out = {}
    for name, kwargs in progress.track(rules, "study: pair tables by k rule", unit="rule"):
        try:
            table = pair_build.build_pair_table(emb, spk, num_negatives=num_negatives, seed=seed, **kwargs)
        except ValueError:
            continue
        q = pair_quality(table, emo)
        if q is not None:
            q.pop("per_speaker")
            q["k_counts"] = table.stats["k_counts"]
            out[name] = q
    return out


def run_study(embeddings, speakers, emotions, logmel_stats, *, k: int | None = None,
              seed: int = 0, encoder: str, corpus: str, split_name: str,
              n_chance: int = 10, k_sweep_max: int = 8, pair_rules=PAIR_RULES) -> dict:
    """Run the clustering study on one split -> the ``study.json`` dict.

    embeddings [N, D], speakers (N,), emotions (N,) str, logmel_stats [N, F].
    k (clusters per speaker) defaults to each speaker's own number of distinct emotions (at least
    2); "k" is then that number when every speaker has it, else None, with "k_rule" and
    "k_counts" {k: speakers} and each per_speaker row's "k" saying which. "pair_quality" scores
    the pair table of each rule in `pair_rules` (pair_quality_by_rule). Speakers with < 2
    utterances are left out and listed under "skipped_speakers". Besides the required keys the dict holds
    "methods_std" (utterance-weighted std across speakers), "k_sweep" (speaker_kmeans
    cluster_accuracy/NMI/silhouette for k = 2..min(k_sweep_max, largest speaker - 1)),
    "silhouette_k" (the k a label-free silhouette criterion picks) and "notes".
    """
    emb, spk, emo, lm = _check_inputs(embeddings, speakers, emotions, logmel_stats)
    names, counts = np.unique(spk, return_counts=True)
    small = names[counts < 2]
    skipped = [{"speaker": str(s), "utterances": int(c), "reason": "fewer than 2 utterances"}
               for s, c in zip(names, counts) if c < 2]
    keep = ~np.isin(spk, small)
    emb, spk, emo, lm = emb[keep], spk[keep], emo[keep], lm[keep]
    if len(emb) == 0:
        raise ValueError("study/run.py: no speaker has 2 or more utterances")
    emotions_list = sorted(set(emo.tolist()))
    if k is not None and int(k) < 2:
        raise ValueError(f"study/run.py: need k >= 2 clusters, got k={k}")
    names, groups = packing.speaker_groups(spk)
    sizes = np.array([len(g) for g in groups], dtype=np.float64)
    # k per speaker: the given k, else that speaker's own number of emotions (at least 2). A
    # corpus mixing speakers with 7 and 8 emotions must not give every speaker the union's 9.
    if k is None:
        k_rule = "the speaker's number of emotions"
        k_of = np.array([max(2, len(np.unique(emo[g]))) for g in groups])
    else:
        k_rule, k_of = "given", np.full(len(groups), int(k))
    k_values = sorted({int(v) for v in k_of})
    k = k_values[0] if len(k_values) == 1 else None  # one k for every speaker, else None

    mu, sd = lm.mean(axis=0), lm.std(axis=0)
    lm_z = (lm - mu) / np.where(sd > 0, sd, 1.0)
    labels = {"speaker_kmeans": _kmeans_k_per_speaker(emb, spk, names, k_of, seed, True),
              # One clustering over all speakers: as many clusters as emotions overall.
              "global_kmeans": kmeans.global_kmeans(emb, k or len(emotions_list), seed=seed),
              "logmel_kmeans": _kmeans_k_per_speaker(lm_z, spk, names, k_of, seed, False)}

    per = {m: _per_speaker(groups, emo, labels[m]) for m in labels}
    chance_runs = [_per_speaker(groups, emo,
                                agreement.chance_assignment(labels["speaker_kmeans"], seed + r, spk))
                   for r in range(n_chance)]
    per["chance"] = [{m: float(np.mean([run[i][m] for run in chance_runs])) for m in agreement.METRICS}
                     for i in range(len(groups))]

    methods, methods_std = {}, {}
    for meth in METHODS:
        methods[meth], methods_std[meth] = {}, {}
        for m in agreement.METRICS:
            mean, std = _wmean_std(np.array([d[m] for d in per[meth]]), sizes)
            methods[meth][m], methods_std[meth][m] = mean, std

    per_speaker = []
    for i, name in enumerate(names):
        row = {"speaker": str(name), "utterances": int(sizes[i]), "k": int(k_of[i]),
               "emotions": {e: int(c) for e, c in zip(*np.unique(emo[groups[i]],
                                                                  return_counts=True))}}
        row.update(per["speaker_kmeans"][i])
        row["methods"] = {meth: per[meth][i] for meth in METHODS if meth != "speaker_kmeans"}
        per_speaker.append(row)

    # k sweep and label-free choice of k (the same clusterings serve both).
    k_hi = min(k_sweep_max, max(2, int(sizes.max()) - 1))
    ks = list(range(2, k_hi + 1))
    by_k = {kk: (labels["speaker_kmeans"] if kk == k else kmeans.per_speaker_kmeans(emb, spk, kk, seed=seed))
            for kk in progress.track(ks, "study: k sweep", unit="k")}
    try:
        best_k, sil = kmeans.silhouette_k(emb, spk, ks, seed=seed, labels_by_k=by_k)
    except ValueError:
        best_k, sil = None, {kk: float("nan") for kk in ks}
    k_sweep = {}
    for kk in ks:
        ps = _per_speaker(groups, emo, by_k[kk])
        k_sweep[str(kk)] = {
            m: _wmean_std(np.array([d[m] for d in ps]), sizes)[0] for m in ("cluster_accuracy", "nmi")}
        k_sweep[str(kk)]["silhouette"] = sil[kk]

    pairs_by_rule = pair_quality_by_rule(emb, spk, emo, seed=seed, rules=pair_rules) if pair_rules else {}

    result = {
        "encoder": encoder, "corpus": corpus, "split": split_name, "k": k, "k_rule": k_rule,
        "k_counts": {str(v): int(np.sum(k_of == v)) for v in k_values},
        "speakers": len(names), "utterances": int(len(emb)), "emotions": emotions_list,
        "seed": seed, "methods": methods, "methods_std": methods_std,
        "per_speaker": per_speaker, "k_sweep": k_sweep,
        "silhouette_k": {"k": best_k, "scores": {str(kk): sil[kk] for kk in ks}},
        "skipped_speakers": skipped,
        "pair_quality": pairs_by_rule,
        "notes": {
            "averaging": "per-speaker metrics averaged over speakers weighted by utterances; "
                         "methods_std is the weighted std across speakers",
            "chance": f"speaker_kmeans labels permuted within each speaker, {n_chance} seeds",
            "global_kmeans": "one k-means over all utterances with the same k, scored within "
                             "each speaker",
            "logmel_kmeans": "per-speaker k-means on log-mel stats z-scored per feature",
            "small_speakers": "a speaker with n <= k utterances gets n singleton clusters",
            "pair_quality": "pair tables built from these embeddings with each k rule (labels "
                            "unused), scored against the emotions (pairs.table.pair_quality)",
        },
    }
    return _clean(result)


def study_rows(manifest, split):
    """Rows of `split` with an emotion label and a known speaker; (rows, number left out)."""
    from emosup.data.corpus import speaker_known

    rows = [u for u in manifest.select(split=split)]
    labelled = [u for u in rows if u.emotion and speaker_known(u)]
    return labelled, len(rows) - len(labelled)


def run(encoder_dir, manifest, workdir, *, split="test", k=None, seed=0, corpus="",
        other_splits=True, encoder=None):
    """Runs the study; writes study.json, study.md and PNGs into workdir; returns the result."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    encoder = encoder or Encoder(encoder_dir)
    splits = [split] + ([s for s in sorted({u.split for u in manifest}) if s != split] if other_splits else [])
    results, main_arrays = {}, None
    for s in splits:
        rows, unlabelled = study_rows(manifest, s)
        if not rows:
            if s == split:
                raise ValueError(f"{manifest.source}: split {s!r} has no rows with an emotion label to study")
            continue
        skip_log = pipeline.SkipLog()
        logging.info("study: embedding %d utterances of split %r", len(rows), s)
        emb, stats, valid = embed_paths(encoder, [u.path for u in rows], skip_log=skip_log)
        speakers = np.array([u.speaker for u in rows])[valid]
        emotions = np.array([u.emotion for u in rows])[valid]
        res = run_study(emb[valid], speakers, emotions, stats[valid], k=k, seed=seed,
                        encoder=encoder.name, corpus=corpus or manifest.source, split_name=s,
                        pair_rules=PAIR_RULES if s == split else ())
        res["unreadable_utterances"] = skip_log.as_dict()
        res["rows_without_emotion"] = unlabelled
        results[s] = res
        if s == split:
            main_arrays = (emb[valid], speakers, emotions)
    result = results.pop(split)
    result["split"] = split
    if (pathlib.Path(workdir) / "config.json").is_file():
        result["config"] = "config.json"  # the settings of the run that wrote this study
    result["other_splits"] = {s: {"speakers": r["speakers"], "utterances": r["utterances"],
                                  "methods": r["methods"]} for s, r in results.items()}
    write_study(result, workdir, *main_arrays)
    return result
