"""`Wav2Vec2ForSER` equals HF `Wav2Vec2ForSequenceClassification`, and `Wav2Vec2Model(per_utterance=
True)` equals HF run on each utterance alone.

Reference models are tiny random HF models (test_wav2vec2.py: every weight randomised, the
layer weights included), saved and converted with `load_hf_wav2vec2(keep_heads=True)`.
Relative error = max |ours - HF| / max |HF|.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from test_wav2vec2 import LAYER, batch, make_hf, rel_err

from emosup.convert.hf_wav2vec2 import load_hf_wav2vec2
from emosup.models.w2v2_ser import Wav2Vec2ForSER, masked_mean, ser_from_hf, ser_variables_from_hf
from emosup.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

FAMILIES = {"group/post-LN": {}, "layer/stable-LN": LAYER}
# Bounds on the relative error against HF: 10x what was measured on CPU, rounded up.
TOL = 1e-5  # logits and pooled projection, every family/weighting/mask: measured 9.5e-7
# One utterance alone, every hidden state included: measured 2.7e-6 (group), 1.0e-6 (layer).
TOL_ALONE = {"group/post-LN": 3e-5, "layer/stable-LN": 1e-5}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(family, weighted) -> (HF model, model_config, converted variables with heads)."""
    out = {}
    for i, (family, overrides) in enumerate(FAMILIES.items()):
        for weighted in (False, True):
            hf = make_hf(transformers.Wav2Vec2ForSequenceClassification, seed=20 + 2 * i + weighted,
                         use_weighted_layer_sum=weighted, classifier_proj_size=8, num_labels=4,
                         **overrides)
            d = tmp_path_factory.mktemp("ser")
            hf.save_pretrained(d)
            out[family, weighted] = (hf, *load_hf_wav2vec2(d, keep_heads=True))
    return out


def hf_logits_and_pooled(hf, x, mask=None):
    """HF logits and the classifier's input (the pooled projection), via a forward hook."""
    seen = {}
    handle = hf.classifier.register_forward_hook(lambda m, inp, out: seen.update(pooled=inp[0]))
    with torch.no_grad():
        logits = hf(torch.from_numpy(x), attention_mask=None if mask is None else
                    torch.from_numpy(mask)).logits
    handle.remove()
    return logits.numpy(), seen["pooled"].numpy()


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("weighted", [False, True], ids=["last", "weighted"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_equal_hf_sequence_classification(models, family, weighted, masked):
    hf, model_config, variables = models[family, weighted]
    model, ser = ser_from_hf(model_config, variables)
    assert (model.num_classes, model.classifier_proj_size, model.use_weighted_layer_sum) == (4, 8, weighted)
    x, mask = batch()
    logits, dims, pooled = model.apply(ser, jnp.asarray(x), jnp.asarray(mask) if masked else None)
    ref_logits, ref_pooled = hf_logits_and_pooled(hf, x, mask if masked else None)
    assert dims is None and logits.shape == (3, 4) and pooled.shape == (3, 8)
    errors = {"logits": rel_err(logits, ref_logits), "pooled": rel_err(pooled, ref_pooled)}
    print(f"{family} weighted={weighted} mask={masked}: {errors}")
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("family", list(FAMILIES))
def test_per_utterance_rows_equal_hf_on_each_utterance_alone(models, family):
    hf, model_config, variables = models[family, True]
    cfg = Wav2Vec2Config.from_dict(model_config["wav2vec2"])
    x, mask = batch()
    lengths = mask.sum(1)
    model, ser = ser_from_hf(model_config, variables, per_utterance=True)
    logits, _, pooled = jax.jit(model.apply)(ser, jnp.asarray(x), jnp.asarray(mask))
    body = Wav2Vec2Model(cfg, per_utterance=True).apply(variables, jnp.asarray(x), jnp.asarray(mask))
    padded_hf, _ = hf_logits_and_pooled(hf, x, mask)  # HF's padded-batch maths
    errors, padded_gap = {}, 0.0
    for b, n in enumerate(lengths):
        ref_logits, ref_pooled = hf_logits_and_pooled(hf, x[b:b + 1, :n])
        with torch.no_grad():
            ref = hf.wav2vec2(torch.from_numpy(x[b:b + 1, :n]), output_hidden_states=True)
        t = ref.last_hidden_state.shape[1]
        assert int(body.frame_mask[b].sum()) == t
        errors[f"row {b} logits"] = rel_err(logits[b], ref_logits[0])
        errors[f"row {b} pooled"] = rel_err(pooled[b], ref_pooled[0])
        errors[f"row {b} last"] = rel_err(body.last_hidden_state[b, :t], ref.last_hidden_state[0])
        for i, h in enumerate(ref.hidden_states):
            errors[f"row {b} hidden_states[{i}]"] = rel_err(body.hidden_states[i][b, :t], h[0])
        padded_gap = max(padded_gap, rel_err(padded_hf[b], ref_logits[0]))
    print(f"{family} per utterance: max relative error {max(errors.values()):.2e}; HF padded "
          f"batch vs alone {padded_gap:.2e}")
    assert max(errors.values()) <= TOL_ALONE[family], errors
    if family == "group/post-LN":  # HF's padded GroupNorm differs: the test can tell
        assert padded_gap > 1e-3
    # Full-length rows without a mask: the same as Wav2Vec2Model.
    full = jnp.asarray(x[:1, :lengths[0]])
    np.testing.assert_allclose(Wav2Vec2Model(cfg, per_utterance=True).apply(variables, full).last_hidden_state,
                               Wav2Vec2Model(cfg).apply(variables, full).last_hidden_state,
                               rtol=1e-5, atol=1e-5)


# (stable-LN, weighted) is left out: there the weighted sum never reads encoder/layer_norm
# (HF 5.x's hidden_states[-1] is taken before it), so that leaf rightly gets no gradient.
@pytest.mark.parametrize("family,weighted", [("group/post-LN", True), ("layer/stable-LN", False)])
def test_freezing_the_feature_encoder_zeroes_exactly_its_gradients(models, family, weighted):
    _, model_config, variables = models[family, weighted]
    model, ser = ser_from_hf(model_config, variables, num_dims=3, rng=jax.random.PRNGKey(1))
    x, mask = batch()
    x, mask = jnp.asarray(x), jnp.asarray(mask)
    w = jax.random.normal(jax.random.PRNGKey(2), (3, 7))

    def loss(params, freeze):
        logits, dims, _ = model.apply({"params": params}, x, mask, freeze_feature_encoder=freeze)
        return jnp.sum(jnp.concatenate([logits, dims], -1) * w)

    if family == "group/post-LN":  # without freezing, every conv leaf learns (the test can fail)
        free = jax.jit(jax.grad(loss), static_argnums=1)(ser["params"], False)
        assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(free["wav2vec2"]["feature_extractor"]))
    frozen = jax.jit(jax.grad(loss), static_argnums=1)(ser["params"], True)
    flat = {"/".join(k.key for k in kp): g for kp, g in jax.tree_util.tree_flatten_with_path(frozen)[0]}
    fe = [k for k in flat if k.startswith("wav2vec2/feature_extractor/")]
    # group: 4 conv kernels + the GroupNorm's scale and bias; layer: conv kernel + bias +
    # LayerNorm scale + bias in each of the 4 conv layers.
    assert len(fe) == (6 if family == "group/post-LN" else 16)
    assert all(bool(jnp.all(flat[k] == 0)) for k in fe)
    # Every other leaf learns, except k_proj's bias: it adds the same logit to every key of a
    # query, which softmax cancels, so its true gradient is 0 (what is left is rounding).
    scale = max(float(jnp.max(jnp.abs(g))) for g in flat.values())
    for k, g in flat.items():
        if k in fe:
            continue
        if k.endswith("k_proj/bias"):
            assert float(jnp.max(jnp.abs(g))) < 1e-5 * scale, k
        else:
            assert bool(jnp.any(g != 0)), k
    assert {"projector", "classifier", "dims"} | ({"layer_weights"} if weighted else set()) == \
        set(frozen) - {"wav2vec2"}


def test_init_matches_the_converted_layout(models):
    _, model_config, variables = models["group/post-LN", True]
    cfg = Wav2Vec2Config.from_dict(model_config["wav2vec2"])
    x = jnp.zeros((2, 400))

    def shapes(**kw):
        model = Wav2Vec2ForSER(cfg, num_classes=4, use_weighted_layer_sum=True, classifier_proj_size=8, **kw)
        return jax.tree.map(np.shape, jax.eval_shape(model.init, jax.random.PRNGKey(0), x))

    converted = ser_variables_from_hf(variables)
    assert shapes() == jax.tree.map(np.shape, converted)  # same tree, same shapes
    assert shapes(per_utterance=True) == shapes()  # the per-utterance body has the same params

    # A/V/D only: no classifier, dims on the pooled projection, pooled_embedding = pooled.
    avd = Wav2Vec2ForSER(cfg, num_classes=0, num_dims=3, use_weighted_layer_sum=True, classifier_proj_size=8)
    v = jax.jit(avd.init)(jax.random.PRNGKey(1), x)
    assert set(v["params"]) == {"wav2vec2", "layer_weights", "projector", "dims"}
    np.testing.assert_array_equal(v["params"]["layer_weights"], np.full(3, 1 / 3, np.float32))  # HF init
    xs = jnp.asarray(batch()[0])
    (logits, dims, pooled), embedding = jax.jit(lambda v, xs: (
        avd.apply(v, xs), avd.apply(v, xs, method="pooled_embedding")))(v, xs)
    assert logits is None and dims.shape == (3, 3)
    np.testing.assert_allclose(dims, pooled @ v["params"]["dims"]["kernel"] + v["params"]["dims"]["bias"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(embedding, pooled)


def test_masked_mean_and_errors(models):
    x = jnp.arange(12.0).reshape(1, 4, 3)
    np.testing.assert_array_equal(masked_mean(x, jnp.array([[True, True, False, False]])), [[1.5, 2.5, 3.5]])
    _, model_config, variables = models["group/post-LN", False]
    with pytest.raises(ValueError, match=r"no 'heads' \(convert with keep_heads=True"):
        ser_variables_from_hf({"params": variables["params"]})
    with pytest.raises(ValueError, match=r"heads \['lm_head'\] lack \['projector', 'classifier'\]"):
        ser_variables_from_hf({"params": variables["params"], "heads": {"lm_head": {}}})
    with pytest.raises(ValueError, match="num_dims > 0 needs rng"):
        ser_from_hf(model_config, variables, num_dims=3)
    cfg = Wav2Vec2Config.from_dict(model_config["wav2vec2"])
    with pytest.raises(ValueError, match="need num_classes > 0 and/or num_dims > 0, got num_classes=0"):
        Wav2Vec2ForSER(cfg, num_classes=0).init(jax.random.PRNGKey(0), jnp.zeros((1, 400)))
    x, mask = batch((3000, 50, 2000))
    with pytest.raises(ValueError, match=r"Wav2Vec2Model: attention_mask gives example\(s\) shorter "
                                         r"than the receptive field of 60 samples \(no frame\): row 1: 50"):
        Wav2Vec2Model(cfg, per_utterance=True).apply(variables, jnp.asarray(x), jnp.asarray(mask))
