"""Speaker verification: the equal error rate of a speaker encoder on a trial list.

  python -m emosup.verify --checkpoint=DIR --trials=veri_test2.txt --root=/data/voxceleb1 [--out=eer.json]

`--trials` is a VoxCeleb-style list (`label enrol test`, 1 = same speaker; VoxCeleb1-O is
veri_test2.txt), its paths relative to `--root` (emosup.data.corpora.voxceleb.read_trials).
Every file is embedded once (whole utterance, as `emosup.embed`), each trial scored by cosine
similarity, and the EER and its threshold reported. Trials whose audio cannot be read are left
out and counted.
"""
import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags, logging

from emosup import errors, logs


def run(encoder_dir, trials_path, root, out=None, encoder=None):
    """{"eer", "threshold", "trials", "left_out", ...}; written to `out` (JSON) when given."""
    from emosup.data.corpora import voxceleb
    from emosup.models.encoders import Encoder, embed_paths

    trials = voxceleb.read_trials(trials_path, root)
    paths = sorted({p for _, a, b in trials for p in (a, b)})
    encoder = encoder or Encoder(encoder_dir)
    logging.info("verify: %d trials over %d files, encoder %s", len(trials), len(paths), encoder.name)
    emb, _, valid = embed_paths(encoder, paths)
    table = {p: e for p, e, ok in zip(paths, emb, valid) if ok}
    kept = [t for t in trials if t[1] in table and t[2] in table]
    if not kept or len({t[0] for t in kept}) < 2:
        raise ValueError(f"{trials_path}: after leaving out unreadable audio, {len(kept)} trials remain; "
                         "an EER needs target and non-target trials")
    eer, threshold = voxceleb.verification_eer(table, kept)
    result = {"eer": float(eer), "threshold": float(threshold), "trials": len(kept),
              "left_out": len(trials) - len(kept), "trial_list": str(trials_path),
              "encoder": str(encoder.name)}
    if out is not None:
        out = pathlib.Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    return result


def main(argv):
    del argv
    logs.setup()
    r = run(FLAGS.checkpoint, FLAGS.trials, FLAGS.root, FLAGS.out or None)
    print(f"EER {100 * r['eer']:.2f}% at cosine threshold {r['threshold']:.4f} over {r['trials']} trials"
          + (f" ({r['left_out']} left out: unreadable audio)" if r["left_out"] else ""))


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_string("checkpoint", None, "emosup checkpoint or converted encoder folder")
    flags.DEFINE_string("trials", None, "trial list: `label enrol test` per line")
    flags.DEFINE_string("root", None, "folder the trial paths are relative to")
    flags.DEFINE_string("out", "", "optional JSON output")
    flags.mark_flags_as_required(["checkpoint", "trials", "root"])
    errors.run_cli("verify", main)
