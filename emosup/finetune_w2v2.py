"""SER fine-tuning of wav2vec 2.0, alone or with the paper's objectives (issue: the w2v2 arms).

Arms (PAPER.md Claim 4 on a wav2vec2 backbone; the combinations are our choices):
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
tiny one so the arms run on a CPU, and says so). The body runs per utterance
(`Wav2Vec2PerUtterance`: padding never changes a row), the convolutional feature encoder is
frozen (as HF's fine-tuning recipes do), and the transformer is frozen for the first
`ser.freeze_steps` steps. Rows, dev selection, metrics, checkpoints and resume follow
`emosup.finetune` exactly; the results dict has the same schema, the dev-fitted temperature
and ECE (`finetune.calibrate`) included (these arms export no model folder for `predict`).
"""
import json
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from emosup import audio, checkpoint, errors, finetune, logs, losses, parallel, run_config
from emosup.convert import hf_wav2vec2
from emosup.data import pipeline
from emosup.finetune import (DIMENSIONS, ROW_ARRAYS, _dims, _selection_score, _split_rows, calibrate, restore,
                              scores, window_means)
from emosup.models import w2v2_ser
from emosup.models.heads import ProjectionHead, SerHead
from emosup.models.speaker import build_encoder
from emosup.models.wav2vec2 import Wav2Vec2Config

ARMS = ("w2v2", "w2v2_contrastive", "w2v2_multitask", "w2v2_fusion")


def uses_pairs(arm):
    return arm in ("w2v2_contrastive", "w2v2_multitask")


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


def _normalise(wavs, lengths, do_normalize):
    return w2v2_ser.zero_mean_unit_var(wavs, lengths) if do_normalize else wavs


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
    """Fails before any work: the arm, the SER settings (finetune.validate, fields named as
    `name`.field) and, with `check_init`, config.w2v2.init (which this reads whole)."""
    if arm is not None and arm not in ARMS:
        raise ValueError(f"wav2vec2 arm {arm!r}: expected one of {ARMS}")
    finetune.validate(config, name)
    if check_init:
        _w2v2_init(config.w2v2)


def run(config, workdir, corpus, arm, *, pair_encoder=None, fusion_encoder=None, embedding_cache=None):
    """Fine-tunes arm `arm` and evaluates; writes results.json into workdir (finetune's schema)."""
    with errors.config_errors():
        validate(config, arm, check_init=False)
    # The init is read (and checked) once, before any other work.
    w2v2_cfg, do_normalize, source, pretrained = _w2v2_init(config.w2v2)
    from emosup import embed, train  # pair tables and the ECAPA embedder

    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    # A resume must continue the same run: stop now if the saved config differs. The pair
    # settings are a whole pretraining config; the experiment-only sections in it are not read.
    run_config.prepare(workdir, config, resuming=run_config.holds_state(workdir, ("results.json",)),
                       ignore=tuple(f"pair_config.{s}" for s in run_config.EXPERIMENT_ONLY),
                       what=f"{arm} fine-tuning")
    train_rows, dev_rows, test_rows, classes = _split_rows(config, corpus)
    target = config.ser.target
    n_classes = len(classes) if target in ("categorical", "both") else 0
    n_dims = len(DIMENSIONS) if target in ("dimensional", "both") else 0
    mesh = parallel.make_mesh()
    local_batch = parallel.local_batch_size(config.batch_size, mesh)
    crop = int(round(config.data.crop_seconds * audio.SAMPLE_RATE))
    key = jax.random.key(config.seed)

    # --- Unlabelled rows and pairs (contrastive / multitask arms). ---
    skip_log = pipeline.SkipLog()
    pair_cfg = table = None
    unl_rows = [u for u in corpus.manifest.select(split=corpus.train_split)
                if (u.extra.get("speaker_known", "1") != "0")]
    speakers = sorted({u.speaker for u in unl_rows})
    if uses_pairs(arm):
        unl_paths = [u.path for u in unl_rows]
        spk_index = {s: i for i, s in enumerate(speakers)}
        unl_labels = np.array([spk_index[u.speaker] for u in unl_rows], np.int32)
        unl_lengths, _ = pipeline.scan_utterances(unl_paths, skip_log)
        pair_cfg = config.pair_config
        table = train.build_pair_table(pair_cfg, unl_paths, unl_labels, unl_lengths, skip_log,
                                       embedding_cache)

    # --- Model. ---
    ecapa = ecapa_vars = None
    if arm == "w2v2_fusion":
        ecapa_config, ecapa_vars = checkpoint.load_encoder_variables(fusion_encoder)
        ecapa = build_encoder(ecapa_config)
    model = W2V2Arm(w2v2_cfg, n_classes, n_dims, fusion_dim=ecapa.lin_neurons if ecapa else 0,
                    projection=uses_pairs(arm), num_speakers=len(speakers) if arm == "w2v2_multitask" else 0,
                    projection_dim=config.loss.projection_dim, projection_hidden=config.loss.projection_hidden)
    dummy_ecapa = jnp.zeros((1, ecapa.lin_neurons)) if ecapa else None
    params = model.init(jax.random.fold_in(key, 1), jnp.zeros((1, crop)), jnp.full((1,), crop),
                        dummy_ecapa, method=W2V2Arm.init_all)["params"]
    params = jax.tree.map(np.asarray, params)
    if pretrained is not None:  # the converted body replaces the random one, shapes checked
        body = params["ser"]["wav2vec2"]
        mismatch = [jax.tree_util.keystr(p) for p, a in jax.tree_util.tree_leaves_with_path(body)
                    if np.shape(a) != np.shape(_get(pretrained, p))]
        if mismatch:
            raise ValueError(f"{config.w2v2.init}: shapes differ from the model at {mismatch[:5]}")
        params["ser"]["wav2vec2"] = jax.tree.map(np.asarray, pretrained)
    logging.info("finetune %s: wav2vec2 from %s", arm, source)

    freeze = int(config.ser.freeze_steps)
    body_lr = optax.join_schedules(
        [optax.constant_schedule(0.0),
         optax.cosine_decay_schedule(config.optim.lr_encoder, max(config.total_steps - freeze, 1), 0.1)],
        [freeze])
    head_lr = optax.cosine_decay_schedule(config.optim.lr_head, config.total_steps, 0.1)
    def group(path, _):
        name = jax.tree_util.keystr(path)
        if "wav2vec2" not in name:
            return "head"
        # The conv feature encoder gets no gradient, and must get no update either: AdamW's
        # weight decay alone would otherwise shrink it every step after the freeze.
        return "frozen" if "feature_extractor" in name else "body"

    labels_tree = jax.tree_util.tree_map_with_path(group, params)
    tx = optax.chain(optax.clip_by_global_norm(config.optim.grad_clip), optax.multi_transform(
        {"body": optax.adamw(body_lr, weight_decay=config.optim.weight_decay),
         "head": optax.adamw(head_lr, weight_decay=config.optim.weight_decay),
         "frozen": optax.set_to_zero()}, labels_tree))
    state = parallel.replicate(train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx), mesh)

    # --- Loss. ---
    counts = np.bincount([classes.index(u.emotion) for u in train_rows], minlength=len(classes))
    class_w = jnp.asarray(losses.class_weights_from_counts(counts)) if (
        n_classes and config.ser.class_weights) else None
    lc, ls = float(config.w2v2.contrastive_weight), float(config.w2v2.speaker_weight)

    def ecapa_embed(wavs, lengths):
        feats, n_valid = audio.utterance_features(wavs, lengths)
        return jax.lax.stop_gradient(ecapa.apply(ecapa_vars, feats, n_valid, train=False))

    def loss_fn(params, batch, rng):
        wavs, lengths = batch["audio"], batch["lengths"]
        e = ecapa_embed(wavs, lengths) if ecapa else None
        logits, dims, _ = model.apply({"params": params}, _normalise(wavs, lengths, do_normalize), lengths,
                                      e, train=True, rngs={"dropout": rng})
        loss, out = 0.0, {}
        if logits is not None:
            loss += losses.weighted_cross_entropy(logits, batch["labels"], class_w, batch["weights"])
        if dims is not None:
            loss += losses.ccc_loss(dims, batch["dims"], batch["weights"])
        out["ser_loss"] = loss
        if "pair_audio" in batch:
            b, g, n = batch["pair_audio"].shape
            pw, pl = batch["pair_audio"].reshape(b * g, n), batch["pair_lengths"].reshape(b * g)
            _, _, pooled = model.apply({"params": params}, _normalise(pw, pl, do_normalize), pl,
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

    step_fn = jax.jit(step, donate_argnums=0, in_shardings=(
        parallel.replicated(mesh), parallel.batch_sharded(mesh), parallel.replicated(mesh)),
        out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)))

    # --- Data: labelled crops (and pair groups), pure functions of (seed, step). ---
    paths = [u.path for u in train_rows]
    labels = np.array([classes.index(u.emotion) for u in train_rows], np.int32)
    # The fusion arm also runs its ECAPA on these crops: the longer of the two minimums.
    min_samples, too_short = max([embed.shortest_input(w2v2_cfg)]
                                 + ([embed.shortest_input(ecapa)] if ecapa else []))
    lengths, _ = pipeline.scan_utterances(paths, skip_log, min_samples=min_samples, too_short=too_short)
    dims_all = _dims(train_rows, corpus.manifest_path) if n_dims else None
    sampler = pipeline.CropSampler(lengths, crop, config.batch_size, config.seed)

    ckpt = checkpoint.Checkpointer(workdir, keep=2)
    writer = logs.Summaries(workdir)  # TensorBoard: train loss, dev and test metrics
    state, start_step, history, best, best_score = restore(ckpt, state, skip_log)
    common = dict(crop_samples=crop, global_batch=config.batch_size, local_batch=local_batch,
                  process_index=jax.process_index(), seed=config.seed, start_step=start_step,
                  num_steps=config.total_steps, skip_log=skip_log)
    batches = pairs = iter(())
    if start_step < config.total_steps:
        batches = pipeline.crop_batches(paths, labels, lengths, **common)
        if table is not None:
            pairs = pipeline.pair_batches(unl_paths, unl_labels, unl_lengths, table, **common)

    # --- Evaluation on whole utterances (each as if alone), dev selection, checkpoints. ---
    predict = jax.jit(lambda p, w, n, e: model.apply({"params": p}, _normalise(w, n, do_normalize), n, e))
    ecapa_jit = jax.jit(ecapa_embed) if ecapa else None

    def evaluate(params, rows):
        """One utterance at a time, padded to whole seconds (one compile per length bucket)."""
        params = jax.device_put(params)
        bucket = audio.SAMPLE_RATE
        out_logits, out_dims, valid = [], [], []
        for u in rows:
            try:
                x = audio.load_audio(u.path)
            except (audio.AudioError, OSError) as err:
                skip_log.add(u.path, err)
                valid.append(False)
                out_logits.append(np.zeros(max(n_classes, 1)))
                out_dims.append(np.zeros(max(n_dims, 1)))
                continue
            n = max(len(x), w2v2_cfg.receptive_field)
            padded = np.zeros((1, -(-n // bucket) * bucket), np.float32)
            padded[0, :len(x)] = x
            e = ecapa_jit(padded, np.asarray([len(x)], np.int32)) if ecapa else None
            lg, dm, _ = predict(params, padded, np.asarray([len(x)], np.int32), e)
            out_logits.append(np.zeros(1) if lg is None else np.asarray(lg[0]))
            out_dims.append(np.zeros(1) if dm is None else np.asarray(dm[0]))
            valid.append(True)
        return scores(np.stack(out_logits) if n_classes else None,
                      np.stack(out_dims) if n_dims else None, valid, rows, classes)

    t0, window = time.time(), []
    best_dev = None  # the dev scores (logits) of `best` when this run selected it, for calibration
    try:
        for s in range(start_step, config.total_steps):
            batch = next(batches)
            if dims_all is not None:
                first = jax.process_index() * local_batch
                batch["dims"] = dims_all[[sampler(s, first + r)[0] for r in range(local_batch)]]
            if table is not None:
                p = next(pairs)
                batch.update(pair_audio=p["audio"], pair_lengths=p["lengths"], pair_labels=p["labels"],
                             pair_weights=p["weights"])
            state, m = step_fn(state, parallel.to_global(batch, mesh), jax.random.fold_in(key, 1000 + s))
            window.append(m)
            done = s + 1
            if done % config.eval_every == 0 or done == config.total_steps:
                m = window_means(window)
                host = jax.device_get(state.params)
                dev = evaluate(host, dev_rows)
                score = _selection_score(dev, target)
                writer.scalars(done, {**{f"train/{k}": v for k, v in m.items()},
                                      **{f"dev/{k}": v for k, v in dev.items()}})
                history.append({"step": done, **m,
                                "dev": {k: v for k, v in dev.items() if k not in ROW_ARRAYS + ("confusion",)}})
                logging.info("finetune %s step %d/%d  loss %.4f  dev %.4f%s  (%.0fs)", arm, done,
                             config.total_steps, float(m["loss"]), score,
                             "  *best*" if score > best_score else "", time.time() - t0)
                if score > best_score or best is None:
                    best, best_score, best_dev = host, score, dev
                meta = {"step": done, "history": history,
                        "best_score": float(best_score) if np.isfinite(best_score) else None}
                ckpt.save(done, state, json.loads(json.dumps(meta, default=float)), extra={"best": best})
    finally:
        ckpt.close()

    test = evaluate(best, test_rows)
    writer.scalars(config.total_steps, {f"test/{k}": v for k, v in test.items()})
    if n_classes and best_dev is None:  # resumed with `best` from a checkpoint: score dev again
        best_dev = evaluate(best, dev_rows)
    calibration = calibrate(best_dev, test, target)
    best_step = max(history, key=lambda h: _selection_score(h["dev"], target))["step"]
    result = {"classes": classes, "target": target, "init": f"{arm}: {source}", "seed": config.seed,
              "labels_per_class": config.ser.labels_per_class, "train_utterances": len(train_rows),
              "dev_utterances": len(dev_rows), "best_step": best_step, "dev_score": best_score,
              "test": {k: v for k, v in test.items() if k not in ROW_ARRAYS}, "history": history,
              "temperature": calibration["temperature"], "calibration": calibration,
              "skipped": skip_log.as_dict(), "wav2vec2": source}
    result["config"] = run_config.CONFIG_JSON
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(result, indent=2))
    return result


def _get(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree
