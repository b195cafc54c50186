"""The whole pipeline on the built-in synthetic corpus, sized for a 2-core laptop.

  python -m emosup.experiment --config=configs/demo.py --workdir=runs/demo
  python -m emosup.experiment --config=configs/demo.py:manifest=/data/my.csv --workdir=runs/mine

Arguments (after the colon, comma-separated): manifest (CSV; default: synthetic corpus),
synthetic_dir (cache folder of the synthetic corpus; default ~/.cache/emosup/...),
preset (tiny | c512 | c1024), steps (default 400), batch_size (default 32), k (0 = number of emotions), tiny (1 = the
few-second variant the tests run), arms (`all`, default; `0` = stop after the study; or
names joined by `+`, e.g. `scratch+multitask`), seeds (default 3), labels_per_class (default 8).
"""
import hashlib
import json
import os

import ml_collections

from emosup import config_lib


ALL_ARMS = ("scratch", "speaker", "contrastive", "multitask", "adversarial")


def _arm_names(arg):
    arg = str(arg).strip().lower()
    if arg in ("all", "1", "true", "yes"):
        return ALL_ARMS
    if arg in ("0", "none", "false", "no", ""):
        return ()
    names = tuple(a.strip() for a in arg.split("+"))
    unknown = [a for a in names if a not in ALL_ARMS]
    if unknown:
        raise ValueError(f"config argument arms={arg!r}: unknown arms {unknown}; known: {list(ALL_ARMS)}")
    return names


def get_config(arg=None):
    a = config_lib.parse_arg(arg, manifest="", synthetic_dir="", preset="tiny", steps=0,
                             batch_size=0, k=0, tiny=False, arms="all", seeds=3, labels_per_class=8)
    steps = a.steps or (6 if a.tiny else 400)
    batch_size = a.batch_size or (8 if a.tiny else 32)
    c = config_lib.speaker_config(manifest=a.manifest, synthetic_dir=a.synthetic_dir,
                                  preset=a.preset, steps=steps, batch_size=batch_size)
    if a.tiny:  # seconds, for the end-to-end test: a handful of speakers and steps
        c.data.synthetic.update(speakers_unlabelled=6, speakers_labelled=2, speakers_test=3,
                                utterances_per_speaker_emotion=4, max_duration=2.0)
        c.data.crop_seconds = 1.0
        c.log_every, c.checkpoint_every = 2, 4
        c.optim.warmup_steps = 1
    if not c.data.manifest and not c.data.synthetic_dir:
        # The generated corpus is cached by its settings, so reruns and other workdirs reuse it.
        key = hashlib.sha1(json.dumps(c.data.synthetic.to_dict(), sort_keys=True, default=list)
                           .encode()).hexdigest()[:10]
        cache = os.environ.get("EMOSUP_CACHE", os.path.expanduser("~/.cache/emosup"))
        c.data.synthetic_dir = os.path.join(cache, f"synthetic-{key}")
    c.study = ml_collections.ConfigDict(dict(k=a.k, seed=0))
    # The comparison: every arm pretrains with the same budget, then fine-tunes on few labels.
    c.arms = ml_collections.ConfigDict(dict(
        names=_arm_names(a.arms),
        seeds=tuple(range(a.seeds)),
        pretrain_steps=4 if a.tiny else 120,
        pretrain_batch_size=8,         # anchors per step (each with a positive and K negatives)
        speaker_batch_size=8 if a.tiny else 32,
        pretrain_crop_seconds=1.0,
    ))
    c.pairs.k = 2 if a.tiny else 0    # 0 = k per speaker by silhouette
    c.pairs.num_negatives = 2 if a.tiny else 4
    c.finetune = config_lib.finetune_config(steps=6 if a.tiny else 200, batch_size=8 if a.tiny else 16,
                                            labels_per_class=a.labels_per_class)
    c.finetune.data.crop_seconds = 1.0 if a.tiny else 2.0
    return c
