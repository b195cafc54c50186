"""Flax EcapaTdnn == SpeechBrain ECAPA_TDNN, converted by the real converter from a checkpoint
saved the way SpeechBrain saves it (torch.save(state_dict) -> embedding_model.ckpt).

Each bound is 10x the error measured on CPU (1e-5 where that is larger), written next to it:
a bound far above what the code achieves would let a real slip (one tensor 0.1 % off) pass."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import write_speechbrain_hparams
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

from emosup.convert.speechbrain_ecapa import (
    convert_state,
    load_speechbrain_ecapa,
    speechbrain_state_shapes,
)
from emosup.models.ecapa import PRESETS, EcapaTdnn, build_ecapa

SMALL = dict(input_size=24, channels=[64, 64, 64, 64, 192], attention_channels=32,
             se_channels=32, lin_neurons=48)
TINY = {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS["tiny"].items()}

@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # PyTorch's default of one thread per core makes its threads wait on each other when the
    # cores are busy (a shared CI machine): a c1024 forward then takes seconds, not 0.3 s.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _full_float32():
    # On GPUs XLA's default float32 matmul/conv precision is TF32-like (~1e-3 relative);
    # the reference comparisons need true float32. No effect on CPU.
    with jax.default_matmul_precision("highest"):
        yield


def _sb_kwargs(cfg):
    """ECAPA_TDNN's keyword arguments (and hyperparams.yaml's fields) for `cfg`; the fields
    `cfg` leaves out keep SpeechBrain's defaults on both sides."""
    keys = ("channels", "kernel_sizes", "dilations", "attention_channels", "se_channels", "lin_neurons")
    return {k: list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k] for k in keys if k in cfg}


def make_speechbrain_dir(tmp_path, cfg, seed):
    """Random SB ECAPA with non-trivial BatchNorm statistics and affine parameters, saved
    as SpeechBrain does, plus its hyperparams.yaml. Returns (eval-mode SB model, dir)."""
    torch.manual_seed(seed)
    sb = ECAPA_TDNN(cfg["input_size"], **_sb_kwargs(cfg))
    sb.train()
    with torch.no_grad():
        for _ in range(2):  # running statistics from real batches
            sb(torch.randn(4, 40, cfg["input_size"]) * 2.0 + 0.5)
        for mod in sb.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                n = mod.num_features
                mod.weight.copy_(1.0 + 0.3 * torch.randn(n))
                mod.bias.copy_(0.2 * torch.randn(n))
                mod.running_mean.add_(0.2 * torch.randn(n))
                mod.running_var.mul_(torch.exp(0.3 * torch.randn(n)))
    sb.eval()
    torch.save(sb.state_dict(), tmp_path / "embedding_model.ckpt")
    write_speechbrain_hparams(tmp_path, n_mels=cfg["input_size"], **_sb_kwargs(cfg))
    return sb, tmp_path


def _convert(tmp_path_factory, name, cfg, seed):
    sb, d = make_speechbrain_dir(tmp_path_factory.mktemp(name), cfg, seed)
    config, variables = load_speechbrain_ecapa(d)
    return name, sb, config, variables


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _convert(tmp_path_factory, "small", SMALL, seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _convert(tmp_path_factory, "tiny", TINY, seed=1)


@pytest.fixture(params=["small", "tiny"])
def converted(request):
    return request.getfixturevalue(request.param)


def _batch(rng, b, t, f, rel):
    """Features whose padding frames hold garbage (not zeros), SB relative lengths, and our
    frame lengths computed the way SpeechBrain's mask does (float32 rel * T)."""
    x = rng.standard_normal((b, t, f)).astype(np.float32)
    rel_t = torch.tensor(rel, dtype=torch.float32)
    frames = (rel_t * t).numpy()
    for i, n in enumerate(frames):
        x[i, int(np.ceil(n)):] = 5.0 * rng.standard_normal((t - int(np.ceil(n)), f))
    return x, rel_t, frames


def _rel_err(a, b):
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def _sb(sb, x, rel=None):
    with torch.no_grad():
        return sb(torch.from_numpy(x), rel)[:, 0].numpy()


def test_config_from_hyperparams(converted):
    name, _, config, _ = converted
    cfg = SMALL if name == "small" else TINY
    assert config["encoder"] == "ecapa" and config["source"].startswith("speechbrain:")
    assert config["features"] == {"n_mels": cfg["input_size"], "mean_norm": "sentence"}
    for k, v in cfg.items():
        assert config["ecapa"][k] == v, k
    assert config["ecapa"]["res2net_scale"] == 8 and config["ecapa"]["groups"] == 1


def test_matches_speechbrain_padded_batch(converted):
    name, sb, config, variables = converted
    rng = np.random.default_rng(0)
    f = config["ecapa"]["input_size"]
    x, rel, frames = _batch(rng, 4, 48, f, [1.0, 0.8, 0.55, 0.3])  # 0.55*48 = 26.4: fractional
    ref = _sb(sb, x, rel)
    model = build_ecapa(config["ecapa"])
    out = np.asarray(jax.jit(model.apply)(variables, x, frames))
    err = _rel_err(out, ref)
    print(f"[{name}] padded batch: max relative error vs SpeechBrain {err.max():.2e}")
    assert out.shape == (4, config["ecapa"]["lin_neurons"])
    assert err.max() <= 1e-5, err  # measured 6.0e-7 (small), 4.9e-7 (tiny) on CPU
    if name != "small":
        return  # the no-lengths path is the same code; one configuration is enough
    # No lengths at all == SpeechBrain with lengths=None.
    out_full = np.asarray(jax.jit(model.apply)(variables, x))
    err_full = _rel_err(out_full, _sb(sb, x))
    print(f"[{name}] no lengths: max relative error vs SpeechBrain {err_full.max():.2e}")
    assert err_full.max() <= 1e-5, err_full  # measured 5.1e-7


def test_per_utterance_padding_equals_speechbrain_on_each_utterance_alone(converted):
    name, sb, config, variables = converted
    rng = np.random.default_rng(1)
    x, rel, frames = _batch(rng, 3, 40, config["ecapa"]["input_size"], [1.0, 0.75, 0.5])
    model = build_ecapa({**config["ecapa"], "per_utterance_padding": True})
    out = np.asarray(jax.jit(model.apply)(variables, x, frames))
    errs = []
    for i, n in enumerate(frames):
        n = int(np.ceil(n))
        alone = _sb(sb, x[i : i + 1, :n])[0]      # SpeechBrain on the unpadded utterance
        errs.append(_rel_err(out[i], alone))
    print(f"[{name}] per-utterance padding vs SpeechBrain alone: max rel error {max(errs):.2e}")
    assert max(errs) <= 1e-5, errs  # measured 4.4e-7 (small), 4.8e-7 (tiny)


def test_padding_invariance(small):
    name, sb, config, variables = small
    rng = np.random.default_rng(2)
    f = config["ecapa"]["input_size"]
    n, t = 29, 48
    utt = rng.standard_normal((1, n, f)).astype(np.float32)
    batch = (7.0 * rng.standard_normal((2, t, f))).astype(np.float32)  # loud garbage padding
    batch[1, :n] = utt[0]
    other = rng.standard_normal((t, f)).astype(np.float32)
    batch[0] = other
    lengths = np.array([t, n - 0.5], np.float32)  # fractional: same mask as n
    invariant = jax.jit(build_ecapa({**config["ecapa"], "per_utterance_padding": True}).apply)
    alone = np.asarray(invariant(variables, utt))[0]
    padded = np.asarray(invariant(variables, batch, lengths))[1]
    err = _rel_err(padded, alone)
    print(f"per-utterance padding: alone vs padded relative difference {err:.2e}")
    assert err <= 1e-5  # measured 1.8e-7
    # SpeechBrain itself reflects at the padded array's edge, so it is not invariant (the
    # default mode reproduces that, see test_matches_speechbrain_padded_batch); this is why
    # the option exists.
    rel = torch.tensor([1.0, (n - 0.5) / t])
    sb_err = _rel_err(_sb(sb, batch, rel)[1], _sb(sb, utt)[0])
    print(f"SpeechBrain: alone vs padded relative difference {sb_err:.2e}")
    assert sb_err > 1e-3


def test_train_mode_matches_speechbrain_and_updates_batch_stats(small):
    name, sb, config, variables = small
    rng = np.random.default_rng(3)
    b, t = 3, 32
    x, rel, frames = _batch(rng, b, t, config["ecapa"]["input_size"], [1.0, 0.7, 0.4])
    sb_train = copy.deepcopy(sb).train()
    with torch.no_grad():
        ref = sb_train(torch.from_numpy(x), rel)[:, 0].numpy()
    model = build_ecapa(config["ecapa"])
    out, updates = jax.jit(lambda v, x, n: model.apply(v, x, n, train=True, mutable=["batch_stats"]))(
        variables, x, frames)
    err = _rel_err(np.asarray(out), ref)
    print(f"train mode: max relative error vs SpeechBrain {err.max():.2e}")
    assert err.max() <= 4e-5, err  # measured 3.4e-6 (batch statistics add rounding to eval's)

    new = updates["batch_stats"]
    after = convert_state({k: v.numpy() for k, v in sb_train.state_dict().items()},
                          config["ecapa"])["batch_stats"]
    old = variables["batch_stats"]
    paths = jax.tree_util.tree_flatten_with_path(new)[0]
    assert len(paths) == len(jax.tree_util.tree_leaves(old))
    stat_errs = {}
    for keypath, leaf in paths:
        keys = [k.key for k in keypath]
        o, f, tch = np.asarray(_at(old, keys)), np.asarray(leaf), np.asarray(_at(after, keys))
        assert not np.allclose(f, o), keys          # statistics moved
        if keys[-1] == "mean":
            expected = tch
        else:
            # torch feeds the unbiased batch variance to its running average, Flax the
            # biased one: undo the n/(n-1) factor (n = frames that entered the statistics).
            nb = b if keys[0] == "asp_bn" else b * t
            expected = 0.9 * o + (tch - 0.9 * o) * (nb - 1) / nb
        # Each statistic on its own scale (single running means can sit near 0).
        stat_errs["/".join(keys)] = float(np.linalg.norm(f - expected) / np.linalg.norm(expected))
    worst = max(stat_errs, key=stat_errs.get)
    print(f"train mode: worst running statistic relative error {stat_errs[worst]:.2e} ({worst})")
    assert stat_errs[worst] <= 1e-5, stat_errs  # measured 1.1e-7


def _at(tree, keys):
    for k in keys:
        tree = tree[k]
    return tree


def test_jit_equals_eager_and_shapes(small):
    name, _, config, variables = small
    model = build_ecapa(config["ecapa"])
    x = np.random.default_rng(4).standard_normal((2, 24, 24)).astype(np.float32)
    lengths = np.array([24, 17], np.float32)
    eager = np.asarray(model.apply(variables, x, lengths))
    jitted = np.asarray(jax.jit(model.apply)(variables, x, lengths))
    assert eager.shape == (2, 48) and eager.dtype == np.float32
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset,sb_channels", [("c1024", [1024] * 4 + [3072]),
                                                ("c512", [512] * 4 + [1536]),
                                                ("tiny", [128] * 4 + [384])])
def test_presets_have_speechbrain_state_shapes(preset, sb_channels):
    kw = PRESETS[preset]
    with torch.device("meta"):  # shapes only, no memory
        sb = ECAPA_TDNN(80, channels=sb_channels, attention_channels=kw["attention_channels"],
                        se_channels=kw["se_channels"], lin_neurons=192)
    expected = {k: tuple(v.shape) for k, v in sb.state_dict().items()
                if not k.endswith("num_batches_tracked")}
    assert speechbrain_state_shapes(kw) == expected
    model = build_ecapa(preset)
    assert model.embed_dim == 192
    out = jax.eval_shape(lambda: model.init_with_output(
        jax.random.PRNGKey(0), jnp.zeros((3, 50, 80)))[0])
    assert out.shape == (3, 192)


@pytest.mark.parametrize("preset", ["c512", "c1024"])
def test_full_size_presets_equal_speechbrain(tmp_path, preset):
    """The published sizes in numbers, not only shapes: SpeechBrain's ECAPA_TDNN built with the
    preset's hyper-parameters (random weights, BatchNorm statistics included), converted by
    the real converter, on about 1 s of features (two rows, one padded)."""
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS[preset].items()}
    sb, d = make_speechbrain_dir(tmp_path, cfg, seed=5)
    config, variables = load_speechbrain_ecapa(d)
    for k, v in cfg.items():  # the converted model is the preset itself
        assert config["ecapa"][k] == v, k
    x, rel, frames = _batch(np.random.default_rng(5), 2, 101, 80, [1.0, 0.7])
    out = np.asarray(jax.jit(build_ecapa(config["ecapa"]).apply)(variables, x, frames))
    err = _rel_err(out, _sb(sb, x, rel))
    print(f"[{preset}] 1 s padded batch: max relative error vs SpeechBrain {err.max():.2e}")
    assert out.shape == (2, 192)
    assert err.max() <= 1e-5, err  # measured 6.3e-7 (c512), 9.8e-7 (c1024) on CPU


def test_build_and_config_errors():
    m = build_ecapa({"preset": "tiny", "lin_neurons": 32})
    assert m.lin_neurons == 32 and m.channels == (128, 128, 128, 128, 384)
    with pytest.raises(KeyError, match="unknown ECAPA preset 'huge'"):
        build_ecapa("huge")
    with pytest.raises(TypeError, match=r"unknown EcapaTdnn field\(s\) \['chanels'\]"):
        build_ecapa({"chanels": [1, 2, 3]})
    x = jnp.zeros((1, 20, 80))
    with pytest.raises(ValueError, match="only groups=1 is supported"):
        EcapaTdnn(groups=(1, 2, 1, 1, 1)).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="must have the same length"):
        EcapaTdnn(kernel_sizes=(5, 3, 3, 1)).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match=r"expected feats \[B, T, 80\], got \(1, 20, 40\)"):
        EcapaTdnn().init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 40)))


@pytest.mark.parametrize("k,dilation,per_utterance", [(1, 1, False), (3, 2, False), (3, 3, True)])
def test_conv1d_context_equals_concatenated_input(k, dilation, per_utterance):
    """Conv1d's time-invariant `context` input (used by attentive pooling for [x, mean, std])
    gives what the same layer gives on x with the context broadcast over time and
    concatenated after x's channels; its parameters are nn.Conv's (names, shapes, values)."""
    import flax.linen as nn

    from emosup.models.layers import Conv1d

    rng = np.random.default_rng(k + dilation)
    b, t, c_x, c_ctx, f = 3, 17, 6, 4, 5
    x = jnp.asarray(rng.standard_normal((b, t, c_x)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((b, c_ctx)), jnp.float32)
    valid = jnp.array([17, 12, 9]) if per_utterance else None
    full = jnp.concatenate([x, jnp.broadcast_to(ctx[:, None, :], (b, t, c_ctx))], axis=-1)
    layer = Conv1d(f, k, dilation)
    variables = layer.init(jax.random.PRNGKey(0), full, valid)
    with_ctx = layer.apply(variables, x, valid, ctx)
    concat = layer.apply(variables, full, valid)
    assert with_ctx.shape == (b, t, f)
    np.testing.assert_allclose(np.asarray(with_ctx), np.asarray(concat), rtol=1e-5, atol=1e-5)
    # The same rng gives the same parameters as flax's own nn.Conv in a child named "conv"...
    class Reference(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(f, (k,), kernel_dilation=(dilation,), padding="VALID", name="conv")(x)

    pad = (dilation * (k - 1)) // 2
    padded = jnp.pad(full, ((0, 0), (pad, pad), (0, 0)), mode="reflect")
    ref_vars = Reference().init(jax.random.PRNGKey(0), padded)
    assert jax.tree.structure(variables) == jax.tree.structure(ref_vars)
    assert variables["params"]["conv"]["kernel"].shape == (k, c_x + c_ctx, f)
    for a, r in zip(jax.tree.leaves(variables), jax.tree.leaves(ref_vars)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(r))
    # ... and, without a context, nn.Conv's output on the reflect-padded input.
    np.testing.assert_allclose(np.asarray(layer.apply(variables, full)),
                               np.asarray(Reference().apply(ref_vars, padded)),
                               rtol=1e-6, atol=1e-6)
