"""Gradients of the Flax wav2vec 2.0 equal HF PyTorch's, and the CPU-only fast path of the
positional conv's backward equals XLA's own gradient.

`emosup.models.wav2vec2` computes the grouped positional conv's kernel gradient with another
grouped conv on the CPU (XLA's own one is ~25x slower there) and attention with heads-first
matmuls; the forward-only HF equality tests would not see a wrong backward, these do.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from helpers import gradient_errors

from emosup.convert.hf_wav2vec2 import convert_state
from emosup.models import wav2vec2 as w2v

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(16, 16, 16, 16), conv_kernel=(10, 3, 3, 2), conv_stride=(5, 2, 2, 2),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
FAMILIES = {"group/post-LN": {},
            "layer/stable-LN/K15": dict(feat_extract_norm="layer", do_stable_layer_norm=True,
                                        conv_bias=True, num_conv_pos_embeddings=15,
                                        num_conv_pos_embedding_groups=4)}


def hf_model(seed, **overrides):
    torch.manual_seed(seed)
    hf = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**{**TINY, **overrides})).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every weight random, so no gradient hides behind an init value
        for name, p in hf.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.3 * r if "layer_norm.weight" in name else 0.5 * r)
    # The effective (folded) pos-conv weight as a plain parameter: its gradient is what the
    # Flax kernel's gradient must equal.
    torch.nn.utils.parametrize.remove_parametrizations(hf.encoder.pos_conv_embed.conv, "weight",
                                                       leave_parametrized=True)
    return hf


@pytest.mark.parametrize("family", list(FAMILIES))
def test_parameter_gradients_equal_hf(family):
    hf = hf_model(1, **FAMILIES[family])
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    cfg = w2v.Wav2Vec2Config.from_hf_dict(hf.config.to_dict())
    params = convert_state(state, cfg)["params"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2000)).astype(np.float32)
    mask = np.ones((2, 2000), np.int64)
    mask[1, 1500:] = 0
    x[1, 1500:] = 0

    def loss(p):  # squares make every output position matter differently
        out = w2v.Wav2Vec2Model(cfg).apply({"params": p}, jnp.asarray(x), jnp.asarray(mask))
        return jnp.mean(jnp.square(out.last_hidden_state))

    ours = jax.jit(jax.grad(loss))(params)
    hf.zero_grad()
    out = hf(torch.from_numpy(x), attention_mask=torch.from_numpy(mask)).last_hidden_state
    out.square().mean().backward()
    ref = {}
    for name, p in hf.named_parameters():  # the HF name -> our path, by the converter's rules
        if p.grad is None:
            continue
        parts = name.split(".")
        leaf = {"weight": "scale" if "norm" in parts[-2] else "kernel", "bias": "bias"}[parts[-1]]
        g = p.grad.numpy()
        if leaf == "kernel":  # Linear (out, in) -> (in, out); Conv1d (out, in, k) -> (k, in, out)
            g = g.T if g.ndim == 2 else g.transpose(2, 1, 0)
        ref["/".join(parts[:-1] + [leaf])] = g
    relative, noise = gradient_errors(ours, ref)  # every tensor on its own scale
    assert len(relative) + len(noise) == len(jax.tree.leaves(params))
    assert len(noise) == cfg.num_hidden_layers  # the k_proj biases, whose true gradient is 0
    worst = max(relative, key=relative.get)
    print(f"{family}: worst per-tensor ||grad error|| / ||grad|| {relative[worst]:.1e} ({worst}); "
          f"k_proj bias gradient / k_proj kernel gradient {max(noise.values()):.1e}")
    # Measured on CPU: worst tensor 1.02e-5 (group/post-LN's layers/1/attention/k_proj/kernel,
    # the smallest kernel gradient), 3.8e-6 (layer/stable-LN/K15); any one tensor's gradient
    # off by 0.1 % fails. The k_proj bias noise measured 7.2e-7.
    assert relative[worst] <= 1.1e-4, {k: v for k, v in relative.items() if v > 1.1e-4}
    assert max(noise.values()) <= 1e-5, noise
    pos = "encoder/pos_conv_embed/conv/kernel"
    # The fast-path kernel gradient is among the largest, not a ~0 one that checks nothing.
    assert np.linalg.norm(ref[pos]) > 0.1 * max(np.linalg.norm(g) for g in ref.values())


@pytest.mark.parametrize("kernel,groups,dtype", [(16, 2, jnp.float32), (15, 4, jnp.float32),
                                                 (8, 4, jnp.bfloat16)])
def test_fast_positional_conv_gradient_equals_xla(kernel, groups, dtype):
    rng = np.random.default_rng(kernel)
    x = jnp.asarray(rng.standard_normal((3, 21, 16)), dtype)
    w = jnp.asarray(rng.standard_normal((kernel, 16 // groups, 24)), dtype)
    cot = jnp.asarray(rng.standard_normal((3, 21 + 2 * (kernel // 2) - kernel + 1, 24)), dtype)

    def grads(conv):
        y, vjp = jax.vjp(lambda x, w: conv(x, w, kernel // 2, groups), x, w)
        return (y, *vjp(cot))

    fast, ref = jax.jit(lambda: grads(w2v._time_conv_fast_wgrad))(), grads(w2v._time_conv)
    for got, want in zip(fast, ref):
        assert got.dtype == want.dtype == dtype and got.shape == want.shape
        tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
        err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32))))
        assert err <= tol * float(jnp.max(jnp.abs(want.astype(jnp.float32)))), err
