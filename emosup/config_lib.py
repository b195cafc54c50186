"""Config helpers: `get_config(arg)` argument parsing and the shared defaults of every stage.

`--config=configs/demo.py:manifest=/data/my.csv,steps=200` passes "manifest=...,steps=200" to
`get_config`; `parse_arg` turns it into a dict and rejects keys the config does not know.
"""
import ml_collections


def parse_arg(arg, **defaults):
    """"a=1,b=x" → ConfigDict with the defaults' types; unknown keys fail naming them."""
    out = dict(defaults)
    for part in filter(None, (arg or "").split(",")):
        if "=" not in part:
            raise ValueError(f"config argument {part!r}: expected key=value")
        key, value = part.split("=", 1)
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"config argument {key!r} is not known; expected one of {sorted(defaults)}")
        default = defaults[key]
        if isinstance(default, bool):
            value = value.strip().lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
        out[key] = value
    return ml_collections.ConfigDict(out)


def synthetic_defaults():
    """The built-in corpus as the demo uses it (see emosup/data/corpora/synthetic.py)."""
    return ml_collections.ConfigDict(dict(
        seed=1234,
        speakers_unlabelled=24,
        speakers_labelled=8,
        speakers_test=8,
        utterances_per_speaker_emotion=10,
        emotions=("neutral", "happy", "sad", "angry"),
        min_duration=1.5,
        max_duration=3.0,
    ))


def speaker_config(manifest="", synthetic_dir="", preset="tiny", steps=400, batch_size=32):
    """Speaker-encoder training (objective `speaker`, AAM-softmax m=0.2 s=30)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.objective = "speaker"
    c.data = ml_collections.ConfigDict(dict(
        manifest=manifest,            # CSV manifest; empty → the built-in synthetic corpus
        name="",                      # corpus name in results (default: the CSV's stem)
        synthetic_dir=synthetic_dir,  # where the synthetic corpus is generated (cached)
        synthetic=synthetic_defaults(),
        crop_seconds=2.0,             # fixed-length random crops: static shapes, no recompiles
    ))
    c.model = ml_collections.ConfigDict(dict(preset=preset, overrides={}))
    # SpeechBrain ECAPA recipe values (recipes/VoxCeleb/SpeakerRec/hparams/train_ecapa_tdnn.yaml).
    c.loss = ml_collections.ConfigDict(dict(aam_margin=0.2, aam_scale=30.0))
    c.optim = ml_collections.ConfigDict(dict(
        lr=2e-3, weight_decay=2e-6, warmup_steps=min(50, steps // 10), schedule="cosine",
        final_lr_fraction=0.05, grad_clip=5.0))
    c.batch_size = batch_size
    c.total_steps = steps
    c.log_every = 20
    c.checkpoint_every = 100
    c.keep_checkpoints = 2
    return c
