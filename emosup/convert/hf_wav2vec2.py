"""Convert a HuggingFace wav2vec 2.0 checkpoint (a ``save_pretrained`` folder) to emosup.

Input directory, as ``Wav2Vec2Model`` / ``Wav2Vec2For*`` ``.save_pretrained`` writes it::

    config.json                  model_type "wav2vec2" + architecture fields
    model.safetensors            read with safetensors.numpy (no torch, no pickle), or
    pytorch_model.bin            read without torch by torch_zip.load_torch_file (tensors
                                 and plain containers only); either may be
                                 sharded (``*.index.json`` + shards)
    preprocessor_config.json     optional (written by the feature extractor, not the model)

Conversion is rename + transpose (HF's own PyTorch → Flax rules): Linear ``weight (out, in)`` →
``kernel (in, out)``; Conv1d ``weight (out, in/groups, k)`` → ``kernel (k, in/groups, out)``;
LayerNorm/GroupNorm ``weight`` → ``scale``. The positional conv's weight norm is folded,
``W = g · v / ‖v‖`` with the norm over axes (0, 1) for every kernel tap (``weight_norm(...,
dim=2)`` in HF), from either spelling: ``weight_g``/``weight_v`` (legacy
``nn.utils.weight_norm``) or ``parametrizations.weight.original0``/``original1`` (torch's
parametrization API, what current torch saves); an already folded ``weight`` is taken as is.

Keys may carry the ``wav2vec2.`` prefix (task models: ForPreTraining, ForCTC,
ForSequenceClassification). Dropped on purpose: pretraining-only tensors (``quantizer.*``,
``project_q.*``, ``project_hid.*``) and ``masked_spec_embed`` (the learned token SpecAugment
writes into masked frames in training; the inference forward pass never reads it, and the
model port has no SpecAugment). Task heads (``projector``, ``classifier``, ``layer_weights``,
``lm_head``) are dropped unless ``keep_heads``. Every other key must be used, every model
weight present with the right shape, else one ``ConversionError`` names every problem.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from emosup.convert.torch_state import Rule, load_torch_state, map_state
from emosup.errors import ConversionError
from emosup.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
# Weight files in HF's order of preference (transformers modeling_utils: safetensors first).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PREFIX = "wav2vec2."  # Wav2Vec2PreTrainedModel.base_model_prefix
POS_CONV = "encoder.pos_conv_embed.conv."
# (new parametrization spelling, legacy weight_norm spelling) of g and v.
WEIGHT_G = ("parametrizations.weight.original0", "weight_g")
WEIGHT_V = ("parametrizations.weight.original1", "weight_v")
PRETRAINING_ONLY = (r"^quantizer\.", r"^project_q\.", r"^project_hid\.",
                    r"^(wav2vec2\.)?masked_spec_embed$")
HEAD_LINEARS = ("projector", "classifier", "lm_head")
HEADS = tuple(rf"^{h}\.(weight|bias)$" for h in HEAD_LINEARS) + (r"^layer_weights$",)
# Wav2Vec2FeatureExtractor.__init__ defaults (feature_extraction_wav2vec2.py), used when the
# folder has no preprocessor_config.json (Wav2Vec2Model.save_pretrained does not write one).
FEATURE_DEFAULTS = {"do_normalize": True, "return_attention_mask": False, "sampling_rate": 16000}

_TAKE_FROM_HF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_hf_config(src_dir: os.PathLike | str) -> Wav2Vec2Config:
    """``Wav2Vec2Config`` from ``src_dir/config.json`` (ConversionError naming the file)."""
    path = Path(src_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"HF wav2vec2 directory is missing {path}")
    try:
        return Wav2Vec2Config.from_hf_dict(_read_json(path), where=str(path))
    except ValueError as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(str(e)) from e


def read_features(src_dir: os.PathLike | str) -> dict:
    """Front-end settings: ``{"do_normalize", "return_attention_mask", "sampling_rate"}``.

    From ``preprocessor_config.json`` when present, else ``Wav2Vec2FeatureExtractor``'s
    defaults (do_normalize=True: per-utterance zero mean / unit variance, eps 1e-7).
    """
    path = Path(src_dir) / PREPROCESSOR
    if not path.is_file():
        return dict(FEATURE_DEFAULTS)
    data = _read_json(path)
    if data.get("feature_size", 1) != 1:
        raise ConversionError(f"{path}: feature_size={data['feature_size']} (expected 1: raw "
                              "waveform input)")
    out = {}
    for key, default in FEATURE_DEFAULTS.items():
        value = data.get(key, default)
        kind = int if key == "sampling_rate" else bool
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConversionError(f"{path}: '{key}' must be {kind.__name__}, got {value!r}")
        out[key] = value
    if out["sampling_rate"] != FEATURE_DEFAULTS["sampling_rate"]:
        # emosup resamples every file to 16 kHz; a model trained at another rate would be fed
        # audio of the wrong rate.
        raise ConversionError(
            f"{path}: sampling_rate={out['sampling_rate']}, but emosup feeds wav2vec2 "
            f"{FEATURE_DEFAULTS['sampling_rate']} Hz audio: convert a checkpoint trained on 16 kHz "
            "speech (or, if this one was, set sampling_rate to 16000 in that file)")
    return out


def read_hf_state(src_dir: os.PathLike | str) -> tuple[dict[str, np.ndarray], str]:
    """The flat state dict and the name of the file(s) it came from."""
    src = Path(src_dir)
    for name in WEIGHT_FILES:
        path = src / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return load_torch_state(path), str(path)
        weight_map = _read_json(path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{path}: no 'weight_map' object")
        state: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_torch_state(src / shard))
        return state, str(path)
    raise FileNotFoundError(f"HF wav2vec2 directory {src} has no weight file (expected one of "
                            f"{', '.join(WEIGHT_FILES)})")


def _as_f32(w: np.ndarray) -> np.ndarray:
    return np.asarray(w, dtype=np.float32)


def _transposed(w: np.ndarray) -> np.ndarray:
    # Linear (out, in) -> (in, out); Conv1d (out, in/g, k) -> (k, in/g, out).
    return np.transpose(np.asarray(w, dtype=np.float32))


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """torch ``weight_norm(dim=2)``: ``W = g · v / ‖v‖``, norm over axes (0, 1) per tap k.

    ``g (1, 1, K)``, ``v (out, in/groups, K)`` -> ``W (out, in/groups, K)`` (float64 maths).
    """
    v64 = np.asarray(v, dtype=np.float64)
    norm = np.sqrt(np.sum(v64 * v64, axis=(0, 1), keepdims=True))
    return np.asarray(g, dtype=np.float64) * v64 / norm


def hf_key(path: tuple[str, ...]) -> str:
    """HF state-dict key of a Flax param path (without the ``wav2vec2.`` prefix)."""
    return ".".join(path[:-1] + (_TAKE_FROM_HF[path[-1]],))


def param_shapes(config: Wav2Vec2Config) -> dict:
    """``{path tuple: shape}`` of the Flax params of ``Wav2Vec2Model(config)``; no compute."""
    model = Wav2Vec2Model(config)
    wav = jax.ShapeDtypeStruct((1, config.receptive_field), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), wav)["params"]
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {tuple(k.key for k in kp): tuple(leaf.shape) for kp, leaf in flat}


def _pick(state: Mapping, keys: tuple[str, ...]) -> str:
    """The first of ``keys`` present in ``state`` (else the first: reported as missing)."""
    return next((k for k in keys if k in state), keys[0])


def _pos_conv_rules(state: Mapping, prefix: str, path: tuple, shape: tuple) -> list[Rule]:
    base = prefix + POS_CONV
    g_keys = tuple(base + s for s in WEIGHT_G)
    v_keys = tuple(base + s for s in WEIGHT_V)
    folded = base + "weight"
    if folded in state and not any(k in state for k in g_keys + v_keys):
        return [Rule(folded, "params", path, shape, _transposed)]
    g_key, v_key = _pick(state, g_keys), _pick(state, v_keys)
    k = shape[0]

    def fold(v):
        g = state.get(g_key)
        if g is None or np.shape(g) != (1, 1, k) or np.ndim(v) != 3:
            return _transposed(v)  # g's own problem is reported on g's key
        return _transposed(fold_weight_norm(g, v))

    # g goes to a scratch collection only so map_state checks its presence and shape.
    return [Rule(v_key, "params", path, shape, fold),
            Rule(g_key, "_weight_g", ("g",), (1, 1, k), _as_f32)]


def _head_rules(state: Mapping, config: Wav2Vec2Config) -> list[Rule]:
    """Linear heads keep their own output size; their input must chain: projector and
    lm_head read the hidden size, classifier the projector's output (or the hidden size in
    Wav2Vec2ForAudioFrameClassification, which has no projector)."""
    projector = state.get("projector.weight")
    inputs = {"projector": config.hidden_size, "lm_head": config.hidden_size,
              "classifier": projector.shape[0] if np.ndim(projector) == 2 else config.hidden_size}
    rules = []
    for head in HEAD_LINEARS:
        w_key, b_key = f"{head}.weight", f"{head}.bias"
        if w_key not in state and b_key not in state:
            continue
        w = state.get(w_key)
        if w is not None and np.ndim(w) == 2:
            w_shape, b_shape = (inputs[head], w.shape[0]), (w.shape[0],)
        else:  # no usable weight: the bias is judged on its own, the weight as (in, out)
            b = state.get(b_key)
            b_shape = tuple(np.shape(b)) if b is not None and np.ndim(b) == 1 else ("out",)
            w_shape = (inputs[head],) + b_shape
        rules.append(Rule(w_key, "heads", (head, "kernel"), w_shape, _transposed))
        rules.append(Rule(b_key, "heads", (head, "bias"), b_shape, _as_f32))
    if "layer_weights" in state:
        rules.append(Rule("layer_weights", "heads", ("layer_weights",),
                          (config.num_hidden_layers + 1,), _as_f32))
    return rules


def conversion_rules(config: Wav2Vec2Config, state: Mapping, keep_heads: bool = False
                     ) -> tuple[list[Rule], tuple[str, ...]]:
    """``(rules, ignore patterns)`` to turn ``state`` into ``{"params"[, "heads"]}``."""
    prefix = PREFIX if any(k.startswith(PREFIX) for k in state) else ""
    rules = []
    for path, shape in param_shapes(config).items():
        if path[:3] == ("encoder", "pos_conv_embed", "conv") and path[-1] == "kernel":
            rules += _pos_conv_rules(state, prefix, path, shape)
            continue
        transform = _transposed if path[-1] == "kernel" else _as_f32
        rules.append(Rule(prefix + hf_key(path), "params", path, shape, transform))
    ignore = PRETRAINING_ONLY
    if keep_heads:
        rules += _head_rules(state, config)
    else:
        ignore = ignore + HEADS
    return rules, ignore


def convert_state(state: Mapping[str, np.ndarray], config: Wav2Vec2Config,
                  keep_heads: bool = False, what: str = "checkpoint") -> dict:
    """HF wav2vec2 state dict -> ``{"params": ...}`` (+ ``"heads"`` when ``keep_heads``).

    Raises ConversionError when the file holds no encoder at all, or naming every missing,
    unused and mis-shaped key.
    """
    prefix = PREFIX if any(k.startswith(PREFIX) for k in state) else ""
    if not any(k.startswith((prefix + "encoder.", prefix + "feature_extractor.")) for k in state):
        shown = ", ".join(sorted(state)[:8]) + (", ..." if len(state) > 8 else "")
        raise ConversionError(
            f"{what}: holds no wav2vec2 encoder weights (no 'encoder.*' / 'feature_extractor.*' "
            f"keys, with or without the '{PREFIX}' prefix); its {len(state)} keys: {shown or '-'}")
    rules, ignore = conversion_rules(config, state, keep_heads)
    out = map_state(state, rules, ignore=ignore, what=what)
    out.pop("_weight_g", None)
    variables = {"params": out["params"]}
    if keep_heads:
        variables["heads"] = out.get("heads", {})
    return variables


def load_hf_wav2vec2(src_dir: os.PathLike | str, keep_heads: bool = False) -> tuple[dict, dict]:
    """Read an HF ``save_pretrained`` folder.

    Returns ``(model_config, variables)``: ``model_config = {"encoder": "wav2vec2",
    "wav2vec2": Wav2Vec2Config.to_dict(), "features": read_features(...), "source":
    "huggingface:<folder name>"}`` (+ ``"heads": [names]`` when ``keep_heads``) and
    ``variables = {"params"}`` (+ ``"heads"``: ``projector/classifier/lm_head`` as
    ``{"kernel" (in, out), "bias"}``, ``layer_weights (L + 1,)``) of float32 numpy arrays.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"HF wav2vec2 directory not found: {src}")
    config = read_hf_config(src)
    features = read_features(src)
    state, what = read_hf_state(src)
    variables = convert_state(state, config, keep_heads=keep_heads, what=what)
    model_config = {
        "encoder": "wav2vec2",
        "wav2vec2": config.to_dict(),
        "features": features,
        "source": f"huggingface:{src.resolve().name}",
    }
    if keep_heads:
        model_config["heads"] = sorted(variables["heads"])
    return model_config, variables


def count_params(tree: Optional[Mapping]) -> int:
    """Number of scalars in a nested dict of arrays."""
    return int(sum(np.size(x) for x in jax.tree.leaves(tree or {})))
