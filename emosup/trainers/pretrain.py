"""Encoder pretraining: `python -m emosup.train --config=configs/pretrain.py:objective=X --workdir=DIR`.

`run(config, workdir)` is a sequence of named sections: corpus rows → encoder start → mesh,
model and optimiser → restore → pair tables → data → the loop (trainers.loop: log, ETA,
TensorBoard, NaN guard, checkpoints) → results.
Objectives (emosup.trainers.objectives): `speaker` (AAM-softmax over the speakers of
`train_split`), `contrastive`, `multitask`, `adversarial` (intra-speaker pairs from the pair
table; docs/method.md §Objectives). Emotion labels are never read. A killed run restarted with
the same command resumes from its last checkpoint and ends with the same parameters as an
unbroken run: batches are a pure function of (seed, step, pair-table version) and the pair
tables are saved in the checkpoint. With `pairs.refresh_every = R > 0`, the table is rebuilt
in a background thread from the encoder being trained at steps R, 2R, ... and version v is used
from step (v+1)·R, so the build has R steps to hide behind and the result does not depend on
its timing.
"""
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax.training import train_state

from emosup import audio, checkpoint, config_lib, distributed, errors, optim, parallel, run_config
from emosup.data import corpus as corpus_lib
from emosup.data import manifest as manifest_lib
from emosup.data import pipeline
from emosup.models import ecapa
from emosup.models.encoders import build_encoder, ecapa_model_config, shortest_input
from emosup.pairs import build as pair_build
from emosup.pairs import service as pair_service
from emosup.trainers import loop, objectives


class TrainState(train_state.TrainState):
    batch_stats: dict
    nonfinite: jnp.ndarray  # count of steps whose loss or gradients were NaN/Inf (update skipped)


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
    variables = objectives.init_variables(objective, encoder, loss_cfg, num_speakers, key, feat_shape)
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
    return loop.jit_step(objectives.make_train_step(objectives.make_loss_fn(objective, encoder, loss_cfg)), mesh)


_LOGGED = ("loss", "contrastive_loss", "contrastive_accuracy", "speaker_loss", "speaker_accuracy",
           "grad_norm")


def validate(config):
    """Fails before any work, naming the first bad field."""
    if config.objective not in objectives.OBJECTIVES:
        raise ValueError(f"config.objective={config.objective!r}: expected one of {objectives.OBJECTIVES}")
    if not (isinstance(config.pairs.refresh_every, int) and config.pairs.refresh_every >= 0):
        raise ValueError(f"config.pairs.refresh_every={config.pairs.refresh_every!r}: must be an "
                         "integer >= 0 (0 = pairs fixed from config.pairs.encoder)")
    if config.model.preset not in ecapa.PRESETS:
        raise ValueError(f"config.model.preset={config.model.preset!r}: expected one of {sorted(ecapa.PRESETS)}")
    if not config.pairs.k and config.pairs.k_rule not in pair_build.K_RULES:
        raise ValueError(f"config.pairs.k_rule={config.pairs.k_rule!r}: expected one of {pair_build.K_RULES} "
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


@dataclasses.dataclass
class Rows:
    """The training rows: audio paths, speaker labels and lengths (emotions are never read)."""
    manifest: manifest_lib.Manifest
    speakers: list
    paths: list
    labels: np.ndarray
    lengths: np.ndarray = None
    skip_log: pipeline.SkipLog = dataclasses.field(default_factory=pipeline.SkipLog)


def training_rows(config, corpus):
    """The rows of `corpus.train_split` with known speakers, labelled by speaker index."""
    train_rows = corpus.manifest.select(split=corpus.train_split)
    if len(train_rows) == 0:
        raise ValueError(f"{corpus.manifest_path}: no rows in split {corpus.train_split!r}")
    unknown = [u for u in train_rows if not corpus_lib.speaker_known(u)]
    if unknown:  # stand-in speakers (MSP-Podcast `Unknown`) would be false speaker labels
        train_rows = manifest_lib.Manifest([u for u in train_rows if corpus_lib.speaker_known(u)],
                                           train_rows.source)
        logging.info("corpus %s: %d rows of unknown speakers left out of training", corpus.name, len(unknown))
    speakers = train_rows.speakers()
    if objectives.uses_speakers(config.objective) and len(speakers) < 2:
        raise ValueError(f"{corpus.manifest_path}: speaker training needs ≥ 2 speakers in split "
                         f"{corpus.train_split!r}, found {len(speakers)}")
    spk_index = {s: i for i, s in enumerate(speakers)}
    return Rows(train_rows, speakers, [u.path for u in train_rows],
                np.array([spk_index[u.speaker] for u in train_rows], np.int32))


def encoder_start(config):
    """(model config, encoder variables or None): a random `config.model.preset`, or the
    architecture and weights of the encoder folder `config.init`."""
    if not config.get("init"):
        return ecapa_model_config(config.model.preset, config.model.get("overrides")), None
    init_config, init_vars = checkpoint.load_encoder_variables(config.init)
    model_config = _model_config_of_init(config.init, init_config)
    model_config["init"] = checkpoint.describe_encoder(config.init, init_config, init_vars)
    logging.info("encoder starts from %s (%s, weights %s)", config.init, init_config.get("source"),
                 model_config["init"]["params_fingerprint"])
    return model_config, init_vars


def pair_tables(config, rows, model_config, tables, start_step, mesh, workdir, embedding_cache):
    """(PairService, pair quality) of a pair objective: version 0 from the pair encoder, or the
    `tables` restored; with refresh_every = R > 0 the service rebuilds them from the encoder
    being trained."""
    refresh = int(config.pairs.refresh_every)
    if tables is None:
        tables = [pair_service.table_from_encoder(config, rows.paths, rows.labels, rows.lengths, rows.skip_log,
                                                  embedding_cache)]
    # Rebuilt tables are computed by every host alone on its own devices: the service's
    # thread must not run collectives that could interleave with the train step's.
    build_fn = pair_service.refresh_builder(
        config, model_config, rows.paths, rows.labels, rows.lengths, rows.skip_log,
        parallel.local_mesh() if jax.process_count() > 1 else mesh) if refresh else None
    service = pair_service.PairService(build_fn, refresh_every=refresh, initial=tables[0])
    for t in tables[1:]:
        service.publish(t)
    for t in tables:
        logging.info("pairs: table v%d, %d anchors, %d negatives each (fingerprint %s)",
                     t.version, len(t), t.num_negatives, t.fingerprint()[:12])
    distributed.check_same("the pair tables (versions and contents) at step %d" % start_step,
                           [start_step] + [t.fingerprint() for t in tables])
    quality = pair_service.report_quality(tables, rows.manifest, rows.speakers, workdir)
    if refresh:
        logging.info("pairs: rebuilt every %d steps from the encoder being trained, in the "
                     "background; table v is used from step (v+1)·%d", refresh, refresh)
    return service, quality


def segment_batches(config, rows, service, step, **common):
    """(batch iterator, end step) of the data segment starting at `step`. A pair table is fixed
    within a segment of R = refresh_every steps (the whole run when tables are not refreshed);
    each segment reads its own tf.data pipeline."""
    end = config.total_steps
    if service is None:
        return pipeline.crop_batches(rows.paths, rows.labels, rows.lengths, start_step=step, num_steps=end,
                                     **common), end
    refresh = service.refresh_every
    if refresh:
        end = min((step // refresh + 1) * refresh, config.total_steps)
    table = service.table_for_step(step)
    if refresh:  # each host rebuilt it alone: they must agree before reading rows of it
        distributed.check_same(f"pair table v{table.version}", table.fingerprint())
    return pipeline.pair_batches(rows.paths, rows.labels, rows.lengths, table, start_step=step, num_steps=end,
                                 **common), end


def _already_trained(start_step, rows, model_config, workdir):
    logging.info("already trained for %d steps", start_step)
    done = {"step": start_step, "skipped": rows.skip_log.as_dict(), "workdir": str(workdir)}
    if model_config.get("init"):
        done["init"] = model_config["init"]
    if (workdir / "pairs.json").is_file():
        done["pair_quality"] = next(iter(json.loads((workdir / "pairs.json").read_text()).values()))
    return done


def run(config, workdir, corpus=None, embedding_cache=None):
    """Trains the configured objective; returns a dict with the final metrics.

    `corpus` (a data.corpus.Corpus) saves re-reading the manifest when the caller has it;
    `embedding_cache` is passed to `pairs.service.table_from_encoder`.
    """
    with errors.config_errors():
        validate(config)
    # Every host must run the same job; a difference would silently desynchronise them.
    distributed.check_same("the config", config.to_dict())
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    # A resume must continue the same run: stop now if the saved config differs.
    run_config.prepare(workdir, config, resuming=run_config.holds_state(workdir, ("train_results.json",)),
                       what=f"{config.objective} training")

    # --- Corpus and the encoder's start. ---
    corpus = corpus or corpus_lib.open_corpus(config.data, workdir)
    rows = training_rows(config, corpus)
    model_config, init_vars = encoder_start(config)
    min_samples, too_short = shortest_input(build_encoder(model_config))
    rows.lengths, _ = pipeline.scan_utterances(rows.paths, rows.skip_log, min_samples=min_samples,
                                               too_short=too_short)
    logging.info("corpus %s: %d utterances, %d speakers in %r (%d unreadable or too short, skipped)",
                 corpus.name, len(rows.paths), len(rows.speakers), corpus.train_split, len(rows.skip_log))

    # --- Mesh, model, optimiser. ---
    mesh = parallel.make_mesh()
    local_batch = parallel.local_batch_size(config.batch_size, mesh)
    crop = int(round(config.data.crop_seconds * audio.SAMPLE_RATE))
    model_config.update(source=f"emosup:{config.objective}", corpus=corpus.name, speakers=rows.speakers,
                        objective=config.objective)
    encoder = build_encoder(model_config)
    n_frames = 1 + crop // audio.HOP
    root = jax.random.key(config.seed)
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
    state = create_state(config.objective, encoder, config.loss, len(rows.speakers), tx,
                         jax.random.fold_in(root, 0), (1, n_frames, model_config["features"]["n_mels"]), mesh,
                         init_encoder=init_vars)
    del init_vars
    n_params = sum(x.size for x in jax.tree.leaves(state.params["encoder"]))
    logging.info("encoder %s: %.2fM parameters; %d devices, global batch %d (%d per process)",
                 model_config["preset"], n_params / 1e6, mesh.devices.size, config.batch_size, local_batch)

    # --- Restore. ---
    uses_pairs = objectives.uses_pairs(config.objective)
    ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
    checkpoint.write_model_json(workdir, model_config)
    restored, meta, extras = ckpt.restore(state, extra=("pairs",) if uses_pairs else ())
    start_step, tables = 0, None
    if restored is not None:
        state, start_step = restored, int(meta["step"])
        if extras.get("pairs") is not None:
            tables = pair_service.tables_from_arrays(extras["pairs"])
        for path, reason in meta.get("skipped", {}).items():
            rows.skip_log.add(path, reason)
        logging.info("resumed from %s at step %d", ckpt.directory, start_step)
    if start_step >= config.total_steps:
        ckpt.close()
        return _already_trained(start_step, rows, model_config, workdir)

    # --- Pair tables (pair objectives). ---
    service, pair_quality = None, None
    if uses_pairs:
        service, pair_quality = pair_tables(config, rows, model_config, tables, start_step, mesh, workdir,
                                            embedding_cache)
    refresh = service.refresh_every if service is not None else 0

    # --- Data and step. ---
    common = dict(crop_samples=crop, global_batch=config.batch_size, local_batch=local_batch,
                  process_index=jax.process_index(), seed=config.seed, skip_log=rows.skip_log)
    step_fn = jit_train_step(config.objective, encoder, config.loss, mesh)

    def save(step):
        loop.save_checkpoint(
            ckpt, step, state, {"step": step, "config": config.to_dict(), "skipped": rows.skip_log.as_dict(),
                                "objective": config.objective},
            extra=None if service is None else {
                "pairs": pair_service.tables_to_arrays(service.tables_for_checkpoint(step))})

    # --- Loop. An exception (a crash, Ctrl-C) still lets in-flight checkpoint saves finish. ---
    steps = loop.Steps(workdir, start_step, config.total_steps, batch_size=config.batch_size,
                       checkpoint_dir=ckpt.directory, skip_log=rows.skip_log)
    history, last = [], {}
    try:
        seen_nonfinite = int(jax.device_get(state.nonfinite))
        segment_end = start_step
        for step in steps:
            if step == segment_end:
                batches, segment_end = segment_batches(config, rows, service, step, **common)
            state, metrics = step_fn(state, parallel.to_global(next(batches), mesh))
            done = step + 1
            steps.ran(done, metrics)
            if done % config.log_every == 0 or done == config.total_steps:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                steps.check_finite(done, int(jax.device_get(state.nonfinite)) - seen_nonfinite, skipped=True)
                last.update(lr=float(schedule(done)), examples_per_sec=steps.examples_per_sec(done))
                shown = "  ".join(f"{k} {last[k]:.4g}" for k in _LOGGED if k in last)
                steps.log(done, f"{shown}  lr {last['lr']:.2e}", {f"train/{k}": v for k, v in last.items()})
                history.append({"step": done, **last})
            if refresh and done % refresh == 0 and done < config.total_steps:
                service.maybe_refresh(done, pair_service.encoder_snapshot(state))
            if done % config.checkpoint_every == 0 and done < config.total_steps:
                save(done)
        save(config.total_steps)
    finally:
        try:
            if service is not None:
                service.close()
        finally:
            ckpt.close()

    # --- Results. ---
    result = {"step": config.total_steps, "final": last, "history": history,
              "skipped": rows.skip_log.as_dict(), "workdir": str(workdir), "config": run_config.CONFIG_JSON}
    if model_config.get("init"):
        result["init"] = model_config["init"]
    if pair_quality is not None:
        result["pair_quality"] = pair_quality
    loop.write_results(workdir / "train_results.json", result)
    return result
