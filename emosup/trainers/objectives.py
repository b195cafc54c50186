"""Pretraining objectives: variables, loss functions and the train step of each.

Objectives (docs/method.md §Objectives; the forms are emosup's choices, exposed in config.loss):
* `speaker`      AAM-softmax over training speakers (m=0.2, s=30, SpeechBrain's values).
* `contrastive`  intra-speaker InfoNCE on projected embeddings of (anchor, positive,
                 K negatives) from the pair table, both directions, temperature τ.
* `multitask`    contrastive + λ · AAM-softmax on the anchors' and positives' embeddings.
* `adversarial`  contrastive + AAM-softmax through a gradient-reversal layer (scale λ): the
                 speaker classifier learns speakers, the encoder is pushed to forget them.

Batches: `speaker` gets {"audio" [B, N], "lengths" [B], "labels" [B], "weights" [B]};
the pair objectives get "audio" [B, 2+K, N] and "lengths" [B, 2+K] (anchor, positive,
negatives), "labels" = the anchor's speaker, "weights" [B].
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from emosup import audio, losses
from emosup.config_lib import OBJECTIVES, uses_pairs
from emosup.models.heads import ProjectionHead


def uses_speakers(objective):
    return objective != "contrastive"


def projection_head(loss_cfg):
    return ProjectionHead(hidden=loss_cfg.projection_hidden, features=loss_cfg.projection_dim)


def init_variables(objective, encoder, loss_cfg, num_speakers, key, feat_shape):
    """{"params": {"encoder", ["classifier"], ["projection"]}, "batch_stats": {"encoder"}}."""
    k_enc, k_cls, k_proj = jax.random.split(key, 3)
    enc_vars = encoder.init(k_enc, jnp.zeros(feat_shape, jnp.float32), None, train=False)
    params = {"encoder": enc_vars["params"]}
    if uses_speakers(objective):
        # xavier uniform, as SpeechBrain's ECAPA `Classifier` initialises its weight.
        params["classifier"] = {"weight": nn.initializers.xavier_uniform()(
            k_cls, (num_speakers, encoder.lin_neurons))}
    if uses_pairs(objective):
        params["projection"] = projection_head(loss_cfg).init(
            k_proj, jnp.zeros((1, encoder.lin_neurons)))["params"]
    return {"params": params, "batch_stats": {"encoder": enc_vars.get("batch_stats", {})}}


def _embed(encoder, params, batch_stats, wavs, lengths):
    feats, n_valid = audio.utterance_features(wavs, lengths)
    emb, updates = encoder.apply({"params": params["encoder"], "batch_stats": batch_stats["encoder"]},
                                 feats, n_valid, train=True, mutable=["batch_stats"])
    return emb, {"encoder": updates["batch_stats"]}


def _speaker_terms(emb, weight, labels, weights, loss_cfg):
    loss, _ = losses.aam_softmax(emb, weight, labels, loss_cfg.aam_margin, loss_cfg.aam_scale, weights)
    cos = losses.cosine_logits(emb, weight)
    acc = losses.weighted_mean((jnp.argmax(cos, -1) == labels).astype(jnp.float32), weights)
    return loss, acc


def make_loss_fn(objective, encoder, loss_cfg):
    """loss_fn(params, batch_stats, batch) -> (loss, (new_batch_stats, metrics))."""
    if objective not in OBJECTIVES:
        raise ValueError(f"config.objective={objective!r}: expected one of {OBJECTIVES}")
    head = projection_head(loss_cfg)

    def speaker_loss(params, batch_stats, batch):
        emb, stats = _embed(encoder, params, batch_stats, batch["audio"], batch["lengths"])
        loss, acc = _speaker_terms(emb, params["classifier"]["weight"], batch["labels"],
                                   batch["weights"], loss_cfg)
        return loss, (stats, {"speaker_loss": loss, "speaker_accuracy": acc})

    def pair_loss(params, batch_stats, batch):
        b, g, n = batch["audio"].shape  # g = 2 + K utterances per anchor
        emb, stats = _embed(encoder, params, batch_stats, batch["audio"].reshape(b * g, n),
                            batch["lengths"].reshape(b * g))
        emb = emb.reshape(b, g, -1)
        z = head.apply({"params": params["projection"]}, emb)
        con, m = losses.info_nce(z[:, 0], z[:, 1], z[:, 2:], temperature=loss_cfg.temperature,
                                 symmetric=loss_cfg.symmetric, weights=batch["weights"])
        metrics = {"contrastive_loss": con, **{f"contrastive_{k}": v for k, v in m.items()}}
        total = con
        if objective in ("multitask", "adversarial"):
            # Anchor and positive share the anchor's speaker by construction.
            sp_emb = emb[:, :2].reshape(2 * b, -1)
            if objective == "adversarial":
                sp_emb = losses.gradient_reversal(sp_emb, loss_cfg.grl_scale)
            sp_labels = jnp.repeat(batch["labels"], 2)
            sp_loss, acc = _speaker_terms(sp_emb, params["classifier"]["weight"], sp_labels,
                                          jnp.repeat(batch["weights"], 2), loss_cfg)
            metrics.update(speaker_loss=sp_loss, speaker_accuracy=acc)
            total = total + (loss_cfg.speaker_weight * sp_loss if objective == "multitask" else sp_loss)
        return total, (stats, metrics)

    return speaker_loss if objective == "speaker" else pair_loss


def make_train_step(loss_fn):
    """(state, batch) -> (state, metrics); skips (and counts) non-finite updates."""

    def train_step(state, batch):
        (loss, (new_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, batch)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updated = state.apply_gradients(grads=grads, batch_stats=new_stats)
        # A non-finite step leaves parameters and statistics untouched and is counted; the
        # host stops the run at the next log line, naming the step window.
        keep = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated,
                            state.replace(step=state.step + 1))
        keep = keep.replace(nonfinite=state.nonfinite + (~finite).astype(jnp.int32))
        return keep, {"loss": loss, "grad_norm": grad_norm, **metrics}

    return train_step
