"""Row group `kmeans`: the pair table's per-speaker k-means at scale, each size in a fresh
process, vs a scikit-learn KMeans loop over speakers."""
import json
import statistics
import sys
import time

import jax
import numpy as np

from emosup.pairs import kmeans as pairs_kmeans
from emosup.pairs import packing
from emosup.bench import common
def _kmeans_corpus(n_utt, n_spk, dim, seed=0):
    """Synthetic utterance embeddings [n_utt, dim] and speaker ids for the k-means rows.

    Speaker sizes vary (gamma(2) weights, mean n_utt / n_spk); an utterance is its speaker's
    centre + (one of 5 emotion offsets + within-speaker variation) in a shared 8-d subspace +
    a little isotropic noise: Lloyd then needs several iterations per speaker, as on real
    embeddings (isotropic 192-d noise converges in 2). Built in chunks so the temporaries
    stay small next to x in the peak-memory figure."""
    rng = np.random.default_rng(seed)
    w = rng.gamma(2.0, size=n_spk)
    spk = rng.choice(n_spk, size=n_utt, p=w / w.sum())
    basis = np.linalg.qr(rng.standard_normal((dim, 8)))[0].T.astype(np.float32)
    emo = rng.standard_normal((5, 8)).astype(np.float32)
    centres = rng.standard_normal((n_spk, dim), dtype=np.float32) * np.float32(2 / np.sqrt(dim))
    x = np.empty((n_utt, dim), np.float32)
    for i in range(0, n_utt, 1 << 16):
        n = min(1 << 16, n_utt - i)
        z = emo[rng.integers(0, 5, n)] + rng.standard_normal((n, 8), dtype=np.float32)
        x[i:i + n] = (centres[spk[i:i + n]] + np.float32(0.3) * (z @ basis)
                      + rng.standard_normal((n, dim), dtype=np.float32) * np.float32(0.05 / np.sqrt(dim)))
    return x, spk


def _peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sklearn_kmeans_loop(x, spk, k, seed, cap_s, labels, segments, between):
    """scikit-learn per speaker (speakers with > k utterances), from the k-means++ centres
    per_speaker_kmeans draws for run 0 (kmeans_plusplus_init with the same seed words and
    speaker ids, in the same padded shapes), n_init=1, lloyd. Times only the KMeans fits,
    under the faster of 1 OpenMP thread or the default (measured on a sample), or says why
    it did not run within cap_s. The loop runs in ``segments`` interleaved slices of the
    speakers, each after a call of ``between`` (a timed run of ours), so that both sides see
    the same machine load. Also counts the speakers whose labels equal ``labels`` (ours)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    xs = packing.l2n(x)
    _, order, starts, sizes = packing.speaker_rows(spk)
    big = np.nonzero(sizes > k)[0]
    jobs = []  # (points, init, our labels) per speaker, in per_speaker_kmeans's padded shapes
    for slot_ids, m, _ in packing.plan(sizes[big], x.shape[1], 1 << 26, 1):
        ids = big[slot_ids[slot_ids >= 0]]
        padded, mask = packing.pack(xs, order, starts, sizes, ids, m)
        init = pairs_kmeans.kmeans_plusplus_init((seed, 0), padded, mask, k, speaker_ids=ids)
        for j, s in enumerate(ids):
            rows = order[starts[s]:starts[s] + sizes[s]]
            jobs.append((padded[j, :sizes[s]], init[j], labels[rows]))

    def fit(job):
        return KMeans(n_clusters=k, init=job[1], n_init=1, algorithm="lloyd").fit(job[0]).labels_

    sample = jobs[::max(1, len(jobs) // 60)]
    per_fit = {}
    for threads in (1, None):
        with threadpool_limits(limits=threads, user_api="openmp"):
            fit(sample[0])
            t = time.perf_counter()
            for job in sample:
                fit(job)
            per_fit[threads] = (time.perf_counter() - t) / len(sample)
    threads = min(per_fit, key=per_fit.get)
    setting = f"{'1 OpenMP thread' if threads == 1 else 'default threads'} (per fit: 1 thread " \
              f"{per_fit[1] * 1e3:.2f} ms, default {per_fit[None] * 1e3:.2f} ms)"
    estimate = per_fit[threads] * len(jobs)
    if estimate > cap_s:
        for _ in range(segments):
            between()
        return {"status": f"not run (> cap: ~{estimate:.0f} s estimated > {cap_s:.0f} s)",
                "estimate_s": estimate, "setting": setting}
    equal, seg_s, total = 0, [], 0.0
    with threadpool_limits(limits=threads, user_api="openmp"):
        for i in range(segments):
            between()
            t = time.perf_counter()
            for job in jobs[i::segments]:
                equal += int(np.array_equal(fit(job), job[2]))
            seg_s.append(time.perf_counter() - t)
            total += seg_s[-1]
            if total > cap_s:
                return {"status": f"not finished within the {cap_s:.0f} s cap", "setting": setting}
    return {"status": "ok", "seconds": total, "segments_s": seg_s, "setting": setting,
            "speakers": len(jobs), "labels_equal": equal}


def kmeans_child(n_utt, n_spk, dim, k, repeats, cap_s, mode):
    """One size in a fresh process (run by bench_kmeans): prints one JSON line of figures.

    mode "fixed": pairs.kmeans.per_speaker_kmeans(k) (the pair service's clustering with k fixed),
    cold (first call, compiles) and warm, then the scikit-learn loop. mode "silhouette":
    build_pair_table(k=None) -- per_speaker_kmeans for k = 2..6 (sharing compiled programs),
    silhouettes, choice of k per speaker and the pair draws: the pair service's default."""
    from emosup.pairs import build as pair_build

    x, spk = _kmeans_corpus(n_utt, n_spk, dim)
    out = {"utterances": n_utt, "speakers_present": int(len(np.unique(spk))),
           "data_mb": x.nbytes / 2 ** 20, "rss_after_data_mb": _peak_rss_mb(), "warm_s": []}
    if mode == "fixed":
        run = lambda: pairs_kmeans.per_speaker_kmeans(x, spk, k, seed=0)
    else:
        run = lambda: pair_build.build_pair_table(x, spk, k=None, k_range=(2, 3, 4, 5, 6), seed=0)

    def timed():
        t = time.perf_counter()
        run()
        out["warm_s"].append(time.perf_counter() - t)

    t = time.perf_counter()
    result = run()
    out["cold_s"] = time.perf_counter() - t
    timed()
    out["peak_rss_mb"] = _peak_rss_mb()  # before any scikit-learn work
    if mode == "fixed":
        sizes = np.bincount(spk)
        out["speakers_clustered"] = int((sizes > k).sum())
        out["sklearn"] = _sklearn_kmeans_loop(x, spk, k, 0, cap_s, result, max(1, repeats), timed)
    else:
        out["k_counts"] = result.stats["k_counts"]
        for _ in range(repeats):
            timed()
    print("KMEANS_JSON " + json.dumps(out), flush=True)


def bench_kmeans(sizes=(10_000, 100_000, 1_000_000), n_speakers=10_000, dim=192, k=4, repeats=3,
                 cap_s=600.0, silhouette_sizes=(10_000, 100_000, 1_000_000), target=10.0,
                 target_size=100_000):
    """Pair-table clustering at scale: for each number of utterances (n_speakers speakers,
    dim-d), in a fresh subprocess each so that peak memory (ru_maxrss) is that size's own:
    per_speaker_kmeans with k fixed (cold = first call incl. compiles, warm = median of
    ``repeats`` + 1 further calls, spread min-max) vs the scikit-learn per-speaker KMeans loop
    (same k-means++ init, n_init=1, lloyd; not run when estimated above cap_s; run in
    ``repeats`` slices interleaved with our calls), and the silhouette choice of k
    (build_pair_table(k=None)) at ``silhouette_sizes``. Ratio = sklearn loop / our median
    warm call; its spread pairs each sklearn slice with our call just before it."""
    import subprocess

    rows, per_1k = [], []
    jobs = [(n, "fixed") for n in sizes] + [(n, "silhouette") for n in silhouette_sizes]
    for n, mode in jobs:
        code = (f"from emosup.bench import kmeans; kmeans.kmeans_child({n}, {n_speakers}, {dim}, {k}, "
                f"{repeats}, {cap_s}, {mode!r})")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("KMEANS_JSON ")]
        if proc.returncode or not line:
            print(f"k-means {n} utt ({mode}) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(line[0][len("KMEANS_JSON "):])
        warm = statistics.median(r["warm_s"]) if r["warm_s"] else r["cold_s"]
        what = f"k={k}" if mode == "fixed" else "k by silhouette 2..6"
        row = {"name": f"pair clustering {n // 1000}k utt, {r['speakers_present']} spk, {dim}-d, {what}",
               "emosup_s": warm, "compile_s": r["cold_s"] - warm, "cold_s": r["cold_s"],
               "warm_spread_s": [min(r["warm_s"] or [warm]), max(r["warm_s"] or [warm])],
               "peak_rss_mb": r["peak_rss_mb"], "data_mb": r["data_mb"],
               "rss_after_data_mb": r["rss_after_data_mb"], "utterances": n, "mode": mode}
        sk = r.get("sklearn")
        if mode == "fixed":
            row["reference"] = "scikit-learn KMeans loop over speakers"
            # The pair service clusters on every device it has; scikit-learn has only the CPU.
            row["devices"] = (f"emosup: {jax.device_count()} {jax.default_backend()} device(s); "
                              "scikit-learn: the host's CPU cores (it has no accelerator version)")
            row["reference_setting"] = sk["setting"]
            row["reference_status"] = sk["status"]
            if sk["status"] == "ok":
                row["reference_s"] = sk["seconds"]
                row["ratio_cold"] = sk["seconds"] / r["cold_s"]
                # each sklearn slice (scaled to the whole loop) over our run just before it
                segs = sk["segments_s"]
                paired = [s * len(segs) / w for s, w in zip(segs, r["warm_s"][1:])]
                row["ratio_spread"] = [min(paired), max(paired)]
                row["labels_equal_speakers"] = f"{sk['labels_equal']}/{sk['speakers']}"
        else:
            row["reference"] = "(no reference run)"
            row["k_counts"] = r["k_counts"]
        common.print_row(row)
        extra = (f"    cold {r['cold_s']:.2f} s, warm {warm:.2f} s (spread {row['warm_spread_s'][0]:.2f}-"
                 f"{row['warm_spread_s'][1]:.2f} s over {len(r['warm_s'])}), peak RSS {r['peak_rss_mb']:.0f} MB "
                 f"(data {r['data_mb']:.0f} MB, after making it {r['rss_after_data_mb']:.0f} MB)")
        if mode == "fixed":
            if sk["status"] == "ok":
                extra += (f"\n    sklearn {sk['seconds']:.2f} s, {sk['setting']}; ratio warm "
                          f"{row['ratio']:.1f}x (spread {row['ratio_spread'][0]:.1f}-{row['ratio_spread'][1]:.1f}x), "
                          f"cold {row['ratio_cold']:.1f}x; labels equal to sklearn for "
                          f"{row['labels_equal_speakers']} speakers")
            else:
                extra += f"\n    sklearn: {sk['status']}; {sk['setting']}"
            if jax.default_backend() != "cpu":
                extra += f"\n    devices: {row['devices']}"
            if n == target_size:
                ok = row.get("ratio") is not None and row["ratio"] >= target
                row["target"] = f">= {target:g}x the scikit-learn loop (warm)"
                row["meets_target"] = ok
                extra += (f"\n    target >= {target:g}x the sklearn loop at {n // 1000}k utterances (warm): "
                          f"{'MET' if ok else 'NOT MET'}"
                          + ("" if row.get("ratio_cold") is None else
                             f" (cold, incl. compiles: {row['ratio_cold']:.1f}x)"))
            per_1k.append((n, warm / n * 1e6, r["cold_s"] / n * 1e6))
        print(extra, flush=True)
        rows.append(row)
    if per_1k:
        print("  k-means growth, ms per 1k utterances (warm | cold): " + ", ".join(
            f"{n // 1000}k: {w:.1f} | {c:.1f}" for n, w, c in per_1k), flush=True)
    return rows
