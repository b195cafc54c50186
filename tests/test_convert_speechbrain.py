"""The SpeechBrain ECAPA converter is strict and treats its input files as untrusted."""
import os
import sys

import numpy as np
import pytest
import torch
from helpers import write_speechbrain_hparams
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

from emosup.convert.speechbrain_ecapa import (
    ecapa_kwargs_from_hparams,
    features_from_hparams,
    load_speechbrain_ecapa,
    read_hyperparams,
)
from emosup.convert.torch_state import load_torch_state
from emosup.errors import ConversionError
from emosup.models.ecapa import PRESETS

CHANNELS = [16, 16, 16, 16, 48]

# The published speechbrain/spkrec-ecapa-voxceleb hyperparams.yaml, in full structure.
SPKREC_YAML = """\
# ############################################################################
# Model: ECAPA big for Speaker verification
# ############################################################################

# Feature parameters
n_mels: 80

# Pretrain folder (HuggingFace)
pretrained_path: speechbrain/spkrec-ecapa-voxceleb

# Output parameters
out_n_neurons: 7205

# Model params
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [1024, 1024, 1024, 1024, 3072]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 128
    lin_neurons: 192

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: 192
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""


def write_yaml(d, **overrides):
    """This file's small ECAPA's hyperparams.yaml; `overrides` write a wrong field on purpose."""
    write_speechbrain_hparams(d, **{"n_mels": 8, "channels": CHANNELS, "attention_channels": 8,
                                    "se_channels": 8, "lin_neurons": 8, "groups": [1, 1, 1, 1, 1],
                                    **overrides})


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    sb = ECAPA_TDNN(8, channels=CHANNELS, attention_channels=8, se_channels=8, lin_neurons=8)
    return sb.state_dict()


@pytest.fixture
def sb_dir(tmp_path, state):
    torch.save(state, tmp_path / "embedding_model.ckpt")
    write_yaml(tmp_path)
    return tmp_path


def test_converts_with_transposed_kernels(sb_dir, state):
    config, variables = load_speechbrain_ecapa(sb_dir)
    assert config["ecapa"]["channels"] == CHANNELS and config["source"] == f"speechbrain:{sb_dir.name}"
    p, s = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(p["blocks_0"]["conv"]["conv"]["kernel"],
                                  state["blocks.0.conv.conv.weight"].numpy().transpose(2, 1, 0))
    np.testing.assert_array_equal(p["fc"]["conv"]["bias"], state["fc.conv.bias"].numpy())
    np.testing.assert_array_equal(p["asp_bn"]["norm"]["scale"], state["asp_bn.norm.weight"].numpy())
    np.testing.assert_array_equal(
        s["blocks_1"]["res2net_block"]["blocks_3"]["norm"]["norm"]["var"],
        state["blocks.1.res2net_block.blocks.3.norm.norm.running_var"].numpy())
    n_leaves = sum(1 for c in variables.values() for _ in _leaves(c))
    assert n_leaves == sum(1 for k in state if not k.endswith("num_batches_tracked"))


def _leaves(tree):
    for v in tree.values():
        yield from (_leaves(v) if isinstance(v, dict) else [v])


def test_strict_conversion_names_every_bad_key(sb_dir, state):
    bad = dict(state)
    del bad["blocks.2.res2net_block.blocks.5.conv.conv.bias"]
    bad["blocks.9.extra.weight"] = torch.zeros(3)
    bad["asp.conv.conv.weight"] = torch.zeros(48, 7, 1)
    torch.save(bad, sb_dir / "embedding_model.ckpt")
    with pytest.raises(ConversionError) as info:
        load_speechbrain_ecapa(sb_dir)
    msg = str(info.value)
    for key in ("blocks.2.res2net_block.blocks.5.conv.conv.bias", "blocks.9.extra.weight",
                "asp.conv.conv.weight"):
        assert key in msg
    assert "num_batches_tracked" not in msg  # dropped on purpose, never reported
    assert info.value.missing == ["blocks.2.res2net_block.blocks.5.conv.conv.bias"]
    assert info.value.unused == ["blocks.9.extra.weight"]
    assert info.value.mismatched == ["asp.conv.conv.weight"]
    assert "(48, 7, 1)" in msg and "(1, 8, 48)" in msg


def test_missing_files_are_named(tmp_path, state):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "hyperparams.yaml")):
        load_speechbrain_ecapa(tmp_path)
    write_yaml(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "embedding_model.ckpt")):
        load_speechbrain_ecapa(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_torch_state(tmp_path / "nope.ckpt")


def test_yaml_python_tag_is_refused_and_never_runs(tmp_path):
    pwned = tmp_path / "PWNED"
    path = tmp_path / "hyperparams.yaml"
    path.write_text(f'n_mels: 80\nevil: !!python/object/apply:os.system ["touch {pwned}"]\n')
    with pytest.raises(ConversionError, match=rf"{path}:2: refused YAML node"):
        read_hyperparams(path)
    assert not pwned.exists()


def test_hyperpyyaml_code_tags_are_inert(tmp_path, state):
    pwned = tmp_path / "PWNED"
    torch.save(state, tmp_path / "embedding_model.ckpt")
    (tmp_path / "hyperparams.yaml").write_text(
        f'embedding_model: !new:os.system ["touch {pwned}"]\n'
        f'run: !apply:os.system ["touch {pwned}"]\n'
        f"fn: !name:os.system\n"
        f"more: !include:{tmp_path}/other.yaml\n"
        f"need: !PLACEHOLDER\n")
    hp = read_hyperparams(tmp_path / "hyperparams.yaml")
    assert hp["embedding_model"] == {"__tag__": "!new:os.system", "args": [f"touch {pwned}"]}
    assert hp["run"]["__tag__"] == "!apply:os.system"
    assert hp["fn"] == {"__tag__": "!name:os.system", "value": ""}
    assert hp["need"] == {"__tag__": "!PLACEHOLDER", "value": ""}
    with pytest.raises(ConversionError, match="'embedding_model' must be !new:speechbrain.lobes"):
        load_speechbrain_ecapa(tmp_path)
    assert not pwned.exists()


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_checkpoint_with_code_payload_is_refused_and_never_runs(tmp_path, state):
    pwned = tmp_path / "PWNED2"
    evil = dict(state)
    evil["fc.conv.bias"] = _Payload(pwned)  # pickling records the call, it does not run it
    torch.save(evil, tmp_path / "embedding_model.ckpt")
    write_yaml(tmp_path)
    refusal = f"refused: the pickle asks for {os.system.__module__}.system, which is not a tensor"
    with pytest.raises(ConversionError, match=refusal):
        load_speechbrain_ecapa(tmp_path)
    with pytest.raises(ConversionError, match=refusal):
        load_torch_state(tmp_path / "embedding_model.ckpt")
    assert not pwned.exists()


@pytest.mark.parametrize("kwargs,field", [
    (dict(input_size="40"), "compute_features.n_mels' = 8 differs from 'embedding_model.input_size' = 40"),
    (dict(std_norm="True"), "'mean_var_norm.std_norm' = True is not supported"),
    (dict(model_class="speechbrain.lobes.models.Xvector.Xvector"),
     "'embedding_model' must be !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN, got "
     "!new:speechbrain.lobes.models.Xvector.Xvector"),
    (dict(groups="[1, 1, 2, 1, 1]"), "'embedding_model.groups' must be all 1"),
    (dict(norm_class="speechbrain.processing.features.Other"), "'mean_var_norm' must be"),
])
def test_unsupported_hyperparams_name_the_field(tmp_path, state, kwargs, field):
    torch.save(state, tmp_path / "embedding_model.ckpt")
    write_yaml(tmp_path, **kwargs)
    with pytest.raises(ConversionError) as info:
        load_speechbrain_ecapa(tmp_path)
    assert field in str(info.value) and str(tmp_path / "hyperparams.yaml") in str(info.value)


def test_reads_the_published_spkrec_yaml(tmp_path):
    (tmp_path / "hyperparams.yaml").write_text(SPKREC_YAML)
    hp = read_hyperparams(tmp_path / "hyperparams.yaml")
    assert hp["pretrainer"]["paths"]["classifier"] == "speechbrain/spkrec-ecapa-voxceleb/classifier.ckpt"
    assert hp["modules"]["embedding_model"] == hp["embedding_model"]
    kwargs = ecapa_kwargs_from_hparams(hp)
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS["c1024"].items()}
    assert kwargs == {**expected, "groups": 1, "dropout": 0.0}  # omitted fields: SB defaults
    assert features_from_hparams(hp, 80) == {"n_mels": 80, "mean_norm": "sentence"}


def test_reference_resolution(tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text("a: 4\nb: {c: 3}\nd: !ref <a> * <b.c> + 1\ne: !ref <b[c]>\n"
                    "f: !ref <missing>\ng: !ref x<a>y\n")
    hp = read_hyperparams(path)
    assert hp["d"] == 13 and hp["e"] == 3 and hp["g"] == "x4y"
    assert hp["f"] == {"__tag__": "!ref", "value": "<missing>"}  # kept, not guessed
    path.write_text("a: !ref <b>\nb: !ref <a>\n")
    with pytest.raises(ConversionError, match="circular reference"):
        read_hyperparams(path)


def test_torch_state_formats(tmp_path, state, monkeypatch):
    from safetensors.numpy import save_file

    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_file(arrays, str(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(load_torch_state(tmp_path / "m.safetensors")["w"], arrays["w"])

    torch.save({"model": dict(state)}, tmp_path / "nested.pt")
    with pytest.raises(ConversionError, match="expected a flat mapping of names to tensors, but 'model'"):
        load_torch_state(tmp_path / "nested.pt")
    torch.save({"w": torch.ones(2, dtype=torch.bfloat16)}, tmp_path / "bf16.bin")
    assert load_torch_state(tmp_path / "bf16.bin")["w"].dtype == np.float32

    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    # neither format needs torch
    np.testing.assert_array_equal(load_torch_state(tmp_path / "bf16.bin")["w"], np.ones(2, np.float32))
    assert load_torch_state(tmp_path / "m.safetensors")["w"].shape == (2, 3)
