"""ESD: 5-class SER on held-out speakers (English and Mandarin speakers by default).

  python -m emosup.experiment --config=configs/esd.py:root=/data/ESD --workdir=runs/esd
  python -m emosup.experiment --config=configs/esd.py:root=/data/ESD,languages=english --workdir=runs/esd_en

Protocol: the official ESD split shares speakers between train and test, so speakers are
held out instead (seeded 70/10/20 by speaker, `seed`); labels come from the emotion folder.
angry, happy, neutral, sad, surprise; macro-F1, UAR and accuracy.
"""
from emosup import config_lib


def get_config(arg=None):
    return config_lib.corpus_config(
        "esd", arg, classes=("angry", "happy", "neutral", "sad", "surprise"),
        extra_args={"seed": 0, "languages": "english,mandarin"})
