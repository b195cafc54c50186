"""ECAPA-TDNN speaker encoder in Flax Linen, architecture-exact to SpeechBrain ``ECAPA_TDNN``.

Desplanques et al., "ECAPA-TDNN: Emphasized Channel Attention, Propagation and Aggregation in
TDNN Based Speaker Verification", Interspeech 2020; the reference implementation we match is
speechbrain 1.1.2 ``speechbrain/lobes/models/ECAPA_TDNN.py`` (constants: docs/method.md §Constants and their sources).

Layout (channels-last, ``[B, T, C]``)::

    feats [B, T, F] ─ blocks_0 (TDNN k5) ─ blocks_1..3 (SE-Res2Net, dilation 2,3,4)
        ─ concat(blocks_1..3) ─ mfa (TDNN k1) ─ asp (attentive stats pooling) ─ asp_bn ─ fc
        ─▶ [B, lin_neurons]

Submodule names mirror SpeechBrain's state-dict keys (``blocks.1.res2net_block.blocks.3.
norm.norm.running_mean`` is ``batch_stats['blocks_1']['res2net_block']['blocks_3']['norm']
['norm']['mean']``), so ``emosup.convert.speechbrain_ecapa`` is rename + transpose.

Padding. SpeechBrain reflect-pads every convolution at the edges of the *padded* array, so
in a padded batch the last valid frames of a short utterance see padding frames and its
embedding depends on how much padding it got (measured ~3% relative on a small random
model). ``per_utterance_padding=False`` (default) reproduces that exactly; ``True`` reflects
each utterance at its own last valid frame, which makes the embedding of an utterance in a
padded batch equal to that of the utterance alone (= SpeechBrain on the unpadded utterance).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from emosup.models.layers import (
    BatchNorm1d,
    Conv1d,
    lengths_to_mask,
    masked_mean,
    masked_mean_std,
)

Array = jax.Array

# AttentiveStatisticsPooling.eps in speechbrain/lobes/models/ECAPA_TDNN.py.
ASP_EPS = 1e-12

# Constructor kwargs of the supported configurations.
PRESETS: dict[str, dict] = {
    # speechbrain/spkrec-ecapa-voxceleb hyperparams.yaml (20,767,552 parameters).
    "c1024": dict(
        input_size=80,
        channels=(1024, 1024, 1024, 1024, 3072),
        kernel_sizes=(5, 3, 3, 3, 1),
        dilations=(1, 2, 3, 4, 1),
        attention_channels=128,
        res2net_scale=8,
        se_channels=128,
        global_context=True,
        lin_neurons=192,
    ),
    # ECAPA_TDNN class defaults in speechbrain/lobes/models/ECAPA_TDNN.py.
    "c512": dict(
        input_size=80,
        channels=(512, 512, 512, 512, 1536),
        kernel_sizes=(5, 3, 3, 3, 1),
        dilations=(1, 2, 3, 4, 1),
        attention_channels=128,
        res2net_scale=8,
        se_channels=128,
        global_context=True,
        lin_neurons=192,
    ),
    # Ours: small enough for CPU demos and tests, same topology.
    "tiny": dict(
        input_size=80,
        channels=(128, 128, 128, 128, 384),
        kernel_sizes=(5, 3, 3, 3, 1),
        dilations=(1, 2, 3, 4, 1),
        attention_channels=64,
        res2net_scale=8,
        se_channels=64,
        global_context=True,
        lin_neurons=192,
    ),
}


class TDNNBlock(nn.Module):
    """Conv1d -> ReLU -> BatchNorm -> channel dropout (SpeechBrain order: ReLU *before* BN).

    ``x [B, T, C_in] -> [B, T, features]``; ``context [B, C_ctx]`` (optional) is a
    time-invariant extra input of the convolution (see ``Conv1d``).
    """

    features: int
    kernel_size: int
    dilation: int = 1
    dropout: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(
        self,
        x: Array,
        valid: Optional[Array] = None,
        train: bool = False,
        context: Optional[Array] = None,
    ) -> Array:
        x = Conv1d(self.features, self.kernel_size, self.dilation, dtype=self.dtype, name="conv")(
            x, valid, context
        )
        x = BatchNorm1d(dtype=self.dtype, name="norm")(nn.relu(x), train)
        if self.dropout > 0.0:
            # torch Dropout1d on [B, C, T] drops whole channels: share the mask over time.
            x = nn.Dropout(self.dropout, broadcast_dims=(1,))(x, deterministic=not train)
        return x


class Res2NetBlock(nn.Module):
    """Hierarchical residual-like convolutions over ``scale`` channel groups.

    y_0 = x_0, y_1 = B_0(x_1), y_i = B_{i-1}(x_i + y_{i-1}); output = concat(y).
    ``x [B, T, C] -> [B, T, features]`` (C and features divisible by ``scale``).
    """

    features: int
    scale: int = 8
    kernel_size: int = 3
    dilation: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, valid: Optional[Array] = None, train: bool = False) -> Array:
        chunks = jnp.split(x, self.scale, axis=-1)
        width = self.features // self.scale
        ys = [chunks[0]]
        for i in range(1, self.scale):
            inp = chunks[i] if i == 1 else chunks[i] + ys[-1]
            block = TDNNBlock(
                width, self.kernel_size, self.dilation, dtype=self.dtype, name=f"blocks_{i - 1}"
            )
            ys.append(block(inp, valid, train))
        return jnp.concatenate(ys, axis=-1)


class SEBlock(nn.Module):
    """Squeeze-excitation with a length-aware squeeze.

    ``x [B, T, C]``, ``mask`` bool ``[B, T]`` or None -> ``[B, T, features]``.
    """

    se_channels: int
    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None) -> Array:
        s = masked_mean(x, mask)[:, None, :]                      # [B, 1, C]
        s = nn.relu(Conv1d(self.se_channels, 1, dtype=self.dtype, name="conv1")(s))
        s = nn.sigmoid(Conv1d(self.features, 1, dtype=self.dtype, name="conv2")(s))
        return x * s


class SERes2NetBlock(nn.Module):
    """tdnn1 (k1) -> res2net_block -> tdnn2 (k1) -> se_block, plus a residual connection.

    ``x [B, T, C_in] -> [B, T, features]``; a 1x1 ``shortcut`` conv when C_in != features.
    """

    features: int
    res2net_scale: int = 8
    se_channels: int = 128
    kernel_size: int = 3
    dilation: int = 1
    dropout: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Optional[Array] = None,
        valid: Optional[Array] = None,
        train: bool = False,
    ) -> Array:
        residual = x
        if x.shape[-1] != self.features:
            residual = Conv1d(self.features, 1, dtype=self.dtype, name="shortcut")(x)
        d = dict(dropout=self.dropout, dtype=self.dtype)
        x = TDNNBlock(self.features, 1, 1, name="tdnn1", **d)(x, valid, train)
        x = Res2NetBlock(
            self.features,
            self.res2net_scale,
            self.kernel_size,
            self.dilation,
            dtype=self.dtype,
            name="res2net_block",
        )(x, valid, train)
        x = TDNNBlock(self.features, 1, 1, name="tdnn2", **d)(x, valid, train)
        x = SEBlock(self.se_channels, self.features, dtype=self.dtype, name="se_block")(x, mask)
        return x + residual


class AttentiveStatisticsPooling(nn.Module):
    """Attentive mean and std over time, optionally with global utterance context.

    ``x [B, T, C]``, ``mask`` bool ``[B, T]`` or None -> ``[B, 2C]`` (mean ‖ std).
    Padded frames get weight zero (attention logits set to -inf before the softmax), so
    every utterance needs at least one valid frame.
    """

    channels: int
    attention_channels: int = 128
    global_context: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, train: bool = False) -> Array:
        b, t, _ = x.shape
        x = x.astype(jnp.float32)  # statistics and softmax in float32 whatever the conv dtype
        if mask is None:
            mask = jnp.ones((b, t), dtype=bool)
        m = mask[:, :, None].astype(jnp.float32)                 # [B, T, 1]
        context = None
        if self.global_context:
            # SpeechBrain feeds concat([x, mean, std] broadcast over time) to the TDNN; the
            # mean/std part is constant over time, so it is passed as a context vector and
            # enters once per utterance (same maths and parameters, 1/3 of the work).
            mean, std = masked_mean_std(x, m / jnp.sum(m, axis=1, keepdims=True), ASP_EPS)
            context = jnp.concatenate([mean, std], axis=-1)          # [B, 2C]
        attn = TDNNBlock(self.attention_channels, 1, 1, dtype=self.dtype, name="tdnn")(
            x, None, train, context
        )                                                              # [B, T, A]
        attn = Conv1d(self.channels, 1, dtype=self.dtype, name="conv")(jnp.tanh(attn))
        attn = jnp.where(mask[:, :, None], attn.astype(jnp.float32), -jnp.inf)
        attn = jax.nn.softmax(attn, axis=1)                        # over time, per channel
        mean, std = masked_mean_std(x, attn, ASP_EPS)
        return jnp.concatenate([mean, std], axis=-1)


class EcapaTdnn(nn.Module):
    """ECAPA-TDNN embedding model; fields mirror ``speechbrain...ECAPA_TDNN.__init__``.

    Call: ``feats [B, T, input_size]``, ``lengths`` optional float ``[B]`` of valid frames
    (fractional allowed: frame t is valid iff ``t < lengths[b]``; SpeechBrain's relative
    length ``rel`` corresponds to ``rel * T``) -> embeddings ``[B, lin_neurons]``.
    ``train=True`` uses and updates batch statistics (``mutable=['batch_stats']``) and, if
    ``dropout > 0``, needs a ``'dropout'`` rng.
    """

    input_size: int = 80
    channels: Sequence[int] = (512, 512, 512, 512, 1536)
    kernel_sizes: Sequence[int] = (5, 3, 3, 3, 1)
    dilations: Sequence[int] = (1, 2, 3, 4, 1)
    attention_channels: int = 128
    res2net_scale: int = 8
    se_channels: int = 128
    global_context: bool = True
    lin_neurons: int = 192
    groups: Union[int, Sequence[int]] = 1
    dropout: float = 0.0
    per_utterance_padding: bool = False
    dtype: Any = None

    @property
    def embed_dim(self) -> int:
        return self.lin_neurons

    def _check(self, feats: Array) -> None:
        n = len(self.channels)
        if len(self.kernel_sizes) != n or len(self.dilations) != n:
            raise ValueError(
                f"EcapaTdnn: channels, kernel_sizes and dilations must have the same length; "
                f"got {len(self.channels)}, {len(self.kernel_sizes)}, {len(self.dilations)}"
            )
        if n < 3:
            raise ValueError(f"EcapaTdnn: channels needs at least 3 entries, got {list(self.channels)}")
        groups = [self.groups] if isinstance(self.groups, int) else list(self.groups)
        if any(g != 1 for g in groups):
            raise ValueError(f"EcapaTdnn: only groups=1 is supported, got groups={self.groups}")
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"EcapaTdnn: kernel_sizes must be odd, got {list(self.kernel_sizes)}")
        mid = list(self.channels[1:-1])
        if len(set(mid)) != 1:
            # SpeechBrain sizes the MFA input as channels[-2] * (n - 2).
            raise ValueError(f"EcapaTdnn: channels[1:-1] must be equal, got {mid}")
        if mid[0] % self.res2net_scale:
            raise ValueError(
                f"EcapaTdnn: channels {mid[0]} not divisible by res2net_scale {self.res2net_scale}"
            )
        if feats.ndim != 3 or feats.shape[-1] != self.input_size:
            raise ValueError(
                f"EcapaTdnn: expected feats [B, T, {self.input_size}], got {tuple(feats.shape)}"
            )

    @nn.compact
    def __call__(self, feats: Array, lengths: Optional[Array] = None, train: bool = False) -> Array:
        self._check(feats)
        b, t, _ = feats.shape
        mask = lengths_to_mask(lengths, t)
        valid = None
        if self.per_utterance_padding:
            valid = jnp.full((b,), t, jnp.int32) if mask is None else jnp.sum(mask, axis=1)
        ch, ks, ds = list(self.channels), list(self.kernel_sizes), list(self.dilations)

        x = TDNNBlock(ch[0], ks[0], ds[0], self.dropout, self.dtype, name="blocks_0")(
            feats, valid, train
        )
        outs = []
        for i in range(1, len(ch) - 1):
            x = SERes2NetBlock(
                ch[i],
                res2net_scale=self.res2net_scale,
                se_channels=self.se_channels,
                kernel_size=ks[i],
                dilation=ds[i],
                dropout=self.dropout,
                dtype=self.dtype,
                name=f"blocks_{i}",
            )(x, mask, valid, train)
            outs.append(x)
        # Multi-layer feature aggregation over the SE-Res2Net outputs (not blocks_0).
        x = TDNNBlock(ch[-1], ks[-1], ds[-1], self.dropout, self.dtype, name="mfa")(
            jnp.concatenate(outs, axis=-1), valid, train
        )
        x = AttentiveStatisticsPooling(
            ch[-1], self.attention_channels, self.global_context, self.dtype, name="asp"
        )(x, mask, train)                                              # [B, 2 C]
        x = BatchNorm1d(dtype=self.dtype, name="asp_bn")(x[:, None, :], train)
        x = Conv1d(self.lin_neurons, 1, dtype=self.dtype, name="fc")(x)
        return x[:, 0, :].astype(jnp.float32)


def build_ecapa(preset_or_kwargs: Union[str, Mapping[str, Any]]) -> EcapaTdnn:
    """An ``EcapaTdnn`` from a preset name or a kwargs mapping.

    A mapping may name a base ``"preset"`` and override some of its fields, e.g.
    ``{"preset": "tiny", "lin_neurons": 256}``. Sequences become tuples (hashable module).
    """
    if isinstance(preset_or_kwargs, str):
        kwargs: dict[str, Any] = {"preset": preset_or_kwargs}
    else:
        kwargs = dict(preset_or_kwargs)
    preset = kwargs.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise KeyError(f"unknown ECAPA preset {preset!r}; known: {sorted(PRESETS)}")
        kwargs = {**PRESETS[preset], **kwargs}
    fields = set(EcapaTdnn.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise TypeError(f"unknown EcapaTdnn field(s) {unknown}; known: {sorted(fields)}")
    for key in ("channels", "kernel_sizes", "dilations", "groups"):
        if key in kwargs and not isinstance(kwargs[key], int):
            kwargs[key] = tuple(int(v) for v in kwargs[key])
    return EcapaTdnn(**kwargs)
