"""Utterance embeddings from an emosup checkpoint or a converted SpeechBrain encoder.

  python -m emosup.embed --checkpoint=DIR --manifest=CSV --out=FILE.npz

Each embedding is SpeechBrain's `EncoderClassifier.encode_batch` of that utterance alone:
Fbank(n_mels=80) → sentence mean normalisation → encoder. To keep shapes static,
utterances are sorted by length, batched, and padded to a multiple of `bucket_seconds`; the
front end and the encoder's reflect padding work per utterance (`audio.utterance_features`,
`per_utterance_padding=True`), so the padding changes nothing and the result does not
depend on batching. Batches are sharded over all devices.
"""
import collections
import concurrent.futures
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from emosup import audio, checkpoint, logs, parallel
from emosup.data import manifest as manifest_lib
from emosup.data import pipeline
from emosup.models.speaker import build_encoder


class Encoder:
    """An encoder module with its variables and the model.json that describes them.

    `Encoder(directory)` loads a checkpoint or converted folder; `Encoder(model_config=...,
    variables=...)` wraps variables in memory (e.g. a model being fine-tuned). The jitted
    embedding function is compiled once per mesh and bucket length; replacing
    `encoder.variables` reuses it.
    """

    def __init__(self, directory=None, *, model_config=None, variables=None, name=None):
        if directory is not None:
            self.directory = str(directory)
            self.model_config, self.variables = checkpoint.load_encoder_variables(directory)
        else:
            self.directory, self.model_config, self.variables = None, model_config, variables
        self.module = build_encoder(self.model_config)
        self.name = name or self.model_config.get("source", self.directory)
        self._jitted = {}
        self.compiled = set()  # (mesh, padded length) already compiled, for the log

    @property
    def dim(self):
        return self.module.lin_neurons

    def jitted(self, mesh):
        if mesh not in self._jitted:  # meshes over the same devices compare equal
            self._jitted[mesh] = jax.jit(_embed_fn(self.module), in_shardings=(
                parallel.replicated(mesh), parallel.batch_sharded(mesh), parallel.batch_sharded(mesh)),
                out_shardings=parallel.replicated(mesh))
        return self._jitted[mesh]


def _embed_fn(module):
    def fn(variables, wavs, lengths):
        feats, n_valid = audio.utterance_features(wavs, lengths)
        emb = module.apply(variables, feats, n_valid, train=False)
        # Baseline features for the study: mean and std of the log-mel over valid frames
        # (the mean of the raw log-mel is what the sentence normalisation removed).
        raw = audio.fbank(wavs, n_valid.astype(jnp.int32))
        valid = (jnp.arange(raw.shape[1])[None, :] < n_valid[:, None])[..., None]
        mean = jnp.sum(raw * valid, axis=1) / n_valid[:, None]
        std = jnp.sqrt(jnp.sum(((raw - mean[:, None]) ** 2) * valid, axis=1) / n_valid[:, None])
        return emb, jnp.concatenate([mean, std], -1)

    return fn


def embed_paths(encoder, paths, *, batch_per_device=8, bucket_seconds=1.0, mesh=None,
                skip_log=None, progress=True):
    """Embeds every file. Returns (embeddings [N, D], logmel_stats [N, 160], valid [N] bool).

    Rows of files that cannot be read are NaN with valid=False; they are logged in
    `skip_log` (a pipeline.SkipLog) and counted, never fatal.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    skip_log = pipeline.SkipLog() if skip_log is None else skip_log
    n = len(paths)
    lengths, _ = pipeline.scan_utterances(paths, skip_log)
    batch = batch_per_device * mesh.devices.size
    bucket = int(bucket_seconds * audio.SAMPLE_RATE)
    n_feat = 2 * encoder.model_config["features"]["n_mels"]
    emb = np.full((n, encoder.dim), np.nan, np.float32)
    stats = np.full((n, n_feat), np.nan, np.float32)
    valid = np.zeros(n, bool)
    order = [i for i in np.argsort(lengths, kind="stable") if lengths[i] > 0]
    fn = encoder.jitted(mesh)
    variables = parallel.replicate(encoder.variables, mesh)
    t_start, t_log, done = time.time(), time.time(), 0

    def load(i):
        try:
            return audio.load_audio(paths[i])
        except (audio.AudioError, OSError, RuntimeError) as e:
            skip_log.add(paths[i], e)
            return None

    with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        chunks = [order[s:s + batch] for s in range(0, len(order), batch)]
        # Decode a few batches ahead, never the whole corpus (memory stays bounded).
        ahead = collections.deque(pool.submit(lambda c=c: [load(i) for i in c]) for c in chunks[:3])
        for b, idx in enumerate(chunks):
            wavs = ahead.popleft().result()
            if b + 3 < len(chunks):
                ahead.append(pool.submit(lambda c=chunks[b + 3]: [load(i) for i in c]))
            keep = [(i, w) for i, w in zip(idx, wavs) if w is not None]
            if keep:
                longest = max(len(w) for _, w in keep)
                pad_to = -(-longest // bucket) * bucket
                x = np.zeros((batch, pad_to), np.float32)
                lens = np.full(batch, pad_to, np.int32)  # filler rows: full length, discarded
                for r, (_, w) in enumerate(keep):
                    x[r, :len(w)] = w
                    lens[r] = len(w)
                if (mesh, pad_to) not in encoder.compiled:
                    logging.info("embed: compiling for %.2f s batches", pad_to / audio.SAMPLE_RATE)
                    encoder.compiled.add((mesh, pad_to))
                e, s = jax.device_get(fn(variables, parallel.to_global(x, mesh), parallel.to_global(lens, mesh)))
                rows = [i for i, _ in keep]
                emb[rows], stats[rows], valid[rows] = e[:len(rows)], s[:len(rows)], True
            done += len(idx)
            if progress and time.time() - t_log > 10:
                rate = done / (time.time() - t_start)
                logging.info("embed: %d/%d utterances, %.1f utt/s, ETA %.0fs", done, len(order), rate,
                             (len(order) - done) / max(rate, 1e-9))
                t_log = time.time()
    if len(skip_log):
        logging.warning("embed: %d of %d utterances could not be read and were skipped", int((~valid).sum()), n)
    return emb, stats, valid


def main(argv):
    del argv
    logs.setup()
    m = manifest_lib.read_manifest(FLAGS.manifest, allowed_splits=None)
    enc = Encoder(FLAGS.checkpoint)
    skip_log = pipeline.SkipLog()
    emb, _, valid = embed_paths(enc, [u.path for u in m], batch_per_device=FLAGS.batch_per_device,
                                bucket_seconds=FLAGS.bucket_seconds, skip_log=skip_log)
    ids = np.array([u.id for u in m])
    np.savez(FLAGS.out, ids=ids, embeddings=emb, valid=valid,
             skipped=np.array(sorted(skip_log.as_dict())))
    print(f"wrote {FLAGS.out}: {len(ids)} utterances × {emb.shape[1]} ({int((~valid).sum())} skipped "
          f"as unreadable{': ' + ', '.join(sorted(skip_log.as_dict())[:5]) if len(skip_log) else ''})")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_string("checkpoint", None, "emosup checkpoint or converted encoder folder")
    flags.DEFINE_string("manifest", None, "CSV manifest (path,speaker[,emotion,split,...])")
    flags.DEFINE_string("out", None, "output .npz (ids, embeddings)")
    flags.DEFINE_integer("batch_per_device", 8, "utterances per device per batch")
    flags.DEFINE_float("bucket_seconds", 1.0, "batches are padded to a multiple of this")
    flags.mark_flags_as_required(["checkpoint", "manifest", "out"])
    app.run(main)
