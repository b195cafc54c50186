"""RAVDESS: 8-class SER on held-out actors (speech; `song=1` adds the sung files).

  python -m emosup.experiment --config=configs/ravdess.py:root=/data/RAVDESS --workdir=runs/ravdess

Protocol: the 24 actors split 70/10/20 into train/dev/test by a seeded shuffle (`seed`);
neutral, calm, happy, sad, angry, fear, disgust, surprise; macro-F1, UAR and accuracy.
"""
from emosup import config_lib


def get_config(arg=None):
    return config_lib.corpus_config(
        "ravdess", arg,
        classes=("neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise"),
        extra_args={"seed": 0, "song": False})
