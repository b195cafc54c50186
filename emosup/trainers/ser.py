"""SER fine-tuning: a head on any initialisation, trained on few labels, selected on dev.

  python -m emosup.train --config=configs/finetune.py:init=runs/mt --workdir=runs/ft

One trainer (`fit`) for both encoders: the ECAPA-TDNN with a SerHead (`ser_ecapa.run(config,
workdir)`) and the wav2vec2 arms (`ser_w2v2.run(config, workdir, corpus, arm)`). They
differ only in the model, the loss terms besides the SER loss, and how an utterance is scored;
rows, targets, optimiser, dev selection, checkpoints, calibration and the results follow here.

Roles of the rows (emosup.data.corpus): the labelled pool (`labelled` split of the synthetic
corpus, `train` rows of a CSV) gives `labels_per_class` utterances per class for training
(0 = all of them, the corpora's standard protocols);
dev is the CSV's `dev` rows or, without them, a seeded `dev_fraction` of the pool's speakers
(never the ones trained on); the test rows' speakers are unseen in fine-tuning.

Schedule: the encoder is frozen (learning rate 0; ECAPA also keeps its running BatchNorm
statistics) for `freeze_steps`, then trained with `lr_encoder`; the head always learns with
`lr_head`. Every `eval_every` steps dev is scored (macro-F1; mean CCC for a dimensional-only
head) and the best variables are kept; the test split is scored once with them. The history
records each evaluation with the training losses averaged over the steps since the previous
one. After every dev evaluation the state, the best variables, the history and the skipped
files are checkpointed in `workdir/checkpoints`: rerunning a killed run's command resumes it
and ends with the same results as an unbroken run.

Calibration (categorical heads): with the best-dev variables one temperature T is fitted on the
dev logits (`calibrate`); results.json reports it with the expected calibration error (ECE) on
dev and test before and after dividing the logits by T, and (ECAPA) model.json stores it with
the head (`ser.temperature`) for `emosup.predict`.
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from emosup import audio, checkpoint, config_lib, losses, metrics, parallel, run_config
from emosup.data import corpus as corpus_lib
from emosup.data import pipeline
from emosup.models import ecapa
from emosup.trainers import loop

DIMENSIONS = ("arousal", "valence", "dominance")
_TARGETS = ("categorical", "dimensional", "both")
# Fewer scored dev rows than this: no temperature is fitted (T = 1, the reason recorded).
MIN_CALIBRATION_ROWS = 10
# Per-row arrays in evaluation outputs, kept out of the history and results.json.
ROW_ARRAYS = ("probabilities", "logits", "labels")


def split_rows(config, corpus):
    """(train rows, dev rows, test rows, classes) following the roles in the module docstring."""
    m = corpus.manifest
    pool = [u for u in m.select(split=corpus.finetune_split) if u.emotion]
    test = [u for u in m.select(split=corpus.study_split) if u.emotion]
    if not pool:
        raise ValueError(f"{corpus.manifest_path}: no rows with an emotion in split {corpus.finetune_split!r}")
    if not test:
        raise ValueError(f"{corpus.manifest_path}: no rows with an emotion in split {corpus.study_split!r}")
    classes = list(config.ser.classes) or sorted({u.emotion for u in pool})
    for name, rows in (("fine-tuning", pool), ("test", test)):
        unknown = sorted({u.emotion for u in rows} - set(classes))
        if unknown:
            raise ValueError(f"{corpus.manifest_path}: {name} rows have emotions {unknown} that "
                             f"config.ser.classes {classes} does not know")
    rng = np.random.default_rng([config.seed, 0xF17E])
    dev = [u for u in m.select(split="dev") if u.emotion] if "dev" in corpus.splits else []
    if not dev:
        speakers = sorted({u.speaker for u in pool})
        n_dev = max(1, int(round(config.ser.dev_fraction * len(speakers))))
        if len(speakers) <= n_dev:
            raise ValueError(f"{corpus.manifest_path}: {len(speakers)} labelled speaker(s) cannot give "
                             "both fine-tuning and dev speakers; add a `dev` split or more speakers")
        dev_spk = set(rng.permutation(speakers)[:n_dev].tolist())
        dev = [u for u in pool if u.speaker in dev_spk]
        pool = [u for u in pool if u.speaker not in dev_spk]
    train_rows = []
    for c in classes:
        rows = [u for u in pool if u.emotion == c]
        if not rows:
            raise ValueError(f"{corpus.manifest_path}: the labelled set has no utterance of class {c!r}")
        per_class = int(config.ser.labels_per_class) or len(rows)  # 0 = every labelled row
        if len(rows) < per_class:
            logging.warning("finetune: class %r has %d labelled utterances (< labels_per_class=%d); using all",
                            c, len(rows), per_class)
        take = rng.permutation(len(rows))[:per_class]
        train_rows += [rows[i] for i in sorted(take)]
    return train_rows, dev, test, classes


def dimension_targets(rows, where):
    """[N, 3] arousal, valence, dominance of `rows`; a row without them fails, named by `where`."""
    values = [[getattr(u, d) for d in DIMENSIONS] for u in rows]
    missing = [u.id for u, v in zip(rows, values) if any(x is None for x in v)]
    if missing:
        raise ValueError(f"{where}: dimensional targets need arousal, valence and dominance on every "
                         f"row; {len(missing)} rows lack them (first: {missing[0]})")
    return np.array(values, np.float32)


def ser_loss(logits, dims, batch, class_weights):
    """Class-weighted cross-entropy of `logits` plus the CCC loss of `dims` (each when not None)."""
    loss = 0.0
    if logits is not None:
        loss += losses.weighted_cross_entropy(logits, batch["labels"], class_weights, batch["weights"])
    if dims is not None:
        loss += losses.ccc_loss(dims, batch["dims"], batch["weights"])
    return loss


def optimizer(config, labels, *, encoder, head, frozen=None):
    """Clipped AdamW over the parameter groups `labels` names: group `encoder` at learning rate 0
    for `ser.freeze_steps` steps, then a cosine decay from `lr_encoder`; group `head` a cosine
    decay from `lr_head` throughout; group `frozen` (when given) never updated."""
    freeze = int(config.ser.freeze_steps)
    enc_lr = optax.join_schedules(
        [optax.constant_schedule(0.0),
         optax.cosine_decay_schedule(config.optim.lr_encoder, max(config.total_steps - freeze, 1), 0.1)],
        [freeze])
    head_lr = optax.cosine_decay_schedule(config.optim.lr_head, config.total_steps, 0.1)
    transforms = {encoder: optax.adamw(enc_lr, weight_decay=config.optim.weight_decay),
                  head: optax.adamw(head_lr, weight_decay=config.optim.weight_decay)}
    if frozen:
        transforms[frozen] = optax.set_to_zero()
    return optax.chain(optax.clip_by_global_norm(config.optim.grad_clip), optax.multi_transform(transforms, labels))


def scores(logits, dims, valid, rows, classes):
    """Metrics of the `valid` rows: macro-F1, UAR, accuracy, ECE (`metrics.ECE_BINS` bins, of
    softmax(logits)) and the confusion matrix from `logits` [N, C] (or None), plus those rows'
    `logits` and `labels` as arrays (for `calibrate`; `ROW_ARRAYS`); CCC per dimension and their
    mean from `dims` [N, 3] (or None)."""
    valid = np.asarray(valid, bool)
    out = {"utterances": int(valid.sum()), "unreadable": int((~valid).sum())}
    if logits is not None:
        labels = np.array([classes.index(u.emotion) for u in rows])[valid]
        preds = np.asarray(jnp.argmax(logits, -1))[valid]
        cm = metrics.confusion_matrix(labels, preds, len(classes))
        m = metrics.classification_metrics(cm)
        out.update(macro_f1=m["macro_f1"], uar=m["uar"], accuracy=m["accuracy"], confusion=cm.tolist())
        row_logits = np.asarray(logits, np.float64)[valid]
        out.update(ece=metrics.expected_calibration_error(metrics.softmax(row_logits), labels),
                   logits=row_logits, labels=labels)
    if dims is not None:
        stats = metrics.CCCStats(len(DIMENSIONS))
        stats.update(np.asarray(dims)[valid], dimension_targets(rows, "evaluation")[valid])
        ccc = stats.value()
        out.update({f"ccc_{d}": float(c) for d, c in zip(DIMENSIONS, ccc)}, ccc_mean=float(np.mean(ccc)))
    return out


def selection_score(result, target):
    """The dev score variables are selected on: macro-F1, or mean CCC for a dimensional head."""
    return result["macro_f1"] if target != "dimensional" else result["ccc_mean"]


def restore(ckpt, state, skip_log):
    """(state, start step, history, best variables, best dev score) from the last checkpoint
    `ckpt` holds (its skipped files added to `skip_log`), or the fresh start (state, 0, [],
    None, -inf)."""
    restored, meta, extras = ckpt.restore(state, extra=("best",))
    if restored is None:
        return state, 0, [], None, -np.inf
    for path, reason in meta.get("skipped", {}).items():
        skip_log.add(path, reason)
    best_score = meta["best_score"] if meta["best_score"] is not None else -np.inf
    logging.info("finetune: resumed from %s at step %d", ckpt.directory, int(meta["step"]))
    return restored, int(meta["step"]), meta["history"], extras["best"], best_score


def _window_means(steps, done, window):
    """Each training metric averaged over the steps of `window` (per-step metric dicts, device
    values), which is then emptied; a NaN/Inf loss among them stops the run (NonFiniteError)."""
    host = jax.device_get(window)
    window.clear()
    steps.check_finite(done, sum(not np.isfinite(m["loss"]) for m in host))
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def calibrate(dev, test, target):
    """Temperature scaling of the categorical head, fitted on dev (never on test).

    dev, test: `scores` outputs of the selected variables (with `logits` and `labels`). Returns
    {"temperature": T, "fitted_on": "dev" or None, "reason" (only when T was not fitted),
    "ece_bins", "dev"/"test": {"ece", "ece_calibrated", "nll", "nll_calibrated"}}: T minimises
    the dev negative log-likelihood of softmax(logits / T) (`metrics.fit_temperature`); with
    fewer than MIN_CALIBRATION_ROWS scored dev rows T = 1 and "reason" says why. A
    dimensional-only head has no probabilities: {"temperature": None, "reason": …}.
    """
    if target == "dimensional":
        return {"temperature": None, "reason": "target='dimensional' has no class probabilities"}
    n_dev = 0 if dev is None else len(dev["labels"])
    out = {"temperature": 1.0, "fitted_on": None, "ece_bins": metrics.ECE_BINS}
    if n_dev < MIN_CALIBRATION_ROWS:
        out["reason"] = (f"dev has {n_dev} scored utterance(s), fewer than the "
                         f"{MIN_CALIBRATION_ROWS} a temperature is fitted on: T = 1 (uncalibrated)")
        logging.warning("finetune: %s", out["reason"])
    else:
        out.update(temperature=metrics.fit_temperature(dev["logits"], dev["labels"]), fitted_on="dev")
    t = out["temperature"]
    for name, split in (("dev", dev), ("test", test)):
        if split is None or not len(split["labels"]):
            continue
        lg, y = split["logits"], split["labels"]
        out[name] = {"ece": metrics.expected_calibration_error(metrics.softmax(lg), y),
                     "ece_calibrated": metrics.expected_calibration_error(metrics.softmax(lg, t), y),
                     "nll": metrics.negative_log_likelihood(lg, y),
                     "nll_calibrated": metrics.negative_log_likelihood(lg, y, t)}
    if out["fitted_on"]:
        logging.info("finetune: temperature T=%.4g fitted on dev; ECE %s", t, ", ".join(
            f"{k} {out[k]['ece']:.4f} → {out[k]['ece_calibrated']:.4f}" for k in ("dev", "test") if k in out))
    return out


def validate(config, name="config"):
    """Fails before any work, naming the first bad field (as `name`.field: the experiment's
    fine-tuning settings are `config.finetune`) and what it expects."""
    if config.ser.target not in _TARGETS:
        raise ValueError(f"{name}.ser.target={config.ser.target!r}: expected one of {_TARGETS}")
    config_lib.check_crop_seconds(f"{name}.data.crop_seconds", config.data.crop_seconds)
    if not config.init and config.model.preset not in ecapa.PRESETS:
        raise ValueError(f"{name}.model.preset={config.model.preset!r}: expected one of "
                         f"{sorted(ecapa.PRESETS)} (or an init= encoder)")
    for field in ("batch_size", "total_steps", "eval_every"):
        if not (isinstance(config[field], int) and config[field] > 0):
            raise ValueError(f"{name}.{field}={config[field]!r}: must be a positive integer")


_TEST_COLUMNS = (("macro_f1", "macro-F1"), ("uar", "UAR"), ("accuracy", "accuracy"), ("ece", "ECE"),
                 ("ccc_arousal", "CCC arousal"), ("ccc_valence", "CCC valence"),
                 ("ccc_dominance", "CCC dominance"), ("ccc_mean", "CCC mean"))


def format_test(result, workdir):
    """The test scores of a fine-tuning result as a small table, and where the files are."""
    test = result["test"]
    cols = [(k, name) for k, name in _TEST_COLUMNS if isinstance(test.get(k), (int, float))]
    workdir = pathlib.Path(workdir)
    lines = [f"SER fine-tuning — test: {test.get('utterances', '?')} utterances of speakers unseen in "
             f"fine-tuning; weights of the best dev step ({result['best_step']})",
             "| " + " | ".join(name for _, name in cols) + " |", "|" + "---:|" * len(cols),
             "| " + " | ".join(f"{test[k]:.3f}" for k, _ in cols) + " |",
             f"wrote {workdir / 'results.json'} (scores, history, config: {workdir / 'config.json'}); "
             f"the model for `python -m emosup.predict --checkpoint={workdir}`; "
             f"TensorBoard: {workdir / 'tensorboard'}"]
    return "\n".join(lines)


def fit(model, config, workdir, corpus=None):
    """Fine-tunes `model` (ser_ecapa.EcapaSer or ser_w2v2.Wav2Vec2Ser, built and validated by
    their `run`) and evaluates it; writes results.json into workdir (the ECAPA encoder also
    confusion.png and the model folder for `emosup.predict`)."""
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    # A resume must continue the same run: stop now if the saved config differs.
    run_config.prepare(workdir, config, resuming=run_config.holds_state(workdir, ("results.json",)),
                       what=model.what)
    corpus = corpus or corpus_lib.open_corpus(config.data, workdir)
    train_rows, dev_rows, test_rows, classes = split_rows(config, corpus)
    target = config.ser.target
    n_classes = len(classes) if target in ("categorical", "both") else 0
    n_dims = len(DIMENSIONS) if target in ("dimensional", "both") else 0
    logging.info("finetune: %d training utterances (%s per class), %d dev, %d test; classes %s",
                 len(train_rows), config.ser.labels_per_class, len(dev_rows), len(test_rows), classes)

    # --- Model, optimiser, step. ---
    mesh = parallel.make_mesh()
    local_batch = parallel.local_batch_size(config.batch_size, mesh)
    crop = int(round(config.data.crop_seconds * audio.SAMPLE_RATE))
    skip_log = pipeline.SkipLog()
    model.build(corpus, classes, n_classes, n_dims, crop, jax.random.key(config.seed), skip_log)
    state = parallel.replicate(model.initial_state(), mesh)
    counts = np.bincount([classes.index(u.emotion) for u in train_rows], minlength=len(classes))
    class_w = jnp.asarray(losses.class_weights_from_counts(counts)) if (
        n_classes and config.ser.class_weights) else None
    train_step = model.train_step(class_w, mesh)

    # --- Data: labelled crops (and the arm's pair groups), pure functions of (seed, step). ---
    paths = [u.path for u in train_rows]
    labels = np.array([classes.index(u.emotion) for u in train_rows], np.int32)
    min_samples, too_short = model.shortest_input()
    lengths, _ = pipeline.scan_utterances(paths, skip_log, min_samples=min_samples, too_short=too_short)
    dims_all = dimension_targets(train_rows, corpus.manifest_path) if n_dims else None
    sampler = pipeline.CropSampler(lengths, crop, config.batch_size, config.seed)

    # --- Resume: the last dev evaluation's checkpoint (state, best variables, history, skipped). ---
    ckpt = checkpoint.Checkpointer(workdir, keep=2)
    state, start_step, history, best, best_score = restore(ckpt, state, skip_log)
    common = dict(crop_samples=crop, global_batch=config.batch_size, local_batch=local_batch,
                  process_index=jax.process_index(), seed=config.seed, start_step=start_step,
                  num_steps=config.total_steps, skip_log=skip_log)
    batches, pairs = iter(()), None
    if start_step < config.total_steps:
        batches = pipeline.crop_batches(paths, labels, lengths, **common)
        pairs = model.pair_batches(common)

    # --- Loop with dev selection; a checkpoint after every dev evaluation. ---
    steps = loop.Steps(workdir, start_step, config.total_steps, batch_size=config.batch_size,
                       checkpoint_dir=ckpt.directory, skip_log=skip_log, name=model.log_name)
    window, best_dev = [], None  # best_dev: the dev scores of `best` when this run selected it
    try:
        for step in steps:
            batch = next(batches)
            if dims_all is not None:
                first = jax.process_index() * local_batch
                batch["dims"] = dims_all[[sampler(step, first + r)[0] for r in range(local_batch)]]
            if pairs is not None:
                batch.update(next(pairs))
            state, m = train_step(step, state, parallel.to_global(batch, mesh))
            window.append(m)
            done = step + 1
            steps.ran(done, m)
            if done % config.eval_every == 0 or done == config.total_steps:
                m = _window_means(steps, done, window)
                host = model.host_variables(state)
                dev = model.evaluate(host, dev_rows)
                score = selection_score(dev, target)
                history.append({"step": done, **m, "dev": {
                    k: v for k, v in dev.items() if k not in ROW_ARRAYS + ("confusion",)}})
                steps.log(done, f"loss {m['loss']:.4f}  dev {'macro-F1' if target != 'dimensional' else 'CCC'} "
                                f"{score:.4f}{'  *best*' if score > best_score else ''}",
                          {**{f"train/{k}": v for k, v in m.items()}, **{f"dev/{k}": v for k, v in dev.items()}})
                if score > best_score or best is None:
                    best, best_score, best_dev = host, score, dev
                loop.save_checkpoint(ckpt, done, state, {
                    "step": done, "history": history, "skipped": skip_log.as_dict(),
                    "best_score": float(best_score) if np.isfinite(best_score) else None}, extra={"best": best})
    finally:
        ckpt.close()

    # --- Test with the dev-selected variables; calibration on dev. ---
    test = model.evaluate(best, test_rows)
    steps.scalars(config.total_steps, {f"test/{k}": v for k, v in test.items()})
    if n_classes and best_dev is None:  # resumed with `best` from a checkpoint: score dev again
        best_dev = model.evaluate(best, dev_rows)
    calibration = calibrate(best_dev, test, target)
    best_step = max(history, key=lambda h: selection_score(h["dev"], target))["step"]
    result = {"classes": classes, "target": target, **model.start, "seed": config.seed,
              "labels_per_class": config.ser.labels_per_class, "train_utterances": len(train_rows),
              "dev_utterances": len(dev_rows), "best_step": best_step, "dev_score": best_score,
              "test": {k: v for k, v in test.items() if k not in ROW_ARRAYS}, "history": history,
              "temperature": calibration["temperature"], "calibration": calibration,
              "skipped": skip_log.as_dict(), **model.results_extra}
    result["config"] = run_config.CONFIG_JSON
    loop.write_results(workdir / "results.json", result)
    if jax.process_index() == 0:
        model.export(workdir, best, test, calibration)
    return result
