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


def pretrain_config(manifest="", synthetic_dir="", preset="tiny", steps=400, batch_size=32,
                    objective="speaker", pairs_encoder=""):
    """Encoder pretraining on `train_split` with emotions unused (emosup.tasks objectives).

    For the pair objectives `batch_size` counts anchors; each brings a positive and
    `pairs.num_negatives` negatives, so a step embeds batch_size × (2 + K) crops.
    """
    c = ml_collections.ConfigDict()
    c.stage = "pretrain"
    c.seed = 0
    c.objective = objective
    c.data = ml_collections.ConfigDict(dict(
        manifest=manifest,            # CSV manifest; empty → the built-in synthetic corpus
        name="",                      # corpus name in results (default: the CSV's stem)
        synthetic_dir=synthetic_dir,  # where the synthetic corpus is generated (cached)
        synthetic=synthetic_defaults(),
        crop_seconds=2.0,             # fixed-length random crops: static shapes, no recompiles
    ))
    c.model = ml_collections.ConfigDict(dict(preset=preset, overrides={}))
    c.loss = ml_collections.ConfigDict(dict(
        # SpeechBrain ECAPA recipe values (recipes/VoxCeleb/SpeakerRec/hparams/train_ecapa_tdnn.yaml).
        aam_margin=0.2, aam_scale=30.0,
        # Our choices (PAPER.md: the paper's values are not public).
        temperature=0.1,        # InfoNCE τ
        symmetric=True,         # both directions: anchor→positive and positive→anchor
        projection_hidden=256, projection_dim=128,
        speaker_weight=1.0,     # λ of multitask: contrastive + λ · AAM
        grl_scale=1.0,          # adversarial: gradient-reversal scale on the speaker branch
    ))
    c.pairs = ml_collections.ConfigDict(dict(
        encoder=pairs_encoder,  # speaker encoder whose intra-speaker clusters give the pairs
        k=0,                    # clusters per speaker; 0 = chosen per speaker by silhouette
        max_k=6,                # silhouette searches k = 2..max_k
        num_negatives=4,        # K negatives per anchor, from the anchor speaker's other clusters
        cross_speaker_negatives=0,  # how many of the K come from other speakers instead
        refresh_every=0,        # 0 = pairs fixed from `encoder` (the default, as in the abstract);
                                # R > 0 = re-clustered every R steps from the encoder being trained
    ))
    c.optim = ml_collections.ConfigDict(dict(
        lr=2e-3, weight_decay=2e-6, warmup_steps=min(50, steps // 10), schedule="cosine",
        final_lr_fraction=0.05, grad_clip=5.0))
    c.batch_size = batch_size
    c.total_steps = steps
    c.log_every = 20
    c.checkpoint_every = 100
    c.keep_checkpoints = 2
    return c


def speaker_config(**kwargs):
    """Speaker-encoder training: objective `speaker` (AAM-softmax, m=0.2, s=30)."""
    return pretrain_config(objective="speaker", **kwargs)


def finetune_config(manifest="", synthetic_dir="", init="", preset="tiny", steps=300, batch_size=16,
                    labels_per_class=8, target="categorical"):
    """SER fine-tuning (emosup.finetune) from `init` (a pretraining workdir / converted encoder)."""
    c = ml_collections.ConfigDict()
    c.stage = "finetune"
    c.seed = 0
    c.init = init                     # '' = from scratch with model.preset
    c.data = pretrain_config(manifest=manifest, synthetic_dir=synthetic_dir).data
    c.model = ml_collections.ConfigDict(dict(preset=preset))
    c.ser = ml_collections.ConfigDict(dict(
        target=target,                # categorical | dimensional | both
        classes=(),                   # () = the emotions of the labelled rows, sorted
        labels_per_class=labels_per_class,
        dev_fraction=0.25,            # labelled speakers held out for model selection (no dev split)
        class_weights=True,           # inverse-frequency class weights in the cross-entropy
        head_hidden=0,                # 0 = linear head on the embedding
        freeze_steps=steps // 3,      # encoder frozen first (head warms up), then fine-tuned
    ))
    c.optim = ml_collections.ConfigDict(dict(lr_head=3e-3, lr_encoder=3e-4, weight_decay=1e-4, grad_clip=5.0))
    c.batch_size = batch_size
    c.total_steps = steps
    c.eval_every = max(steps // 4, 1)
    return c
