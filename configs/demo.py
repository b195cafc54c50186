"""The whole pipeline on the built-in synthetic corpus, sized for a 2-core laptop.

  python -m emosup.experiment --config=configs/demo.py --workdir=runs/demo
  python -m emosup.experiment --config=configs/demo.py:manifest=/data/my.csv --workdir=runs/mine

Arguments (after the colon, comma-separated): manifest (CSV; default: synthetic corpus),
synthetic_dir (cache folder of the synthetic corpus; default ~/.cache/emosup/...),
preset (tiny | c512 | c1024), steps (default 400), batch_size (default 32), k (0 = number of emotions), tiny (1 = the
few-second variant the tests run), arms (default `all+w2v2s`: the five ECAPA arms and the four
wav2vec2 arms; `all` = the ECAPA arms only, `w2v2s` = the wav2vec2 arms only, `0` = stop after the
study, or names joined by `+`, e.g. `scratch+multitask`), seeds (default 3), labels_per_class
(default 8), speaker_encoder (an encoder folder, e.g. SpeechBrain's VoxCeleb ECAPA converted by
`python -m emosup.convert speechbrain`: used for the study and the pairs instead of training one,
and fine-tuned as it is by the arm `pretrained`, which `all` then includes), arms_init
(`speaker_encoder` = every pretraining arm starts from that encoder's weights; default: random).
The wav2vec2 arms start from a random tiny wav2vec2 unless --config.w2v2.init names a converted HF
folder.
"""
from emosup import config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, manifest="", synthetic_dir="", preset="tiny", steps=0,
                             batch_size=0, k=0, tiny=False, arms="all+w2v2s", seeds=3, labels_per_class=8,
                             speaker_encoder="", arms_init="")
    return config_lib.experiment_config(**a)
