"""Encoders by name, and the variables of a speaker model (encoder + cosine classifier)."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from emosup.models import ecapa


def build_encoder(model_config, per_utterance_padding=True):
    """The encoder module that `model_config` (the dict in model.json) describes.

    emosup computes every utterance as if it were alone (`audio.utterance_features` and
    `per_utterance_padding=True`): embeddings do not depend on batching or padding, and equal
    SpeechBrain's for the utterance unpadded. `False` gives SpeechBrain's padded-batch maths.
    """
    kind = model_config.get("encoder")
    if kind == "ecapa":
        kwargs = dict(model_config["ecapa"])
        kwargs["per_utterance_padding"] = per_utterance_padding
        return ecapa.build_ecapa(kwargs)
    raise ValueError(f"model.json: encoder={kind!r} is not supported (expected 'ecapa')")


def speaker_variables(encoder, num_speakers, key, feat_shape):
    """Initial {"params": {"encoder", "classifier": {"weight" [S, D]}}, "batch_stats": {"encoder"}}.

    The classifier weight is xavier-uniform, as SpeechBrain's ECAPA `Classifier` initialises it.
    """
    k_enc, k_cls = jax.random.split(key)
    enc_vars = encoder.init(k_enc, jnp.zeros(feat_shape, jnp.float32), None, train=False)
    weight = nn.initializers.xavier_uniform()(k_cls, (num_speakers, encoder.lin_neurons))
    return {
        "params": {"encoder": enc_vars["params"], "classifier": {"weight": weight}},
        "batch_stats": {"encoder": enc_vars.get("batch_stats", {})},
    }
