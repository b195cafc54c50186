"""`python -m emosup.train --config=configs/X.py --workdir=DIR`: one training stage.

Stage `pretrain` (configs/pretrain.py, configs/speaker.py, a corpus config's stage=speaker or
stage=pretrain) runs emosup.trainers.pretrain; stage `finetune` (configs/finetune.py, a corpus
config's stage=finetune) runs the SER fine-tuning of emosup.trainers.ser_ecapa and prints its test
scores. The main job, corpus → speaker encoder → study → comparison, is emosup.experiment.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags
from ml_collections import config_flags

from emosup import distributed, errors, logs


def main(argv):
    del argv
    logs.setup()
    distributed.initialize_from_flags(FLAGS)
    logs.quiet_other_processes()
    if FLAGS.config.get("stage") == "finetune":
        from emosup.trainers import ser, ser_ecapa

        result = ser_ecapa.run(FLAGS.config, FLAGS.workdir)
        print(ser.format_test(result, FLAGS.workdir))
    else:
        from emosup.trainers import pretrain

        pretrain.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
    flags.mark_flags_as_required(["config", "workdir"])
    distributed.define_flags()
    errors.run_cli("train", main)
