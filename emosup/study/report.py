"""The clustering study's report: the Markdown table printed after a study, and
``write_study``'s files (study.json, study.md, a t-SNE picture per speaker and the
per-speaker agreement chart)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import threadpoolctl

from emosup import progress
from emosup.pairs import packing

# The study's methods (``study.run``), in the order of its tables.
METHODS = ("speaker_kmeans", "chance", "global_kmeans", "logmel_kmeans")
_LABELS = {"speaker_kmeans": "speaker k-means (embeddings)", "chance": "chance (same sizes)",
           "global_kmeans": "global k-means", "logmel_kmeans": "speaker k-means (log-mel)"}
_COLS = (("cluster_accuracy", "Cluster acc."), ("purity", "Purity"), ("nmi", "NMI"),
         ("ari", "ARI"))


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
    x = packing.l2n(emb)
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
        raise ValueError(f"study/report.py: embeddings/speakers/emotions lengths differ: "
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
