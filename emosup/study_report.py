"""Clustering study (PAPER.md, Claim 1): do a speaker's embeddings cluster by emotion?

Pure analysis on given arrays: the caller embeds the audio and passes per-utterance
embeddings, speakers, emotions and mean/std log-mel statistics. ``run_study`` returns the
``study.json`` dict, ``write_study`` writes the JSON, a Markdown table and two PNGs.

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

import json
import math
import os

import numpy as np
import threadpoolctl

from emosup import cluster as C
from emosup import progress

METHODS = ("speaker_kmeans", "chance", "global_kmeans", "logmel_kmeans")
_LABELS = {"speaker_kmeans": "speaker k-means (embeddings)", "chance": "chance (same sizes)",
           "global_kmeans": "global k-means", "logmel_kmeans": "speaker k-means (log-mel)"}
_COLS = (("cluster_accuracy", "Cluster acc."), ("purity", "Purity"), ("nmi", "NMI"),
         ("ari", "ARI"))


def _check_inputs(embeddings, speakers, emotions, logmel_stats):
    emb = np.asarray(embeddings, dtype=np.float32)
    spk = np.asarray(speakers).astype(str)
    emo = np.asarray(emotions).astype(str)
    lm = np.asarray(logmel_stats, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"study_report.py: embeddings must be [N, D], got shape {emb.shape}")
    n = len(emb)
    for name, arr, nd in (("speakers", spk, 1), ("emotions", emo, 1), ("logmel_stats", lm, 2)):
        if arr.ndim != nd or len(arr) != n:
            raise ValueError(f"study_report.py: {name} must have {nd} dim(s) and N={n} rows "
                             f"(one per embedding), got shape {arr.shape}")
    if not (np.isfinite(emb).all() and np.isfinite(lm).all()):
        raise ValueError("study_report.py: embeddings/logmel_stats contain NaN or inf")
    return emb, spk, emo, lm


def _wmean_std(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    m = float(np.average(values, weights=weights))
    return m, float(math.sqrt(np.average((values - m) ** 2, weights=weights)))


def _per_speaker(groups, emo, labels) -> list[dict]:
    return [C.agreement(emo[g], labels[g]) for g in groups]


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
        out[rows] = C.per_speaker_kmeans(x[rows], spk[rows], kk, seed=seed, l2_normalize=l2_normalize)
    return out


# The k rules whose pair tables the study scores: (name, build_pair_table keyword arguments).
PAIR_RULES = (("silhouette", dict(k=None, k_rule="silhouette", k_range=(2, 3, 4, 5, 6))),
              ("size 4", dict(k=None, k_rule="size", cluster_size=4)),
              ("size 8", dict(k=None, k_rule="size", cluster_size=8)),
              ("k 2", dict(k=2)), ("k 4", dict(k=4)), ("k 8", dict(k=8)))


def pair_quality_by_rule(emb, spk, emo, seed=0, rules=PAIR_RULES, num_negatives=4) -> dict:
    """{rule: pair quality} of the pair table each k rule builds from these embeddings (the
    emotions only score it); a rule that yields no pair (too few utterances) is left out."""
    from emosup.data import pairs

    out = {}
    for name, kwargs in progress.track(rules, "study: pair tables by k rule", unit="rule"):
        try:
            table = pairs.build_pair_table(emb, spk, num_negatives=num_negatives, seed=seed, **kwargs)
        except ValueError:
            continue
        q = pairs.pair_quality(table, emo)
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
        raise ValueError("study_report.py: no speaker has 2 or more utterances")
    emotions_list = sorted(set(emo.tolist()))
    if k is not None and int(k) < 2:
        raise ValueError(f"study_report.py: need k >= 2 clusters, got k={k}")
    names, groups = C._speaker_groups(spk)
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
              "global_kmeans": C.global_kmeans(emb, k or len(emotions_list), seed=seed),
              "logmel_kmeans": _kmeans_k_per_speaker(lm_z, spk, names, k_of, seed, False)}

    per = {m: _per_speaker(groups, emo, labels[m]) for m in labels}
    chance_runs = [_per_speaker(groups, emo,
                                C.chance_assignment(labels["speaker_kmeans"], seed + r, spk))
                   for r in range(n_chance)]
    per["chance"] = [{m: float(np.mean([run[i][m] for run in chance_runs])) for m in C.METRICS}
                     for i in range(len(groups))]

    methods, methods_std = {}, {}
    for meth in METHODS:
        methods[meth], methods_std[meth] = {}, {}
        for m in C.METRICS:
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
    by_k = {kk: (labels["speaker_kmeans"] if kk == k else C.per_speaker_kmeans(emb, spk, kk, seed=seed))
            for kk in progress.track(ks, "study: k sweep", unit="k")}
    try:
        best_k, sil = C.silhouette_k(emb, spk, ks, seed=seed, labels_by_k=by_k)
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
                            "unused), scored against the emotions (data.pairs.pair_quality)",
        },
    }
    return _clean(result)


def _fmt(mean, std) -> str:
    return "n/a" if mean is None else f"{mean:.3f} ± {std or 0.0:.3f}"


def format_table(result: dict) -> str:
    """Markdown table: one row per method, columns = metrics as mean ± std over speakers."""
    lines = ["| Method | " + " | ".join(c for _, c in _COLS) + " |",
             "|---|" + "---:|" * len(_COLS)]
    std = result.get("methods_std", {})
    for meth, vals in result["methods"].items():
        cells = [_fmt(vals.get(m), std.get(meth, {}).get(m)) for m, _ in _COLS]
        lines.append(f"| {_LABELS.get(meth, meth)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _k_text(result: dict) -> str:
    """"4 (the speaker's number of emotions)" or "per speaker: 7 (12 speakers), 8 (22 speakers)"."""
    rule = result.get("k_rule", "given")
    if result.get("k") is not None:
        return f"{result['k']} ({rule})"
    counts = ", ".join(f"{k} ({n} speakers)" for k, n in result.get("k_counts", {}).items())
    return f"{rule}: {counts}"


def _markdown(result: dict) -> str:
    out = [f"# Clustering study: {result['encoder']} on {result['corpus']} "
           f"({result.get('split', '?')})", "",
           f"k = {_k_text(result)}, {result['speakers']} speakers, {result['utterances']} "
           f"utterances, emotions: {', '.join(result.get('emotions', []))}.",
           "Metrics are computed within each speaker and averaged over speakers weighted by "
           "utterances (± weighted std across speakers).", "", format_table(result), ""]
    if result.get("k_sweep"):
        out += ["## k sweep (speaker k-means on embeddings)", "",
                "| k | Cluster acc. | NMI | Silhouette |", "|---:|---:|---:|---:|"]
        for kk, v in result["k_sweep"].items():
            sil = "n/a" if v.get("silhouette") is None else f"{v['silhouette']:.3f}"
            out.append(f"| {kk} | {v['cluster_accuracy']:.3f} | {v['nmi']:.3f} | {sil} |")
        out += ["", f"k chosen by silhouette (no labels): {result['silhouette_k']['k']}", ""]
    if result.get("pair_quality"):
        out += ["## Pair tables by k rule (emotion labels only score them)", "",
                "| k rule | Positive shares the emotion | chance | Negative has another | chance |",
                "|---|---:|---:|---:|---:|"]
        for rule, q in result["pair_quality"].items():
            neg = "n/a" if q["negative_other_emotion"] is None else f"{q['negative_other_emotion']:.3f}"
            out.append(f"| {rule} | {q['positive_same_emotion']:.3f} | {q['chance_positive_same_emotion']:.3f} "
                       f"| {neg} | {q['chance_negative_other_emotion']:.3f} |")
        out.append("")
    out += ["## Per speaker (cluster accuracy)", "",
            "| Speaker | Utterances | " + " | ".join(_LABELS[m] for m in METHODS) + " |",
            "|---|---:|" + "---:|" * len(METHODS)]
    for row in result["per_speaker"]:
        accs = [row["cluster_accuracy"]] + [row["methods"][m]["cluster_accuracy"]
                                            for m in METHODS[1:]]
        out.append(f"| {row['speaker']} | {row['utterances']} | "
                   + " | ".join(f"{a:.3f}" for a in accs) + " |")
    if result.get("skipped_speakers"):
        out += ["", "Skipped: " + ", ".join(f"{s['speaker']} ({s['reason']})"
                                            for s in result["skipped_speakers"])]
    return "\n".join(out) + "\n"


def _tsne_grid(path, result, emb, spk, emo, max_speakers):
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    rows = result["per_speaker"][:max_speakers]
    emotions = result.get("emotions") or sorted(set(emo.tolist()))
    cmap = plt.get_cmap("tab10" if len(emotions) <= 10 else "tab20")
    colour = {e: cmap(i % cmap.N) for i, e in enumerate(emotions)}
    ncol = min(4, max(1, len(rows)))
    nrow = max(1, math.ceil(len(rows) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
    x = C._l2n(emb)
    for ax, row in progress.track(list(zip(axes.ravel(), rows)), "study: t-SNE pictures", unit="speaker"):
        idx = np.nonzero(spk == row["speaker"])[0]
        n = len(idx)
        if n >= 4:
            # perplexity must stay below n; ~n/3 for small speakers, sklearn's default 30 cap.
            tsne = TSNE(n_components=2, perplexity=float(min(30.0, max(1.0, (n - 1) / 3))),
                        init="pca", random_state=0)
            # One thread: a speaker's few hundred points gain nothing from more, and after JAX
            # has run, OpenMP's threads compete with XLA's (measured on 2 cores: 60 points took
            # 11.7 s with the default threads, 1.0 s with one).
            with threadpoolctl.threadpool_limits(1):
                y = tsne.fit_transform(x[idx])
        else:  # too few points for t-SNE: show the first two coordinates.
            y = x[idx][:, :2] if x.shape[1] >= 2 else np.c_[x[idx], np.zeros(n)]
        for e in emotions:
            sel = emo[idx] == e
            if sel.any():
                ax.scatter(y[sel, 0], y[sel, 1], s=10, color=colour[e], label=e)
        ax.set_title(f"{row['speaker']} (acc {row['cluster_accuracy']:.2f})", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    for ax in axes.ravel()[len(rows):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", ls="", color=colour[e], label=e) for e in emotions]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(emotions), 8), fontsize=8)
    fig.suptitle(f"t-SNE per speaker, coloured by emotion ({result['encoder']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _agreement_chart(path, result):
    import matplotlib.pyplot as plt
    rows = result["per_speaker"]
    s = len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * s + 2), 3.6))
    width = 0.8 / len(METHODS)
    xs = np.arange(s)
    for j, meth in enumerate(METHODS):
        vals = [r["cluster_accuracy"] if meth == "speaker_kmeans"
                else r["methods"][meth]["cluster_accuracy"] for r in rows]
        ax.bar(xs + (j - (len(METHODS) - 1) / 2) * width, vals, width, label=_LABELS[meth])
    ax.set_xticks(xs)
    ax.set_xticklabels([r["speaker"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("cluster accuracy")
    ax.set_title(f"Per-speaker agreement with emotion (k={_k_text(result)}, {result['corpus']})",
                 fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_study(result: dict, out_dir: str, embeddings, speakers, emotions,
                max_tsne_speakers: int = 12) -> dict:
    """Write study.json, study.md, study_tsne.png and study_agreement.png into out_dir.

    embeddings/speakers/emotions are the arrays given to ``run_study`` (skipped speakers
    are simply not drawn). Returns {"json", "md", "tsne", "agreement"} -> path.
    """
    import matplotlib
    matplotlib.use("Agg")
    os.makedirs(out_dir, exist_ok=True)
    emb = np.asarray(embeddings, dtype=np.float32)
    spk = np.asarray(speakers).astype(str)
    emo = np.asarray(emotions).astype(str)
    if not (len(emb) == len(spk) == len(emo)):
        raise ValueError(f"study_report.py: embeddings/speakers/emotions lengths differ: "
                         f"{len(emb)}, {len(spk)}, {len(emo)}")
    paths = {k: os.path.join(out_dir, f) for k, f in (
        ("json", "study.json"), ("md", "study.md"), ("tsne", "study_tsne.png"),
        ("agreement", "study_agreement.png"))}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, allow_nan=False)
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(_markdown(result))
    _tsne_grid(paths["tsne"], result, emb, spk, emo, max_tsne_speakers)
    _agreement_chart(paths["agreement"], result)
    return paths
