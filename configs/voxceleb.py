"""VoxCeleb: speaker-encoder training (AAM-softmax) and the VoxCeleb1-O equal error rate.

  python -m emosup.experiment --config=configs/voxceleb.py:root=/data/voxceleb1,trials=/data/veri_test2.txt --workdir=runs/vox
  python -m emosup.train --config=configs/voxceleb.py:root=/data/voxceleb2,stage=speaker,preset=c1024,steps=200000 --workdir=runs/vox2

Protocol (VoxCeleb1-O: the cleaned trial list veri_test2.txt, 37,611 trials): the speakers of the trial list are held out of
training; after training, every trial is scored by the cosine similarity of the two
utterances' embeddings and the EER reported (also `python -m emosup.verify`). VoxCeleb has
no emotion labels: no study and no SER comparison. The trained encoder is what the pair
objectives and the study of the emotional corpora can take as `pairs_encoder`.
"""
from emosup import config_lib


def get_config(arg=None):
    return config_lib.corpus_config("voxceleb", arg, classes=(), extra_args={"trials": ""},
                                    trials_option="trials", arms="0")
