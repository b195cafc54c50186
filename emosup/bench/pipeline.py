"""Row group `pipeline`: batch rows/s the tf.data pipeline delivers vs rows/s the jitted train
step of the same objective consumes."""
import statistics
import time

import jax
import numpy as np

from emosup import audio, config_lib, optim, parallel
from emosup.bench import common
PIPELINE_TARGET = 3.0  # the pipeline must deliver >= 3x the examples/s the train step consumes

def _pipeline_times(make_iter, batches, repeats):
    """Seconds per batch of fresh iterators (different steps each time), after a warm-up
    batch each (TensorFlow start-up, thread pools, the first file opens)."""
    per_batch = []
    for r in range(repeats):
        it = make_iter(start_step=r * (batches + 1), num_steps=(r + 1) * (batches + 1))
        next(it)
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        per_batch.append((time.perf_counter() - t) / batches)
    return per_batch


def _train_step_times(objective, preset, batch, n_spk, repeats):
    """(seconds per step, compile seconds) of the objective's jitted train step (emosup.train,
    the pretrain config's loss and optimiser) on this host-local batch."""
    from emosup.trainers import pretrain
    from emosup.models.encoders import build_encoder, ecapa_model_config

    cfg = config_lib.pretrain_config(preset=preset, objective=objective)
    mesh = parallel.make_mesh()
    model_config = ecapa_model_config(cfg.model.preset, cfg.model.get("overrides"))
    encoder = build_encoder(model_config)
    tx, _ = optim.make_optimizer(cfg.optim, 100)
    feat_shape = (1, 1 + batch["audio"].shape[-1] // audio.HOP, model_config["features"]["n_mels"])
    state = pretrain.create_state(objective, encoder, cfg.loss, n_spk, tx, jax.random.key(0), feat_shape, mesh)
    step = pretrain.jit_train_step(objective, encoder, cfg.loss, mesh)
    gbatch = parallel.to_global(batch, mesh)
    box = [state]

    def run():
        box[0], m = step(box[0], gbatch)
        jax.block_until_ready(m)

    t = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return times, compile_s


def bench_pipeline(presets, quick=False, n_files=200, n_speakers=20,
                   objectives=("speaker", "contrastive"), sizes=None):
    """tf.data throughput vs the train step's consumption, in batch rows per second.

    Data: ``n_files`` WAVs (2-6 s) in a temporary folder, ``n_speakers`` speakers. Rows:
    * speaker objective: ``pipeline.crop_batches`` with the pretrain/speaker config's crop and
      batch (2 s, 32), vs the ``speaker`` train step (AAM-softmax);
    * pair objectives: ``pipeline.pair_batches`` (anchor, positive, K=2 negatives; a pair table
      from ``pairs.build.build_pair_table`` on random embeddings) with the demo arms' crop and
      anchors per step (1 s, 8), vs the ``contrastive`` train step;
    for each ECAPA preset. ratio = pipeline rows/s / train-step rows/s; target >= 3x.
    ``objectives`` picks the setups; ``sizes`` {objective: (crop seconds, batch)} overrides
    the configs' (the tests use small ones).
    """
    import tempfile

    from emosup.data import pipeline
    from emosup.pairs import build as pair_build

    speaker_cfg = config_lib.speaker_config()
    arms = config_lib.experiment_config().arms
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        paths = common.write_wavs(folder, n_files)
        labels = (np.arange(n_files) % n_speakers).astype(np.int32)
        skip_log = pipeline.SkipLog()
        lengths, _ = pipeline.scan_utterances(paths, skip_log)
        emb = np.random.default_rng(0).standard_normal((n_files, 192)).astype(np.float32)
        table = pair_build.build_pair_table(emb, labels, k=2, num_negatives=2, seed=0)
        setups = (
            ("speaker", "crop_batches", speaker_cfg.data.crop_seconds, speaker_cfg.batch_size,
             lambda **kw: pipeline.crop_batches(paths, labels, lengths, **kw)),
            ("contrastive", f"pair_batches K={table.num_negatives}", arms.pretrain_crop_seconds,
             arms.pretrain_batch_size,
             lambda **kw: pipeline.pair_batches(paths, labels, lengths, table, **kw)),
        )
        for objective, source, seconds, batch_size, make in setups:
            if objective not in objectives:
                continue
            seconds, batch_size = (sizes or {}).get(objective, (seconds, batch_size))
            crop = int(round(seconds * audio.SAMPLE_RATE))

            def make_iter(start_step, num_steps, make=make, crop=crop, batch_size=batch_size):
                return make(crop_samples=crop, global_batch=batch_size, local_batch=batch_size,
                            process_index=0, seed=0, start_step=start_step, num_steps=num_steps,
                            skip_log=skip_log)

            per_batch = _pipeline_times(make_iter, batches=4 if quick else 12, repeats=2 if quick else 3)
            batch = next(make_iter(0, 1))
            crops = int(np.prod(batch["lengths"].shape))
            for preset in presets:
                steps, compile_s = _train_step_times(objective, preset, batch, n_speakers,
                                                     repeats=2 if quick else 4)
                pipe_rate = batch_size / statistics.median(per_batch)
                step_rate = batch_size / statistics.median(steps)
                row = {"name": f"tf.data {source} [{objective} step, {preset}] B={batch_size} {seconds:g}s",
                       # emosup_s = the pipeline's time per batch, reference_s = the step's: the
                       # printed ratio is then pipeline rate / step rate.
                       "emosup_s": statistics.median(per_batch), "reference_s": statistics.median(steps),
                       "reference": f"jitted {objective} train step [{preset}]", "compile_s": compile_s,
                       "pipeline_rows_per_s": pipe_rate, "step_rows_per_s": step_rate,
                       "crops_per_row": crops // batch_size,
                       "pipeline_spread_s": [min(per_batch), max(per_batch)],
                       "step_spread_s": [min(steps), max(steps)],
                       "target": f">= {PIPELINE_TARGET:g}x",
                       "meets_target": pipe_rate >= PIPELINE_TARGET * step_rate}
                rows.append(row)
                common.print_row(row)
                print(f"    pipeline {pipe_rate:.1f} rows/s ({pipe_rate * crops / batch_size:.0f} crops/s; "
                      f"{min(per_batch) * 1e3:.0f}-{max(per_batch) * 1e3:.0f} ms per batch), train step "
                      f"{step_rate:.1f} rows/s ({min(steps) * 1e3:.0f}-{max(steps) * 1e3:.0f} ms per step)\n"
                      f"    target pipeline >= {PIPELINE_TARGET:g}x the train step: "
                      f"{'MET' if row['meets_target'] else 'NOT MET'}", flush=True)
    return rows
