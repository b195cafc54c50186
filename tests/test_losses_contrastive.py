"""Contrastive, adversarial and SER losses against references (numpy loops, optax, torch)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from jax.test_util import check_grads
from sklearn.utils.class_weight import compute_class_weight

from emosup import losses

# Jitted once per shape: eager dispatch compiles every primitive separately and is far slower.
info_nce = jax.jit(losses.info_nce, static_argnames=("temperature", "symmetric"))
supcon = jax.jit(losses.supcon, static_argnames=("temperature",))


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_info_nce(a, p, n, tau, symmetric):
    """Row-by-row numpy reference in float64: returns (loss, pos_cos, neg_cos, top1)."""
    a, p, n = _unit(a.astype(np.float64)), _unit(p.astype(np.float64)), _unit(n.astype(np.float64))
    rows = []
    for i in range(a.shape[0]):
        dirs = [a[i], p[i]] if symmetric else [a[i]]
        other = {0: p[i], 1: a[i]}
        ces, negs, tops = [], [], []
        for d, q in enumerate(dirs):
            pos = float(q @ other[d])
            neg = n[i] @ q
            logits = np.r_[pos, neg] / tau
            ces.append(np.log(np.sum(np.exp(logits))) - logits[0])
            negs.append(neg.mean())
            tops.append(float(pos > neg.max()))
        rows.append((np.mean(ces), float(a[i] @ p[i]), np.mean(negs), np.mean(tops)))
    return tuple(np.mean(np.array(rows), 0))


def _batch(seed, b=6, k=5, d=8):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(b, d)).astype(np.float32)
    p = (a + 0.7 * rng.normal(size=(b, d))).astype(np.float32)
    n = rng.normal(size=(b, k, d)).astype(np.float32)
    return a, p, n


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_matches_numpy_reference(symmetric):
    a, p, n = _batch(0)
    loss, m = info_nce(jnp.asarray(a), jnp.asarray(p), jnp.asarray(n), 0.1, symmetric)
    ref = _np_info_nce(a, p, n, 0.1, symmetric)
    np.testing.assert_allclose(float(loss), ref[0], rtol=1e-5)
    np.testing.assert_allclose(float(m["pos_cos"]), ref[1], atol=1e-6)
    np.testing.assert_allclose(float(m["neg_cos"]), ref[2], atol=1e-6)
    np.testing.assert_allclose(float(m["top1"]), ref[3], atol=1e-6)
    assert 0.0 < ref[3] < 1.0  # the batch has both correctly and wrongly ranked rows


def test_info_nce_equals_optax_cross_entropy_both_directions():
    a, p, n = (jnp.asarray(x) for x in _batch(1, b=7, k=4, d=5))
    tau = 0.2
    an, pn, nn = (x / jnp.linalg.norm(x, axis=-1, keepdims=True) for x in (a, p, n))
    pos = jnp.sum(an * pn, -1, keepdims=True)
    fwd = jnp.concatenate([pos, jnp.einsum("bd,bkd->bk", an, nn)], -1) / tau
    bwd = jnp.concatenate([pos, jnp.einsum("bd,bkd->bk", pn, nn)], -1) / tau
    zeros = jnp.zeros(7, jnp.int32)
    ce_f = optax.softmax_cross_entropy_with_integer_labels(fwd, zeros).mean()
    ce_b = optax.softmax_cross_entropy_with_integer_labels(bwd, zeros).mean()
    one, _ = info_nce(a, p, n, tau, symmetric=False)
    other, _ = info_nce(p, a, n, tau, symmetric=False)  # the positive as anchor
    both, _ = info_nce(a, p, n, tau, symmetric=True)
    np.testing.assert_allclose(float(one), float(ce_f), rtol=1e-6)
    np.testing.assert_allclose(float(other), float(ce_b), rtol=1e-6)
    np.testing.assert_allclose(float(both), 0.5 * float(ce_f + ce_b), rtol=1e-6)
    assert abs(float(ce_f - ce_b)) > 1e-3  # the two directions really differ


def test_info_nce_weights_mask_rows_exactly():
    a, p, n = _batch(2, b=8)
    keep = np.array([1, 0, 1, 1, 0, 1, 1, 0], bool)
    a_bad, p_bad, n_bad = a.copy(), p.copy(), n.copy()
    a_bad[~keep] = np.nan  # garbage in masked rows must not leak into the loss or gradients
    p_bad[~keep] = 1e30
    n_bad[~keep] = 0.0

    def f(a_, p_, n_, w=None):
        return info_nce(a_, p_, n_, 0.1, True, weights=w)[0]

    sub, g_sub = jax.value_and_grad(f, argnums=(0, 1, 2))(a[keep], p[keep], n[keep])
    full, g_full = jax.value_and_grad(f, argnums=(0, 1, 2))(
        jnp.asarray(a_bad), jnp.asarray(p_bad), jnp.asarray(n_bad), jnp.asarray(keep, jnp.float32))
    np.testing.assert_allclose(float(full), float(sub), rtol=1e-6)
    for gs, gf in zip(g_sub, g_full):
        np.testing.assert_allclose(np.asarray(gf)[keep], np.asarray(gs), rtol=1e-5, atol=1e-7)
        assert np.all(np.asarray(gf)[~keep] == 0.0)
    _, m = info_nce(jnp.asarray(a_bad), jnp.asarray(p_bad), jnp.asarray(n_bad),
                           weights=jnp.asarray(keep, jnp.float32))
    assert all(np.isfinite(float(v)) for v in m.values())
    zero, _ = info_nce(jnp.asarray(a), jnp.asarray(p), jnp.asarray(n), weights=jnp.zeros(8))
    assert float(zero) == 0.0


def test_info_nce_negative_mask_equals_dropping_negatives():
    a, p, n = (jnp.asarray(x) for x in _batch(3, b=4, k=5))
    mask = jnp.array([[1, 1, 1, 0, 0]] * 4, bool)
    ours, m = info_nce(a, p, n, negative_mask=mask)
    ref, m_ref = info_nce(a, p, n[:, :3])
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-5, atol=1e-7)
    for key in m:
        np.testing.assert_allclose(float(m[key]), float(m_ref[key]), rtol=1e-6, atol=1e-7)


def test_info_nce_rejects_bad_shapes():
    a, p, n = (jnp.asarray(x) for x in _batch(4, b=3, k=2, d=4))
    with pytest.raises(ValueError, match=r"negatives must be \[B=3, K, D=4\], got \(3, 2, 5\)"):
        info_nce(a, p, jnp.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match=r"info_nce: weights must have shape \(3,\), got \(4,\)"):
        info_nce(a, p, n, weights=jnp.ones(4))


def _np_supcon(z, groups, tau, w=None):
    z = _unit(z.astype(np.float64))
    n = len(groups)
    w = np.ones(n) if w is None else np.asarray(w, np.float64)
    valid = [i for i in range(n) if groups[i] >= 0 and w[i] != 0]
    num = den = 0.0
    for i in valid:
        others = [j for j in valid if j != i]
        positives = [j for j in others if groups[j] == groups[i]]
        if not positives:
            continue
        log_den = np.log(sum(np.exp(z[i] @ z[j] / tau) for j in others))
        li = -np.mean([z[i] @ z[p] / tau - log_den for p in positives])
        num += w[i] * li
        den += w[i]
    return num / den if den else 0.0


def test_supcon_matches_numpy_loop():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(12, 6)).astype(np.float32)
    # groups: pairs, a triple, a singleton (no positive → excluded), two padding rows.
    groups = np.array([0, 0, 1, 1, 1, 2, 3, 3, -1, 4, 4, -1])
    z[groups == -1] = np.nan  # padding must not matter at all
    w = rng.uniform(0.5, 2.0, 12).astype(np.float32)
    for tau in (0.1, 0.5):
        ours = supcon(jnp.asarray(z), jnp.asarray(groups), tau)
        np.testing.assert_allclose(float(ours), _np_supcon(z, groups, tau), rtol=1e-5)
        ours_w = supcon(jnp.asarray(z), jnp.asarray(groups), tau, weights=jnp.asarray(w))
        np.testing.assert_allclose(float(ours_w), _np_supcon(z, groups, tau, w), rtol=1e-5)
    # Weight 0 is the same as deleting the row (also from the other anchors' denominators).
    w0 = np.ones(12, np.float32)
    w0[[1, 7]] = 0.0
    keep = w0 != 0
    masked = supcon(jnp.asarray(z), jnp.asarray(groups), 0.1, weights=jnp.asarray(w0))
    deleted = supcon(jnp.asarray(z[keep]), jnp.asarray(groups[keep]), 0.1)
    np.testing.assert_allclose(float(masked), float(deleted), rtol=1e-6)
    # No anchor with a positive: 0, and finite gradients.
    lone = jnp.asarray(np.array([0, 1, 2, -1]))
    g = jax.grad(lambda x: supcon(x, lone))(jnp.asarray(np.nan_to_num(z[:4])))
    assert float(supcon(jnp.asarray(z[:4]), lone)) == 0.0
    assert np.all(np.asarray(g) == 0.0)


def test_supcon_with_one_positive_each_is_nt_xent_over_the_batch():
    # Two views of 4 items: every anchor's candidates are the 7 other rows, its one positive the
    # other view — SimCLR's NT-Xent, written here with optax on the masked similarity matrix.
    rng = np.random.default_rng(6)
    z = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
    groups = jnp.array([0, 1, 2, 3, 0, 1, 2, 3])
    zn = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    logits = jnp.where(jnp.eye(8, dtype=bool), -1e9, zn @ zn.T / 0.1)
    labels = jnp.array([4, 5, 6, 7, 0, 1, 2, 3])
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(float(supcon(z, groups, 0.1)), float(ref), rtol=1e-6)


def test_check_grads_float64():
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):  # the context manager (jax.experimental.enable_x64 in older jax)
        a, p = jnp.asarray(rng.normal(size=(3, 4))), jnp.asarray(rng.normal(size=(3, 4)))
        n = jnp.asarray(rng.normal(size=(3, 2, 4)))
        w = jnp.array([1.0, 0.0, 2.0])
        check_grads(lambda a_, p_, n_: info_nce(a_, p_, n_, 0.3, True, w)[0],
                    (a, p, n), order=1, modes=("rev",))
        z = jnp.asarray(rng.normal(size=(6, 3)))
        groups = jnp.array([0, 0, 1, 1, 1, -1])
        check_grads(lambda z_: supcon(z_, groups, 0.5), (z,), order=1, modes=("rev",))
        pred, target = jnp.asarray(rng.normal(size=(9, 3))), jnp.asarray(rng.normal(size=(9, 3)))
        check_grads(lambda x: losses.ccc_loss(x, target), (pred,), order=1, modes=("rev",))
        assert info_nce(a, p, n)[0].dtype == jnp.float64  # double precision was used


def test_gradient_reversal():
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)

    def f(x_):
        return jnp.sum(jnp.sin(x_) * c)

    np.testing.assert_array_equal(np.asarray(losses.gradient_reversal(x, 0.7)), np.asarray(x))
    g = jax.grad(f)(x)
    for scale in (0.7, 2, 0.0):
        g_rev = jax.grad(lambda x_: f(losses.gradient_reversal(x_, scale)))(x)
        np.testing.assert_allclose(np.asarray(g_rev), -scale * np.asarray(g), rtol=1e-6)
    # A traced scale (a λ schedule under jit) works and gets no gradient.
    gx, gs = jax.jit(jax.grad(lambda x_, s: f(losses.gradient_reversal(x_, s)), argnums=(0, 1)))(
        x, jnp.float32(1.5))
    np.testing.assert_allclose(np.asarray(gx), -1.5 * np.asarray(g), rtol=1e-6)
    assert float(gs) == 0.0


def test_weighted_cross_entropy_equals_torch():
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(10, 4)).astype(np.float32) * 3
    labels = rng.integers(0, 4, 10)
    cw = np.array([0.5, 2.0, 1.0, 3.0], np.float32)
    tl, tlab = torch.tensor(logits), torch.tensor(labels)
    for weight in (None, cw):
        ref = torch.nn.functional.cross_entropy(
            tl, tlab, weight=None if weight is None else torch.tensor(weight), reduction="mean")
        ours = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                             None if weight is None else jnp.asarray(weight))
        np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)
    # Example weights 0 drop rows exactly (a padding label of −1 is allowed there).
    keep = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], bool)
    lab_pad = np.where(keep, labels, -1)
    ref = torch.nn.functional.cross_entropy(tl[keep], tlab[keep], weight=torch.tensor(cw))
    ours = jax.jit(losses.weighted_cross_entropy)(
        jnp.asarray(logits), jnp.asarray(lab_pad), jnp.asarray(cw), jnp.asarray(keep, jnp.float32))
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)


def test_class_weights_from_counts():
    counts = np.array([10, 30, 5, 55])
    labels = np.repeat(np.arange(4), counts)
    ref = compute_class_weight("balanced", classes=np.arange(4), y=labels)
    np.testing.assert_allclose(losses.class_weights_from_counts(counts), ref, rtol=1e-6)
    w = losses.class_weights_from_counts([4, 0, 16])
    np.testing.assert_allclose(w, [20 / 8, 0.0, 20 / 32], rtol=1e-6)
    ws = losses.class_weights_from_counts([4, 0, 16], kind="inverse_sqrt")
    np.testing.assert_allclose(ws[0] / ws[2], 2.0, rtol=1e-6)
    np.testing.assert_allclose(np.sum(ws * [4, 0, 16]), 20.0, rtol=1e-6)
    with pytest.raises(ValueError, match="every class count is 0"):
        losses.class_weights_from_counts([0, 0, 0])
    with pytest.raises(ValueError, match="must be finite and ≥ 0"):
        losses.class_weights_from_counts([3, -1])
    with pytest.raises(ValueError, match="kind must be 'inverse' or 'inverse_sqrt', got 'log'"):
        losses.class_weights_from_counts([3, 1], kind="log")


def _np_ccc(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return 2 * np.mean((x - x.mean()) * (y - y.mean())) / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_ccc_documented_example_and_numpy():
    # The torchmetrics docstring example; 0.9768 is the population (ddof = 0) value.
    pred, target = jnp.array([2.5, 0.0, 2.0, 8.0]), jnp.array([3.0, -0.5, 2.0, 7.0])
    np.testing.assert_allclose(float(losses.ccc(pred, target)), 0.9768, atol=5e-5)
    rng = np.random.default_rng(10)
    x = rng.normal(size=(50, 3)) * [1, 2, 0.5] + [0, 1, -1]
    y = 0.6 * x + rng.normal(size=(50, 3))
    per_attr = [_np_ccc(x[:, i], y[:, i]) for i in range(3)]
    for i in range(3):
        np.testing.assert_allclose(float(losses.ccc(jnp.asarray(x[:, i]), jnp.asarray(y[:, i]))),
                                   per_attr[i], rtol=1e-5)
    ours = jax.jit(losses.ccc_loss)(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(float(ours), np.mean(1 - np.array(per_attr)), rtol=1e-5)
    assert float(losses.ccc_loss(jnp.asarray(x), jnp.asarray(x))) == pytest.approx(0.0, abs=1e-6)
    # Masked rows (even NaN) are dropped exactly.
    keep = rng.random(50) > 0.3
    x_bad = np.where(keep[:, None], x, np.nan)
    masked = losses.ccc_loss(jnp.asarray(x_bad), jnp.asarray(y), weights=jnp.asarray(keep, jnp.float32))
    direct = losses.ccc_loss(jnp.asarray(x[keep]), jnp.asarray(y[keep]))
    np.testing.assert_allclose(float(masked), float(direct), rtol=1e-5)
    # Two identical constants: 0 by definition, not NaN.
    assert float(losses.ccc(jnp.ones(4), jnp.ones(4))) == 0.0
    with pytest.raises(ValueError, match=r"ccc_loss: pred and target must both be \[B, A\]"):
        losses.ccc_loss(jnp.ones((4, 3)), jnp.ones((4, 2)))
