"""AAM-softmax equals SpeechBrain's LogSoftmaxWrapper(AdditiveAngularMargin(0.2, 30))."""
import jax
import jax.numpy as jnp
import numpy as np
import torch
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

from emosup import losses


def _sb_loss(emb, weight, labels, margin=0.2, scale=30.0):
    cos = torch.nn.functional.linear(torch.nn.functional.normalize(torch.tensor(emb)),
                                     torch.nn.functional.normalize(torch.tensor(weight)))
    wrapper = LogSoftmaxWrapper(AdditiveAngularMargin(margin=margin, scale=scale))
    return float(wrapper(cos[:, None, :], torch.tensor(labels)[:, None]))


def test_aam_softmax_equals_speechbrain():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(16, 24)).astype(np.float32)
    weight = rng.normal(size=(7, 24)).astype(np.float32)
    labels = rng.integers(0, 7, 16)
    # Make some target cosines large negative so the hard-margin branch (cos ≤ cos(π − m)) runs.
    emb[:3] = -weight[labels[:3]] + 0.01 * rng.normal(size=(3, 24))
    ours, _ = losses.aam_softmax(jnp.asarray(emb), jnp.asarray(weight), jnp.asarray(labels))
    np.testing.assert_allclose(float(ours), _sb_loss(emb, weight, labels), rtol=1e-5)
    ours_m, _ = losses.aam_softmax(jnp.asarray(emb), jnp.asarray(weight), jnp.asarray(labels), 0.3, 20.0)
    np.testing.assert_allclose(float(ours_m), _sb_loss(emb, weight, labels, 0.3, 20.0), rtol=1e-5)


def test_aam_margin_penalises_target_only():
    cos = jnp.array([[0.5, 0.2, -0.1]])
    out = losses.aam_logits(cos, jnp.array([0]), margin=0.2, scale=30.0)
    np.testing.assert_allclose(out[0, 1:], 30.0 * cos[0, 1:], rtol=1e-6)
    np.testing.assert_allclose(out[0, 0], 30.0 * np.cos(np.arccos(0.5) + 0.2), rtol=1e-5)


def test_weights_exclude_examples():
    rng = np.random.default_rng(1)
    emb = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    w = jnp.array([1, 1, 1, 0, 0, 0], jnp.float32)
    full, _ = losses.aam_softmax(emb[:3], weight, labels[:3])
    masked, _ = losses.aam_softmax(emb, weight, labels, weights=w)
    np.testing.assert_allclose(float(masked), float(full), rtol=1e-6)
    # A NaN-free zero-weight batch gives zero loss, not NaN.
    zero, _ = losses.aam_softmax(emb, weight, labels, weights=jnp.zeros(6))
    assert float(zero) == 0.0


def test_aam_gradients_finite_at_clamp():
    weight = jnp.eye(3, dtype=jnp.float32)
    emb = jnp.eye(3, dtype=jnp.float32)  # cosine exactly 1 for the target
    g = jax.grad(lambda e: losses.aam_softmax(e, weight, jnp.arange(3))[0])(emb)
    assert np.all(np.isfinite(np.asarray(g)))
