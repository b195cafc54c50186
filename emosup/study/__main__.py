"""The clustering study's command: do speaker embeddings cluster by emotion within each speaker?

  python -m emosup.study --checkpoint=DIR --manifest=CSV --workdir=OUT [--split=test] [--k=4]

Embeds the utterances of `split` (speakers the encoder was not trained on), clusters each
speaker's L2-normalised embeddings with k-means (k = that speaker's number of emotions unless
given), and scores agreement with the emotion labels against chance, one global k-means, and
k-means on log-mel statistics (emosup.study.run). The other splits with emotion labels are
studied too and reported under `other_splits`.
"""
import pathlib

from absl import flags

from emosup import errors, logs
from emosup.data import manifest as manifest_lib
from emosup.study import report, run


def main(argv):
    del argv
    logs.setup()
    from emosup import run_config

    run_config.prepare(FLAGS.workdir, {"stage": "study", "checkpoint": FLAGS.checkpoint, "manifest": FLAGS.manifest,
                                       "split": FLAGS.split, "k": FLAGS.k, "seed": FLAGS.seed},
                       resuming=False, what="study")
    m = manifest_lib.read_manifest(FLAGS.manifest, allowed_splits=None)
    result = run.run(FLAGS.checkpoint, m, FLAGS.workdir, split=FLAGS.split, k=FLAGS.k, seed=FLAGS.seed)
    print(report.format_table(result))
    print(f"wrote {pathlib.Path(FLAGS.workdir) / 'study.json'}")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_string("checkpoint", None, "speaker encoder: emosup workdir or converted folder")
    flags.DEFINE_string("manifest", None, "CSV manifest with emotion labels")
    flags.DEFINE_string("workdir", None, "output folder")
    flags.DEFINE_string("split", "test", "split whose speakers are studied")
    flags.DEFINE_integer("k", None, "clusters per speaker (default: each speaker's own number of emotions)")
    flags.DEFINE_integer("seed", 0, "k-means seed")
    flags.mark_flags_as_required(["checkpoint", "manifest", "workdir"])
    errors.run_cli("study", main)
