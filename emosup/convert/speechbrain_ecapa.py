"""Convert a SpeechBrain ECAPA-TDNN (e.g. ``speechbrain/spkrec-ecapa-voxceleb``) to emosup.

Input directory, as SpeechBrain ships it::

    hyperparams.yaml       HyperPyYAML: embedding_model: !new:...ECAPA_TDNN {...}, compute_features,
                           mean_var_norm
    embedding_model.ckpt   torch.save(model.state_dict()) (speechbrain/utils/checkpoints.py)

Both files are untrusted. The YAML is parsed with a ``yaml.SafeLoader`` subclass that turns
every HyperPyYAML tag (``!new:``, ``!name:``, ``!apply:``, ``!include:``, ``!ref``,
``!PLACEHOLDER``...) into plain data (``{"__tag__": "!new:...", **mapping}``) and never imports
or constructs anything; Python tags (``!!python/...``) are refused. The checkpoint is read
without torch by ``torch_zip.load_torch_file``, which accepts only tensors and plain
containers and refuses, naming it, anything else the pickle asks for.

Conversion is rename + transpose (SpeechBrain 1.1.2 ``ECAPA_TDNN`` state-dict keys): ``blocks.0.conv.conv.weight``
``(out, in, k)`` -> ``params/blocks_0/conv/conv/kernel`` ``(k, in, out)``; BatchNorm
``weight, bias, running_mean, running_var`` -> ``scale, bias, mean, var``. Every target leaf
must be found with the right shape and every source key used (``num_batches_tracked`` is
dropped on purpose), else one ``ConversionError`` lists every problem.
"""
from __future__ import annotations

import ast
import operator
import os
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from emosup.convert.torch_state import Rule, load_torch_state, map_state
from emosup.errors import ConversionError
from emosup.models.ecapa import build_ecapa

HYPERPARAMS = "hyperparams.yaml"
CHECKPOINT = "embedding_model.ckpt"
TAG_KEY = "__tag__"

ECAPA_CLASS = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"
FBANK_CLASS = "speechbrain.lobes.features.Fbank"
NORM_CLASS = "speechbrain.processing.features.InputNormalization"
RELU_NAMES = ("torch.nn.ReLU", "torch.nn.modules.activation.ReLU")

# ECAPA_TDNN.__init__ defaults (speechbrain/lobes/models/ECAPA_TDNN.py); input_size has none.
ECAPA_DEFAULTS: dict[str, Any] = dict(
    lin_neurons=192,
    channels=[512, 512, 512, 512, 1536],
    kernel_sizes=[5, 3, 3, 3, 1],
    dilations=[1, 2, 3, 4, 1],
    attention_channels=128,
    res2net_scale=8,
    se_channels=128,
    global_context=True,
    groups=[1, 1, 1, 1, 1],
    dropout=0.0,
)
# Fbank.__init__ defaults (speechbrain/lobes/features.py) that emosup's fbank reproduces;
# a yaml that changes one of them is refused. f_max None means sample_rate / 2.
FBANK_DEFAULTS: dict[str, Any] = dict(
    deltas=False, context=False, sample_rate=16000, f_min=0, f_max=None, n_fft=400,
    filter_shape="triangular", win_length=25, hop_length=10,
)
FBANK_DEFAULT_N_MELS = 40  # Fbank.__init__ default n_mels
# Fbank fields that do not change the features at inference.
FBANK_IGNORED = ("requires_grad", "param_change_factor", "param_rand_factor", "left_frames",
                 "right_frames")
# InputNormalization.__init__ defaults (speechbrain/processing/features.py).
NORM_DEFAULTS: dict[str, Any] = dict(mean_norm=True, std_norm=True, norm_type="global")


# ---------------------------------------------------------------------------------------------
# Safe HyperPyYAML reading
# ---------------------------------------------------------------------------------------------

class _HyperPyYamlSafeLoader(yaml.SafeLoader):
    """SafeLoader that keeps HyperPyYAML ``!`` tags as inert data."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict:
    del suffix
    if isinstance(node, yaml.MappingNode):
        data = loader.construct_mapping(node, deep=True)
        return {TAG_KEY: node.tag, **{str(k): v for k, v in data.items()}}
    if isinstance(node, yaml.SequenceNode):
        return {TAG_KEY: node.tag, "args": loader.construct_sequence(node, deep=True)}
    return {TAG_KEY: node.tag, "value": loader.construct_scalar(node)}


# Local tags only ("!new:...", "!ref"); "!!python/..." expands to "tag:yaml.org,2002:python/..."
# and stays unconstructable, so SafeLoader refuses it.
_HyperPyYamlSafeLoader.add_multi_constructor("!", _construct_tagged)

_REF = re.compile(r"<([^<>]+)>")
_MAX_NODES = 1_000_000  # bounds the reference walk on alias-bomb files
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
          ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _eval_arith(text: str) -> Any:
    """Evaluate a numbers-only arithmetic expression (HyperPyYAML allows ``!ref <a> * 2``)."""
    def ev(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            return n.value
        if isinstance(n, ast.BinOp) and type(n.op) in _ARITH:
            return _ARITH[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and type(n.op) in _ARITH:
            return _ARITH[type(n.op)](ev(n.operand))
        raise ValueError(text)
    return ev(ast.parse(text, mode="eval").body)


def _lookup(root: Mapping, name: str) -> Any:
    parts = [p for p in re.split(r"[.\[\]]", name) if p]
    node: Any = root
    for p in parts:
        if isinstance(node, Mapping) and p in node:
            node = node[p]
        elif isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        else:
            raise KeyError(name)
    return node


def _resolve(value: Any, root: Mapping, path: str, stack: tuple, budget: list) -> Any:
    budget[0] += 1
    if budget[0] > _MAX_NODES:
        raise ConversionError(f"{path}: too many nodes while resolving references")
    if isinstance(value, list):
        return [_resolve(v, root, path, stack, budget) for v in value]
    if not isinstance(value, dict):
        return value
    if value.get(TAG_KEY) in ("!ref", "!copy") and isinstance(value.get("value"), str):
        text = value["value"]
        names = _REF.findall(text)
        try:
            resolved = {}
            for name in names:
                if name in stack:
                    raise ConversionError(f"{path}: circular reference <{name}>")
                resolved[name] = _resolve(_lookup(root, name), root, path, stack + (name,), budget)
        except KeyError:
            return value  # unknown name: keep the marker; using it later is an error
        if len(names) == 1 and text.strip() == f"<{names[0]}>":
            return resolved[names[0]]
        out = _REF.sub(lambda m: str(resolved[m.group(1)]), text)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in resolved.values()):
            try:
                return _eval_arith(out)
            except (ValueError, SyntaxError, ZeroDivisionError, OverflowError):
                pass
        return out
    return {k: _resolve(v, root, path, stack, budget) for k, v in value.items()}


def read_hyperparams(path: os.PathLike | str) -> dict:
    """Parse a SpeechBrain ``hyperparams.yaml`` into plain data, safely.

    Tagged nodes become ``{"__tag__": tag, **mapping}`` (or ``"args"`` for a sequence,
    ``"value"`` for a scalar); ``!ref <name>`` / ``!ref <a.b>/suffix`` / ``!ref <a> * 2`` are
    resolved against the document, unknown names stay as ``{"__tag__": "!ref", ...}``.
    Nothing is imported, constructed or included. Raises FileNotFoundError naming the path,
    ConversionError (naming file and line) for invalid YAML or a Python tag.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hyperparams file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = yaml.load(text, Loader=_HyperPyYamlSafeLoader)  # noqa: S506 - safe subclass
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise ConversionError(f"{where}: refused YAML node ({e.problem})") from e
    except yaml.YAMLError as e:
        raise ConversionError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    return _resolve(data, data, path, (), [0])


# ---------------------------------------------------------------------------------------------
# hyperparams -> emosup config
# ---------------------------------------------------------------------------------------------

def _tagged(hp: Mapping, key: str, cls: str, where: str, required: bool = True) -> dict | None:
    node = hp.get(key)
    if node is None and not required:
        return None
    if node is None:
        raise ConversionError(f"{where}: no '{key}' entry (expected !new:{cls})")
    tag = node.get(TAG_KEY) if isinstance(node, dict) else None
    if tag != f"!new:{cls}":
        raise ConversionError(f"{where}: '{key}' must be !new:{cls}, got {tag or type(node).__name__}")
    if "args" in node or "value" in node:
        raise ConversionError(f"{where}: '{key}': only keyword arguments are supported")
    return {k: v for k, v in node.items() if k != TAG_KEY}


def _int(v: Any, field: str, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConversionError(f"{where}: '{field}' must be an integer, got {v!r}")
    return v


def _int_list(v: Any, field: str, where: str) -> list[int]:
    if not isinstance(v, list) or not v:
        raise ConversionError(f"{where}: '{field}' must be a list of integers, got {v!r}")
    return [_int(x, field, where) for x in v]


def ecapa_kwargs_from_hparams(hp: Mapping, where: str = HYPERPARAMS) -> dict:
    """``EcapaTdnn`` kwargs from the ``embedding_model`` entry (SB defaults for omitted fields)."""
    args = _tagged(hp, "embedding_model", ECAPA_CLASS, where)
    f = lambda name: f"embedding_model.{name}"  # noqa: E731
    known = set(ECAPA_DEFAULTS) | {"input_size", "activation", "device"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConversionError(f"{where}: unsupported field(s) {[f(u) for u in unknown]}")
    if "input_size" not in args:
        raise ConversionError(f"{where}: '{f('input_size')}' is required")
    act = args.get("activation")
    if act is not None and not (
        isinstance(act, dict) and act.get(TAG_KEY) in {f"!name:{n}" for n in RELU_NAMES}
    ):
        raise ConversionError(f"{where}: '{f('activation')}' must be torch.nn.ReLU, got {act!r}")
    a = {**ECAPA_DEFAULTS, **{k: v for k, v in args.items() if k not in ("activation", "device")}}
    out = {"input_size": _int(a["input_size"], f("input_size"), where)}
    for name in ("channels", "kernel_sizes", "dilations"):
        out[name] = _int_list(a[name], f(name), where)
    for name in ("attention_channels", "res2net_scale", "se_channels"):
        out[name] = _int(a[name], f(name), where)
    if not isinstance(a["global_context"], bool):
        raise ConversionError(f"{where}: '{f('global_context')}' must be a boolean")
    out["global_context"] = a["global_context"]
    out["lin_neurons"] = _int(a["lin_neurons"], f("lin_neurons"), where)
    groups = a["groups"]
    groups = [groups] if isinstance(groups, int) else _int_list(groups, f("groups"), where)
    if any(g != 1 for g in groups):
        raise ConversionError(f"{where}: '{f('groups')}' must be all 1, got {groups}")
    out["groups"] = 1
    if isinstance(a["dropout"], bool) or not isinstance(a["dropout"], (int, float)):
        raise ConversionError(f"{where}: '{f('dropout')}' must be a number, got {a['dropout']!r}")
    out["dropout"] = float(a["dropout"])
    return out


def features_from_hparams(hp: Mapping, input_size: int, where: str = HYPERPARAMS) -> dict:
    """``{"n_mels", "mean_norm"}`` from ``compute_features`` and ``mean_var_norm``."""
    fb = _tagged(hp, "compute_features", FBANK_CLASS, where)
    known = set(FBANK_DEFAULTS) | set(FBANK_IGNORED) | {"n_mels"}
    unknown = sorted(set(fb) - known)
    if unknown:
        raise ConversionError(f"{where}: unsupported field(s) {['compute_features.' + u for u in unknown]}")
    for name, default in FBANK_DEFAULTS.items():
        value = fb.get(name, default)
        if name == "f_max" and value is not None and value == fb.get("sample_rate", 16000) / 2:
            continue
        if value != default:
            raise ConversionError(
                f"{where}: 'compute_features.{name}' = {value!r} is not supported (expected {default!r})"
            )
    n_mels = _int(fb.get("n_mels", FBANK_DEFAULT_N_MELS), "compute_features.n_mels", where)
    if n_mels != input_size:
        raise ConversionError(
            f"{where}: 'compute_features.n_mels' = {n_mels} differs from "
            f"'embedding_model.input_size' = {input_size}"
        )
    norm = _tagged(hp, "mean_var_norm", NORM_CLASS, where)
    n = {**NORM_DEFAULTS, **norm}
    if n["norm_type"] != "sentence":
        raise ConversionError(
            f"{where}: 'mean_var_norm.norm_type' = {n['norm_type']!r} is not supported (expected 'sentence')"
        )
    if n["std_norm"] is not False:
        raise ConversionError(f"{where}: 'mean_var_norm.std_norm' = {n['std_norm']!r} is not supported (expected False)")
    if n["mean_norm"] is not True:
        raise ConversionError(f"{where}: 'mean_var_norm.mean_norm' must be True")
    return {"n_mels": n_mels, "mean_norm": "sentence"}


# ---------------------------------------------------------------------------------------------
# state dict <-> Flax variables
# ---------------------------------------------------------------------------------------------

_LEAF_TO_SB = {("params", "kernel"): "weight", ("params", "bias"): "bias",
               ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
               ("batch_stats", "var"): "running_var"}


def sb_key(collection: str, path: tuple[str, ...]) -> str:
    """SpeechBrain state-dict key of a Flax leaf (``blocks_1`` -> ``blocks.1``)."""
    parts = [re.sub(r"^blocks_(\d+)$", r"blocks.\1", p) for p in path[:-1]]
    return ".".join(parts + [_LEAF_TO_SB[(collection, path[-1])]])


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 1, 0)).astype(np.float32)  # torch (out, in, k) -> Flax (k, in, out)


def _as_f32(w: np.ndarray) -> np.ndarray:
    return w.astype(np.float32)


def variable_shapes(ecapa_kwargs: Mapping) -> dict:
    """Shapes (``jax.ShapeDtypeStruct`` tree) of ``{"params", "batch_stats"}``; no compute."""
    model = build_ecapa(ecapa_kwargs)
    feats = jax.ShapeDtypeStruct((1, 16, int(ecapa_kwargs["input_size"])), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), feats)


def conversion_rules(ecapa_kwargs: Mapping) -> list[Rule]:
    """One ``Rule`` per Flax leaf of the model ``ecapa_kwargs`` describes."""
    rules = []
    shapes = variable_shapes(ecapa_kwargs)
    for collection in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(shapes[collection])[0]
        for keypath, leaf in flat:
            path = tuple(k.key for k in keypath)
            transform = _conv_kernel if path[-1] == "kernel" else _as_f32
            rules.append(Rule(sb_key(collection, path), collection, path, tuple(leaf.shape), transform))
    return rules


def speechbrain_state_shapes(ecapa_kwargs: Mapping) -> dict[str, tuple[int, ...]]:
    """The SpeechBrain state-dict keys and shapes (``num_batches_tracked`` excluded)."""
    return {
        r.source: (tuple(reversed(r.shape)) if r.path[-1] == "kernel" else r.shape)
        for r in conversion_rules(ecapa_kwargs)
    }


def convert_state(state: Mapping[str, np.ndarray], ecapa_kwargs: Mapping, what: str = "checkpoint") -> dict:
    """SpeechBrain ECAPA state dict -> ``{"params": ..., "batch_stats": ...}`` (strict)."""
    return map_state(state, conversion_rules(ecapa_kwargs), ignore=(r"num_batches_tracked$",), what=what)


def load_speechbrain_ecapa(src_dir: os.PathLike | str) -> tuple[dict, dict]:
    """Read ``hyperparams.yaml`` + ``embedding_model.ckpt`` from ``src_dir``.

    Returns ``(model_config, variables)``: ``model_config = {"encoder": "ecapa", "ecapa":
    EcapaTdnn kwargs, "features": {"n_mels", "mean_norm"}, "source": "speechbrain:<dir>"}``
    and ``variables = {"params", "batch_stats"}`` of float32 numpy arrays.
    """
    src = Path(src_dir)
    hp_path, ckpt_path = src / HYPERPARAMS, src / CHECKPOINT
    missing = [str(p) for p in (hp_path, ckpt_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"SpeechBrain ECAPA directory is missing: {', '.join(missing)}")
    hp = read_hyperparams(hp_path)
    where = str(hp_path)
    kwargs = ecapa_kwargs_from_hparams(hp, where)
    features = features_from_hparams(hp, kwargs["input_size"], where)
    try:
        rules = conversion_rules(kwargs)
    except ValueError as e:  # EcapaTdnn's own checks (e.g. channels not divisible by scale)
        raise ConversionError(f"{where}: embedding_model: {e}") from e
    state = load_torch_state(ckpt_path)
    variables = map_state(state, rules, ignore=(r"num_batches_tracked$",), what=str(ckpt_path))
    config = {
        "encoder": "ecapa",
        "ecapa": kwargs,
        "features": features,
        "source": f"speechbrain:{src.resolve().name}",
    }
    return config, variables
