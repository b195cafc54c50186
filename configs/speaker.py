"""Speaker-encoder training with AAM-softmax (emotion labels unused).

  python -m emosup.train --config=configs/speaker.py --workdir=runs/spk
  python -m emosup.train --config=configs/speaker.py:manifest=my.csv,preset=c512,steps=20000 --workdir=runs/spk
"""
from emosup import config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, manifest="", synthetic_dir="", preset="tiny", steps=400, batch_size=32)
    return config_lib.speaker_config(**a)
