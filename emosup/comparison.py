"""The paper's comparison (docs/method.md §The comparison): pretraining arms × seeds, each fine-tuned for
SER on the same few labels and scored on unseen speakers.

Arms: `scratch` (no pretraining), `speaker` (AAM-softmax), `contrastive`, `multitask`,
`adversarial` (emosup.trainers.objectives), all pretrained with the same step budget on the unlabelled
rows, emotions unused; the pair arms draw pairs from the study's speaker encoder. For each
seed every arm is fine-tuned with the same labelled subset (it depends on the seed only).
Writes DIR/results.json, DIR/results.md and DIR/confusion_<arm>.png (summed over seeds).
"""
import json
import pathlib

import numpy as np
from absl import logging

from emosup import config_lib, metrics
from emosup.trainers import pretrain, ser, ser_ecapa, ser_w2v2

METRICS = ("macro_f1", "uar", "accuracy", "ccc_arousal", "ccc_valence", "ccc_dominance", "ccc_mean")


def _summary(values):
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "runs": [float(x) for x in v]}


def _metrics_of(results):
    first = next(iter(results["arms"].values()))
    return [m for m in METRICS if m in first]


def format_table(results):
    ms = _metrics_of(results)
    lines = [f"| arm | {' | '.join(ms)} |", "|---|" + "---:|" * len(ms)]
    for arm, r in results["arms"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{r[m]['mean']:.3f} ± {r[m]['std']:.3f}" for m in ms) + " |")
    return "\n".join(lines)


def write(results, workdir):
    """DIR/results.json and DIR/results.md."""
    workdir = pathlib.Path(workdir)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    folds = f" averaged over folds {results['folds']};" if results.get("folds") else ""
    md = [f"# SER comparison — {results['corpus']}", "",
          f"Test speakers unseen in fine-tuning; {results['labels_per_class']} labels per class;{folds} "
          f"mean ± std over seeds {results['seeds']}.", "", format_table(results), ""]
    if results.get("wav2vec2"):
        md.insert(-2, f"wav2vec2 arms: {results['wav2vec2']}.\n")
    (workdir / "results.md").write_text("\n".join(md))


def combine_folds(fold_results, fold_names):
    """Cross-validation: each seed's metric averaged over the folds, then mean ± std over seeds."""
    first = fold_results[0]
    combined = {k: v for k, v in first.items() if k != "arms"}
    combined["folds"] = list(fold_names)
    combined["per_fold"] = {f: r["arms"] for f, r in zip(fold_names, fold_results)}
    combined["arms"] = {}
    for arm in first["arms"]:
        combined["arms"][arm] = {}
        for m in _metrics_of(first):
            by_seed = np.mean([r["arms"][arm][m]["runs"] for r in fold_results], axis=0)
            combined["arms"][arm][m] = _summary(by_seed)
    return combined


def validate(config):
    """Fails before any work: the arms, the seeds and the pretraining and fine-tuning configs
    every arm will run with (pretrain.validate, ser.validate, ser_w2v2.validate)."""
    arms = list(config.arms.names)
    unknown = [a for a in arms if a not in config_lib.ARMS]
    if unknown:
        raise ValueError(f"config.arms.names={tuple(arms)!r}: unknown arms {unknown}; known: {list(config_lib.ARMS)}")
    if not arms:
        return
    if not config.arms.seeds:
        raise ValueError(f"config.arms.seeds={tuple(config.arms.seeds)!r}: the arms {arms} need at least "
                         "one seed, e.g. seeds=3")
    seed = config.arms.seeds[0]
    arms_init = config.arms.get("init", "")
    if arms_init not in config_lib.ARMS_INIT:
        raise ValueError(f"config.arms.init={arms_init!r}: expected '' (random encoders) or 'speaker_encoder'")
    if not config.get("speaker_encoder"):
        if config_lib.PRETRAINED_ARM in arms:
            raise ValueError("arm 'pretrained' fine-tunes the given speaker encoder, but none is given: add "
                             "speaker_encoder=DIR (e.g. a converted SpeechBrain ECAPA) or drop the arm")
        if arms_init:
            raise ValueError("arms_init=speaker_encoder starts the arms from the given speaker encoder, but "
                             "none is given: add speaker_encoder=DIR or drop arms_init")
    if any(a in config_lib.OBJECTIVES for a in arms):
        config_lib.check_crop_seconds("config.arms.pretrain_crop_seconds", config.arms.pretrain_crop_seconds)
        for field in ("pretrain_steps", "pretrain_batch_size", "speaker_batch_size"):
            if not (isinstance(config.arms[field], int) and config.arms[field] > 0):
                raise ValueError(f"config.arms.{field}={config.arms[field]!r}: must be a positive integer")
        for arm in arms:
            if arm in config_lib.OBJECTIVES:
                pretrain.validate(config_lib.pretrain_stage(config, arm, seed, "the study's speaker encoder"))
    # The fine-tuning settings are config.finetune, its data those of config.data.
    if any(a not in config_lib.W2V2_ARMS for a in arms):
        ser.validate(config_lib.finetune_stage(config, None, seed), "config.finetune")
    if any(a in config_lib.W2V2_ARMS for a in arms):
        ser_w2v2.validate(config_lib.w2v2_stage(config, seed, "the study's speaker encoder"), name="config.finetune")


def run(config, workdir, corpus, speaker_dir):
    """Runs every arm × seed; returns the results.json dict."""
    workdir = pathlib.Path(workdir)
    validate(config)
    arms = list(config.arms.names)
    cache, runs, starts, pair_quality = {}, {a: [] for a in arms}, {}, {}
    for seed in config.arms.seeds:
        for arm in arms:
            if arm in config_lib.W2V2_ARMS:
                # Fusion takes the ECAPA of this seed's contrastive arm when it ran, else the
                # speaker encoder of the study.
                con = workdir / "pretrain" / "contrastive" / f"seed{seed}"
                fusion = con if "contrastive" in arms and (con / "model.json").is_file() else speaker_dir
                logging.info("comparison: fine-tuning wav2vec2 arm %s, seed %d", arm, seed)
                runs[arm].append(ser_w2v2.run(
                    config_lib.w2v2_stage(config, seed, speaker_dir), workdir / "finetune" / arm / f"seed{seed}",
                    corpus, arm, fusion_encoder=fusion, embedding_cache=cache))
                continue
            init = None
            if arm == config_lib.PRETRAINED_ARM:
                init = speaker_dir  # the speaker encoder fine-tuned as it is
            elif arm != "scratch":
                init = workdir / "pretrain" / arm / f"seed{seed}"
                logging.info("comparison: pretraining arm %s, seed %d", arm, seed)
                pre = pretrain.run(config_lib.pretrain_stage(config, arm, seed, speaker_dir), init, corpus=corpus,
                                embedding_cache=cache)
                starts.setdefault(arm, {})["pretraining_from"] = pre.get("init") or {
                    "source": "random", "preset": config.model.preset}
                if pre.get("pair_quality") is not None:
                    pair_quality.setdefault(seed, {k: v for k, v in pre["pair_quality"].items()
                                                   if k != "per_speaker"})
            logging.info("comparison: fine-tuning arm %s, seed %d", arm, seed)
            res = ser_ecapa.run(config_lib.finetune_stage(config, init, seed), workdir / "finetune" / arm / f"seed{seed}",
                               corpus=corpus)
            starts.setdefault(arm, {}).setdefault("fine_tuning_from", res.get("init_encoder"))
            runs[arm].append(res)
    first = runs[arms[0]][0]
    metric_names = [m for m in METRICS if m in first["test"]]
    results = {"corpus": corpus.name, "seeds": list(config.arms.seeds),
               "labels_per_class": config.finetune.ser.labels_per_class, "classes": first["classes"],
               "target": first["target"], "pretrain_steps": config.arms.pretrain_steps,
               "finetune_steps": config.finetune.total_steps,
               "arms": {a: {m: _summary([r["test"][m] for r in runs[a]]) for m in metric_names} for a in arms},
               # Each arm's starting point as loaded (first seed): a pretraining arm's encoder before
               # pretraining, and the encoder fine-tuning started from (weights' fingerprints).
               "starts": starts,
               "speaker_encoder": str(speaker_dir),
               "config": "config.json"}  # the experiment's, beside results.json
    if pair_quality:  # the pair arms' tables, where the unlabelled rows carry emotion labels
        results["pair_quality"] = {str(s): q for s, q in pair_quality.items()}
    w2v2_runs = [runs[a][0] for a in arms if a in config_lib.W2V2_ARMS]
    if w2v2_runs:
        results["wav2vec2"] = w2v2_runs[0]["wav2vec2"]
    write(results, workdir)
    if "confusion" not in first["test"]:
        return results
    for a in arms:
        cm = sum(np.array(r["test"]["confusion"]) for r in runs[a])
        metrics.plot_confusion_matrix(cm, first["classes"], workdir / f"confusion_{a}.png",
                                      title=f"{a} (test, summed over seeds)")
    return results
