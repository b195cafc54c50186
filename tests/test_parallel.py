"""The data-parallel train step of every objective: 8 devices give the 1-device numbers
(BatchNorm statistics and the loss are global over the sharded batch), and batches must
split over devices."""
import jax
import numpy as np
import optax
import pytest

from emosup import config_lib, parallel, train
from emosup.models.speaker import build_encoder
from emosup.models.ecapa import PRESETS


def _run(mesh, steps=3, objective="speaker"):
    enc = build_encoder({"encoder": "ecapa", "ecapa": dict(PRESETS["tiny"])})
    # Plain SGD: Adam would turn the rounding noise in near-zero gradients (conv biases before
    # BatchNorm) into lr-sized steps, hiding real differences behind a loose tolerance.
    tx = optax.sgd(0.05)
    loss_cfg = config_lib.pretrain_config().loss
    state = train.create_state(objective, enc, loss_cfg, 5, tx, jax.random.key(0), (1, 101, 80), mesh)
    step = train.jit_train_step(objective, enc, loss_cfg, mesh)
    rng = np.random.default_rng(0)
    losses = []
    group = () if objective == "speaker" else (4,)  # anchor, positive, 2 negatives
    for _ in range(steps):
        lengths = rng.integers(8000, 16001, (8, *group)).astype(np.int32)  # short rows: padded
        wav = (0.1 * rng.normal(size=(8, *group, 16000))).astype(np.float32)
        wav[np.arange(16000) >= lengths[..., None]] = 0.0
        batch = {"audio": wav, "lengths": lengths, "labels": rng.integers(0, 5, 8).astype(np.int32),
                 "weights": np.ones(8, np.float32)}
        state, m = step(state, parallel.to_global(batch, mesh))
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state.params), jax.device_get(state.batch_stats)


@pytest.mark.parametrize("objective", ["speaker", "contrastive", "multitask", "adversarial"])
def test_eight_devices_equal_one(objective):
    assert len(jax.devices()) == 8, "conftest provides 8 fake CPU devices"
    one, eight = parallel.make_mesh(jax.devices()[:1]), parallel.make_mesh()
    _, p0, _ = _run(one, steps=0, objective=objective)
    l1, p1, s1 = _run(one, objective=objective)
    l8, p8, s8 = _run(eight, objective=objective)
    # Step 1 sees identical parameters: only the summation order differs.
    np.testing.assert_allclose(l8[0], l1[0], rtol=1e-5)
    # Later steps start from parameters that differ by that rounding, amplified by training.
    np.testing.assert_allclose(l8, l1, rtol=1e-3)
    # One update from identical parameters: the same up to summation order.
    _, q1, s1 = _run(one, steps=1, objective=objective)
    _, q8, s8 = _run(eight, steps=1, objective=objective)
    for a, b, init in zip(jax.tree.leaves(q8), jax.tree.leaves(q1), jax.tree.leaves(p0)):
        da, db = a - init, b - init
        assert np.linalg.norm(da - db) <= 1e-3 * np.linalg.norm(db) + 1e-7
    for a, b in zip(jax.tree.leaves(s8), jax.tree.leaves(s1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_batch_must_split_over_devices():
    with pytest.raises(ValueError, match=r"batch_size=12 is not divisible by the 8 devices"):
        parallel.local_batch_size(12, parallel.make_mesh())
