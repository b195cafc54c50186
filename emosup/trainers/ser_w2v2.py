"""wav2vec 2.0 in SER fine-tuning (`run(config, workdir, corpus, arm)`), alone or with the paper's objectives.

Arms (config_lib.W2V2_ARMS; the combinations are emosup's choices):
* `w2v2`              SER loss alone (class-weighted CE and/or CCC) on `Wav2Vec2ForSER`.
* `w2v2_contrastive`  + λ_c · intra-speaker InfoNCE on the pooled projection of (anchor,
                      positive, K negatives) groups from the pair table of the speaker encoder
                      (the same pair service as the ECAPA arms), drawn from the unlabelled
                      training rows, emotions unused.
* `w2v2_multitask`    + λ_c · contrastive + λ_s · AAM-softmax speaker loss on the anchors' and
                      positives' pooled projections.
* `w2v2_fusion`       the classifier sees [pooled wav2vec2 projection, the pretrained ECAPA
                      embedding of the same audio (frozen)].

The wav2vec2 weights come from `config.w2v2.init` (a folder of `python -m emosup.convert
wav2vec2`); empty = a randomly initialised configuration `config.w2v2.model` (the demo uses a
tiny one so the arms run on a CPU, and says so). The body runs per utterance (padding never
changes a row), the convolutional feature encoder is frozen (as HF's fine-tuning recipes do),
and the transformer is frozen for the first `ser.freeze_steps` steps. Everything else is
`ser.fit`'s; these arms export no model folder for `predict`.
"""
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax.training import train_state

from emosup import audio, checkpoint, config_lib, errors, losses
from emosup.convert import hf_wav2vec2
from emosup.data import pipeline
from emosup.models import w2v2_ser
from emosup.models.encoders import build_encoder, shortest_input
from emosup.models.heads import ProjectionHead, SerHead
from emosup.models.wav2vec2 import Wav2Vec2Config
from emosup.pairs import service as pair_service
from emosup.trainers import loop, ser


class W2V2Arm(nn.Module):
    """Wav2Vec2ForSER (+ fusion head, projection head, speaker classifier as the arm needs)."""

    config: Wav2Vec2Config
    num_classes: int
    num_dims: int
    fusion_dim: int = 0            # > 0: SER from [pooled, ECAPA embedding] (w2v2_fusion)
    projection: bool = False       # contrastive projection head on the pooled projection
    num_speakers: int = 0          # > 0: AAM-softmax speaker classifier weight
    projection_dim: int = 128
    projection_hidden: int = 256

    def setup(self):
        self.ser = w2v2_ser.Wav2Vec2ForSER(self.config, num_classes=max(self.num_classes, 1),
                                           num_dims=self.num_dims, per_utterance=True)
        if self.fusion_dim:
            self.fusion = SerHead(num_classes=self.num_classes, num_dims=self.num_dims)
        if self.projection:
            self.proj = ProjectionHead(hidden=self.projection_hidden, features=self.projection_dim)
        if self.num_speakers:
            self.speaker_weight = self.param("speaker_weight", nn.initializers.xavier_uniform(),
                                             (self.num_speakers, self.ser.classifier_proj_size))

    def __call__(self, wavs, lengths, ecapa=None, *, train=False, freeze_feature_encoder=True):
        """(logits or None, dims or None, pooled [B, P]) for waveforms [B, N] of `lengths`."""
        mask = jnp.arange(wavs.shape[1])[None, :] < lengths[:, None]
        logits, dims, pooled = self.ser(wavs, mask, train=train, freeze_feature_encoder=freeze_feature_encoder)
        if self.fusion_dim:
            logits, dims = self.fusion(jnp.concatenate([pooled, ecapa], -1))
        return (logits if self.num_classes else None), dims, pooled

    def project(self, pooled):
        return self.proj(pooled)

    def init_all(self, wavs, lengths, ecapa):
        out = self(wavs, lengths, ecapa)
        if self.projection:
            self.project(out[2])
        return out


_CONVERT = "convert an HF checkpoint with `python -m emosup.convert wav2vec2 SRC_DIR OUT_DIR` and give OUT_DIR"


def _w2v2_init(w2v2):
    """(Wav2Vec2Config, do_normalize, source, pretrained body params or None) of `config.w2v2`.

    The architecture is the one the init folder's model.json describes (`w2v2.model` is used
    only without an init); its variables must have every weight of that architecture, with
    its shape. Raises ValueError naming `config.w2v2.init`, the problem and the fix.
    """
    if not w2v2.init:
        cfg = Wav2Vec2Config.from_dict(w2v2.model.to_dict())
        return cfg, True, "random " + cfg.family + " (no pretrained checkpoint)", None
    where = f"config.w2v2.init={w2v2.init}"
    init = pathlib.Path(w2v2.init)
    if (init / "config.json").is_file() and not (init / checkpoint.MODEL_JSON).is_file():
        raise ValueError(f"{where}: a HuggingFace folder, not yet converted: {_CONVERT}")
    model_config = checkpoint.read_model_json(init)
    if model_config.get("encoder") != "wav2vec2":
        raise ValueError(f"{where}: model.json says encoder={model_config.get('encoder')!r}, expected "
                         f"a wav2vec2 folder: {_CONVERT}")
    rate = model_config.get("features", {}).get("sampling_rate", audio.SAMPLE_RATE)
    if rate != audio.SAMPLE_RATE:
        raise ValueError(f"{where}: model.json says features.sampling_rate={rate}, but audio is read "
                         f"at {audio.SAMPLE_RATE} Hz: give a wav2vec2 converted from a checkpoint "
                         "trained on 16 kHz speech")
    cfg = Wav2Vec2Config.from_dict(model_config["wav2vec2"])
    _, variables = checkpoint.load_encoder_variables(init)
    expected = hf_wav2vec2.param_shapes(cfg)
    got = {tuple(k.key for k in p): np.shape(a)
           for p, a in jax.tree_util.tree_leaves_with_path(variables["params"])}
    problems = ([f"{'/'.join(p)}: saved {got[p]}, model {expected[p]}"
                 for p in expected if p in got and tuple(got[p]) != tuple(expected[p])]
                + [f"{'/'.join(p)}: missing" for p in expected if p not in got]
                + [f"{'/'.join(p)}: not a weight of the model" for p in got if p not in expected])
    if problems:
        raise ValueError(
            f"{where}: its variables do not fit the wav2vec2 its model.json describes "
            f"({cfg.num_hidden_layers} layers x hidden_size {cfg.hidden_size}); {len(problems)} "
            f"problem(s), first: {'; '.join(problems[:3])}. The folder mixes two models: convert the "
            "HF checkpoint again into an empty OUT_DIR (`python -m emosup.convert wav2vec2 SRC_DIR "
            "OUT_DIR`)")
    return (cfg, bool(model_config.get("features", {}).get("do_normalize", True)),
            model_config.get("source", str(w2v2.init)), variables["params"])


def validate(config, arm=None, name="config", check_init=True):
    """Fails before any work: the arm, the SER settings (ser.validate, fields named as
    `name`.field) and, with `check_init`, config.w2v2.init (which this reads whole)."""
    if arm is not None and arm not in config_lib.W2V2_ARMS:
        raise ValueError(f"wav2vec2 arm {arm!r}: expected one of {config_lib.W2V2_ARMS}")
    ser.validate(config, name)
    if check_init:
        _w2v2_init(config.w2v2)


def _get(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree


def _group(path, _):
    name = jax.tree_util.keystr(path)
    if "wav2vec2" not in name:
        return "head"
    # The conv feature encoder gets no gradient, and must get no update either: AdamW's
    # weight decay alone would otherwise shrink it every step after the freeze.
    return "frozen" if "feature_extractor" in name else "body"


class Wav2Vec2Ser:
    """The model, extra losses and per-utterance evaluation of one wav2vec2 arm."""

    def __init__(self, config, arm, fusion_encoder=None, embedding_cache=None):
        with errors.config_errors():
            validate(config, arm, check_init=False)
        # The init is read (and checked) once, before any other work.
        self.w2v2_cfg, self.do_normalize, self.source, self.pretrained = _w2v2_init(config.w2v2)
        self.config, self.arm, self.fusion_encoder, self.embedding_cache = config, arm, fusion_encoder, embedding_cache
        self.log_name = f"finetune {arm}"
        self.what = f"{arm} fine-tuning"
        self.start, self.results_extra = {"init": f"{arm}: {self.source}"}, {"wav2vec2": self.source}

    def build(self, corpus, classes, n_classes, n_dims, crop, key, skip_log):
        config, arm = self.config, self.arm
        self.classes, self.n_classes, self.n_dims, self.key, self.skip_log = classes, n_classes, n_dims, key, skip_log
        # --- Unlabelled rows and pairs (contrastive / multitask arms). ---
        self.table = None
        unl_rows = [u for u in corpus.manifest.select(split=corpus.train_split)
                    if (u.extra.get("speaker_known", "1") != "0")]
        speakers = sorted({u.speaker for u in unl_rows})
        if config_lib.uses_pairs(arm):
            self.unl_paths = [u.path for u in unl_rows]
            spk_index = {s: i for i, s in enumerate(speakers)}
            self.unl_labels = np.array([spk_index[u.speaker] for u in unl_rows], np.int32)
            self.unl_lengths, _ = pipeline.scan_utterances(self.unl_paths, skip_log)
            self.table = pair_service.table_from_encoder(config, self.unl_paths, self.unl_labels,
                                                         self.unl_lengths, skip_log, self.embedding_cache)
        # --- Model. ---
        self.ecapa = self.ecapa_vars = None
        if arm == "w2v2_fusion":
            ecapa_config, self.ecapa_vars = checkpoint.load_encoder_variables(self.fusion_encoder)
            self.ecapa = build_encoder(ecapa_config, kinds=("ecapa",))
        self.model = W2V2Arm(self.w2v2_cfg, n_classes, n_dims, fusion_dim=self.ecapa.lin_neurons if self.ecapa else 0,
                             projection=config_lib.uses_pairs(arm),
                             num_speakers=len(speakers) if arm == "w2v2_multitask" else 0,
                             projection_dim=config.loss.projection_dim,
                             projection_hidden=config.loss.projection_hidden)
        dummy_ecapa = jnp.zeros((1, self.ecapa.lin_neurons)) if self.ecapa else None
        params = self.model.init(jax.random.fold_in(key, 1), jnp.zeros((1, crop)), jnp.full((1,), crop),
                                 dummy_ecapa, method=W2V2Arm.init_all)["params"]
        params = jax.tree.map(np.asarray, params)
        if self.pretrained is not None:  # the converted body replaces the random one, shapes checked
            body = params["ser"]["wav2vec2"]
            mismatch = [jax.tree_util.keystr(p) for p, a in jax.tree_util.tree_leaves_with_path(body)
                        if np.shape(a) != np.shape(_get(self.pretrained, p))]
            if mismatch:
                raise ValueError(f"{config.w2v2.init}: shapes differ from the model at {mismatch[:5]}")
            params["ser"]["wav2vec2"] = jax.tree.map(np.asarray, self.pretrained)
        self.params = params
        self._predict = jax.jit(lambda p, w, n, e: self.model.apply({"params": p}, self._normalise(w, n), n, e))
        self._ecapa_jit = jax.jit(self._ecapa_embed) if self.ecapa else None
        logging.info("finetune %s: wav2vec2 from %s", arm, self.source)

    def initial_state(self):
        tx = ser.optimizer(self.config, jax.tree_util.tree_map_with_path(_group, self.params),
                           encoder="body", head="head", frozen="frozen")
        return train_state.TrainState.create(apply_fn=self.model.apply, params=self.params, tx=tx)

    def _normalise(self, wavs, lengths):
        return w2v2_ser.zero_mean_unit_var(wavs, lengths) if self.do_normalize else wavs

    def _ecapa_embed(self, wavs, lengths):
        feats, n_valid = audio.utterance_features(wavs, lengths)
        return jax.lax.stop_gradient(self.ecapa.apply(self.ecapa_vars, feats, n_valid, train=False))

    def train_step(self, class_w, mesh):
        """`(step, state, batch) → (state, metrics)`: the SER loss plus the arm's pair terms, with
        a dropout key of the step."""
        config, model, ecapa, norm = self.config, self.model, self.ecapa, self._normalise
        lc, ls = float(config.w2v2.contrastive_weight), float(config.w2v2.speaker_weight)

        def loss_fn(params, batch, rng):
            wavs, lengths = batch["audio"], batch["lengths"]
            e = self._ecapa_embed(wavs, lengths) if ecapa else None
            logits, dims, _ = model.apply({"params": params}, norm(wavs, lengths), lengths,
                                          e, train=True, rngs={"dropout": rng})
            loss = ser.ser_loss(logits, dims, batch, class_w)
            out = {"ser_loss": loss}
            if "pair_audio" in batch:
                b, g, n = batch["pair_audio"].shape
                pw, pl = batch["pair_audio"].reshape(b * g, n), batch["pair_lengths"].reshape(b * g)
                _, _, pooled = model.apply({"params": params}, norm(pw, pl), pl,
                                           jnp.zeros((b * g, model.fusion_dim)) if ecapa else None,
                                           train=True, rngs={"dropout": jax.random.fold_in(rng, 1)})
                z = model.apply({"params": params}, pooled, method=W2V2Arm.project).reshape(b, g, -1)
                con, _ = losses.info_nce(z[:, 0], z[:, 1], z[:, 2:], temperature=config.loss.temperature,
                                         symmetric=config.loss.symmetric, weights=batch["pair_weights"])
                loss, out["contrastive_loss"] = loss + lc * con, con
                if model.num_speakers:
                    sp = pooled.reshape(b, g, -1)[:, :2].reshape(2 * b, -1)
                    spl, _ = losses.aam_softmax(sp, params["speaker_weight"], jnp.repeat(batch["pair_labels"], 2),
                                                config.loss.aam_margin, config.loss.aam_scale,
                                                jnp.repeat(batch["pair_weights"], 2))
                    loss, out["speaker_loss"] = loss + ls * spl, spl
            out["loss"] = loss
            return loss, out

        def step(state, batch, rng):
            (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
            return state.apply_gradients(grads=grads), out

        step_fn = loop.jit_step(step, mesh, num_replicated=1)
        return lambda s, state, batch: step_fn(state, batch, jax.random.fold_in(self.key, 1000 + s))

    def shortest_input(self):
        # The fusion arm also runs its ECAPA on the crops: the longer of the two minimums.
        return max([shortest_input(self.w2v2_cfg)] + ([shortest_input(self.ecapa)] if self.ecapa else []))

    def pair_batches(self, common):
        """The pair groups of each step as batch fields, or None for an arm without pairs."""
        if self.table is None:
            return None
        groups = pipeline.pair_batches(self.unl_paths, self.unl_labels, self.unl_lengths, self.table, **common)
        return ({"pair_audio": p["audio"], "pair_lengths": p["lengths"], "pair_labels": p["labels"],
                 "pair_weights": p["weights"]} for p in groups)

    def host_variables(self, state):
        return jax.device_get(state.params)

    def evaluate(self, params, rows):
        """Scores `rows` one utterance at a time (each as if alone), padded to whole seconds (one
        compile per length bucket); unreadable files are counted and logged as skipped."""
        params = jax.device_put(params)
        bucket = audio.SAMPLE_RATE
        out_logits, out_dims, valid = [], [], []
        for u in rows:
            try:
                x = audio.load_audio(u.path)
            except (audio.AudioError, OSError) as err:
                self.skip_log.add(u.path, err)
                valid.append(False)
                out_logits.append(np.zeros(max(self.n_classes, 1)))
                out_dims.append(np.zeros(max(self.n_dims, 1)))
                continue
            n = max(len(x), self.w2v2_cfg.receptive_field)
            padded = np.zeros((1, -(-n // bucket) * bucket), np.float32)
            padded[0, :len(x)] = x
            e = self._ecapa_jit(padded, np.asarray([len(x)], np.int32)) if self.ecapa else None
            lg, dm, _ = self._predict(params, padded, np.asarray([len(x)], np.int32), e)
            out_logits.append(np.zeros(1) if lg is None else np.asarray(lg[0]))
            out_dims.append(np.zeros(1) if dm is None else np.asarray(dm[0]))
            valid.append(True)
        return ser.scores(np.stack(out_logits) if self.n_classes else None,
                          np.stack(out_dims) if self.n_dims else None, valid, rows, self.classes)

    def export(self, workdir, best, test, calibration):
        """Nothing: the wav2vec2 arms export no model folder."""


def run(config, workdir, corpus=None, arm="w2v2", *, fusion_encoder=None, embedding_cache=None):
    """SER fine-tuning of wav2vec2 arm `arm` (config_lib.W2V2_ARMS; `fusion_encoder`: the ECAPA
    folder of `w2v2_fusion`; `embedding_cache`: see pairs.service.table_from_encoder): ser.fit
    with this encoder; returns the results.json dict."""
    return ser.fit(Wav2Vec2Ser(config, arm, fusion_encoder, embedding_cache), config, workdir, corpus)
