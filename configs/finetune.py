"""SER fine-tuning on few labels, from any initialisation.

  python -m emosup.train --config=configs/finetune.py:init=runs/mt --workdir=runs/ft
  python -m emosup.train --config=configs/finetune.py:manifest=my.csv,labels_per_class=20 --workdir=runs/ft0

init: a pretraining workdir or converted encoder ('' = from scratch). target: categorical |
dimensional | both (arousal/valence/dominance with a CCC loss).
"""
from emosup import config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, manifest="", synthetic_dir="", init="", preset="tiny", steps=300,
                             batch_size=16, labels_per_class=8, target="categorical")
    return config_lib.finetune_config(**a)
