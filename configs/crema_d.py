"""CREMA-D: 6-class SER on held-out actors (speaker-disjoint 70/10/20 split, seeded).

  python -m emosup.experiment --config=configs/crema_d.py:root=/data/CREMA-D --workdir=runs/crema_d

Protocol: actors split 70/10/20 into train/dev/test by a seeded shuffle (`seed`, reader option);
angry, disgust, fear, happy, neutral, sad; macro-F1, UAR and accuracy on the test actors.
Files that are silent, empty or git-lfs pointers are reported and left out.
"""
from emosup import config_lib


def get_config(arg=None):
    return config_lib.corpus_config(
        "crema_d", arg, classes=("angry", "disgust", "fear", "happy", "neutral", "sad"),
        extra_args={"seed": 0})
