"""The paper's comparison (PAPER.md Claim 4): pretraining arms × seeds, each fine-tuned for
SER on the same few labels and scored on unseen speakers.

Arms: `scratch` (no pretraining), `speaker` (AAM-softmax), `contrastive`, `multitask`,
`adversarial` (emosup.tasks), all pretrained with the same step budget on the unlabelled
rows, emotions unused; the pair arms draw pairs from the study's speaker encoder. For each
seed every arm is fine-tuned with the same labelled subset (it depends on the seed only).
Writes DIR/results.json, DIR/results.md and DIR/confusion_<arm>.png (summed over seeds).
"""
import copy
import json
import pathlib

import numpy as np
from absl import logging

from emosup import finetune, metrics, tasks, train

ARMS = ("scratch",) + tasks.OBJECTIVES
METRICS = ("macro_f1", "uar", "accuracy")


def _pretrain_config(config, arm, seed, pair_encoder):
    c = copy.deepcopy(config)
    c.unlock()
    c.objective, c.seed = arm, seed
    c.total_steps = config.arms.pretrain_steps
    c.batch_size = config.arms.pretrain_batch_size if tasks.uses_pairs(arm) else config.arms.speaker_batch_size
    c.data.crop_seconds = config.arms.pretrain_crop_seconds
    c.optim.warmup_steps = min(c.optim.warmup_steps, c.total_steps // 10)
    c.pairs.encoder = str(pair_encoder)
    c.checkpoint_every = max(c.total_steps // 2, 1)
    c.lock()
    return c


def _finetune_config(config, init, seed):
    c = copy.deepcopy(config.finetune)
    c.unlock()
    crop = c.data.crop_seconds
    c.seed, c.init, c.data = seed, str(init) if init else "", copy.deepcopy(config.data)
    c.data.crop_seconds = crop  # fine-tuning keeps its own crop length
    c.lock()
    return c


def _summary(values):
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "runs": [float(x) for x in v]}


def format_table(results):
    lines = [f"| arm | {' | '.join(m for m in METRICS)} |", "|---|" + "---:|" * len(METRICS)]
    for arm, r in results["arms"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{r[m]['mean']:.3f} ± {r[m]['std']:.3f}" for m in METRICS) + " |")
    return "\n".join(lines)


def run(config, workdir, corpus, speaker_dir):
    """Runs every arm × seed; returns the results.json dict."""
    workdir = pathlib.Path(workdir)
    arms = list(config.arms.names)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"config.arms.names: unknown arms {unknown}; known: {list(ARMS)}")
    cache, runs = {}, {a: [] for a in arms}
    for seed in config.arms.seeds:
        for arm in arms:
            init = None
            if arm != "scratch":
                init = workdir / "pretrain" / arm / f"seed{seed}"
                logging.info("comparison: pretraining arm %s, seed %d", arm, seed)
                train.run(_pretrain_config(config, arm, seed, speaker_dir), init, corpus=corpus,
                          embedding_cache=cache)
            logging.info("comparison: fine-tuning arm %s, seed %d", arm, seed)
            res = finetune.run(_finetune_config(config, init, seed), workdir / "finetune" / arm / f"seed{seed}",
                               corpus=corpus)
            runs[arm].append(res)
    first = runs[arms[0]][0]
    results = {"corpus": corpus.name, "seeds": list(config.arms.seeds),
               "labels_per_class": config.finetune.ser.labels_per_class, "classes": first["classes"],
               "pretrain_steps": config.arms.pretrain_steps, "finetune_steps": config.finetune.total_steps,
               "arms": {a: {m: _summary([r["test"][m] for r in runs[a]]) for m in METRICS} for a in arms}}
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    md = [f"# SER comparison — {corpus.name}", "",
          f"Test speakers unseen in fine-tuning; {config.finetune.ser.labels_per_class} labels per class; "
          f"mean ± std over seeds {list(config.arms.seeds)}.", "", format_table(results), ""]
    (workdir / "results.md").write_text("\n".join(md))
    for a in arms:
        cm = sum(np.array(r["test"]["confusion"]) for r in runs[a])
        metrics.plot_confusion_matrix(cm, first["classes"], workdir / f"confusion_{a}.png",
                                      title=f"{a} (test, summed over seeds)")
    return results
