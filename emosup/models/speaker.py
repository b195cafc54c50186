"""Encoders by name (the `encoder` field of model.json)."""

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
