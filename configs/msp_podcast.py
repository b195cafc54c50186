"""MSP-Podcast: 8-class SER macro-F1 and arousal/valence/dominance CCC on Test1.

  python -m emosup.experiment --config=configs/msp_podcast.py:root=/data/MSP-PODCAST-Publish-1.12 --workdir=runs/msp
  python -m emosup.experiment --config=configs/msp_podcast.py:root=...,four_class=1 --workdir=runs/msp4

Protocol (the MSP-Podcast challenge, msplabresearch/MSP-Podcast_Challenge): the official Split_Set
partitions — Train for training (dev = Development), Test1 as `test`; Test2/Test3 are kept in
the manifest but never used. Classes A S H U F D C N (O and X dropped); `four_class=1` keeps
neutral/happy/sad/angry. The head predicts the class and A/V/D (1–7 scale) together. Rows of
`Unknown` speakers take part in SER but not in speaker training, pairs or the study.
"""
from emosup import config_lib

EIGHT = ("angry", "sad", "happy", "surprise", "fear", "disgust", "contempt", "neutral")



def _classes(a):
    return ("neutral", "happy", "sad", "angry") if a.four_class else EIGHT


def get_config(arg=None):
    return config_lib.corpus_config("msp_podcast", arg, classes=_classes, target="both",
                                    extra_args={"four_class": False})
