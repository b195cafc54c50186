"""Row group `pipeline`: the tf.data pipeline against the jitted train step it feeds, measured
as training runs them: files read cold, and the pipeline and the step in one process at once.

Two rows per objective and ECAPA preset:
* ``tf.data ...``: batch rows/s the pipeline delivers alone vs rows/s the step consumes alone
  (ratio = pipeline rate / step rate; target >= 3x, headroom for the machines where one host's
  pipeline feeds faster accelerators);
* ``training loop ...``: the trainer's loop (``next(batches)`` then the step, dispatched
  asynchronously as ``trainers/pretrain.py`` does) on the live pipeline vs the same loop on a
  batch already in memory. ratio = in-memory time / live time per step, so 0.9 means the input
  costs the step 10 % of its speed, whether by making it wait for data or by taking CPU cores
  from it; target >= 0.9. The row also gives the share of the loop's time the step sat idle
  waiting for data (from each step's finish to the next step's dispatch) and the share the
  host spent blocked in ``next(batches)`` (which overlaps the running step: the loop
  dispatches asynchronously).

Reads are cold in both: while a row is timed a thread drops every file's cached pages every
``EVICT_EVERY_S`` (``posix_fadvise(DONTNEED)``, after the files were written and synced), so
each read goes to the disk, as when a corpus is far larger than the page cache. Where the OS
has no ``posix_fadvise`` the row says ``"reads": "page cache"``.
"""
import itertools
import os
import queue
import statistics
import threading
import time

import jax
import numpy as np

from emosup import audio, config_lib, optim, parallel
from emosup.bench import common

PIPELINE_TARGET = 3.0  # the pipeline alone must deliver >= 3x the rows/s the step consumes
LOOP_TARGET = 0.9  # the training loop on the live pipeline keeps >= 90 % of its in-memory speed
EVICT_EVERY_S = 0.1


class ColdReads:
    """Context manager: while inside, a thread drops the page-cache pages of `paths` every
    `every` seconds, so the pipeline's reads go to the disk. `self.mode` is what the rows
    record: "cold" (evicting) or "page cache" (no posix_fadvise on this OS)."""

    def __init__(self, paths, every=EVICT_EVERY_S):
        self.paths, self.every = list(paths), every
        self.mode = "cold" if hasattr(os, "posix_fadvise") else "page cache"
        self._stop = threading.Event()
        self._thread = None

    def evict(self):
        for p in self.paths:
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def _run(self):
        while not self._stop.wait(self.every):
            self.evict()

    def __enter__(self):
        if self.mode == "cold":
            self.evict()
            self._thread = threading.Thread(target=self._run, name="bench-evict", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._stop.clear()


def sync_files(paths):
    """Writes the files' dirty pages to the disk: only clean pages can be dropped."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


def _train_step(objective, preset, batch, n_spk):
    """(step, compile seconds): the objective's jitted train step (the pretrain config's loss
    and optimiser, every local device), compiled on `batch`. step(host batch) dispatches one
    step as the trainer does (not waiting for it) and returns its metrics."""
    from emosup.trainers import pretrain
    from emosup.models.encoders import build_encoder, ecapa_model_config

    cfg = config_lib.pretrain_config(preset=preset, objective=objective)
    mesh = parallel.make_mesh()
    model_config = ecapa_model_config(cfg.model.preset, cfg.model.get("overrides"))
    encoder = build_encoder(model_config)
    tx, _ = optim.make_optimizer(cfg.optim, 100)
    feat_shape = (1, 1 + batch["audio"].shape[-1] // audio.HOP, model_config["features"]["n_mels"])
    state = pretrain.create_state(objective, encoder, cfg.loss, n_spk, tx, jax.random.key(0), feat_shape, mesh)
    step_fn = pretrain.jit_train_step(objective, encoder, cfg.loss, mesh)
    box = [state]

    def step(host_batch):
        box[0], metrics = step_fn(box[0], parallel.to_global(host_batch, mesh))
        return metrics

    t = time.perf_counter()
    jax.block_until_ready(step(batch))
    return step, time.perf_counter() - t


def _loop_time(step, batches, n):
    """(seconds, seconds the step sat idle waiting for data, seconds blocked in next(batches))
    of n steps of the trainer's loop: take the next batch, dispatch the step, go on; wait for
    the last step at the end. A thread waits on each step's result in turn to learn when it
    finished; the step idled from then until the next step was dispatched."""
    pending, finished = queue.Queue(), []

    def watch():
        while (metrics := pending.get()) is not None:
            jax.block_until_ready(metrics)
            finished.append(time.perf_counter())

    watcher = threading.Thread(target=watch, name="bench-watch", daemon=True)
    watcher.start()
    dispatched, blocked = [], 0.0
    t0 = time.perf_counter()
    try:
        for _ in range(n):
            t = time.perf_counter()
            b = next(batches)
            dispatched.append(time.perf_counter())
            blocked += dispatched[-1] - t
            pending.put(step(b))
    finally:
        pending.put(None)
        watcher.join()
    wall = time.perf_counter() - t0
    idle = sum(max(0.0, d - f) for d, f in zip(dispatched[1:], finished[:-1]))
    return wall, idle, blocked


def _loop_times(step, make_iter, batch, steps, repeats, cold):
    """Per repeat, the loop's seconds per step on an in-memory batch and on a fresh live
    pipeline (interleaved, so both see the same load), and the shares of the live loop's time
    the step sat idle waiting for data and the host was blocked in next(batches)."""
    memory, live, idle, blocked = [], [], [], []
    for r in range(repeats):
        s, _, _ = _loop_time(step, itertools.repeat(batch), steps)
        memory.append(s / steps)
        it = make_iter(start_step=1000 + r * (steps + 1), num_steps=1000 + (r + 1) * (steps + 1))
        next(it)  # TensorFlow's start-up is not part of a step
        with cold:
            s, idle_s, blocked_s = _loop_time(step, it, steps)
        live.append(s / steps)
        idle.append(idle_s / s)
        blocked.append(blocked_s / s)
    return memory, live, idle, blocked


def bench_pipeline(presets, quick=False, n_files=200, n_speakers=20,
                   objectives=("speaker", "contrastive"), sizes=None):
    """The pipeline's rows (module docstring) for each objective and ECAPA preset.

    Data: ``n_files`` WAVs (2-6 s) in a temporary folder, ``n_speakers`` speakers. Setups:
    * speaker objective: ``pipeline.crop_batches`` with the pretrain/speaker config's crop and
      batch (2 s, 32), vs the ``speaker`` train step (AAM-softmax);
    * pair objectives: ``pipeline.pair_batches`` (anchor, positive, K=2 negatives; a pair table
      from ``pairs.build.build_pair_table`` on random embeddings) with the demo arms' crop and
      anchors per step (1 s, 8), vs the ``contrastive`` train step.
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
        sync_files(paths)
        cold = ColdReads(paths)
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

            with cold:
                per_batch = _pipeline_times(make_iter, batches=4 if quick else 12, repeats=2 if quick else 3)
            batch = next(make_iter(0, 1))
            crops = int(np.prod(batch["lengths"].shape))
            what = f"[{objective} step, {{}}] B={batch_size} {seconds:g}s"
            for preset in presets:
                step, compile_s = _train_step(objective, preset, batch, n_speakers)
                memory, live, idle, blocked = _loop_times(step, make_iter, batch, steps=4 if quick else 12,
                                                 repeats=2 if quick else 3, cold=cold)
                pipe_s, memory_s, live_s = (statistics.median(v) for v in (per_batch, memory, live))
                pipe_rate, step_rate = batch_size / pipe_s, batch_size / memory_s
                row = {"name": f"tf.data {source} {what.format(preset)}",
                       # emosup_s = the pipeline's time per batch, reference_s = the step's: the
                       # printed ratio is then pipeline rate / step rate.
                       "emosup_s": pipe_s, "reference_s": memory_s,
                       "reference": f"jitted {objective} train step [{preset}]", "compile_s": compile_s,
                       "pipeline_rows_per_s": pipe_rate, "step_rows_per_s": step_rate,
                       "crops_per_row": crops // batch_size, "reads": cold.mode, "internal": True,
                       "pipeline_spread_s": [min(per_batch), max(per_batch)],
                       "step_spread_s": [min(memory), max(memory)],
                       "target": f">= {PIPELINE_TARGET:g}x",
                       "meets_target": pipe_rate >= PIPELINE_TARGET * step_rate}
                loop_row = {"name": f"training loop on tf.data {what.format(preset)}",
                            "emosup_s": live_s, "reference_s": memory_s,
                            "reference": "the same loop on an in-memory batch", "reads": cold.mode,
                            "internal": True,
                            "live_spread_s": [min(live), max(live)],
                            "memory_spread_s": [min(memory), max(memory)],
                            "live_rows_per_s": batch_size / live_s,
                            "idle_share": statistics.median(idle),
                            "blocked_share": statistics.median(blocked),
                            "target": f">= {LOOP_TARGET:g}x",
                            "meets_target": memory_s >= LOOP_TARGET * live_s}
                for r in (row, loop_row):
                    rows.append(r)
                    common.print_row(r)
                print(f"    pipeline alone {pipe_rate:.1f} rows/s ({pipe_rate * crops / batch_size:.0f} crops/s; "
                      f"{min(per_batch) * 1e3:.0f}-{max(per_batch) * 1e3:.0f} ms per batch, reads {cold.mode}), "
                      f"train step on an in-memory batch {step_rate:.1f} rows/s "
                      f"({min(memory) * 1e3:.0f}-{max(memory) * 1e3:.0f} ms per step)\n"
                      f"    target pipeline >= {PIPELINE_TARGET:g}x the train step: "
                      f"{'MET' if row['meets_target'] else 'NOT MET'}\n"
                      f"    training loop on the live pipeline {loop_row['live_rows_per_s']:.1f} rows/s "
                      f"({min(live) * 1e3:.0f}-{max(live) * 1e3:.0f} ms per step), "
                      f"the step idle waiting for data {100 * loop_row['idle_share']:.0f}% of the time "
                      f"(host blocked in next(batches) {100 * loop_row['blocked_share']:.0f}%)\n"
                      f"    target loop >= {LOOP_TARGET:g}x its in-memory speed: "
                      f"{'MET' if loop_row['meets_target'] else 'NOT MET'}", flush=True)
    return rows
