"""IEMOCAP: 4-class SER (neutral, happy+excited, sad, angry), leave-one-session-out, 5 folds.

  python -m emosup.experiment --config=configs/iemocap.py:root=/data/IEMOCAP_full_release --workdir=runs/iemocap
  python -m emosup.experiment --config=configs/iemocap.py:root=...,folds=5,arms=scratch+multitask --workdir=...
  python -m emosup.train --config=configs/iemocap.py:root=...,stage=finetune,init=runs/mt --workdir=runs/ft

Protocol (s3prl's emotion task, s3prl/downstream/emotion; 4 classes, exc merged into hap): fold k
tests on session k's two speakers and trains on the other four sessions (dev = held-out training speakers); accuracy
and UAR are averaged over the folds. Per fold the speaker encoder and every pretraining arm
learn on the training sessions with labels hidden; fine-tuning uses all their labels
(`labels_per_class=0`; give N for the few-label setting). Arguments: see
`emosup.config_lib.corpus_config`; `all_classes` is the reader's option.
"""
from emosup import config_lib


def get_config(arg=None):
    return config_lib.corpus_config(
        "iemocap", arg, classes=("neutral", "happy", "sad", "angry"),
        fold_option="test_session", folds=(1, 2, 3, 4, 5))
