"""Encoder pretraining on unlabelled speech, emotion labels unused.

  python -m emosup.train --config=configs/pretrain.py:objective=contrastive,pairs_encoder=runs/spk --workdir=runs/con
  python -m emosup.train --config=configs/pretrain.py:objective=multitask,pairs_encoder=runs/spk,manifest=my.csv --workdir=runs/mt

objective: speaker | contrastive | multitask | adversarial (emosup/trainers/objectives.py). The pair
objectives draw (anchor, positive, negatives) from the intra-speaker k-means clusters of
`pairs_encoder`'s embeddings (an emosup checkpoint or a converted SpeechBrain encoder).
"""
from emosup import config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, manifest="", synthetic_dir="", preset="tiny", steps=400, batch_size=16,
                             objective="contrastive", pairs_encoder="")
    return config_lib.pretrain_config(**a)
