"""The HF wav2vec2 converter: every file layout HF writes, strict about every key, and the CLI.

Reference checkpoints are tiny random HF models (see test_wav2vec2.py) written with
`save_pretrained` in this test.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file
from test_wav2vec2 import LAYER, batch, make_hf, rel_err

from emosup.convert.__main__ import main as convert_main
from emosup.convert.hf_wav2vec2 import hf_key, load_hf_wav2vec2, param_shapes
from emosup.errors import ConversionError
from emosup.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

POS = "encoder.pos_conv_embed.conv."
NEW_G, NEW_V = POS + "parametrizations.weight.original0", POS + "parametrizations.weight.original1"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A post-LN/group-norm Wav2Vec2Model saved as model.safetensors (torch's new spelling)."""
    d = tmp_path_factory.mktemp("base")
    hf = make_hf(seed=10)
    hf.save_pretrained(d)
    return hf, d


@pytest.fixture(scope="module")
def reference(base_dir):
    return load_hf_wav2vec2(base_dir[1])


def assert_same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def write_state(d, state, config_json):
    """A save_pretrained-like folder with our own state dict (safetensors)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(config_json)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(d / "model.safetensors"))
    return d


def test_params_mirror_hf_keys_and_fold_weight_norm(base_dir, reference):
    hf, d = base_dir
    state = load_file(str(d / "model.safetensors"))
    assert NEW_G in state and NEW_V in state  # what current torch writes
    cfg = Wav2Vec2Config.from_dict(reference[0]["wav2vec2"])
    keys = {hf_key(path) for path in param_shapes(cfg)}
    assert keys == set(state) - {"masked_spec_embed", NEW_G, NEW_V} | {POS + "weight"}
    p = reference[1]["params"]
    # The folded kernel is torch's own parametrised weight g·v/‖v‖, transposed.
    np.testing.assert_allclose(p["encoder"]["pos_conv_embed"]["conv"]["kernel"],
                               hf.encoder.pos_conv_embed.conv.weight.detach().numpy().transpose(2, 1, 0),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(p["encoder"]["layers"]["1"]["attention"]["q_proj"]["kernel"],
                                  state["encoder.layers.1.attention.q_proj.weight"].T)
    np.testing.assert_array_equal(p["feature_extractor"]["conv_layers"]["0"]["layer_norm"]["scale"],
                                  state["feature_extractor.conv_layers.0.layer_norm.weight"])
    assert reference[0] == {"encoder": "wav2vec2", "wav2vec2": cfg.to_dict(),
                            "features": {"do_normalize": True, "return_attention_mask": False,
                                         "sampling_rate": 16000},
                            "source": f"huggingface:{d.name}"}
    assert set(reference[1]) == {"params"}


def test_bin_legacy_weight_norm_and_folded_spellings_agree(base_dir, reference, tmp_path):
    hf, d = base_dir
    # transformers 5 always writes safetensors (safe_serialization is gone); 4.x wrote
    # torch.save(state_dict()) to pytorch_model.bin, as done here.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((d / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert_same_params(load_hf_wav2vec2(tmp_path / "bin")[1]["params"], reference[1]["params"])

    state = load_file(str(d / "model.safetensors"))
    config_json = (d / "config.json").read_text()
    legacy = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    assert POS + "weight_g" in legacy and NEW_G not in legacy
    got = load_hf_wav2vec2(write_state(tmp_path / "legacy", legacy, config_json))[1]["params"]
    assert_same_params(got, reference[1]["params"])

    folded = {k: v for k, v in state.items() if k not in (NEW_G, NEW_V)}
    folded[POS + "weight"] = hf.encoder.pos_conv_embed.conv.weight.detach().numpy()
    got = load_hf_wav2vec2(write_state(tmp_path / "folded", folded, config_json))[1]["params"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 got, reference[1]["params"])


def test_sharded_checkpoint(base_dir, reference, tmp_path):
    base_dir[0].save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert_same_params(load_hf_wav2vec2(tmp_path)[1]["params"], reference[1]["params"])


@pytest.mark.parametrize("overrides", [{}, LAYER], ids=["group/post-LN", "layer/stable-LN"])
def test_sequence_classification_heads_dropped_or_kept(tmp_path, overrides):
    torch.manual_seed(0)
    hf = make_hf(transformers.Wav2Vec2ForSequenceClassification, seed=3, use_weighted_layer_sum=True,
                 classifier_proj_size=8, num_labels=4, **overrides)
    hf.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert "wav2vec2.encoder.layers.0.attention.q_proj.weight" in state and "projector.weight" in state

    _, dropped = load_hf_wav2vec2(tmp_path)
    assert set(dropped) == {"params"}
    model_config, kept = load_hf_wav2vec2(tmp_path, keep_heads=True)
    assert model_config["heads"] == ["classifier", "layer_weights", "projector"]
    assert_same_params(kept["params"], dropped["params"])
    heads = kept["heads"]
    np.testing.assert_array_equal(heads["projector"]["kernel"], state["projector.weight"].T)
    assert heads["classifier"]["kernel"].shape == (8, 4) and heads["layer_weights"].shape == (3,)

    # The Flax body + kept heads reproduce HF's logits (weighted layer sum over the HF 5.x
    # hidden_states, masked mean pooling), so heads are in the right layout and indexing.
    cfg = Wav2Vec2Config.from_dict(model_config["wav2vec2"])
    x, mask = batch()
    out = Wav2Vec2Model(cfg).apply(kept, jnp.asarray(x), jnp.asarray(mask))
    w = jax.nn.softmax(jnp.asarray(heads["layer_weights"]))
    h = jnp.einsum("l,lbtc->btc", w, jnp.stack(out.hidden_states))
    h = h @ heads["projector"]["kernel"] + heads["projector"]["bias"]
    m = out.frame_mask[:, :, None]
    pooled = jnp.sum(jnp.where(m, h, 0), axis=1) / jnp.sum(m, axis=1)
    logits = pooled @ heads["classifier"]["kernel"] + heads["classifier"]["bias"]
    with torch.no_grad():
        ref = hf(torch.from_numpy(x), attention_mask=torch.from_numpy(mask)).logits.numpy()
    err = rel_err(logits, ref)
    print(f"kept heads: logits relative error vs HF {err:.2e}")
    assert err <= 2e-5  # measured on CPU 2.8e-7 (group/post-LN), 1.1e-6 (layer/stable-LN)

    # A head that does not fit the body fails only when it is kept.
    bad = {**state, "classifier.weight": np.zeros((4, 7), np.float32)}
    bad_dir = write_state(tmp_path / "bad", bad, (tmp_path / "config.json").read_text())
    assert_same_params(load_hf_wav2vec2(bad_dir)[1]["params"], dropped["params"])
    with pytest.raises(ConversionError, match=r"classifier.weight: shape \(4, 7\) gives \(7, 4\), "
                                              r"expected \(8, 4\) for heads/classifier/kernel"):
        load_hf_wav2vec2(bad_dir, keep_heads=True)


def test_pretraining_checkpoint_drops_quantizer_and_mask_embedding(tmp_path):
    hf = make_hf(transformers.Wav2Vec2ForPreTraining, seed=4, codevector_dim=8, proj_codevector_dim=8,
                 num_codevectors_per_group=4)
    hf.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert {"quantizer.codevectors", "project_q.weight", "project_hid.weight",
            "wav2vec2.masked_spec_embed"} <= set(state)
    _, variables = load_hf_wav2vec2(tmp_path, keep_heads=True)
    assert variables["heads"] == {}
    x = batch()[0]
    with torch.no_grad():
        ref = hf.wav2vec2(torch.from_numpy(x)).last_hidden_state.numpy()
    cfg = Wav2Vec2Config.from_dict(load_hf_wav2vec2(tmp_path)[0]["wav2vec2"])
    err = rel_err(Wav2Vec2Model(cfg).apply(variables, jnp.asarray(x)).last_hidden_state, ref)
    print(f"pre-training checkpoint: relative error vs HF {err:.2e}")
    assert err <= 4e-5  # measured on CPU 3.3e-6


def test_ctc_lm_head_kept(tmp_path):
    make_hf(transformers.Wav2Vec2ForCTC, seed=5, vocab_size=12).save_pretrained(tmp_path)
    _, variables = load_hf_wav2vec2(tmp_path, keep_heads=True)
    assert variables["heads"]["lm_head"]["kernel"].shape == (32, 12)
    assert variables["heads"]["lm_head"]["bias"].shape == (12,)


def test_every_bad_key_is_named_at_once(base_dir, tmp_path):
    _, d = base_dir
    state = dict(load_file(str(d / "model.safetensors")))
    del state["encoder.layers.1.feed_forward.output_dense.bias"]
    state["encoder.layers.7.extra.weight"] = np.zeros(3, np.float32)
    state["feature_projection.projection.weight"] = np.zeros((32, 15), np.float32)
    state[NEW_G] = np.ones((1, 1, 15), np.float32)
    bad = write_state(tmp_path / "bad", state, (d / "config.json").read_text())
    with pytest.raises(ConversionError) as info:
        load_hf_wav2vec2(bad)
    e, msg = info.value, str(info.value)
    assert msg.startswith(f"{bad / 'model.safetensors'}: conversion failed")
    assert e.missing == ["encoder.layers.1.feed_forward.output_dense.bias"]
    assert e.unused == ["encoder.layers.7.extra.weight"]
    assert sorted(e.mismatched) == sorted(["feature_projection.projection.weight", NEW_G])
    assert ("shape (32, 15) gives (15, 32), expected (16, 32) for "
            "params/feature_projection/projection/kernel") in msg
    assert "masked_spec_embed" not in msg  # dropped on purpose, never reported

    only_v = {k: v for k, v in load_file(str(d / "model.safetensors")).items() if k != NEW_G}
    with pytest.raises(ConversionError, match=rf"missing keys \(1\): {NEW_G}"):
        load_hf_wav2vec2(write_state(tmp_path / "only_v", only_v, (d / "config.json").read_text()))


def test_unusable_sources_are_named(base_dir, tmp_path):
    _, d = base_dir
    config = json.loads((d / "config.json").read_text())
    state = load_file(str(d / "model.safetensors"))
    hubert = write_state(tmp_path / "hubert", state, json.dumps({**config, "model_type": "hubert"}))
    with pytest.raises(ConversionError, match=rf"{hubert / 'config.json'}: model_type is 'hubert', "
                                              "expected 'wav2vec2'"):
        load_hf_wav2vec2(hubert)
    heads_only = {"projector.weight": np.zeros((8, 32), np.float32),
                  "classifier.bias": np.zeros(4, np.float32)}
    with pytest.raises(ConversionError, match="holds no wav2vec2 encoder weights .* its 2 keys: "
                                              "classifier.bias, projector.weight"):
        load_hf_wav2vec2(write_state(tmp_path / "heads", heads_only, json.dumps(config)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty" / "config.json")):
        load_hf_wav2vec2(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="has no weight file .*model.safetensors"):
        load_hf_wav2vec2(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "wav2vec2",\n  oops}')
    with pytest.raises(ConversionError, match=r"config.json:2: invalid JSON"):
        load_hf_wav2vec2(tmp_path / "empty")


def test_preprocessor_config_sets_the_front_end(base_dir, tmp_path):
    hf, _ = base_dir
    hf.save_pretrained(tmp_path)
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=True)
    extractor.save_pretrained(tmp_path)
    model_config, _ = load_hf_wav2vec2(tmp_path)
    assert model_config["features"] == {"do_normalize": False, "return_attention_mask": True,
                                        "sampling_rate": 16000}


def test_cli_end_to_end(base_dir, reference, tmp_path, capsys):
    _, d = base_dir
    out = tmp_path / "out"
    assert convert_main(["wav2vec2", str(d), str(out)]) == 0
    line = capsys.readouterr().out.strip()
    n = sum(np.size(v) for v in jax.tree.leaves(reference[1]["params"]))
    assert line == (f"converted {d} → {out}: wav2vec2 (group-norm convs, post-LN encoder), "
                    f"2 layers x 32, {n / 1e6:.2f}M parameters")
    assert json.loads((out / "model.json").read_text()) == reference[0]
    restored = ocp.StandardCheckpointer().restore(out / "variables")
    assert_same_params(restored["params"], reference[1]["params"])

    assert convert_main(["wav2vec2", str(d), str(tmp_path / "heads"), "--keep-heads"]) == 0
    assert capsys.readouterr().out.strip().endswith(", no heads found")

    assert convert_main(["wav2vec2", str(d), str(out)]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert convert_main(["wav2vec2", str(tmp_path / "nope"), str(tmp_path / "o2")]) == 2
    assert "HF wav2vec2 directory not found" in capsys.readouterr().err
    assert convert_main(["hubert", str(d), str(tmp_path / "o3")]) == 2
    assert "supported: speechbrain, wav2vec2" in capsys.readouterr().err
    assert convert_main(["speechbrain", str(d), str(tmp_path / "o4"), "--keep-heads"]) == 2
    assert "--keep-heads applies to wav2vec2 only" in capsys.readouterr().err
