"""The main job: `python -m emosup.experiment --config=configs/demo.py --workdir=DIR`.

1. the corpus: the built-in synthetic corpus (generated once, cached) or the user's CSV
   (`--config=configs/demo.py:manifest=PATH`);
2. a speaker encoder trained with AAM-softmax on the `train_split` speakers, emotions unused
   (DIR/speaker; resumes if killed) -- or the one `speaker_encoder=DIR2` names (e.g. SpeechBrain's
   VoxCeleb ECAPA converted by `python -m emosup.convert speechbrain`), with no training;
3. the clustering study on the `study_split` speakers, which the encoder never saw
   (DIR/study.json, DIR/study.md, DIR/study_*.png); its table is printed;
4. the comparison (emosup.comparison): pretraining arms × seeds, each fine-tuned for SER on
   few labels and tested on unseen speakers (DIR/results.json, DIR/results.md); its table
   is printed. `config.arms.names = ()` stops after the study.

Corpus configs (configs/iemocap.py, ...) add a protocol: `config.protocol.folds` runs all of
this once per fold (DIR/fold<k>; e.g. IEMOCAP's leave-one-session-out) and writes the fold
average to DIR/results.json; `config.verification.trials` scores the speaker encoder on a
trial list (EER, DIR/verification.json). A corpus without emotion labels stops after that.
"""
import copy
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags, logging
from ml_collections import config_flags

from emosup import errors, logs


def validate(config):
    """Fails before any work (corpus, training), naming the first bad field: the stage, the
    speaker encoder's training config and every arm's (comparison.validate)."""
    stage = config.get("stage", "experiment")
    if stage != "experiment":
        raise ValueError(f"config.stage={stage!r}: `python -m emosup.experiment` runs stage=experiment "
                         f"(the default); run stage={stage} with `python -m emosup.train`")
    from emosup import checkpoint, comparison, config_lib
    from emosup.trainers import pretrain

    if config.get("speaker_encoder"):
        try:
            checkpoint.read_model_json(config.speaker_encoder)
        except checkpoint.CheckpointError as e:
            raise ValueError(f"config.speaker_encoder: {e}") from None
    else:
        pretrain.validate(config_lib.speaker_stage(config))
    comparison.validate(config)


def run(config, workdir):
    """The whole job; with `config.protocol.folds`, once per fold, then averaged over folds."""
    with errors.config_errors():
        validate(config)
    workdir = pathlib.Path(workdir).absolute()
    if not config.protocol.folds:
        return _run_one(config, workdir)
    _prepare(workdir, config)
    from emosup import comparison

    option = config.protocol.fold_option
    if not option:
        raise ValueError("config.protocol.folds is set but config.protocol.fold_option is empty")
    per_fold = {}
    for fold in config.protocol.folds:
        c = copy.deepcopy(config)
        c.unlock()
        c.data.options[option] = fold
        c.protocol.folds = ()
        c.lock()
        print(f"\n=== fold {fold} ({option}={fold}) ===")
        per_fold[str(fold)] = _run_one(c, workdir / f"fold{fold}")
    results = [r[1] for r in per_fold.values() if isinstance(r, tuple)]
    if not results:
        return per_fold
    combined = comparison.combine_folds(results, list(per_fold))
    comparison.write(combined, workdir)
    print(f"\nSER comparison — {combined['corpus']}: averaged over folds {combined['folds']} "
          f"({option}), mean ± std over seeds {combined['seeds']}")
    print(comparison.format_table(combined))
    print(f"\nwrote {workdir / 'results.json'}")
    return per_fold, combined


def _prepare(workdir, config):
    """config.json; a rerun may add arms and seeds, but not change what the arms share."""
    from emosup import run_config

    run_config.prepare(workdir, config, what="experiment", ignore=run_config.EXPERIMENT_MAY_DIFFER,
                       resuming=run_config.holds_state(workdir, ("study.json", "results.json", "speaker")))


def _run_one(config, workdir):
    # Imported here, not at the top: the synthetic corpus's worker processes re-import this
    # module as their __main__, and should not pay for JAX and TensorFlow.
    from emosup import comparison, config_lib
    from emosup.trainers import pretrain
    from emosup.study import report as study_report
    from emosup.study import run as study_run
    from emosup.data import corpus as corpus_lib

    workdir.mkdir(parents=True, exist_ok=True)
    _prepare(workdir, config)
    corpus = corpus_lib.open_corpus(config.data, workdir)
    logging.info("experiment: corpus %s (%s), %d utterances", corpus.name, corpus.manifest_path,
                 len(corpus.manifest))
    if config.get("speaker_encoder"):
        speaker_dir = pathlib.Path(config.speaker_encoder).absolute()
        logging.info("experiment: speaker encoder %s given; no speaker training", speaker_dir)
    else:
        speaker_dir = workdir / "speaker"
        pretrain.run(config_lib.speaker_stage(config), speaker_dir, corpus=corpus)
    result = None
    if config.verification.trials:
        from emosup import verify

        v = verify.run(speaker_dir, config.verification.trials, config.data.root,
                       out=workdir / "verification.json")
        print(f"\nSpeaker verification — {pathlib.Path(config.verification.trials).name}: "
              f"EER {100 * v['eer']:.2f}% over {v['trials']} trials")
        result = v
    if not study_run.study_rows(corpus.manifest, corpus.study_split)[0]:
        logging.info("experiment: split %r has no emotion labels; no study and no SER comparison",
                     corpus.study_split)
        return result
    result = study_run.run(speaker_dir, corpus.manifest, workdir, split=corpus.study_split,
                           k=config.study.k or None, seed=config.study.seed, corpus=corpus.name)
    print(f"\nClustering study — {corpus.name}, split {corpus.study_split!r} (speakers unseen in training)")
    print(study_report.format_table(result))
    print(f"\nwrote {workdir / 'study.json'}")
    if not config.arms.names:
        return result
    results = comparison.run(config, workdir, corpus, speaker_dir)
    print(f"\nSER comparison — {corpus.name}: {results['labels_per_class']} labels per class, "
          f"test speakers unseen, mean ± std over seeds {results['seeds']}")
    print(comparison.format_table(results))
    if results.get("wav2vec2"):
        print(f"wav2vec2 arms: {results['wav2vec2']}")
    print(f"\nwrote {workdir / 'results.json'}")
    return result, results


def main(argv):
    del argv
    logs.setup()
    run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    config_flags.DEFINE_config_file("config", None, "Config file (configs/demo.py).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Where everything is written.")
    flags.mark_flags_as_required(["config", "workdir"])
    errors.run_cli("experiment", main)
