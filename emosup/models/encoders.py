"""Encoders by name (the `encoder` field of model.json) and utterance embeddings from them.

`build_encoder` is the one factory: `encoder="ecapa"` gives an `EcapaTdnn`, `"wav2vec2"` a
`Wav2Vec2Model`; `ecapa_model_config` writes the model.json of a fresh ECAPA-TDNN from a
preset. `Encoder` holds a module with its variables; `embed_paths` embeds audio files with it.

ECAPA-TDNN: each embedding is SpeechBrain's `EncoderClassifier.encode_batch` of that utterance
alone: Fbank(n_mels=80) → sentence mean normalisation → encoder. To keep shapes static,
utterances are sorted by length, batched, and padded to a multiple of `bucket_seconds`; the
front end and the encoder's reflect padding work per utterance (`audio.utterance_features`,
`per_utterance_padding=True`), so the padding changes nothing and the result does not
depend on batching. Batches are sharded over all devices.

wav2vec 2.0 (a folder from `python -m emosup.convert wav2vec2`): each embedding is the mean
over the utterance's frames of HF `Wav2Vec2Model(..., output_hidden_states=True)
.hidden_states[L]` for that utterance alone, unpadded (`layer=L`: 0 = the encoder input,
i = the output of transformer layer i, negative counts from the end; default -1 = the last
entry). The waveform is first normalised per utterance (zero mean, unit variance, eps 1e-7)
when model.json's `features.do_normalize` says so, as HF's feature extractor does.
Note for stable-LN models (large-lv60, XLS-R): transformers 5 records `hidden_states[-1]`
*before* the encoder's final LayerNorm (4.x recorded it after), and so does this port; the
LayerNorm-ed output (`last_hidden_state`) is not one of the layers offered here.

Batches are zero-padded as for ECAPA, but HF's padded maths depends on the padding (the base
family's conv-0 GroupNorm takes statistics over all frames, and a checkpoint whose
`features.return_attention_mask` is false is run by HF without a mask, attending to the
padding). Embeddings are therefore computed with `Wav2Vec2Model(per_utterance=True)`, which
masks every padded frame and takes the GroupNorm statistics over the valid frames: each row
equals HF on that utterance alone, whatever the batching, so `return_attention_mask` (which
changes nothing for a single unpadded utterance) is not needed. Utterances shorter than the
conv stack's receptive field (400 samples = 25 ms for the published models) give no frame and
are skipped as unreadable ones are; so are utterances too short for ECAPA-TDNN's reflect
padding (640 samples = 40 ms: SpeechBrain cannot embed them, and with one frame the
normalised features are all zero).
"""
import collections
import concurrent.futures
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from emosup import audio, checkpoint, parallel
from emosup import progress as progress_lib
from emosup.data import pipeline
from emosup.models import ecapa, w2v2_ser
from emosup.models.layers import same_padding
from emosup.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

KINDS = ("ecapa", "wav2vec2")


def ecapa_model_config(preset, overrides=None):
    """The model.json of a fresh ECAPA-TDNN: `preset`'s fields (`ecapa.PRESETS`) updated by
    `overrides`, the 80-mel, sentence-mean-normalised Fbank front end, and the preset name."""
    kwargs = dict(ecapa.PRESETS[preset])
    kwargs.update(dict(overrides or {}))
    return {"encoder": "ecapa", "ecapa": kwargs, "features": {"n_mels": 80, "mean_norm": "sentence"},
            "preset": preset}


def build_encoder(model_config, kinds=KINDS):
    """The encoder module that `model_config` (the dict in model.json) describes, if its
    `encoder` is one of `kinds`.

    emosup computes every utterance as if it were alone: ECAPA-TDNN with
    `per_utterance_padding=True` on `audio.utterance_features`, wav2vec2 as
    `Wav2Vec2Model(per_utterance=True)`. Embeddings then do not depend on batching or padding,
    and equal SpeechBrain's (HF's) for the utterance unpadded.
    """
    kind = model_config.get("encoder")
    if kind == "ecapa" and kind in kinds:
        kwargs = dict(model_config["ecapa"])
        kwargs["per_utterance_padding"] = True
        return ecapa.build_ecapa(kwargs)
    if kind == "wav2vec2" and kind in kinds:
        return Wav2Vec2Model(Wav2Vec2Config.from_dict(model_config["wav2vec2"]), per_utterance=True)
    raise ValueError(f"model.json: encoder={kind!r} is not supported (expected "
                     f"{' or '.join(repr(k) for k in kinds)})")


def shortest_input(model):
    """(fewest 16 kHz samples an utterance may have, why) for an ECAPA-TDNN module or a
    Wav2Vec2Config; shorter utterances are skipped (embedding, training) with that reason."""
    if isinstance(model, Wav2Vec2Config):
        n = model.receptive_field
        return n, f"the encoder's receptive field of {n} samples (no frame)"
    # SpeechBrain's ECAPA-TDNN reflect-pads each convolution, which needs more frames than the
    # padding: its dilation-4 layer needs 5 frames (640 samples, 40 ms). With fewer there is no
    # reference embedding (with 1 frame the mean-normalised features are all zero: every such
    # utterance would get the same embedding).
    pad = max(same_padding(k, d) for k, d in zip(model.kernel_sizes, model.dilations))
    n = pad * audio.HOP  # 1 + n // HOP >= pad + 1 frames
    return n, (f"the {n} samples ({1000 * n // audio.SAMPLE_RATE} ms, {pad + 1} frames) ECAPA-TDNN "
               f"needs: its widest convolution reflect-pads {pad} frames on each side")


class Encoder:
    """An encoder module with its variables and the model.json that describes them.

    `Encoder(directory)` loads a checkpoint or converted folder; `Encoder(model_config=...,
    variables=...)` wraps variables in memory (e.g. a model being fine-tuned). The jitted
    embedding function is compiled once per mesh and bucket length; replacing
    `encoder.variables` reuses it.

    `layer` (wav2vec2 only; None = -1, the last): which entry of HF's `hidden_states` is
    averaged over frames (see the module docstring).
    """

    def __init__(self, directory=None, *, model_config=None, variables=None, name=None, layer=None):
        if directory is not None:
            self.directory = str(directory)
            self.model_config, self.variables = checkpoint.load_encoder_variables(directory)
        else:
            self.directory, self.model_config, self.variables = None, model_config, variables
        where = f"{self.directory}/model.json" if self.directory else "model_config"
        if self.model_config.get("encoder") not in KINDS:
            raise ValueError(f"{where}: encoder={self.model_config.get('encoder')!r} is not supported "
                             "(expected 'ecapa' or 'wav2vec2': a folder written by emosup training or "
                             "`python -m emosup.convert`)")
        if self.model_config.get("encoder") == "wav2vec2":
            self.module = build_encoder(self.model_config)
            self.w2v2_config = self.module.config
            features = self.model_config.get("features", {})
            rate = features.get("sampling_rate", audio.SAMPLE_RATE)
            if rate != audio.SAMPLE_RATE:
                raise ValueError(f"{where}: features.sampling_rate={rate}, but audio is read at "
                                 f"{audio.SAMPLE_RATE} Hz")
            self.layer = w2v2_ser.check_layer(self.w2v2_config, -1 if layer is None else layer)
            self.do_normalize = bool(features.get("do_normalize", True))
            self.min_samples, self.too_short = shortest_input(self.w2v2_config)
            fn = _w2v2_embed_fn(self.module, self.layer, self.do_normalize)
        else:
            if layer is not None:
                raise ValueError(f"{where}: layer={layer!r} applies to wav2vec2 encoders only, "
                                 f"not encoder={self.model_config.get('encoder')!r}")
            self.module = build_encoder(self.model_config)
            self.w2v2_config, self.layer = None, None
            self.min_samples, self.too_short = shortest_input(self.module)
            fn = _embed_fn(self.module)
        self._fn = fn
        self.name = name or self.model_config.get("source", self.directory)
        self._jitted = {}
        self.compiled = set()  # (mesh, padded length) already compiled, for the log

    @property
    def dim(self):
        if self.w2v2_config is not None:
            return self.w2v2_config.hidden_size
        return self.module.lin_neurons

    def jitted(self, mesh):
        if mesh not in self._jitted:  # meshes over the same devices compare equal
            self._jitted[mesh] = jax.jit(self._fn, in_shardings=(
                parallel.replicated(mesh), parallel.batch_sharded(mesh), parallel.batch_sharded(mesh)),
                out_shardings=parallel.replicated(mesh))
        return self._jitted[mesh]


def _embed_fn(module):
    def fn(variables, wavs, lengths):
        feats, n_valid = audio.utterance_features(wavs, lengths)
        emb = module.apply(variables, feats, n_valid, train=False)
        return emb, _logmel_stats(wavs, n_valid)

    return fn


def _logmel_stats(wavs, n_valid):
    """Baseline features for the study: mean and std of the log-mel over valid frames
    (the mean of the raw log-mel is what the sentence normalisation removed)."""
    raw = audio.fbank(wavs, n_valid.astype(jnp.int32))
    valid = (jnp.arange(raw.shape[1])[None, :] < n_valid[:, None])[..., None]
    mean = jnp.sum(raw * valid, axis=1) / n_valid[:, None]
    std = jnp.sqrt(jnp.sum(((raw - mean[:, None]) ** 2) * valid, axis=1) / n_valid[:, None])
    return jnp.concatenate([mean, std], -1)


def _w2v2_embed_fn(module, layer, do_normalize):
    """(variables, wavs [B, N], lengths [B]) -> (mean of hidden_states[layer] over each row's
    frames [B, H], log-mel stats [B, 160]); every row as if alone (`per_utterance=True`)."""
    def fn(variables, wavs, lengths):
        x = w2v2_ser.zero_mean_unit_var(wavs, lengths) if do_normalize else wavs
        mask = jnp.arange(wavs.shape[1])[None, :] < lengths[:, None]
        out = module.apply({"params": variables["params"]}, x, mask)
        n_valid = (1 + lengths // audio.HOP).astype(jnp.float32)  # log-mel frames, as ECAPA's
        return w2v2_ser.layer_mean(out, layer), _logmel_stats(wavs, n_valid)

    return fn


def embed_paths(encoder, paths, *, batch_per_device=8, bucket_seconds=1.0, mesh=None,
                skip_log=None, progress=True):
    """Embeds every file. Returns (embeddings [N, D], logmel_stats [N, 160], valid [N] bool).

    Rows of files that cannot be read are NaN with valid=False; they are logged in
    `skip_log` (a pipeline.SkipLog) and counted, never fatal.

    `progress`: report progress with an ETA (emosup.progress) under the name "embed", or
    under this name when it is a string; False = silent.

    On several hosts (and `mesh=None`) each host embeds its share of the batches on its own
    devices and every host receives every row (an all-gather); a `mesh` given explicitly is
    used as is, so pass `parallel.local_mesh()` to have one host embed everything alone.
    """
    hosts = jax.process_count() if mesh is None else 1
    mesh = (parallel.local_mesh() if hosts > 1 else parallel.make_mesh()) if mesh is None else mesh
    skip_log = pipeline.SkipLog() if skip_log is None else skip_log
    n = len(paths)
    lengths, _ = pipeline.scan_utterances(paths, skip_log, min_samples=encoder.min_samples,
                                          too_short=encoder.too_short)
    batch = batch_per_device * mesh.devices.size
    bucket = int(bucket_seconds * audio.SAMPLE_RATE)
    n_feat = 2 * encoder.model_config["features"].get("n_mels", audio.N_MELS)
    emb = np.full((n, encoder.dim), np.nan, np.float32)
    stats = np.full((n, n_feat), np.nan, np.float32)
    valid = np.zeros(n, bool)
    order = [i for i in np.argsort(lengths, kind="stable") if lengths[i] > 0]
    fn = encoder.jitted(mesh)
    variables = parallel.replicate(encoder.variables, mesh)

    def load(i):
        try:
            return audio.load_audio(paths[i])
        except (audio.AudioError, OSError, RuntimeError) as e:
            skip_log.add(paths[i], e)
            return None

    all_chunks = [order[s:s + batch] for s in range(0, len(order), batch)]
    chunks = all_chunks[jax.process_index()::hosts]  # this host's share (all of them on one host)
    with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool, progress_lib.Progress(
            progress if isinstance(progress, str) else "embed", sum(len(c) for c in chunks), unit="utt",
            enabled=bool(progress)) as bar:
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
            bar.update(len(idx))
    if hosts > 1:
        emb, stats, valid = _gather_host_shares(all_chunks, hosts, emb, stats, valid)
    if len(skip_log) or (hosts > 1 and (~valid).any()):
        logging.warning("embed: %d of %d utterances could not be read and were skipped", int((~valid).sum()), n)
    return emb, stats, valid


def _gather_host_shares(all_chunks, hosts, *arrays):
    """Every host's rows of `arrays` to every host: host p computed the rows of chunks p, p+H, ..."""
    from jax.experimental import multihost_utils

    rows = [np.asarray([i for c in all_chunks[p::hosts] for i in c], np.int64) for p in range(hosts)]
    width = max(1, max(len(r) for r in rows))
    mine = rows[jax.process_index()]
    packed = []
    for a in arrays:
        buf = np.zeros((width,) + a.shape[1:], a.dtype)
        buf[:len(mine)] = a[mine]
        packed.append(buf)
    gathered = [np.asarray(g) for g in multihost_utils.process_allgather(tuple(packed))]  # each [hosts, width, ...]
    out = [a.copy() for a in arrays]
    for p in range(hosts):
        for o, g in zip(out, gathered):
            o[rows[p]] = g[p, :len(rows[p])]
    return tuple(out)
