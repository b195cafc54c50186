"""The data-parallel train step: 8 devices give the 1-device numbers (BatchNorm statistics
and the loss are global over the sharded batch), and batches must split over devices."""
import jax
import numpy as np
import optax
import pytest

from emosup import parallel, train
from emosup.models.speaker import build_encoder
from emosup.models.ecapa import PRESETS


def _run(mesh, steps=3):
    enc = build_encoder({"encoder": "ecapa", "ecapa": dict(PRESETS["tiny"])})
    # Plain SGD: Adam would turn the rounding noise in near-zero gradients (conv biases before
    # BatchNorm) into lr-sized steps, hiding real differences behind a loose tolerance.
    tx = optax.sgd(0.05)
    state = train.create_state(enc, 5, tx, jax.random.key(0), (1, 101, 80), mesh)
    step = train.jit_train_step(enc, (0.2, 30.0), mesh)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        lengths = rng.integers(8000, 16001, 8).astype(np.int32)  # short rows: padding per utterance
        wav = (0.1 * rng.normal(size=(8, 16000))).astype(np.float32)
        wav[np.arange(16000)[None, :] >= lengths[:, None]] = 0.0
        batch = {"audio": wav, "lengths": lengths, "labels": rng.integers(0, 5, 8).astype(np.int32),
                 "weights": np.ones(8, np.float32)}
        state, m = step(state, parallel.to_global(batch, mesh))
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state.params), jax.device_get(state.batch_stats)


def test_eight_devices_equal_one():
    assert len(jax.devices()) == 8, "conftest provides 8 fake CPU devices"
    _, p0, _ = _run(parallel.make_mesh(jax.devices()[:1]), steps=0)
    l1, p1, s1 = _run(parallel.make_mesh(jax.devices()[:1]))
    l8, p8, s8 = _run(parallel.make_mesh())
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    # Parameters moved by the same updates, up to float summation order (reductions over
    # 8 shards instead of 1), which three steps through BatchNorm amplify to ~1e-3 relative.
    for a, b, init in zip(jax.tree.leaves(p8), jax.tree.leaves(p1), jax.tree.leaves(p0)):
        da, db = a - init, b - init
        assert np.linalg.norm(da - db) <= 1e-2 * np.linalg.norm(db) + 1e-7
    for a, b in zip(jax.tree.leaves(s8), jax.tree.leaves(s1)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_batch_must_split_over_devices():
    with pytest.raises(ValueError, match=r"batch_size=12 is not divisible by the 8 devices"):
        parallel.local_batch_size(12, parallel.make_mesh())
