"""The Flax wav2vec 2.0 equals HF `Wav2Vec2Model` (both families, with and without padding).

Reference models are tiny random HF models built here (every weight randomised, norm scales
and biases included, so a wrong norm axis or eps shows), saved with `save_pretrained` and
converted with `emosup.convert.hf_wav2vec2`. Relative error = max |ours - HF| / max |HF|.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from helpers import gradient_errors

from emosup.convert.hf_wav2vec2 import load_hf_wav2vec2
from emosup.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model, feature_lengths

# The real conv pattern (k 10/3/…/2, stride 5/2/…), shortened: receptive field 60 samples.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(16, 16, 16, 16), conv_kernel=(10, 3, 3, 2), conv_stride=(5, 2, 2, 2),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
LAYER = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
# name -> HF config overrides: the two published families, an odd pos-conv kernel, and the
# mixed layer-norm-convs + post-LN combination (HF allows any pairing). layer_norm_eps 1e-3
# shows an eps taken from the wrong place (HF's conv norms keep torch's 1e-5).
ARCHS = {
    "group/post-LN": {},
    "layer/stable-LN": LAYER,
    "group/post-LN/K15": dict(num_conv_pos_embeddings=15, layer_norm_eps=1e-3),
    "layer/post-LN/K15": dict(feat_extract_norm="layer", conv_bias=True, num_conv_pos_embeddings=15,
                              layer_norm_eps=1e-3),
}
LENGTHS = (3000, 2000, 1234)
# Bound on the relative error against HF, per architecture: 10x what was measured on CPU (the
# worst of every hidden state, masked or not, rounded up), so that a small slip (one bias
# 0.1 % off) cannot hide under a bound far above what the port achieves.
TOL = {"group/post-LN": 2e-5,        # measured 1.9e-6
       "layer/stable-LN": 8e-5,      # measured 7.6e-6
       "group/post-LN/K15": 6e-5,    # measured 5.1e-6
       "layer/post-LN/K15": 3e-5}    # measured 2.9e-6


def hf_config(**overrides):
    return transformers.Wav2Vec2Config(**{**TINY, **overrides})


def randomize(module, seed):
    """Every parameter random (norm scales around 1), so no weight keeps its init value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if "layer_norm.weight" in name:  # LayerNorm and the GroupNorm (HF names both so)
                p.copy_(1.0 + 0.3 * r)
            else:
                p.copy_(0.5 * r)
    return module.eval()


def make_hf(cls=transformers.Wav2Vec2Model, seed=0, **overrides):
    return randomize(cls(hf_config(**overrides)), seed)


def batch(lengths=LENGTHS, seed=0):
    """Zero-padded waveforms [B, max] and the int mask HF's feature extractor would give."""
    rng = np.random.default_rng(seed)
    n = max(lengths)
    x = np.zeros((len(lengths), n), np.float32)
    mask = np.zeros((len(lengths), n), np.int64)
    for i, length in enumerate(lengths):
        x[i, :length] = rng.standard_normal(length)
        mask[i, :length] = 1
    return x, mask


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def convert(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)
    model_config, variables = load_hf_wav2vec2(tmp_path)
    return Wav2Vec2Config.from_dict(model_config["wav2vec2"]), variables


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (hf model, Wav2Vec2Config, variables) for every architecture in ARCHS."""
    out = {}
    for i, (name, overrides) in enumerate(ARCHS.items()):
        hf = make_hf(seed=i, **overrides)
        out[name] = (hf, *convert(hf, tmp_path_factory.mktemp("hf")))
    return out


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_equals_hf_on_every_hidden_state(converted, arch, masked):
    hf, cfg, variables = converted[arch]
    x, mask = batch()
    with torch.no_grad():
        ref = hf(torch.from_numpy(x), attention_mask=torch.from_numpy(mask) if masked else None,
                 output_hidden_states=True)
    out = Wav2Vec2Model(cfg).apply(variables, jnp.asarray(x), jnp.asarray(mask) if masked else None)

    assert len(out.hidden_states) == len(ref.hidden_states) == cfg.num_hidden_layers + 1
    pairs = [(f"hidden_states[{i}]", o, r) for i, (o, r) in
             enumerate(zip(out.hidden_states, ref.hidden_states))]
    pairs += [("last_hidden_state", out.last_hidden_state, ref.last_hidden_state),
              ("extract_features", out.extract_features, ref.extract_features)]
    errors = {}
    for what, o, r in pairs:
        assert o.shape == tuple(r.shape), what
        errors[what] = rel_err(o, r.numpy())  # all frames, padded ones included
    if masked:
        hf_mask = hf._get_feature_vector_attention_mask(out.frame_mask.shape[1], torch.from_numpy(mask))
        np.testing.assert_array_equal(np.asarray(out.frame_mask), hf_mask.numpy())
        valid = np.asarray(out.frame_mask)
        assert 0 < valid[2].sum() < valid[1].sum() < valid[0].sum() == valid.shape[1]
        for what, o, r in pairs:  # and the valid frames alone
            errors[what + " (valid)"] = rel_err(np.asarray(o)[valid], r.numpy()[valid])
    else:
        assert bool(jnp.all(out.frame_mask))
    print(f"{arch} mask={masked}: max relative error {max(errors.values()):.2e}")
    assert max(errors.values()) <= TOL[arch], errors
    if cfg.do_stable_layer_norm:  # HF 5.x records the last layer's output before the final LN
        assert rel_err(out.hidden_states[-1], out.last_hidden_state) > 1e-2
    else:
        np.testing.assert_array_equal(out.hidden_states[-1], out.last_hidden_state)


def test_feature_lengths_and_receptive_field():
    base = Wav2Vec2Config()
    assert base.receptive_field == 400 and base.hop == 320  # wav2vec2-base conv stack
    assert feature_lengths(base, 16000) == 49  # HF Wav2Vec2Model gives 49 frames for 1 s at 16 kHz (measured)
    assert feature_lengths(base, 400) == 1 and feature_lengths(base, 399) <= 0
    hf = transformers.Wav2Vec2Model(hf_config())
    lengths = np.array([60, 61, 99, 100, 1234, 3000, 16000])
    ours = feature_lengths(Wav2Vec2Config(**TINY), lengths)
    ref = hf._get_feat_extract_output_lengths(torch.from_numpy(lengths)).numpy()
    np.testing.assert_array_equal(ours, ref)
    assert Wav2Vec2Config(**TINY).receptive_field == 60
    assert feature_lengths(Wav2Vec2Config(**TINY), 59) <= 0


def test_too_short_waveform_is_refused_naming_its_length(converted):
    _, cfg, variables = converted["group/post-LN"]
    model = Wav2Vec2Model(cfg)
    with pytest.raises(ValueError, match="waveform of 59 samples is shorter than the conv stack's "
                                         "receptive field of 60 samples"):
        model.apply(variables, jnp.zeros((2, 59)))
    assert model.apply(variables, jnp.zeros((1, 60))).last_hidden_state.shape == (1, 1, 32)
    x, mask = batch((3000, 50, 2000))
    with pytest.raises(ValueError, match=r"shorter than the receptive field of 60 samples \(no "
                                         r"frame\): row 1: 50 samples"):
        model.apply(variables, jnp.asarray(x), jnp.asarray(mask))
    with pytest.raises(ValueError, match=r"input_values must be \[B, N\], got shape \(3000,\)"):
        model.apply(variables, jnp.zeros((3000,)))
    with pytest.raises(ValueError, match=r"attention_mask shape \(2, 10\) != input_values shape"):
        model.apply(variables, jnp.zeros((2, 3000)), jnp.ones((2, 10)))


def _loss(model, x, mask, **kw):
    def f(params):
        out = model.apply({"params": params}, x, mask, **kw)
        return jnp.sum(jnp.square(out.last_hidden_state)) + jnp.sum(out.extract_features)
    return f


def assert_grads_close(what, g1, g2):
    """Equal up to float reordering, each tensor on its own scale (helpers.gradient_errors)."""
    assert jax.tree.structure(g1) == jax.tree.structure(g2)
    relative, noise = gradient_errors(g1, g2)
    print(f"{what}: worst per-tensor relative gradient difference {max(relative.values()):.1e}, "
          f"k_proj bias noise {max(noise.values(), default=0.0):.1e}")
    # Measured on CPU: 2.7e-6 (frozen encoder), 1.3e-6 (frozen feature_projection), 7.7e-7
    # (remat); k_proj bias noise 2.3e-7.
    assert max(relative.values()) <= 3e-5, {k: v for k, v in relative.items() if v > 3e-5}
    assert max(noise.values(), default=0.0) <= 1e-5, noise


def test_freeze_feature_encoder_and_remat_gradients(converted):
    _, cfg, variables = converted["layer/stable-LN"]
    x, mask = batch()
    x, mask = jnp.asarray(x), jnp.asarray(mask)
    plain, remat = Wav2Vec2Model(cfg), Wav2Vec2Model(cfg, remat=True)
    # One program for the three gradients: one compilation instead of three.
    free, frozen, rematted = jax.jit(lambda p: (
        jax.grad(_loss(plain, x, mask))(p),
        jax.grad(_loss(plain, x, mask, freeze_feature_encoder=True))(p),
        jax.grad(_loss(remat, x, mask))(p)))(variables["params"])
    fe_free = jax.tree.leaves(free["feature_extractor"])
    fe_frozen = jax.tree.leaves(frozen["feature_extractor"])
    assert len(fe_frozen) == 4 * 4  # conv kernel + bias + LayerNorm scale + bias, 4 layers
    assert all(bool(jnp.all(g == 0)) for g in fe_frozen)
    assert all(bool(jnp.any(g != 0)) for g in fe_free)
    for name in ("feature_projection", "encoder"):  # everything else unchanged
        assert_grads_close(f"frozen {name}", free[name], frozen[name])
    assert_grads_close("remat", free, rematted)  # remat changes memory, not maths
    np.testing.assert_allclose(remat.apply(variables, x, mask).last_hidden_state,
                               plain.apply(variables, x, mask).last_hidden_state, rtol=1e-6, atol=1e-6)


def test_jit_equals_no_jit(converted):
    _, cfg, variables = converted["group/post-LN"]
    model = Wav2Vec2Model(cfg)
    x, mask = batch()
    eager = model.apply(variables, jnp.asarray(x), jnp.asarray(mask))
    jitted = jax.jit(model.apply)(variables, jnp.asarray(x), jnp.asarray(mask))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_train_mode_dropout_uses_the_rng_deterministically(converted):
    _, cfg, variables = converted["group/post-LN"]  # HF default dropouts 0.1, layerdrop 0.1
    assert cfg.hidden_dropout == cfg.attention_dropout == cfg.activation_dropout == 0.1
    model = Wav2Vec2Model(cfg)
    x = jnp.asarray(batch()[0])
    run = jax.jit(lambda rng: model.apply(variables, x, train=True, rngs={"dropout": rng})
                  .last_hidden_state)
    a, a2, b = run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(1))
    evaluated = model.apply(variables, x).last_hidden_state
    np.testing.assert_array_equal(a, a2)
    assert rel_err(a, b) > 1e-3 and rel_err(a, evaluated) > 1e-3


def test_layerdrop_skips_whole_layers(converted):
    _, cfg, variables = converted["group/post-LN"]
    cfg = dataclasses.replace(cfg, hidden_dropout=0.0, attention_dropout=0.0,
                              activation_dropout=0.0, layerdrop=0.5)
    model = Wav2Vec2Model(cfg)
    x = jnp.asarray(batch()[0])
    evaluated = model.apply(variables, x)
    run = jax.jit(lambda rng: model.apply(variables, x, train=True, rngs={"dropout": rng}))
    seen = set()
    for seed in range(8):
        hs = run(jax.random.PRNGKey(seed)).hidden_states
        skipped = tuple(bool(jnp.array_equal(hs[i + 1], hs[i])) for i in range(2))
        seen.add(skipped)
        for i, skip in enumerate(skipped):  # no other dropout: a layer run equals eval's
            if not skip and not any(skipped[:i]):
                np.testing.assert_allclose(hs[i + 1], evaluated.hidden_states[i + 1], rtol=1e-5,
                                           atol=1e-5)
    assert len(seen) >= 3  # skips of each layer seen, independently


def test_bfloat16_compute_keeps_float32_params(converted):
    _, cfg, variables = converted["layer/stable-LN"]
    x, mask = batch()
    model = Wav2Vec2Model(cfg, dtype=jnp.bfloat16)
    init = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.asarray(x))
    assert {leaf.dtype for leaf in jax.tree.leaves(init)} == {jnp.dtype(jnp.float32)}
    out = jax.jit(model.apply)(variables, jnp.asarray(x), jnp.asarray(mask))
    assert out.last_hidden_state.dtype == jnp.bfloat16
    ref = Wav2Vec2Model(cfg).apply(variables, jnp.asarray(x), jnp.asarray(mask))
    a, b = np.asarray(out.last_hidden_state, np.float32), np.asarray(ref.last_hidden_state)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 5e-2


def test_activations_match_hf_act2fn():
    from transformers.activations import ACT2FN

    from emosup.models.wav2vec2 import ACTIVATIONS

    x = np.linspace(-6, 6, 1001, dtype=np.float32)
    for name, fn in ACTIVATIONS.items():
        ref = ACT2FN[name](torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(fn(jnp.asarray(x)), ref, rtol=1e-6, atol=1e-6, err_msg=name)


def test_config_from_hf_and_back():
    hf = hf_config(**LAYER).to_dict()
    cfg = Wav2Vec2Config.from_hf_dict(hf)
    assert cfg.conv_kernel == (10, 3, 3, 2) and cfg.do_stable_layer_norm and cfg.conv_bias
    assert cfg.layerdrop == hf["layerdrop"] and cfg.layer_norm_eps == hf["layer_norm_eps"]
    assert cfg.family == "layer-norm convs, pre-LN (stable) encoder"
    assert Wav2Vec2Config.from_dict(cfg.to_dict()) == cfg
    assert Wav2Vec2Config.from_hf_dict({"model_type": "wav2vec2"}) == Wav2Vec2Config()  # HF defaults
    with pytest.raises(ValueError, match="x.json: model_type is 'hubert', expected 'wav2vec2'"):
        Wav2Vec2Config.from_hf_dict({**hf, "model_type": "hubert"}, where="x.json")
    with pytest.raises(ValueError, match="add_adapter=true is not supported"):
        Wav2Vec2Config.from_hf_dict({**hf, "add_adapter": True})
    with pytest.raises(ValueError, match="adapter_attn_dim=16 is not supported"):
        Wav2Vec2Config.from_hf_dict({**hf, "adapter_attn_dim": 16})
    with pytest.raises(ValueError, match="config.json: Wav2Vec2Config: hidden_act='mish' is not"):
        Wav2Vec2Config.from_hf_dict({**hf, "hidden_act": "mish"})
    with pytest.raises(ValueError, match="feat_extract_norm must be 'group' or 'layer', got 'batch'"):
        Wav2Vec2Config(feat_extract_norm="batch")
    with pytest.raises(ValueError, match="conv_dim, conv_stride and conv_kernel must be"):
        Wav2Vec2Config(conv_dim=(4, 4), conv_stride=(2,), conv_kernel=(3, 3))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['vocab_size'\]"):
        Wav2Vec2Config.from_dict({**cfg.to_dict(), "vocab_size": 32})
