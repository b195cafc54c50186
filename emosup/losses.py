"""Losses. Pure jnp, per-example weights so that skipped (unreadable) examples count as zero.

Shapes: B examples, S speakers (classes), D embedding size.
"""
import math

import jax
import jax.numpy as jnp


def cosine_logits(embeddings, weight):
    """Cosine similarity between L2-normalised embeddings [B, D] and class weights [S, D] → [B, S].

    This is SpeechBrain's ECAPA `Classifier` (F.linear of normalised input and weights).
    """
    e = embeddings * jax.lax.rsqrt(jnp.maximum(jnp.sum(embeddings**2, -1, keepdims=True), 1e-24))
    w = weight * jax.lax.rsqrt(jnp.maximum(jnp.sum(weight**2, -1, keepdims=True), 1e-24))
    return e @ w.T


def aam_logits(cosine, labels, margin=0.2, scale=30.0):
    """Additive angular margin: the target class logit becomes s·cos(θ + m), others s·cos θ.

    Follows SpeechBrain `AdditiveAngularMargin(margin, scale, easy_margin=False)` (nnet/losses.py):
    cosines clamped to ±(1 − 1e-7); where θ + m would pass π (cos θ ≤ cos(π − m)) the logit
    falls back to the monotonic cos θ − m·sin(π − m) (ArcFace's "hard margin" branch).
    cosine: [B, S]; labels: [B] int → [B, S].
    """
    cosine = jnp.clip(cosine.astype(jnp.float32), -1 + 1e-7, 1 - 1e-7)
    sine = jnp.sqrt(1.0 - cosine**2)
    phi = cosine * math.cos(margin) - sine * math.sin(margin)
    th = math.cos(math.pi - margin)
    mm = math.sin(math.pi - margin) * margin
    phi = jnp.where(cosine > th, phi, cosine - mm)
    onehot = jax.nn.one_hot(labels, cosine.shape[-1], dtype=cosine.dtype)
    return scale * (onehot * phi + (1.0 - onehot) * cosine)


def weighted_mean(values, weights=None):
    """Mean of values [B] with example weights [B] (None = all ones); 0 when all weights are 0."""
    if weights is None:
        return jnp.mean(values)
    weights = weights.astype(values.dtype)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def aam_softmax(embeddings, weight, labels, margin=0.2, scale=30.0, weights=None):
    """AAM-softmax speaker loss (SpeechBrain `LogSoftmaxWrapper(AdditiveAngularMargin(m, s))`).

    SpeechBrain sums KL(onehot ‖ softmax) over the batch and divides by B; with one-hot
    targets that is the mean cross-entropy computed here. Returns (loss, logits [B, S]).
    """
    logits = aam_logits(cosine_logits(embeddings, weight), labels, margin, scale)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], -1)[:, 0]
    return weighted_mean(ce, weights), logits
