"""What every training loop here shares: the jitted data-parallel step, the step bookkeeping
(timing, ETA, log line, TensorBoard, NaN guard), checkpoint metadata and the results file.

A trainer keeps its loop explicit and calls these pieces:

    step_fn = loop.jit_step(step, mesh)
    steps = loop.Steps(workdir, start_step, total_steps, batch_size=..., skip_log=..., ...)
    for step in steps:
        state, metrics = step_fn(state, batch)
        steps.ran(step + 1, metrics)          # the first step (the compile) stays out of the rates
        if log point:
            steps.check_finite(step + 1, bad_steps)
            steps.log(step + 1, "loss 0.123", {"train/loss": 0.123})
            loop.save_checkpoint(ckpt, step + 1, state, meta)
    loop.write_results(workdir / "results.json", result)
"""
import json
import time

import jax
import numpy as np
from absl import logging

from emosup import logs, parallel


class NonFiniteError(FloatingPointError):
    """NaN or Inf loss or gradients; the message names the steps and the last good checkpoint."""


def format_eta(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def jit_step(step, mesh, num_replicated=0):
    """`step(state, batch, *rest)` jitted for `mesh`: the state replicated and donated, the batch
    sharded over the data axis, `num_replicated` further arguments (a PRNG key) replicated; the
    new state and the metrics come back replicated."""
    rep = parallel.replicated(mesh)
    return jax.jit(step, donate_argnums=0, in_shardings=(rep, parallel.batch_sharded(mesh)) + (rep,) * num_replicated,
                   out_shardings=(rep, rep))


class Steps:
    """The steps `start_step`..`total_steps` - 1 of a run and their bookkeeping between log points:
    seconds per step (the first step, which compiles, left out), examples per second, ETA, the
    log line, TensorBoard scalars (`logs.Summaries` in `workdir/tensorboard`) and the NaN guard."""

    def __init__(self, workdir, start_step, total_steps, *, batch_size, checkpoint_dir, skip_log=None,
                 name=""):
        self.start_step, self.total_steps, self.batch_size = start_step, total_steps, batch_size
        self.checkpoint_dir, self.skip_log = checkpoint_dir, skip_log
        self.prefix = f"{name} " if name else ""
        self.writer = logs.Summaries(workdir)
        self.window_start, self.t_window = start_step, time.time()
        self.sec_per_step, self._measured_at = float("nan"), None

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            if step == self.start_step:
                logging.info("%scompiling the train step (first call)", self.prefix)
                self.t_window = time.time()
            yield step

    def ran(self, done, metrics):
        """After each step: the first one waits for its `metrics` and reports the compile time."""
        if done != self.start_step + 1:
            return
        jax.block_until_ready(metrics)
        logging.info("%scompiled and ran the first step in %.1fs", self.prefix, time.time() - self.t_window)
        self.window_start, self.t_window = done, time.time()

    def check_finite(self, done, bad_steps, skipped=False):
        """Raises NonFiniteError when `bad_steps` > 0 steps since the last log point had a NaN/Inf
        loss or gradients (`skipped`: the step left out their updates)."""
        if bad_steps > 0:
            raise NonFiniteError(
                f"NaN/Inf loss or gradients in steps {self.window_start + 1}..{done} ({bad_steps} step(s)"
                f"{'; their updates were skipped' if skipped else ''}). Lower the learning rate "
                f"(config.optim) or check the input audio; the last good checkpoint is in {self.checkpoint_dir}")

    def examples_per_sec(self, done):
        """Examples per second over the steps since the last log point (or the last rate known);
        measured once per step `done`, so that the log line shows the value a caller recorded."""
        if done > self.window_start and done != self._measured_at:
            self.sec_per_step = (time.time() - self.t_window) / (done - self.window_start)
            self._measured_at = done
        return self.batch_size / self.sec_per_step

    def log(self, done, text, scalars):
        """Logs `step done/total  text | examples/s | ETA`, writes `scalars` to TensorBoard at
        step `done` and starts the next timing window."""
        ex_s = self.examples_per_sec(done)
        sps = self.sec_per_step
        eta = format_eta((self.total_steps - done) * sps) if np.isfinite(sps) else "?"
        skipped = len(self.skip_log) if self.skip_log is not None else 0
        logging.info("%sstep %d/%d  %s | %.1f examples/s | ETA %s%s", self.prefix, done, self.total_steps, text,
                     ex_s, eta, f" | skipped {skipped}" if skipped else "")
        self.scalars(done, scalars)
        self.window_start, self.t_window = done, time.time()

    def scalars(self, step, scalars):
        self.writer.scalars(step, scalars)


def _json_default(value):
    try:
        return float(value)  # numpy and JAX scalars
    except (TypeError, ValueError):
        return str(value)


def jsonable(tree):
    """`tree` as JSON values: numbers JSON lacks (numpy, JAX scalars) become floats, anything
    else its str."""
    return json.loads(json.dumps(tree, default=_json_default))


def save_checkpoint(ckpt, step, state, meta, extra=None):
    """One checkpoint (`checkpoint.Checkpointer`): the state, `meta` made JSON, `extra` items."""
    ckpt.save(step, state, jsonable(meta), extra=extra)


def write_results(path, result):
    """Writes `result` as JSON to `path` from process 0 (every process returns the same dict)."""
    if jax.process_index() == 0:
        path.write_text(json.dumps(result, indent=2))
