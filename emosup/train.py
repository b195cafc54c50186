"""The trainer: `python -m emosup.train --config=configs/pretrain.py:objective=X --workdir=DIR`.

One linear, sectioned `run(config, workdir)`: corpus → mesh → model/optimiser → restore →
pair table → data → jitted data-parallel step → loop (log, TensorBoard, checkpoint).
Objectives (emosup.tasks): `speaker` (AAM-softmax over the speakers of `train_split`),
`contrastive`, `multitask`, `adversarial` (intra-speaker pairs from the pair table). Emotion
labels are never read. A killed run restarted with the same command resumes from its last
checkpoint and ends with the same parameters as an unbroken run: batches are a pure
function of (seed, step, pair-table version) and the pair tables are saved in the checkpoint.
With `pairs.refresh_every = R > 0`, the table is rebuilt in a background thread from the
encoder being trained at steps R, 2R, ... and version v is used from step (v+1)·R, so the
build has R steps to hide behind and the result does not depend on its timing.
"""
import dataclasses
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags, logging
from flax.training import train_state
from ml_collections import config_flags

from emosup import (audio, checkpoint, config_lib, distributed, errors, logs, optim, parallel, run_config,
                    tasks)
from emosup.data import corpus as corpus_lib
from emosup.data import manifest as manifest_lib
from emosup.data import pairs as pairs_lib
from emosup.data import pipeline
from emosup.models import ecapa
from emosup.models.speaker import build_encoder

class NonFiniteError(FloatingPointError):
    pass


class TrainState(train_state.TrainState):
    batch_stats: dict
    nonfinite: jnp.ndarray  # count of steps whose loss or gradients were NaN/Inf (update skipped)


def model_config_from(config):
    kwargs = dict(ecapa.PRESETS[config.model.preset])
    kwargs.update(dict(config.model.get("overrides", {})))
    return {"encoder": "ecapa", "ecapa": kwargs, "features": {"n_mels": 80, "mean_norm": "sentence"},
            "preset": config.model.preset}


def _model_config_of_init(directory, init_config):
    """The model config of a run that starts from the encoder in `directory`: its ECAPA
    architecture and front end (config.model.preset does not apply)."""
    if init_config.get("encoder") != "ecapa":
        raise ValueError(f"config.init={str(directory)!r} holds a {init_config.get('encoder')!r} encoder; "
                         "pretraining starts from an ECAPA-TDNN (an emosup ECAPA folder or a converted "
                         "SpeechBrain ECAPA)")
    features = dict(init_config.get("features", {}))
    if (features.get("n_mels", 80), features.get("mean_norm", "sentence")) != (80, "sentence"):
        raise ValueError(f"config.init={str(directory)!r}: its front end {features} is not the 80-mel, "
                         "sentence-mean-normalised Fbank that training computes")
    return {"encoder": "ecapa", "ecapa": dict(init_config["ecapa"]), "features": features,
            "preset": init_config.get("preset", "from init")}


def create_state(objective, encoder, loss_cfg, num_speakers, tx, key, feat_shape, mesh, init_encoder=None):
    """Initial train state (encoder + the objective's heads + optimiser), replicated over `mesh`.
    `init_encoder` ({"params", "batch_stats"} of the same architecture) replaces the random
    encoder; the heads stay random."""
    variables = tasks.init_variables(objective, encoder, loss_cfg, num_speakers, key, feat_shape)
    if init_encoder is not None:
        for part in ("params", "batch_stats"):
            fresh, given = variables[part]["encoder"], init_encoder.get(part, {})
            want = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), fresh)
            got = jax.tree.map(lambda a: (tuple(np.shape(a)), str(np.asarray(a).dtype)), given)
            if want != got:
                raise checkpoint.CheckpointError(
                    f"the init encoder's {part} do not fit the model built from its model.json "
                    f"(a folder whose variables and model.json disagree)")
            variables[part]["encoder"] = jax.tree.map(jnp.asarray, given)
    state = TrainState.create(apply_fn=encoder.apply, params=variables["params"], tx=tx,
                              batch_stats=variables["batch_stats"], nonfinite=jnp.zeros((), jnp.int32))
    return parallel.replicate(state, mesh)


def jit_train_step(objective, encoder, loss_cfg, mesh):
    """The objective's train step jitted for `mesh`: state replicated (and donated), batch sharded."""
    step = tasks.make_train_step(tasks.make_loss_fn(objective, encoder, loss_cfg))
    return jax.jit(step, donate_argnums=0,
                   in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                   out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)))


def _table_from_embeddings(config, emb, valid, speaker_labels, lengths, version):
    """The pair table of one version from utterance embeddings (rows of unreadable or empty
    files take no part), with indices into the full utterance list."""
    keep = np.flatnonzero(valid & (np.asarray(lengths) > 0))
    table = pairs_lib.build_pair_table(
        emb[keep], np.asarray(speaker_labels)[keep], k=config.pairs.k or None,
        k_range=tuple(range(2, config.pairs.max_k + 1)), k_rule=config.pairs.k_rule,
        cluster_size=config.pairs.cluster_size, num_negatives=config.pairs.num_negatives,
        cross_speaker_negatives=config.pairs.cross_speaker_negatives, seed=config.seed, version=version)
    clusters = np.full(len(lengths), -1, np.int32)
    clusters[keep] = table.clusters
    table = dataclasses.replace(
        table, anchors=keep[table.anchors].astype(np.int32), positives=keep[table.positives].astype(np.int32),
        negatives=keep[table.negatives].astype(np.int32), clusters=clusters,
        speakers=np.asarray(speaker_labels, np.int32))
    logging.info("pairs v%d: %s", version, json.dumps(table.stats, default=str)[:600])
    return table


def _report_pair_quality(tables, rows, speakers, workdir):
    """Where the training rows carry emotion labels (they are never used for training): how often
    each table's positives share their anchor's emotion and its negatives do not, against
    chance (data.pairs.pair_quality); logged and written to DIR/pairs.json. Returns the first
    table's figures, or None without labels."""
    emotions = [u.emotion for u in rows]
    if not any(emotions):
        return None
    out = {}
    for t in tables:
        q = pairs_lib.pair_quality(t, emotions, speaker_names=speakers)
        if q is None:
            continue
        q["k_rule"], q["k_counts"] = t.stats.get("k_rule"), t.stats.get("k_counts")
        out[str(t.version)] = q
        logging.info("pairs v%d quality (emotion labels, measured only): positive shares the anchor's "
                     "emotion %.3f (chance %.3f), negative has another emotion %s (chance %.3f); "
                     "%d anchors, k rule %s", t.version, q["positive_same_emotion"],
                     q["chance_positive_same_emotion"],
                     "n/a" if q["negative_other_emotion"] is None else f"{q['negative_other_emotion']:.3f}",
                     q["chance_negative_other_emotion"], q["anchors"], q["k_rule"])
    if not out:
        return None
    if jax.process_index() == 0:
        (pathlib.Path(workdir) / "pairs.json").write_text(json.dumps(out, indent=2))
    return next(iter(out.values()))


def build_pair_table(config, paths, speaker_labels, lengths, skip_log, embedding_cache=None):
    """The initial pair table (version 0) from the clusters of `config.pairs.encoder`'s embeddings.

    `embedding_cache` (a dict) lets several runs over the same utterances and pair encoder
    (the arms and seeds of an experiment) embed them once.
    """
    from emosup import embed  # the pair encoder's front end and bucketing

    if not config.pairs.encoder:
        raise ValueError(
            f"config.pairs.encoder is empty: objective {config.objective!r} draws its pairs from the "
            "intra-speaker clusters of a speaker encoder; give an emosup checkpoint or a folder "
            "written by `python -m emosup.convert`")
    key = (str(pathlib.Path(config.pairs.encoder).absolute()), tuple(paths))
    if embedding_cache is not None and key in embedding_cache:
        emb, valid = embedding_cache[key]
    else:
        enc = embed.Encoder(config.pairs.encoder)
        logging.info("pairs: embedding %d utterances with %s", len(paths), enc.name)
        emb, _, valid = embed.embed_paths(enc, paths, skip_log=skip_log)
        if embedding_cache is not None:
            embedding_cache[key] = (emb, valid)
    return _table_from_embeddings(config, emb, valid, speaker_labels, lengths, version=0)


def refresh_builder(config, model_config, paths, speaker_labels, lengths, skip_log, mesh):
    """`build_fn(version, snapshot)` for the PairService: embeds every training utterance with
    the encoder being trained (`snapshot` = its host-side variables at step version·R) and
    clusters them again. Runs in the service's thread; one jitted embedder serves every build."""
    from emosup import embed

    embedder = {}

    def build(version, snapshot):
        if "enc" not in embedder:
            embedder["enc"] = embed.Encoder(model_config=model_config, variables=snapshot,
                                            name="the encoder being trained")
        enc = embedder["enc"]
        enc.variables = snapshot
        t0 = time.time()
        emb, _, valid = embed.embed_paths(enc, paths, mesh=mesh, skip_log=skip_log, progress=False)
        table = _table_from_embeddings(config, emb, valid, speaker_labels, lengths, version)
        logging.info("pairs: built table v%d from the step-%d encoder in %.1fs", version,
                     version * config.pairs.refresh_every, time.time() - t0)
        return table

    return build


def _encoder_snapshot(state):
    """Host copy of the encoder's variables (taken before the next step donates the state)."""
    return jax.device_get({"params": state.params["encoder"],
                           "batch_stats": state.batch_stats.get("encoder", {})})


def _tables_to_arrays(tables):
    return {f"v{t.version}": t.to_arrays() for t in tables}


def _tables_from_arrays(saved):
    """Pair tables of a checkpoint, oldest first; also reads the single-table layout."""
    if "anchors" in saved:
        return [pairs_lib.PairTable.from_arrays(saved)]
    tables = [pairs_lib.PairTable.from_arrays(saved[k]) for k in saved]
    return sorted(tables, key=lambda t: t.version)


_LOGGED = ("loss", "contrastive_loss", "contrastive_accuracy", "speaker_loss", "speaker_accuracy",
           "grad_norm")


def _format_eta(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def validate(config):
    """Fails before any work, naming the first bad field."""
    if config.objective not in tasks.OBJECTIVES:
        raise ValueError(f"config.objective={config.objective!r}: expected one of {tasks.OBJECTIVES}")
    if not (isinstance(config.pairs.refresh_every, int) and config.pairs.refresh_every >= 0):
        raise ValueError(f"config.pairs.refresh_every={config.pairs.refresh_every!r}: must be an "
                         "integer >= 0 (0 = pairs fixed from config.pairs.encoder)")
    if config.model.preset not in ecapa.PRESETS:
        raise ValueError(f"config.model.preset={config.model.preset!r}: expected one of {sorted(ecapa.PRESETS)}")
    if not config.pairs.k and config.pairs.k_rule not in pairs_lib.K_RULES:
        raise ValueError(f"config.pairs.k_rule={config.pairs.k_rule!r}: expected one of {pairs_lib.K_RULES} "
                         "(or a fixed config.pairs.k > 0)")
    if not config.pairs.k and config.pairs.k_rule == "size" and not (
            isinstance(config.pairs.cluster_size, int) and config.pairs.cluster_size >= 2):
        raise ValueError(f"config.pairs.cluster_size={config.pairs.cluster_size!r}: must be an integer >= 2")
    if config.get("init"):
        _model_config_of_init(config.init, checkpoint.read_model_json(config.init))
    optim.make_schedule(config.optim, max(int(config.total_steps), 1))
    for field in ("batch_size", "total_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        if int(config[field]) <= 0:
            raise ValueError(f"config.{field}={config[field]!r}: must be a positive integer")
    config_lib.check_crop_seconds("config.data.crop_seconds", config.data.crop_seconds)


def run(config, workdir, corpus=None, embedding_cache=None):
    """Trains the configured objective; returns a dict with the final metrics.

    `corpus` (a data.corpus.Corpus) saves re-reading the manifest when the caller has it;
    `embedding_cache` is passed to `build_pair_table`.
    """
    with errors.config_errors():
        validate(config)
    # Every host must run the same job; a difference would silently desynchronise them.
    distributed.check_same("the config", config.to_dict())
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    # A resume must continue the same run: stop now if the saved config differs.
    run_config.prepare(workdir, config, resuming=run_config.holds_state(workdir, ("train_results.json",)),
                       ignore=run_config.EXPERIMENT_ONLY, what=f"{config.objective} training")

    # --- Corpus: training rows, speaker labels (emotion labels are never read here). ---
    corpus = corpus or corpus_lib.open_corpus(config.data, workdir)
    train_rows = corpus.manifest.select(split=corpus.train_split)
    if len(train_rows) == 0:
        raise ValueError(f"{corpus.manifest_path}: no rows in split {corpus.train_split!r}")
    unknown = [u for u in train_rows if not corpus_lib.speaker_known(u)]
    if unknown:  # stand-in speakers (MSP-Podcast `Unknown`) would be false speaker labels
        train_rows = manifest_lib.Manifest([u for u in train_rows if corpus_lib.speaker_known(u)],
                                           train_rows.source)
        logging.info("corpus %s: %d rows of unknown speakers left out of training", corpus.name, len(unknown))
    speakers = train_rows.speakers()
    if tasks.uses_speakers(config.objective) and len(speakers) < 2:
        raise ValueError(f"{corpus.manifest_path}: speaker training needs ≥ 2 speakers in split "
                         f"{corpus.train_split!r}, found {len(speakers)}")
    spk_index = {s: i for i, s in enumerate(speakers)}
    paths = [u.path for u in train_rows]
    labels = np.array([spk_index[u.speaker] for u in train_rows], np.int32)
    skip_log = pipeline.SkipLog()
    from emosup.embed import shortest_input

    model_config, init_vars = model_config_from(config), None
    if config.get("init"):
        init_config, init_vars = checkpoint.load_encoder_variables(config.init)
        model_config = _model_config_of_init(config.init, init_config)
        model_config["init"] = checkpoint.describe_encoder(config.init, init_config, init_vars)
        logging.info("encoder starts from %s (%s, weights %s)", config.init, init_config.get("source"),
                     model_config["init"]["params_fingerprint"])
    min_samples, too_short = shortest_input(build_encoder(model_config))
    lengths, _ = pipeline.scan_utterances(paths, skip_log, min_samples=min_samples, too_short=too_short)
    logging.info("corpus %s: %d utterances, %d speakers in %r (%d unreadable or too short, skipped)",
                 corpus.name, len(paths), len(speakers), corpus.train_split, len(skip_log))

    # --- Mesh, model, optimiser. ---
    mesh = parallel.make_mesh()
    local_batch = parallel.local_batch_size(config.batch_size, mesh)
    crop = int(round(config.data.crop_seconds * audio.SAMPLE_RATE))
    model_config.update(source=f"emosup:{config.objective}", corpus=corpus.name, speakers=speakers,
                        objective=config.objective)
    encoder = build_encoder(model_config)
    n_frames = 1 + crop // audio.HOP
    root = jax.random.key(config.seed)
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
    state = create_state(config.objective, encoder, config.loss, len(speakers), tx,
                         jax.random.fold_in(root, 0), (1, n_frames, model_config["features"]["n_mels"]), mesh,
                         init_encoder=init_vars)
    del init_vars
    n_params = sum(x.size for x in jax.tree.leaves(state.params["encoder"]))
    logging.info("encoder %s: %.2fM parameters; %d devices, global batch %d (%d per process)",
                 model_config["preset"], n_params / 1e6, mesh.devices.size, config.batch_size, local_batch)

    # --- Restore. ---
    ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
    checkpoint.write_model_json(workdir, model_config)
    restored, meta, extras = ckpt.restore(state, extra=("pairs",) if tasks.uses_pairs(config.objective) else ())
    saved_pairs = extras.get("pairs")
    start_step, tables = 0, None
    if restored is not None:
        state, start_step = restored, int(meta["step"])
        if saved_pairs is not None:
            tables = _tables_from_arrays(saved_pairs)
        for path, reason in meta.get("skipped", {}).items():
            skip_log.add(path, reason)
        logging.info("resumed from %s at step %d", ckpt.directory, start_step)

    if start_step >= config.total_steps:
        logging.info("already trained for %d steps", start_step)
        ckpt.close()
        done = {"step": start_step, "skipped": skip_log.as_dict(), "workdir": str(workdir)}
        if model_config.get("init"):
            done["init"] = model_config["init"]
        if (workdir / "pairs.json").is_file():
            done["pair_quality"] = next(iter(json.loads((workdir / "pairs.json").read_text()).values()))
        return done

    # --- Pair tables (pair objectives): version 0 from the pair encoder, or those restored;
    # with refresh_every = R > 0 the service rebuilds them from the encoder being trained. ---
    service, pair_quality = None, None
    refresh = int(config.pairs.refresh_every) if tasks.uses_pairs(config.objective) else 0
    if tasks.uses_pairs(config.objective):
        if tables is None:
            tables = [build_pair_table(config, paths, labels, lengths, skip_log, embedding_cache)]
        # Rebuilt tables are computed by every host alone on its own devices: the service's
        # thread must not run collectives that could interleave with the train step's.
        build_fn = refresh_builder(config, model_config, paths, labels, lengths, skip_log,
                                   parallel.local_mesh() if jax.process_count() > 1 else mesh) if refresh else None
        service = pairs_lib.PairService(build_fn, refresh_every=refresh, initial=tables[0])
        for t in tables[1:]:
            service.publish(t)
        for t in tables:
            logging.info("pairs: table v%d, %d anchors, %d negatives each (fingerprint %s)",
                         t.version, len(t), t.num_negatives, t.fingerprint()[:12])
        distributed.check_same("the pair tables (versions and contents) at step %d" % start_step,
                               [start_step] + [t.fingerprint() for t in tables])
        pair_quality = _report_pair_quality(tables, train_rows, speakers, workdir)
        if refresh:
            logging.info("pairs: rebuilt every %d steps from the encoder being trained, in the "
                         "background; table v is used from step (v+1)·%d", refresh, refresh)

    # --- Data and step. A pair table is fixed within a segment of R steps (the whole run when
    # tables are not refreshed); each segment reads its own tf.data pipeline. ---
    common = dict(crop_samples=crop, global_batch=config.batch_size, local_batch=local_batch,
                  process_index=jax.process_index(), seed=config.seed, skip_log=skip_log)

    def batches_from(step):
        """(iterator, end step) of the segment starting at `step`."""
        if service is None:
            end = config.total_steps
            return pipeline.crop_batches(paths, labels, lengths, start_step=step, num_steps=end, **common), end
        end = min((step // refresh + 1) * refresh, config.total_steps) if refresh else config.total_steps
        table = service.table_for_step(step)
        if refresh:  # each host rebuilt it alone: they must agree before reading rows of it
            distributed.check_same(f"pair table v{table.version}", table.fingerprint())
        return pipeline.pair_batches(paths, labels, lengths, table, start_step=step, num_steps=end,
                                     **common), end

    step_fn = jit_train_step(config.objective, encoder, config.loss, mesh)
    writer = logs.Summaries(workdir)

    def save(step):
        meta = {"step": step, "config": config.to_dict(), "skipped": skip_log.as_dict(),
                "objective": config.objective}
        ckpt.save(step, state, json.loads(json.dumps(meta, default=str)),
                  extra=None if service is None else {
                      "pairs": _tables_to_arrays(service.tables_for_checkpoint(step))})

    # --- Loop. An exception (a crash, Ctrl-C) still lets in-flight checkpoint saves finish. ---
    try:
        seen_nonfinite = int(jax.device_get(state.nonfinite))
        window_start, t_window = start_step, time.time()
        history, last, sec_per_step = [], {}, float("nan")
        segment_end = start_step
        for step in range(start_step, config.total_steps):
            if step == segment_end:
                batches, segment_end = batches_from(step)
            batch = parallel.to_global(next(batches), mesh)
            if step == start_step:
                logging.info("compiling the train step (first call)")
                t0 = time.time()
            state, metrics = step_fn(state, batch)
            done = step + 1
            if step == start_step:
                jax.block_until_ready(metrics)
                logging.info("compiled and ran the first step in %.1fs", time.time() - t0)
                window_start, t_window = done, time.time()  # the compile stays out of the rates
            if done % config.log_every == 0 or done == config.total_steps:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                nonfinite = int(jax.device_get(state.nonfinite))
                if nonfinite > seen_nonfinite:
                    raise NonFiniteError(
                        f"NaN/Inf loss or gradients in steps {window_start + 1}..{done} "
                        f"({nonfinite - seen_nonfinite} step(s); their updates were skipped). Lower "
                        f"config.optim.lr or check the input audio; the last good checkpoint is in "
                        f"{ckpt.directory}")
                if done > window_start:
                    sec_per_step = (time.time() - t_window) / (done - window_start)
                ex_s = config.batch_size / sec_per_step
                eta = _format_eta((config.total_steps - done) * sec_per_step) if np.isfinite(sec_per_step) else "?"
                last.update(lr=float(schedule(done)), examples_per_sec=ex_s)
                shown = "  ".join(f"{k} {last[k]:.4g}" for k in _LOGGED if k in last)
                logging.info("step %d/%d  %s  lr %.2e | %.1f examples/s | ETA %s%s",
                             done, config.total_steps, shown, last["lr"], ex_s, eta,
                             f" | skipped {len(skip_log)}" if len(skip_log) else "")
                writer.scalars(done, {f"train/{k}": v for k, v in last.items()})
                history.append({"step": done, **last})
                window_start, t_window = done, time.time()
            if refresh and done % refresh == 0 and done < config.total_steps:
                service.maybe_refresh(done, _encoder_snapshot(state))
            if done % config.checkpoint_every == 0 and done < config.total_steps:
                save(done)
        save(config.total_steps)
    finally:
        try:
            if service is not None:
                service.close()
        finally:
            ckpt.close()
    result = {"step": config.total_steps, "final": last, "history": history,
              "skipped": skip_log.as_dict(), "workdir": str(workdir), "config": run_config.CONFIG_JSON}
    if model_config.get("init"):
        result["init"] = model_config["init"]
    if pair_quality is not None:
        result["pair_quality"] = pair_quality
    if jax.process_index() == 0:
        (workdir / "train_results.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv):
    del argv
    logs.setup()
    distributed.initialize_from_flags(FLAGS)
    logs.quiet_other_processes()
    if FLAGS.config.get("stage") == "finetune":
        from emosup import finetune

        result = finetune.run(FLAGS.config, FLAGS.workdir)
        print(finetune.format_test(result, FLAGS.workdir))
    else:
        run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
    flags.mark_flags_as_required(["config", "workdir"])
    distributed.define_flags()
    errors.run_cli("train", main)
