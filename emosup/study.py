"""The clustering study (PAPER.md Claim 1): do speaker embeddings cluster by emotion within
each speaker?

  python -m emosup.study --checkpoint=DIR --manifest=CSV --workdir=OUT [--split=test] [--k=4]

Embeds the utterances of `split` (speakers the encoder was not trained on), clusters each
speaker's L2-normalised embeddings with k-means (k = that speaker's number of emotions unless
given), and scores agreement with the emotion labels against chance, one global k-means, and
k-means on log-mel statistics (emosup.study_report). The other splits with emotion labels are
studied too and reported under `other_splits`.
"""
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import flags, logging

from emosup import errors, logs, study_report
from emosup.data import manifest as manifest_lib
from emosup.data import pipeline
from emosup.embed import Encoder, embed_paths


def study_rows(manifest, split):
    """Rows of `split` with an emotion label and a known speaker; (rows, number left out)."""
    from emosup.data.corpus import speaker_known

    rows = [u for u in manifest.select(split=split)]
    labelled = [u for u in rows if u.emotion and speaker_known(u)]
    return labelled, len(rows) - len(labelled)


def run(encoder_dir, manifest, workdir, *, split="test", k=None, seed=0, corpus="",
        other_splits=True, encoder=None):
    """Runs the study; writes study.json, study.md and PNGs into workdir; returns the result."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    encoder = encoder or Encoder(encoder_dir)
    splits = [split] + ([s for s in sorted({u.split for u in manifest}) if s != split] if other_splits else [])
    results, main_arrays = {}, None
    for s in splits:
        rows, unlabelled = study_rows(manifest, s)
        if not rows:
            if s == split:
                raise ValueError(f"{manifest.source}: split {s!r} has no rows with an emotion label to study")
            continue
        skip_log = pipeline.SkipLog()
        logging.info("study: embedding %d utterances of split %r", len(rows), s)
        emb, stats, valid = embed_paths(encoder, [u.path for u in rows], skip_log=skip_log)
        speakers = np.array([u.speaker for u in rows])[valid]
        emotions = np.array([u.emotion for u in rows])[valid]
        res = study_report.run_study(emb[valid], speakers, emotions, stats[valid], k=k, seed=seed,
                                     encoder=encoder.name, corpus=corpus or manifest.source, split_name=s,
                                     pair_rules=study_report.PAIR_RULES if s == split else ())
        res["unreadable_utterances"] = skip_log.as_dict()
        res["rows_without_emotion"] = unlabelled
        results[s] = res
        if s == split:
            main_arrays = (emb[valid], speakers, emotions)
    result = results.pop(split)
    result["split"] = split
    if (pathlib.Path(workdir) / "config.json").is_file():
        result["config"] = "config.json"  # the settings of the run that wrote this study
    result["other_splits"] = {s: {"speakers": r["speakers"], "utterances": r["utterances"],
                                  "methods": r["methods"]} for s, r in results.items()}
    study_report.write_study(result, workdir, *main_arrays)
    return result


def main(argv):
    del argv
    logs.setup()
    from emosup import run_config

    run_config.prepare(FLAGS.workdir, {"stage": "study", "checkpoint": FLAGS.checkpoint, "manifest": FLAGS.manifest,
                                       "split": FLAGS.split, "k": FLAGS.k, "seed": FLAGS.seed},
                       resuming=False, what="study")
    m = manifest_lib.read_manifest(FLAGS.manifest, allowed_splits=None)
    result = run(FLAGS.checkpoint, m, FLAGS.workdir, split=FLAGS.split, k=FLAGS.k, seed=FLAGS.seed)
    print(study_report.format_table(result))
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
