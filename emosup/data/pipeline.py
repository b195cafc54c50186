"""tf.data input pipelines (TensorFlow on the CPU only).

Batches are a pure function of (seed, step): example `g = step * global_batch + row` is
utterance `perm_epoch[g mod n]` with `perm_epoch` a seeded permutation per epoch, cropped at
an offset drawn from `rng(seed, g)`. So a resumed run reads exactly the batches an unbroken
run would have read (the data position is just the step), and every process reads only
its own rows `[process_index * local_batch, (process_index + 1) * local_batch)` of each
global batch: disjoint across processes and together complete.

An utterance that cannot be decoded mid-run is not fatal: its row is zeros with weight 0
(losses ignore it), and it is counted in `SkipLog` and reported.
"""
import functools
import logging
import os
import threading

import numpy as np

from emosup import audio

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _tf():
    import tensorflow as tf  # imported lazily: ~5 s, and only data pipelines need it

    # JAX owns the accelerators; TF must not grab their memory.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # already initialised; visible devices were set earlier
    return tf


class SkipLog:
    """Thread-safe record of utterances skipped because they could not be read."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reasons = {}

    def add(self, path, reason):
        with self._lock:
            if path not in self.reasons:
                logging.warning("skipping %s: %s", path, reason)
            self.reasons[path] = str(reason)

    def __len__(self):
        return len(self.reasons)

    def as_dict(self):
        with self._lock:
            return dict(self.reasons)


def scan_utterances(paths, skip_log=None, *, min_samples=1, too_short=""):
    """Lengths (16 kHz samples) of each file; unreadable or empty ones, and those shorter than
    `min_samples` (the model's shortest input, `too_short` saying why), get 0 and are logged."""
    skip_log = SkipLog() if skip_log is None else skip_log
    lengths = np.zeros(len(paths), np.int64)
    for i, p in enumerate(paths):
        try:
            n, _, _ = audio.audio_info(p)
            if n <= 0:
                raise audio.AudioError(f"{p}: no samples")
            if n < min_samples:
                raise audio.AudioError(f"{n} samples: shorter than {too_short}; use longer "
                                       "recordings or leave it out of the manifest")
            lengths[i] = n
        except (audio.AudioError, OSError, RuntimeError) as e:
            skip_log.add(p, e)
    return lengths, skip_log


class CropSampler:
    """Which utterance and crop offset fill row `row` of global batch `step` (pure function)."""

    def __init__(self, lengths, crop_samples, global_batch, seed):
        self.valid = np.flatnonzero(np.asarray(lengths) > 0)
        if self.valid.size == 0:
            raise ValueError("no readable utterances to train on")
        self.lengths = np.asarray(lengths)
        self.crop = int(crop_samples)
        self.global_batch = int(global_batch)
        self.seed = int(seed)

    @functools.lru_cache(maxsize=4)
    def _perm(self, epoch):
        return self.valid[np.random.default_rng([self.seed, 0x5EED, epoch]).permutation(self.valid.size)]

    def __call__(self, step, row):
        g = int(step) * self.global_batch + int(row)
        epoch, pos = divmod(g, self.valid.size)
        utt = int(self._perm(epoch)[pos])
        slack = max(int(self.lengths[utt]) - self.crop, 0)
        offset = int(np.random.default_rng([self.seed, 0xC409, g]).integers(0, slack + 1))
        return utt, offset


def crop_batches(paths, labels, lengths, *, crop_samples, global_batch, local_batch,
                 process_index, seed, start_step, num_steps, skip_log, num_parallel=None):
    """Yields host-local batches for steps [start_step, num_steps).

    Each batch: {"audio": f32 [b, crop], "lengths": i32 [b] (valid samples), "labels": i32 [b],
    "weights": f32 [b] (0 for rows whose file failed to decode)}; b = local_batch.
    """
    sampler = CropSampler(lengths, crop_samples, global_batch, seed)
    labels = np.asarray(labels, np.int32)
    first_row = process_index * local_batch

    def load(i):
        step, r = divmod(int(i), local_batch)
        utt, offset = sampler(step, first_row + r)
        n = int(min(lengths[utt] - offset, crop_samples))
        try:
            # A crop may fall on a pause; whole-file silence is caught where files are embedded.
            wav = audio.load_segment(paths[utt], crop_samples, offset, check_silence=False)
            weight = 1.0
        except (audio.AudioError, OSError, RuntimeError) as e:
            skip_log.add(paths[utt], e)
            # Full "length" keeps the front end's per-utterance statistics finite; weight 0
            # keeps the row out of every loss.
            wav, n, weight = np.zeros(crop_samples, np.float32), crop_samples, 0.0
        return wav.astype(np.float32), np.int32(n), labels[utt], np.float32(weight)

    return _batches(load, {"audio": [crop_samples], "lengths": [], "labels": [], "weights": []},
                    local_batch, start_step, num_steps, num_parallel)


_DTYPES = {"audio": "float32", "lengths": "int32", "labels": "int32", "weights": "float32"}


def _batches(load, shapes, local_batch, start_step, num_steps, num_parallel):
    """tf.data over example indices [start_step·b, num_steps·b): `load(i)` (numpy, run in
    parallel, order kept) returns the fields of `shapes` in order; batches of b rows."""
    tf = _tf()
    names = list(shapes)

    def tf_load(i):
        out = tf.numpy_function(load, [i], [getattr(tf, _DTYPES[k]) for k in names])
        for t, k in zip(out, names):
            t.set_shape(shapes[k])
        return dict(zip(names, out))

    ds = tf.data.Dataset.range(start_step * local_batch, num_steps * local_batch)
    # Plain Python calling numpy: nothing for AutoGraph to convert (its attempt only inspects
    # every loaded module, and warns when one, e.g. SpeechBrain's lazy k2 import, fails).
    tf_load = tf.autograph.experimental.do_not_convert(tf_load)
    ds = ds.map(tf_load, num_parallel_calls=num_parallel or tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()


class PairSampler:
    """Which (anchor, positive, negatives) and crop offsets fill row `row` of global batch `step`.

    Anchors are visited in a seeded permutation per epoch (an epoch = every anchor of the
    table once); like CropSampler, a pure function of (seed, table version, step, row).
    """

    def __init__(self, table, lengths, crop_samples, global_batch, seed):
        if len(table) == 0:
            raise ValueError("the pair table has no anchors")
        self.table = table
        self.lengths = np.asarray(lengths)
        self.crop = int(crop_samples)
        self.global_batch = int(global_batch)
        self.seed = int(seed)

    @functools.lru_cache(maxsize=4)
    def _perm(self, epoch):
        return np.random.default_rng([self.seed, 0xA11C, self.table.version, epoch]).permutation(len(self.table))

    def __call__(self, step, row):
        g = int(step) * self.global_batch + int(row)
        epoch, pos = divmod(g, len(self.table))
        i = int(self._perm(epoch)[pos])
        t = self.table
        utts = np.concatenate([[t.anchors[i], t.positives[i]], t.negatives[i]]).astype(np.int64)
        rng = np.random.default_rng([self.seed, 0xC409, g])
        slack = np.maximum(self.lengths[utts] - self.crop, 0)
        offsets = rng.integers(0, slack + 1)
        return utts, offsets


def pair_batches(paths, labels, lengths, table, *, crop_samples, global_batch, local_batch,
                 process_index, seed, start_step, num_steps, skip_log, num_parallel=None):
    """Host-local batches of pair groups for steps [start_step, num_steps).

    Each batch: {"audio": f32 [b, 2+K, crop] (anchor, positive, K negatives), "lengths":
    i32 [b, 2+K], "labels": i32 [b] (the anchor's speaker), "weights": f32 [b] (0 when any
    file of the group failed to decode)}; b = local_batch.
    """
    sampler = PairSampler(table, lengths, crop_samples, global_batch, seed)
    labels = np.asarray(labels, np.int32)
    group = 2 + table.num_negatives
    first_row = process_index * local_batch

    def load(i):
        step, r = divmod(int(i), local_batch)
        utts, offsets = sampler(step, first_row + r)
        wavs = np.zeros((group, crop_samples), np.float32)
        n = np.full(group, crop_samples, np.int32)
        weight = 1.0
        for j, (u, off) in enumerate(zip(utts, offsets)):
            try:
                wavs[j] = audio.load_segment(paths[u], crop_samples, int(off), check_silence=False)
                n[j] = min(int(lengths[u]) - int(off), crop_samples)
            except (audio.AudioError, OSError, RuntimeError) as e:
                skip_log.add(paths[u], e)
                weight = 0.0  # the whole group leaves the loss; full lengths keep it finite
        if weight == 0.0:
            wavs[:], n[:] = 0.0, crop_samples
        return wavs, n, labels[utts[0]], np.float32(weight)

    return _batches(load, {"audio": [group, crop_samples], "lengths": [group], "labels": [], "weights": []},
                    local_batch, start_step, num_steps, num_parallel)
