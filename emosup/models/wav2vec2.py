"""wav2vec 2.0 in Flax Linen, numerically equal to HuggingFace ``Wav2Vec2Model``.

Baevski et al., "wav2vec 2.0: A Framework for Self-Supervised Learning of Speech
Representations", NeurIPS 2020. The reference we match is transformers 5.24
``models/wav2vec2/modeling_wav2vec2.py``. Both families:

* ``feat_extract_norm="group"`` (wav2vec2-base, -large LS-960): only conv 0 is normalised, by
  a per-channel GroupNorm over time; no conv bias by default.
* ``feat_extract_norm="layer"`` (large-lv60, XLS-R): LayerNorm over channels after every conv.
* ``do_stable_layer_norm=False``: post-LN encoder, ``LN(h + pos_conv(h))`` before the layers.
* ``do_stable_layer_norm=True``: pre-LN layers and the encoder LayerNorm after the last layer.

Data flow (channels-last)::

    input_values [B, N] ─ feature_extractor (strided convs) ─▶ [B, T, conv_dim[-1]]
      ─ feature_projection (LN → Linear → dropout) ─▶ [B, T, H]   (padded frames zeroed)
      ─ encoder (pos-conv + LN / layers) ─▶ last_hidden_state [B, T, H]

Parameter paths mirror the HF state-dict keys, so conversion is rename + transpose:
``feature_extractor.conv_layers.0.conv.weight`` is ``params/feature_extractor/conv_layers/0/
conv/kernel`` and ``encoder.layers.1.attention.q_proj.weight`` is ``params/encoder/layers/1/
attention/q_proj/kernel``. One exception: the positional conv is weight-normalised in
PyTorch (``W = g · v / ‖v‖``); we store the *effective* kernel ``W`` as a plain ``kernel``
(folded at conversion). The forward pass is identical; when fine-tuning, the optimizer updates
``W`` directly instead of ``g`` and ``v`` separately (the weight-norm reparametrisation of the
gradient is not reproduced).

``Wav2Vec2Model(per_utterance=True)`` computes every row of a zero-padded batch as that
utterance run alone and unpadded (same parameters). HF's padded maths differs from the
unpadded one in two places: the base family's conv-0 GroupNorm takes its statistics over all
frames, padding included (transformers issue #21534), and a model run without an attention
mask attends to the padding. The per-utterance mode always masks, and takes the GroupNorm
statistics over each row's valid conv-0 frames.

Not ported: SpecAugment masking (``masked_spec_embed`` is a training-time mask token, dropped
at conversion), adapters (``add_adapter``, ``adapter_attn_dim``), the quantizer.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

MODEL_TYPE = "wav2vec2"
# torch.nn.GroupNorm / nn.LayerNorm default eps: HF's conv-layer norms do not pass
# config.layer_norm_eps (Wav2Vec2{Group,Layer}NormConvLayer in modeling_wav2vec2.py).
CONV_NORM_EPS = 1e-5

# HF ACT2FN names (transformers/activations.py) that we reproduce exactly.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch GELU is the erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # QuickGELUActivation constant
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    """The fields of HF ``Wav2Vec2Config`` that change ``Wav2Vec2Model``'s forward pass.

    Defaults are HF's class defaults (configuration_wav2vec2.py), i.e. wav2vec2-base.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    layerdrop: float = 0.1

    def __post_init__(self):
        for name in ("conv_dim", "conv_stride", "conv_kernel"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        where = "Wav2Vec2Config"
        n = len(self.conv_dim)
        if n == 0 or len(self.conv_stride) != n or len(self.conv_kernel) != n:
            lens = (len(self.conv_dim), len(self.conv_stride), len(self.conv_kernel))
            raise ValueError(f"{where}: conv_dim, conv_stride and conv_kernel must be non-empty "
                             f"and of equal length, got {lens}")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"{where}: feat_extract_norm must be 'group' or 'layer', got "
                             f"{self.feat_extract_norm!r}")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{where}: {name}={getattr(self, name)!r} is not supported; "
                                 f"known: {sorted(ACTIVATIONS)}")
        for name in ("num_attention_heads", "num_conv_pos_embedding_groups"):
            if self.hidden_size % getattr(self, name):
                raise ValueError(f"{where}: hidden_size {self.hidden_size} is not divisible by "
                                 f"{name} {getattr(self, name)}")
        for name in ("hidden_dropout", "attention_dropout", "activation_dropout",
                     "feat_proj_dropout", "layerdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{where}: {name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def family(self) -> str:
        """Short description, e.g. ``"group-norm convs, post-LN encoder"``."""
        ln = "pre-LN (stable)" if self.do_stable_layer_norm else "post-LN"
        return f"{self.feat_extract_norm}-norm convs, {ln} encoder"

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame = the shortest waveform giving one frame."""
        r = 1
        for k, s in reversed(list(zip(self.conv_kernel, self.conv_stride))):
            r = (r - 1) * s + k
        return r

    @property
    def hop(self) -> int:
        """Samples between frames (product of the strides; 320 = 20 ms at 16 kHz for base)."""
        return int(np.prod(self.conv_stride))

    def to_dict(self) -> dict:
        """JSON-ready fields (tuples as lists); ``from_dict`` inverts it."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Wav2Vec2Config":
        """From ``to_dict()`` output (e.g. model.json); unknown fields are refused."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"Wav2Vec2Config: unknown field(s) {unknown}")
        return cls(**d)

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], where: str = "config.json") -> "Wav2Vec2Config":
        """From an HF ``config.json`` mapping; fields it omits take HF's defaults.

        Refuses (ValueError naming ``where`` and the field) another ``model_type`` (hubert,
        wavlm, ... have other architectures) and the parts this port does not implement.
        """
        model_type = d.get("model_type")
        if model_type != MODEL_TYPE:
            raise ValueError(f"{where}: model_type is {model_type!r}, expected {MODEL_TYPE!r} "
                             "(only HF Wav2Vec2 checkpoints are supported)")
        if d.get("add_adapter"):
            raise ValueError(f"{where}: add_adapter=true is not supported (no adapter port)")
        if d.get("adapter_attn_dim") is not None:
            raise ValueError(f"{where}: adapter_attn_dim={d['adapter_attn_dim']} is not supported "
                             "(attention adapters, e.g. MMS, are not ported)")
        kwargs = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from e


def feature_lengths(config: Wav2Vec2Config, num_samples):
    """Frames the conv stack makes from ``num_samples`` (int, or int array ``[B]``).

    Per layer ``L' = floor((L - kernel) / stride) + 1`` (HF ``_get_feat_extract_output_lengths``,
    torch.nn.Conv1d without padding). Lengths below the receptive field give values <= 0.
    """
    n = num_samples
    for k, s in zip(config.conv_kernel, config.conv_stride):
        n = (n - k) // s + 1
    return n


def _concrete(x) -> Optional[np.ndarray]:
    """x as numpy when concrete, None under tracing (jit, init)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


@flax.struct.dataclass
class Wav2Vec2Output:
    """What ``Wav2Vec2Model`` returns (arrays in the compute dtype).

    * ``last_hidden_state [B, T, H]``.
    * ``hidden_states``: num_hidden_layers + 1 arrays ``[B, T, H]`` indexed as HF 5.24's
      ``output_hidden_states=True``: the input of layer 0, then each layer's output. For the
      stable-LN family the last entry is *before* the final encoder LayerNorm, so it differs
      from ``last_hidden_state`` (transformers 4.x put the post-LN state there instead).
    * ``extract_features [B, T, conv_dim[-1]]``: the LayerNorm-ed conv features, as HF.
    * ``frame_mask`` bool ``[B, T]``: valid frames (all True without an attention mask).
    """

    last_hidden_state: Array
    hidden_states: tuple
    extract_features: Array
    frame_mask: Array


def _dense(features: int, dtype, name: str) -> nn.Dense:
    # HF _init_weights: Linear ~ N(0, initializer_range=0.02), zero bias (from-scratch only).
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(0.02), name=name)


def _layer_norm(eps: float, dtype, name: str) -> nn.LayerNorm:
    # Two-pass variance like torch (Flax's default E[x²] - E[x]² loses digits).
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype,
                        param_dtype=jnp.float32, name=name)


class ChannelGroupNorm(nn.Module):
    """torch ``GroupNorm(num_groups=C, num_channels=C)``: every channel normalised over time.

    ``x [B, T, C] -> [B, T, C]``; statistics in float32 over all T frames (padding included,
    as HF: this makes the base family's outputs depend on padding), or with ``n_frames`` (int
    ``[B]``) over each row's first ``n_frames`` frames only.
    """

    epsilon: float = CONV_NORM_EPS
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, n_frames: Optional[Array] = None) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        xf = x.astype(jnp.float32)
        if n_frames is None:
            mean = jnp.mean(xf, axis=1, keepdims=True)
            var = jnp.mean(jnp.square(xf - mean), axis=1, keepdims=True)
        else:
            valid = (jnp.arange(x.shape[1])[None, :] < n_frames[:, None])[:, :, None]
            # max(n, 1): a row without frames stays finite (its frames are all masked later).
            n = jnp.maximum(n_frames, 1).astype(jnp.float32)[:, None, None]
            mean = jnp.sum(jnp.where(valid, xf, 0.0), axis=1, keepdims=True) / n
            var = jnp.sum(jnp.where(valid, jnp.square(xf - mean), 0.0), axis=1, keepdims=True) / n
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype or x.dtype)


class ConvLayer(nn.Module):
    """One feature-encoder layer: strided conv → [norm] → activation. ``[B, L, C_in] ->
    [B, L', conv_dim[i]]``; the norm is GroupNorm (layer 0, "group"), LayerNorm ("layer")
    or absent, held as ``layer_norm`` like HF. ``num_samples`` (int ``[B]``, valid samples per
    row) restricts the GroupNorm's statistics to the frames that see only valid samples."""

    config: Wav2Vec2Config
    layer_id: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, num_samples: Optional[Array] = None) -> Array:
        cfg, i = self.config, self.layer_id
        x = nn.Conv(cfg.conv_dim[i], kernel_size=(cfg.conv_kernel[i],),
                    strides=(cfg.conv_stride[i],), padding="VALID", use_bias=cfg.conv_bias,
                    dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.he_normal(), name="conv")(x)
        if cfg.feat_extract_norm == "layer":
            x = _layer_norm(CONV_NORM_EPS, self.dtype, "layer_norm")(x)
        elif i == 0:
            # Frames of conv 0 that see only valid samples (torch Conv1d output length).
            n0 = (None if num_samples is None else
                  (num_samples - cfg.conv_kernel[0]) // cfg.conv_stride[0] + 1)
            x = ChannelGroupNorm(dtype=self.dtype, name="layer_norm")(x, n0)
        return ACTIVATIONS[cfg.feat_extract_activation](x)


class ConvLayers(nn.Module):
    """Children named ``"0"``, ``"1"``... so paths read ``conv_layers/0/conv`` as in HF."""

    config: Wav2Vec2Config
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, num_samples: Optional[Array] = None) -> Array:
        for i in range(len(self.config.conv_dim)):
            x = ConvLayer(self.config, i, self.dtype, name=str(i))(x, num_samples)
        return x


class FeatureEncoder(nn.Module):
    """``input_values [B, N] -> [B, T, conv_dim[-1]]``, T = ``feature_lengths(config, N)``;
    ``num_samples`` as ``ConvLayer``'s."""

    config: Wav2Vec2Config
    dtype: Any = None

    @nn.compact
    def __call__(self, input_values: Array, num_samples: Optional[Array] = None) -> Array:
        x = input_values[:, :, None].astype(self.dtype or jnp.float32)
        return ConvLayers(self.config, self.dtype, name="conv_layers")(x, num_samples)


class FeatureProjection(nn.Module):
    """LayerNorm → Linear → dropout. Returns ``(hidden [B, T, H], normed [B, T, C])``."""

    config: Wav2Vec2Config
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
        normed = _layer_norm(self.config.layer_norm_eps, self.dtype, "layer_norm")(x)
        h = _dense(self.config.hidden_size, self.dtype, "projection")(normed)
        h = nn.Dropout(self.config.feat_proj_dropout)(h, deterministic=not train)
        return h, normed


def _time_conv(x: Array, kernel: Array, pad: int, groups: int) -> Array:
    """Grouped 1-D conv, stride 1: ``x [B, T, C]``, ``kernel [K, C / groups, F]`` -> ``[B, T + 2·pad
    - K + 1, F]`` (cross-correlation, as torch ``Conv1d``)."""
    return jax.lax.conv_general_dilated(x, kernel, (1,), [(pad, pad)],
                                        dimension_numbers=("NWC", "WIO", "NWC"),
                                        feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _time_conv_fast_wgrad(x: Array, kernel: Array, pad: int, groups: int) -> Array:
    """``_time_conv`` whose kernel gradient is computed by another grouped conv.

    Why: XLA:CPU turns the kernel gradient of a grouped conv into a very slow loop (base pos
    conv, B=2 × 199 frames: 3.7 s, vs 0.15 s this way; the forward and input gradient are fast).
    """
    return _time_conv(x, kernel, pad, groups)


def _time_conv_fwd(x, kernel, pad, groups):
    return _time_conv(x, kernel, pad, groups), (x, kernel)


def _time_conv_bwd(pad, groups, res, dy):
    x, kernel = res
    _, vjp_x = jax.vjp(lambda x_: _time_conv(x_, kernel, pad, groups), x)
    (dx,) = vjp_x(dy)
    # dW[k, c, g·O + o] = Σ_b Σ_t xp[b, t + k, g·Cg + c] · dy[b, t, g·O + o] is itself a grouped
    # conv over time: the Cg input channels act as its batch, (group, example) as its input
    # features, and dy as the kernel (width T_out), giving K output positions.
    b, t, c = x.shape
    cg = c // groups
    xp = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
    lhs = xp.reshape(b, t + 2 * pad, groups, cg).transpose(3, 1, 2, 0)
    lhs = lhs.reshape(cg, t + 2 * pad, groups * b)
    rhs = jnp.transpose(dy, (1, 0, 2))  # [T_out, B, F]: each output group's B inputs
    dw = _time_conv(lhs, rhs, 0, groups)  # [Cg, K, F]
    return dx, jnp.transpose(dw, (1, 0, 2)).astype(kernel.dtype)


_time_conv_fast_wgrad.defvjp(_time_conv_fwd, _time_conv_bwd)


class GroupedTimeConv(nn.Module):
    """``nn.Conv(features, (K,), padding=pad, feature_group_count=groups)`` with the same
    parameters (``kernel [K, C / groups, features]``, ``bias [features]``), whose backward
    pass is fast on the CPU (see ``_time_conv_fast_wgrad``). ``[B, T, C] -> [B, T', features]``.
    """

    features: int
    kernel_size: int
    pad: int
    groups: int
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init,
                            (self.kernel_size, c // self.groups, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        dtype = self.dtype or jnp.result_type(x.dtype, jnp.float32)
        x, kernel, bias = x.astype(dtype), kernel.astype(dtype), bias.astype(dtype)
        # Other backends keep XLA's own gradient (cuDNN and TPU convs handle groups natively).
        conv = _time_conv_fast_wgrad if jax.default_backend() == "cpu" else _time_conv
        return conv(x, kernel, self.pad, self.groups) + bias


class PositionalConvEmbedding(nn.Module):
    """Grouped conv over time, ``padding = K // 2`` both sides, last frame dropped when K is
    even (HF ``Wav2Vec2SamePadLayer``), then the activation. ``[B, T, H] -> [B, T, H]``.

    ``conv/kernel [K, H / groups, H]`` is the weight-normed kernel folded at conversion.
    """

    config: Wav2Vec2Config
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        k, h = cfg.num_conv_pos_embeddings, cfg.hidden_size
        # HF init: N(0, 2 / sqrt(K * H)) (only used when training from scratch).
        init = nn.initializers.normal(2.0 * math.sqrt(1.0 / (k * h)))
        y = GroupedTimeConv(h, k, k // 2, cfg.num_conv_pos_embedding_groups, init, self.dtype,
                            name="conv")(x)
        if k % 2 == 0:
            y = y[:, :-1]
        return ACTIVATIONS[cfg.feat_extract_activation](y)


class Attention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections.

    ``x [B, T, H]``, ``mask`` bool ``[B, T]`` (keys that may be attended) -> ``[B, T, H]``.
    Masked keys get the float32 minimum as logit (HF's additive ``finfo.min``), so they carry
    exactly zero weight; logits and softmax are float32 whatever the compute dtype.
    """

    config: Wav2Vec2Config
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, mask: Array, train: bool) -> Array:
        cfg = self.config
        b, t, h = x.shape
        nh = cfg.num_attention_heads
        hd = h // nh

        def heads(name):  # [B, nh, T, hd]: heads first, so both products are plain batched
            # matmuls (an einsum over "bqnd,bknd" made XLA:CPU transpose inside each product)
            return _dense(h, self.dtype, name)(x).reshape(b, t, nh, hd).transpose(0, 2, 1, 3)

        q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
        logits = jnp.matmul(q, k.swapaxes(-1, -2), preferred_element_type=jnp.float32) * hd ** -0.5
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=not train)
        out = jnp.matmul(probs.astype(v.dtype), v).transpose(0, 2, 1, 3).reshape(b, t, h)
        return _dense(h, self.dtype, "out_proj")(out)


class FeedForward(nn.Module):
    """intermediate_dense → act → dropout(activation) → output_dense → dropout(hidden)."""

    config: Wav2Vec2Config
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        cfg = self.config
        x = _dense(cfg.intermediate_size, self.dtype, "intermediate_dense")(x)
        x = ACTIVATIONS[cfg.hidden_act](x)
        x = nn.Dropout(cfg.activation_dropout)(x, deterministic=not train)
        x = _dense(cfg.hidden_size, self.dtype, "output_dense")(x)
        return nn.Dropout(cfg.hidden_dropout)(x, deterministic=not train)


class EncoderLayer(nn.Module):
    """One transformer layer, post-LN or (``do_stable_layer_norm``) pre-LN.

    post-LN: ``h = LN1(h + drop(attn(h))); h = LN2(h + ffn(h))``;
    pre-LN:  ``h = h + drop(attn(LN1(h))); h = h + ffn(LN2(h))``.
    ``x [B, T, H]``, ``mask`` bool ``[B, T]`` -> ``[B, T, H]``.
    """

    config: Wav2Vec2Config
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, mask: Array, train: bool = False) -> Array:
        cfg = self.config
        attn = Attention(cfg, self.dtype, name="attention")
        ln1 = _layer_norm(cfg.layer_norm_eps, self.dtype, "layer_norm")
        ffn = FeedForward(cfg, self.dtype, name="feed_forward")
        ln2 = _layer_norm(cfg.layer_norm_eps, self.dtype, "final_layer_norm")
        drop = nn.Dropout(cfg.hidden_dropout)
        if cfg.do_stable_layer_norm:
            x = x + drop(attn(ln1(x), mask, train), deterministic=not train)
            return x + ffn(ln2(x), train)
        x = ln1(x + drop(attn(x, mask, train), deterministic=not train))
        return ln2(x + ffn(x, train))


class EncoderLayers(nn.Module):
    """The layer stack (children ``"0"``, ``"1"``...), with LayerDrop in training.

    Returns the list ``[input, out_0, ..., out_{L-1}]``. A layer skipped by LayerDrop (drawn
    from the ``'dropout'`` rng, probability ``layerdrop``) passes its input through and its
    entry repeats the previous one (HF omits it from ``hidden_states``; we keep the length
    fixed so the outputs stay one pytree shape under jit).
    """

    config: Wav2Vec2Config
    dtype: Any = None
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Array, train: bool) -> list[Array]:
        cfg = self.config
        # static_argnums counts self: (self, x, mask, train) -> train is 3.
        layer_cls = nn.remat(EncoderLayer, static_argnums=(3,)) if self.remat else EncoderLayer
        states = [x]
        for i in range(cfg.num_hidden_layers):
            y = layer_cls(cfg, self.dtype, name=str(i))(x, mask, train)
            if train and cfg.layerdrop > 0.0:
                skip = jax.random.uniform(self.make_rng("dropout"), ()) < cfg.layerdrop
                y = jnp.where(skip, x, y)
            x = y
            states.append(x)
        return states


class Encoder(nn.Module):
    """pos-conv + (post-LN: LayerNorm) + dropout + layers (+ pre-LN: final LayerNorm).

    ``x [B, T, H]`` (padded frames already zeroed), ``mask`` bool ``[B, T]`` ->
    ``(last_hidden_state, hidden_states list)``.
    """

    config: Wav2Vec2Config
    dtype: Any = None
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Array, train: bool) -> tuple[Array, list[Array]]:
        cfg = self.config
        ln = _layer_norm(cfg.layer_norm_eps, self.dtype, "layer_norm")
        x = x + PositionalConvEmbedding(cfg, self.dtype, name="pos_conv_embed")(x)
        if not cfg.do_stable_layer_norm:
            x = ln(x)
        x = nn.Dropout(cfg.hidden_dropout)(x, deterministic=not train)
        states = EncoderLayers(cfg, self.dtype, self.remat, name="layers")(x, mask, train)
        last = ln(states[-1]) if cfg.do_stable_layer_norm else states[-1]
        return last, states


class Wav2Vec2Model(nn.Module):
    """HF ``Wav2Vec2Model`` (eval and train) without SpecAugment.

    Fields: ``config``; ``dtype`` the compute dtype (e.g. ``jnp.bfloat16``; params are always
    float32, norms and softmax run in float32); ``remat`` recomputes each encoder layer in
    the backward pass (``nn.remat``) to save activation memory; ``per_utterance`` makes every
    row equal that utterance run alone, unpadded (see the module docstring): the attention is
    always masked, padded frames zeroed, and the group family's conv-0 GroupNorm uses the row's
    valid frames. Valid frames of the output then equal HF's ``Wav2Vec2Model`` on
    ``input_values[b, :n_b]``; padded frames hold finite filler.

    Call: ``input_values [B, N]`` float waveforms (normalised as the checkpoint's feature
    extractor says), ``attention_mask`` ``[B, N]`` bool/int or None (HF semantics: only its
    per-row sum, the number of valid samples, is used), ``train`` enables dropout and
    LayerDrop (rng ``'dropout'``), ``freeze_feature_encoder`` stops gradients at the conv
    features. Returns ``Wav2Vec2Output``.

    A row whose mask leaves fewer samples than ``config.receptive_field`` has no frame: with
    a concrete mask this raises ValueError naming the row; under ``jit`` all its frames are
    masked (HF indexes position -1 there and attends to everything: a quirk not copied).
    """

    config: Wav2Vec2Config
    dtype: Any = jnp.float32
    remat: bool = False
    per_utterance: bool = False

    def _frame_mask(self, lengths: Optional[Array], b: int, t: int) -> Array:
        """Valid frames ``[B, t]`` from the valid samples per row (None = all)."""
        if lengths is None:
            return jnp.ones((b, t), dtype=bool)
        concrete = _concrete(lengths)
        if concrete is not None:
            short = [(i, int(n)) for i, n in enumerate(concrete) if n < self.config.receptive_field]
            if short:
                raise ValueError(
                    "Wav2Vec2Model: attention_mask gives example(s) shorter than the receptive "
                    f"field of {self.config.receptive_field} samples (no frame): "
                    + ", ".join(f"row {i}: {n} samples" for i, n in short))
        frames = feature_lengths(self.config, lengths)
        return jnp.arange(t)[None, :] < frames[:, None]

    @nn.compact
    def __call__(self, input_values: Array, attention_mask: Optional[Array] = None, *,
                 train: bool = False, freeze_feature_encoder: bool = False) -> Wav2Vec2Output:
        cfg = self.config
        if input_values.ndim != 2:
            raise ValueError(f"Wav2Vec2Model: input_values must be [B, N], got shape "
                             f"{tuple(input_values.shape)}")
        b, n = input_values.shape
        if n < cfg.receptive_field:
            raise ValueError(
                f"Wav2Vec2Model: waveform of {n} samples is shorter than the conv stack's "
                f"receptive field of {cfg.receptive_field} samples (it would give no frame)")
        lengths = None  # valid samples per row; None: every row full length, unmasked
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (b, n):
                raise ValueError(f"Wav2Vec2Model: attention_mask shape "
                                 f"{tuple(attention_mask.shape)} != input_values shape {(b, n)}")
            lengths = jnp.sum(jnp.asarray(attention_mask).astype(jnp.int32), axis=-1)
        elif self.per_utterance:
            lengths = jnp.full((b,), n, jnp.int32)
        feats = FeatureEncoder(cfg, self.dtype, name="feature_extractor")(
            input_values, lengths if self.per_utterance else None)
        if freeze_feature_encoder:
            feats = jax.lax.stop_gradient(feats)
        mask = self._frame_mask(lengths, b, feats.shape[1])
        projection = FeatureProjection(cfg, self.dtype, name="feature_projection")
        hidden, extract = projection(feats, train)
        if lengths is not None:
            hidden = jnp.where(mask[:, :, None], hidden, 0)  # HF zeroes padded frames here
        last, states = Encoder(cfg, self.dtype, self.remat, name="encoder")(hidden, mask, train)
        return Wav2Vec2Output(last_hidden_state=last, hidden_states=tuple(states),
                              extract_features=extract, frame_mask=mask)
