"""wav2vec 2.0 for speech emotion recognition: HF ``Wav2Vec2ForSequenceClassification`` in Flax.

The reference is transformers 5.24 ``Wav2Vec2ForSequenceClassification``:

    input_values [B, N] ─ wav2vec2 ─▶ hidden_states (L + 1) × [B, T, H]
      ─ last_hidden_state, or Σ softmax(layer_weights)_l · hidden_states[l] ─▶ [B, T, H]
      ─ projector (Linear H → P) ─▶ [B, T, P] ─ mean over valid frames ─▶ pooled [B, P]
      ─ classifier (Linear P → num_classes) ─▶ logits;   dims (Linear P → num_dims) ─▶ A/V/D

HF's pooling: without an attention mask the mean is over *all* T frames; with one, over the
frames ``_get_feature_vector_attention_mask`` marks valid (the conv output length of each
row's sample count), which is ``Wav2Vec2Output.frame_mask`` here. Both cases are one masked
mean, because ``frame_mask`` is all True when no mask is given. ``dims`` (arousal / valence /
dominance regression) is emosup's addition and has no HF counterpart.

Parameter paths mirror HF's keys: ``wav2vec2/...`` (the body, as ``Wav2Vec2Model``),
``layer_weights`` (only with ``use_weighted_layer_sum``), ``projector``, ``classifier``,
``dims``. ``ser_variables_from_hf`` turns ``load_hf_wav2vec2(..., keep_heads=True)`` output
into this module's variables; ``ser_from_hf`` also infers the head sizes.

``Wav2Vec2ForSER(per_utterance=True)`` runs the body as ``Wav2Vec2Model(per_utterance=True)``:
every row of a zero-padded batch then equals that utterance run alone and unpadded.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from emosup.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model, Wav2Vec2Output

Array = jax.Array

# HF _init_weights: nn.Linear ~ N(0, config.initializer_range = 0.02), zero bias.
HF_LINEAR_INIT = nn.initializers.normal(0.02)


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean of ``x [B, T, C]`` over the frames where ``mask [B, T]`` (bool) is True -> ``[B, C]``.

    Computed in float32. A row with no valid frame divides by zero (NaN), as HF does.
    """
    x = x.astype(jnp.float32)
    total = jnp.sum(jnp.where(mask[:, :, None], x, 0.0), axis=1)
    return total / jnp.sum(mask, axis=1, dtype=jnp.float32)[:, None]


def layer_mean(out: Wav2Vec2Output, layer: int = -1) -> Array:
    """Mean over valid frames of ``out.hidden_states[layer]`` (HF ``hidden_states`` indexing:
    0 = the encoder input, i = output of layer i, -1 = the last entry) -> ``[B, H]`` float32."""
    return masked_mean(out.hidden_states[layer], out.frame_mask)


def zero_mean_unit_var(wavs: Array, lengths: Array) -> Array:
    """HF ``Wav2Vec2FeatureExtractor`` ``do_normalize``, per row: ``(x - mean) / sqrt(var +
    1e-7)`` over the first ``lengths[b]`` samples, padding set to 0 (``padding_value``).

    ``wavs [B, N]`` zero-padded, ``lengths`` int ``[B]`` -> float32 ``[B, N]``. Row b equals
    the extractor's output for ``wavs[b, :lengths[b]]`` alone. Jit-compatible.
    """
    x = jnp.asarray(wavs, jnp.float32)
    valid = jnp.arange(x.shape[1])[None, :] < jnp.asarray(lengths)[:, None]
    n = jnp.maximum(jnp.asarray(lengths), 1).astype(jnp.float32)[:, None]
    mean = jnp.sum(jnp.where(valid, x, 0.0), axis=1, keepdims=True) / n
    var = jnp.sum(jnp.where(valid, jnp.square(x - mean), 0.0), axis=1, keepdims=True) / n
    # 1e-7: zero_mean_unit_var_norm in transformers feature_extraction_wav2vec2.py.
    return jnp.where(valid, (x - mean) / jnp.sqrt(var + 1e-7), 0.0)


def check_layer(config: Wav2Vec2Config, layer: int, where: str = "layer") -> int:
    """``layer`` if it indexes ``hidden_states`` (``-(L + 1) <= layer <= L``), else ValueError."""
    n = config.num_hidden_layers + 1
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
        raise ValueError(f"{where}={layer!r} is out of range: this wav2vec2 has {n} hidden states "
                         f"(0 = encoder input ... {n - 1} = last layer; negative counts from the "
                         f"end, -1 = last)")
    return int(layer)


# --------------------------------------------------------------------------------------------
# The SER model
# --------------------------------------------------------------------------------------------


class Wav2Vec2ForSER(nn.Module):
    """HF ``Wav2Vec2ForSequenceClassification`` (eval and train) plus an optional A/V/D head.

    Fields: ``config``; ``num_classes`` (0 = no categorical head); ``num_dims`` (0 = no
    dimensional head, 3 for arousal/valence/dominance); ``use_weighted_layer_sum`` (softmax-
    weighted sum of the ``L + 1`` hidden states instead of the last one); ``classifier_proj_size``
    (HF default 256); ``dtype`` compute dtype (params float32; pooling and outputs float32);
    ``remat`` (per encoder layer); ``per_utterance`` runs the body as ``Wav2Vec2Model(
    per_utterance=True)`` (rows independent of padding) instead of HF's padded-batch maths.

    Call: ``input_values [B, N]``, ``attention_mask [B, N]`` or None, ``train`` (dropout and
    LayerDrop, rng ``'dropout'``), ``freeze_feature_encoder``. Returns ``(logits [B, num_classes]
    or None, dims [B, num_dims] or None, pooled [B, classifier_proj_size])``, all float32.
    """

    config: Wav2Vec2Config
    num_classes: int
    num_dims: int = 0
    use_weighted_layer_sum: bool = False
    classifier_proj_size: int = 256  # HF Wav2Vec2Config.classifier_proj_size default
    dtype: Any = jnp.float32
    remat: bool = False
    per_utterance: bool = False

    def _check(self):
        if self.num_classes < 0 or self.num_dims < 0 or self.num_classes + self.num_dims == 0:
            raise ValueError(f"Wav2Vec2ForSER: need num_classes > 0 and/or num_dims > 0, got "
                             f"num_classes={self.num_classes}, num_dims={self.num_dims}")
        if self.classifier_proj_size <= 0:
            raise ValueError(f"Wav2Vec2ForSER: classifier_proj_size must be > 0, got "
                             f"{self.classifier_proj_size}")

    @nn.compact
    def __call__(self, input_values: Array, attention_mask: Optional[Array] = None, *,
                 train: bool = False, freeze_feature_encoder: bool = False
                 ) -> tuple[Optional[Array], Optional[Array], Array]:
        self._check()
        cfg = self.config
        out = Wav2Vec2Model(cfg, self.dtype, self.remat, self.per_utterance, name="wav2vec2")(
            input_values, attention_mask, train=train,
            freeze_feature_encoder=freeze_feature_encoder)
        if self.use_weighted_layer_sum:
            n = cfg.num_hidden_layers + 1
            # HF: nn.Parameter(torch.ones(num_layers) / num_layers), i.e. uniform after softmax.
            w = self.param("layer_weights", nn.initializers.constant(1.0 / n), (n,), jnp.float32)
            w = jax.nn.softmax(w)
            h = sum(w[i] * s.astype(jnp.float32) for i, s in enumerate(out.hidden_states))
            h = h.astype(self.dtype)
        else:
            h = out.last_hidden_state

        def dense(features, name):
            return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32,
                            kernel_init=HF_LINEAR_INIT, name=name)

        h = dense(self.classifier_proj_size, "projector")(h)
        pooled = masked_mean(h, out.frame_mask)  # HF: mean over frame_mask's frames
        logits = dims = None
        if self.num_classes:
            logits = dense(self.num_classes, "classifier")(pooled).astype(jnp.float32)
        if self.num_dims:
            dims = dense(self.num_dims, "dims")(pooled).astype(jnp.float32)
        return logits, dims, pooled

    def pooled_embedding(self, input_values: Array, attention_mask: Optional[Array] = None, *,
                         train: bool = False, freeze_feature_encoder: bool = False) -> Array:
        """Only the pooled projection ``[B, classifier_proj_size]`` (e.g. for fusion with a
        speaker embedding): ``model.apply(variables, x, mask, method="pooled_embedding")``."""
        return self(input_values, attention_mask, train=train,
                    freeze_feature_encoder=freeze_feature_encoder)[2]


# --------------------------------------------------------------------------------------------
# From a converted HF checkpoint
# --------------------------------------------------------------------------------------------


def ser_variables_from_hf(variables: Mapping) -> dict:
    """``load_hf_wav2vec2(src, keep_heads=True)[1]`` -> ``Wav2Vec2ForSER`` variables.

    ``{"params": body, "heads": {projector, classifier[, layer_weights]}}`` becomes
    ``{"params": {"wav2vec2": body, "projector", "classifier"[, "layer_weights"]}}``.
    A ``dims`` head has no HF counterpart: initialise it yourself (``ser_from_hf`` does).
    """
    if "heads" not in variables:
        raise ValueError("ser_variables_from_hf: the variables have no 'heads' (convert with "
                         "keep_heads=True / `python -m emosup.convert wav2vec2 SRC OUT --keep-heads`)")
    heads = variables["heads"]
    missing = [h for h in ("projector", "classifier") if h not in heads]
    if missing:
        raise ValueError(f"ser_variables_from_hf: heads {sorted(heads)} lack {missing}: not a "
                         "Wav2Vec2ForSequenceClassification checkpoint")
    params = {"wav2vec2": variables["params"], "projector": dict(heads["projector"]),
              "classifier": dict(heads["classifier"])}
    if "layer_weights" in heads:
        params["layer_weights"] = heads["layer_weights"]
    return {"params": params}


def ser_from_hf(model_config: Mapping, variables: Mapping, *, num_dims: int = 0,
                rng: Optional[jax.Array] = None, **module_kwargs) -> tuple[Wav2Vec2ForSER, dict]:
    """``(Wav2Vec2ForSER, variables)`` from ``load_hf_wav2vec2(src, keep_heads=True)``.

    ``num_classes`` and ``classifier_proj_size`` come from the classifier's kernel, and
    ``use_weighted_layer_sum`` from whether ``layer_weights`` exists (HF creates it only then).
    With ``num_dims > 0`` a fresh ``dims`` head is drawn from ``rng`` (HF's Linear init).
    ``module_kwargs`` (dtype, remat, per_utterance) go to the module.
    """
    ser = ser_variables_from_hf(variables)
    p = ser["params"]
    proj, num_classes = np.shape(p["classifier"]["kernel"])
    if num_dims:
        if rng is None:
            raise ValueError("ser_from_hf: num_dims > 0 needs rng to initialise the dims head")
        p["dims"] = {"kernel": HF_LINEAR_INIT(rng, (proj, num_dims), jnp.float32),
                     "bias": jnp.zeros((num_dims,), jnp.float32)}
    module = Wav2Vec2ForSER(Wav2Vec2Config.from_dict(model_config["wav2vec2"]),
                            num_classes=int(num_classes), num_dims=num_dims,
                            use_weighted_layer_sum="layer_weights" in p,
                            classifier_proj_size=int(proj), **module_kwargs)
    return module, ser
