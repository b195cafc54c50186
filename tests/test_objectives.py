"""How the pretraining objectives are composed (emosup.trainers.objectives), checked through their gradients.

multitask   L = L_con + λ · L_spk                 (λ = loss.speaker_weight)
adversarial L = L_con + GRL_g(L_spk)              (g = loss.grl_scale)
So, on the same variables and batch, the speaker term's gradient into the encoder is
λ·S for multitask and −g·S for adversarial, where S = ∂L_spk/∂encoder; the classifier is
trained, not reversed, in both (λ·C and C); the projection head never sees the speaker term.
The speaker term is isolated as ∇L − ∇L_con, with L_con from the `contrastive` objective.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emosup import config_lib
from emosup.trainers import objectives
from emosup.models.ecapa import PRESETS
from emosup.models.encoders import build_encoder


B, K, CROP = 4, 2, 8000  # anchors, negatives per anchor, 0.5 s crops
SPEAKERS = 3
LAMBDA, GRL = 0.5, 2.0   # deliberately not 1: a missing λ or grl_scale changes the ratio


def _loss_cfg(**overrides):
    c = config_lib.pretrain_config().loss
    c.update({"speaker_weight": LAMBDA, "grl_scale": GRL, **overrides})
    return c


@pytest.fixture(scope="module")
def setup():
    encoder = build_encoder({"encoder": "ecapa", "ecapa": dict(PRESETS["tiny"]),
                             "features": {"n_mels": 80, "mean_norm": "sentence"}})
    variables = objectives.init_variables("multitask", encoder, _loss_cfg(), SPEAKERS, jax.random.key(0),
                                     (1, 1 + CROP // 160, 80))
    rng = np.random.default_rng(0)
    batch = {"audio": jnp.asarray(0.1 * rng.standard_normal((B, 2 + K, CROP)), jnp.float32),
             "lengths": jnp.full((B, 2 + K), CROP, jnp.int32),
             "labels": jnp.asarray([0, 1, 2, 1], jnp.int32),
             "weights": jnp.ones((B,), jnp.float32)}
    return encoder, variables, batch


def _grad(objective, setup, loss_cfg=None):
    encoder, variables, batch = setup
    loss_fn = objectives.make_loss_fn(objective, encoder, loss_cfg or _loss_cfg())

    def total(params):
        loss, (_, metrics) = loss_fn(params, variables["batch_stats"], batch)
        return loss, metrics

    (loss, metrics), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(variables["params"])
    return float(loss), {k: float(v) for k, v in metrics.items()}, grads


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def grads(setup):
    return {o: _grad(o, setup) for o in ("contrastive", "multitask", "adversarial")}


def test_adversarial_reverses_the_speaker_gradient_into_the_encoder(grads):
    _, _, g_con = grads["contrastive"]
    _, _, g_mt = grads["multitask"]
    _, _, g_adv = grads["adversarial"]
    s_mt = _flat(g_mt["encoder"]) - _flat(g_con["encoder"])    # λ · S
    s_adv = _flat(g_adv["encoder"]) - _flat(g_con["encoder"])  # −g · S
    assert np.linalg.norm(s_mt) > 1e-2 * np.linalg.norm(_flat(g_con["encoder"])), \
        "the speaker term must reach the encoder"
    # Without the reversal the ratio is +1/λ (error 1 + λ/g = 1.25 relative); without
    # grl_scale it is −1/λ (error 0.5); without λ it is −g (error 0.5).
    assert _rel(s_adv, -(GRL / LAMBDA) * s_mt) < 1e-4  # measured 1.1e-6
    # The speaker classifier learns speakers in both objectives (weights 1 and λ).
    np.testing.assert_allclose(_flat(g_mt["classifier"]), LAMBDA * _flat(g_adv["classifier"]),
                               rtol=1e-5, atol=1e-7)
    assert np.linalg.norm(_flat(g_adv["classifier"])) > 0
    # The projection head only serves the contrastive term.
    for g in (g_mt, g_adv):
        np.testing.assert_allclose(_flat(g["projection"]), _flat(g_con["projection"]), rtol=1e-5, atol=1e-7)


def test_lambda_scales_the_speaker_term_in_the_loss(setup, grads):
    loss_con, m_con, _ = grads["contrastive"]
    loss_mt, m_mt, _ = grads["multitask"]
    loss_adv, m_adv, _ = grads["adversarial"]
    spk = m_mt["speaker_loss"]
    assert spk > 0.1
    assert loss_con == pytest.approx(m_con["contrastive_loss"], rel=1e-6)
    assert loss_mt == pytest.approx(m_mt["contrastive_loss"] + LAMBDA * spk, rel=1e-5)
    assert m_mt["contrastive_loss"] == pytest.approx(loss_con, rel=1e-5)
    # The reversal is an identity forward: the adversarial loss adds the speaker term unscaled.
    assert loss_adv == pytest.approx(loss_con + m_adv["speaker_loss"], rel=1e-5)
    assert m_adv["speaker_loss"] == pytest.approx(spk, rel=1e-5)
    # Another λ moves the total by exactly Δλ · L_spk and scales the encoder's speaker gradient.
    loss_mt2, _, g_mt2 = _grad("multitask", setup, _loss_cfg(speaker_weight=2.0))
    assert loss_mt2 - loss_mt == pytest.approx((2.0 - LAMBDA) * spk, rel=1e-4)
    g_con = _flat(grads["contrastive"][2]["encoder"])
    s_half = _flat(grads["multitask"][2]["encoder"]) - g_con
    s_two = _flat(g_mt2["encoder"]) - g_con
    assert _rel(s_two, (2.0 / LAMBDA) * s_half) < 1e-4


def _contrastive_loss(setup, batch):
    encoder, variables, _ = setup
    loss_fn = objectives.make_loss_fn("contrastive", encoder, _loss_cfg())
    return float(jax.jit(loss_fn)(variables["params"], variables["batch_stats"], batch)[0])


def test_column_one_is_the_positive_and_the_rest_negatives(setup):
    """Each group is [anchor, positive, negatives...]. With the positive an exact copy of the
    anchor (cosine 1, the largest possible), moving it into a negative's column and that
    negative into the positive's column must raise the loss; reordering negatives must not."""
    _, _, batch = setup
    audio = np.array(batch["audio"])
    audio[:, 1] = audio[:, 0]
    base = dict(batch, audio=jnp.asarray(audio))
    swapped = dict(batch, audio=jnp.asarray(audio[:, [0, 2, 1, 3]]))
    negs_reordered = dict(batch, audio=jnp.asarray(audio[:, [0, 1, 3, 2]]))
    loss = _contrastive_loss(setup, base)
    assert _contrastive_loss(setup, swapped) > loss + 1.0  # measured 0.002 -> 3.8
    assert _contrastive_loss(setup, negs_reordered) == pytest.approx(loss, rel=1e-5)
