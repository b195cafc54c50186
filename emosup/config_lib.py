"""Config helpers: `get_config(arg)` argument parsing and the shared defaults of every stage.

`--config=configs/demo.py:manifest=/data/my.csv,steps=200` passes "manifest=...,steps=200" to
`get_config`; `parse_arg` turns it into a dict and rejects keys the config does not know.
"""
import copy
import hashlib
import json
import os

import ml_collections


def parse_arg(arg, **defaults):
    """"a=1,b=x" → ConfigDict with the defaults' types; unknown keys and values that are not of
    their default's type (bool: 1/0, true/false, yes/no) fail naming them."""
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
            flag = value.strip().lower()
            if flag not in ("1", "true", "yes", "0", "false", "no", ""):
                raise ValueError(f"config argument {key}={value!r}: expected 1/0, true/false or yes/no")
            value = flag in ("1", "true", "yes")
        elif isinstance(default, (int, float)):
            kind = int if isinstance(default, int) else float
            try:
                value = kind(value)
            except ValueError:
                raise ValueError(f"config argument {key}={value!r}: expected "
                                 f"{'an integer' if kind is int else 'a number'}") from None
        out[key] = value
    return ml_collections.ConfigDict(out)


# The shortest training crop: 5 frames of 10 ms (640 samples at 16 kHz), the fewest ECAPA-TDNN
# accepts (its dilation-4 convolution reflect-pads 4 frames on each side; the encoders skip
# shorter utterances for the same reason); above wav2vec2's 400-sample receptive field too.
MIN_CROP_SECONDS = 0.04


def check_crop_seconds(field, value):
    """ValueError naming `field` (e.g. "config.data.crop_seconds") unless `value` is a crop
    length of at least 40 ms."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= MIN_CROP_SECONDS:
        raise ValueError(f"{field}={value!r}: crops must be at least {MIN_CROP_SECONDS} s "
                         f"(5 frames of 10 ms, the fewest ECAPA-TDNN accepts); give a length in "
                         "seconds such as 1.0 or 2.0")


def synthetic_defaults():
    """The built-in corpus as the demo uses it (see emosup/data/synthetic/)."""
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


# The tiny variant of the synthetic corpus (`tiny=1`): a handful of speakers and short
# utterances, so the end-to-end tests train in seconds.
TINY_SYNTHETIC = dict(speakers_unlabelled=6, speakers_labelled=2, speakers_test=3,
                      utterances_per_speaker_emotion=4, max_duration=2.0)


def synthetic_cache_dir(settings):
    """Where the synthetic corpus of these settings is generated and cached
    ($EMOSUP_CACHE, default ~/.cache/emosup): reruns, other workdirs and other stages reuse it."""
    key = hashlib.sha1(json.dumps(dict(settings), sort_keys=True, default=list).encode()).hexdigest()[:10]
    cache = os.environ.get("EMOSUP_CACHE", os.path.expanduser("~/.cache/emosup"))
    return os.path.join(cache, f"synthetic-{key}")


def pretrain_config(manifest="", synthetic_dir="", preset="tiny", steps=400, batch_size=32,
                    objective="speaker", pairs_encoder=""):
    """Encoder pretraining on `train_split` with emotions unused (emosup.trainers.objectives).

    For the pair objectives `batch_size` counts anchors; each brings a positive and
    `pairs.num_negatives` negatives, so a step embeds batch_size × (2 + K) crops.
    """
    c = ml_collections.ConfigDict()
    c.stage = "pretrain"
    c.seed = 0
    c.objective = objective
    c.init = ""  # '' = a random encoder of model.preset; or an encoder folder to continue from
                 # (an emosup ECAPA or a converted SpeechBrain ECAPA: its architecture is used)
    c.data = ml_collections.ConfigDict(dict(
        manifest=manifest,            # CSV manifest; empty → `corpus` or the synthetic corpus
        corpus="",                    # a reader of emosup.prepare (iemocap, msp_podcast, ...) ...
        root="",                      # ... reading this downloaded folder
        options={},                   # ... with these reader options (e.g. test_session=3)
        name="",                      # corpus name in results (default: the CSV's stem)
        synthetic_dir=synthetic_dir,  # where the synthetic corpus is generated (cached)
        synthetic=synthetic_defaults(),
        crop_seconds=2.0,             # fixed-length random crops: static shapes, no recompiles
    ))
    c.model = ml_collections.ConfigDict(dict(preset=preset, overrides={}))
    c.loss = ml_collections.ConfigDict(dict(
        # SpeechBrain ECAPA recipe values (recipes/VoxCeleb/SpeakerRec/hparams/train_ecapa_tdnn.yaml).
        aam_margin=0.2, aam_scale=30.0,
        # emosup's choices (the paper's values are not public): docs/method.md §Objectives.
        temperature=0.1,        # InfoNCE τ
        symmetric=True,         # both directions: anchor→positive and positive→anchor
        projection_hidden=256, projection_dim=128,
        speaker_weight=1.0,     # λ of multitask: contrastive + λ · AAM
        grl_scale=1.0,          # adversarial: gradient-reversal scale on the speaker branch
    ))
    c.pairs = ml_collections.ConfigDict(dict(
        encoder=pairs_encoder,  # speaker encoder whose intra-speaker clusters give the pairs
        k=0,                    # clusters per speaker; 0 = chosen per speaker by k_rule
        k_rule="silhouette",    # silhouette: best mean silhouette over k = 2..max_k;
                                # size: k = n / cluster_size (over-clusters: purer positives)
        max_k=6,                # silhouette searches k = 2..max_k
        cluster_size=8,         # size rule: utterances per cluster
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
    c.allow_config_change = ""  # resume despite these changed fields (comma-separated | all)
    return c


def speaker_config(**kwargs):
    """Speaker-encoder training: objective `speaker` (AAM-softmax, m=0.2, s=30)."""
    return pretrain_config(objective="speaker", **kwargs)


def finetune_config(manifest="", synthetic_dir="", init="", preset="tiny", steps=300, batch_size=16,
                    labels_per_class=8, target="categorical"):
    """SER fine-tuning (emosup.trainers.ser) from `init` (a pretraining workdir / converted encoder)."""
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
    c.allow_config_change = ""  # resume despite these changed fields (comma-separated | all)
    return c


# The comparison's arms, defined once. An ECAPA arm is `scratch` (no pretraining) or one of
# the pretraining objectives (emosup.trainers.objectives) run on the unlabelled rows before fine-tuning.
OBJECTIVES = ("speaker", "contrastive", "multitask", "adversarial")
PAIR_OBJECTIVES = ("contrastive", "multitask", "adversarial")  # trained on the pair tables
ALL_ARMS = ("scratch",) + OBJECTIVES
PRETRAINED_ARM = "pretrained"  # the given speaker encoder fine-tuned as it is (speaker_encoder=)
W2V2_ARMS = ("w2v2", "w2v2_contrastive", "w2v2_multitask", "w2v2_fusion")
W2V2_PAIR_ARMS = ("w2v2_contrastive", "w2v2_multitask")  # fine-tuned with the pair tables
ARMS = ALL_ARMS + (PRETRAINED_ARM,) + W2V2_ARMS
ARMS_INIT = ("", "speaker_encoder")  # where the pretraining arms start: random | the speaker encoder


def uses_pairs(name):
    """Whether the objective or arm `name` reads the intra-speaker pair tables."""
    return name in PAIR_OBJECTIVES + W2V2_PAIR_ARMS


def arm_names(arg, pretrained=False):
    """`all` (the ECAPA arms, and `pretrained` when `pretrained` is true: a speaker encoder was
    given) | `w2v2s` (the wav2vec2 arms) | `0` | names joined by `+`; `all` and `w2v2s` may be
    joined too (`all+w2v2s`)."""
    arg = str(arg).strip().lower()
    if arg in ("0", "none", "false", "no", ""):
        return ()
    ecapa_arms = ALL_ARMS + ((PRETRAINED_ARM,) if pretrained else ())
    known = ARMS
    names = []
    for a in arg.split("+"):
        a = a.strip()
        names += ecapa_arms if a in ("all", "1", "true", "yes") else W2V2_ARMS if a == "w2v2s" else (a,)
    unknown = [a for a in names if a not in known]
    if unknown:
        raise ValueError(f"config argument arms={arg!r}: unknown arms {unknown}; known: "
                         f"{list(known)}, `all`, `w2v2s`")
    return tuple(dict.fromkeys(names))


def experiment_config(manifest="", synthetic_dir="", preset="tiny", steps=0, batch_size=0, k=0, tiny=False,
                      arms="all", seeds=3, labels_per_class=8, speaker_encoder="", arms_init=""):
    """The main job (emosup.experiment): speaker encoder → study → arms × seeds comparison.

    `tiny` is the few-second variant the tests run; otherwise sized for a 2-core laptop on
    the synthetic corpus (the corpus configs raise the budgets for real data).
    `speaker_encoder` (an emosup encoder folder or a converted SpeechBrain ECAPA) replaces the
    speaker encoder the job would train: the study and the pair tables come from it, and the
    arm `pretrained` fine-tunes it as it is. `arms_init=speaker_encoder` starts every
    pretraining arm from its weights instead of a random encoder.
    """
    steps = steps or (6 if tiny else 400)
    batch_size = batch_size or (8 if tiny else 32)
    c = speaker_config(manifest=manifest, synthetic_dir=synthetic_dir, preset=preset, steps=steps,
                       batch_size=batch_size)
    c.stage = "experiment"  # what emosup.experiment runs; emosup.train trains its speaker encoder
    if tiny:  # seconds, for the end-to-end test: a handful of speakers and steps
        c.data.synthetic.update(TINY_SYNTHETIC)
        c.data.crop_seconds = 1.0
        c.log_every, c.checkpoint_every = 2, 4
        c.optim.warmup_steps = 1
    if not c.data.manifest and not c.data.synthetic_dir:
        c.data.synthetic_dir = synthetic_cache_dir(c.data.synthetic.to_dict())
    c.speaker_encoder = speaker_encoder  # '' = train one on the train split's speakers
    c.study = ml_collections.ConfigDict(dict(k=k, seed=0))
    # The comparison: every arm pretrains with the same budget, then fine-tunes on few labels.
    c.arms = ml_collections.ConfigDict(dict(
        names=arm_names(arms, pretrained=bool(speaker_encoder)),
        init=arms_init,                # '' = random encoders; speaker_encoder = from its weights
        seeds=tuple(range(seeds)),
        pretrain_steps=4 if tiny else 120,
        pretrain_batch_size=8,         # anchors per step (each with a positive and K negatives)
        speaker_batch_size=8 if tiny else 32,
        pretrain_crop_seconds=1.0,
    ))
    c.pairs.k = 2 if tiny else 0    # 0 = k per speaker by silhouette
    c.pairs.num_negatives = 2 if tiny else 4
    c.finetune = finetune_config(steps=6 if tiny else 200, batch_size=8 if tiny else 16,
                                 labels_per_class=labels_per_class)
    c.finetune.data.crop_seconds = 1.0 if tiny else 2.0
    if tiny:
        c.finetune.eval_every = 3  # two dev evaluations (steps 3 and 6) instead of six
    # Cross-validation folds (corpus configs): the comparison runs once per value of the
    # reader option `protocol.fold_option` in `protocol.folds`; () = the corpus's own splits.
    c.protocol = ml_collections.ConfigDict(dict(fold_option="", folds=()))
    # Speaker verification (VoxCeleb): a trial list scored with the speaker encoder (EER).
    c.verification = ml_collections.ConfigDict(dict(trials=""))
    # The wav2vec2 arms (emosup.trainers.ser_w2v2): weights from `init` (a converted HF folder) or,
    # without one, a randomly initialised `model` -- tiny here so the arms run on a CPU.
    c.w2v2 = ml_collections.ConfigDict(dict(
        init="",
        model=dict(hidden_size=32 if tiny else 64, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64 if tiny else 128, conv_dim=(32,) * 7,
                   num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                   hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, layerdrop=0.0),
        contrastive_weight=0.5,  # λ_c (our choice)
        speaker_weight=0.5,      # λ_s (our choice)
    ))
    return c


# --- The stages an experiment runs, each derived here once and given only its own part. ---

def speaker_stage(config):
    """The pretraining config inside an experiment `config` (its speaker-encoder training):
    the fields of `pretrain_config`, nothing of the study, the arms or fine-tuning."""
    own = {key: copy.deepcopy(config[key]) for key in pretrain_config().keys()}
    c = ml_collections.ConfigDict(own)
    c.stage = "pretrain"
    c.lock()
    return c


def pretrain_stage(config, arm, seed, pair_encoder):
    """The pretraining of comparison arm `arm` (an objective) for `seed`, pairs from `pair_encoder`."""
    c = speaker_stage(config)
    c.unlock()
    c.objective, c.seed = arm, seed
    c.total_steps = config.arms.pretrain_steps
    c.batch_size = config.arms.pretrain_batch_size if uses_pairs(arm) else config.arms.speaker_batch_size
    c.data.crop_seconds = config.arms.pretrain_crop_seconds
    c.optim.warmup_steps = min(c.optim.warmup_steps, c.total_steps // 10)
    c.pairs.encoder = str(pair_encoder)
    # arms_init=speaker_encoder: continue from the given speaker encoder instead of a random one.
    c.init = str(config.speaker_encoder) if config.arms.get("init") == "speaker_encoder" else ""
    c.checkpoint_every = max(c.total_steps // 2, 1)
    c.lock()
    return c


def finetune_stage(config, init, seed):
    """The SER fine-tuning of an arm for `seed` from encoder folder `init` (None: from scratch):
    `config.finetune` on the experiment's corpus, with fine-tuning's own crop length."""
    c = copy.deepcopy(config.finetune)
    c.unlock()
    crop = c.data.crop_seconds
    c.seed, c.init, c.data = seed, str(init) if init else "", copy.deepcopy(config.data)
    c.data.crop_seconds = crop
    c.allow_config_change = config.get("allow_config_change") or c.get("allow_config_change", "")
    c.lock()
    return c


def w2v2_stage(config, seed, pair_encoder):
    """The fine-tuning of a wav2vec2 arm for `seed`: `finetune_stage` from scratch plus the
    wav2vec2 and loss settings and the pair settings (pairs from `pair_encoder`, as the ECAPA arms)."""
    c = finetune_stage(config, None, seed)
    c.unlock()
    c.w2v2, c.loss, c.pairs = copy.deepcopy(config.w2v2), copy.deepcopy(config.loss), copy.deepcopy(config.pairs)
    c.pairs.encoder = str(pair_encoder)
    c.lock()
    return c


STAGES = ("experiment", "speaker", "pretrain", "finetune")  # the `stage=` of corpus configs


def corpus_config(corpus, arg, *, classes, target="categorical", options=None, extra_args=None,
                  fold_option="", folds=(), trials_option="", arms="all"):
    """A downloaded corpus with its standard protocol, for every stage (configs/<corpus>.py).

    `arg` keys: root (the downloaded folder, required), stage (experiment | speaker | pretrain
    | finetune), objective + pairs_encoder (stage pretrain), init (stage finetune), preset,
    steps (speaker training), arms, seeds, labels_per_class (0 = all: the standard protocol),
    folds (`all` or fold values joined by `+`), tiny (the seconds-long variant for fake
    copies), and the corpus's own `extra_args` (reader options, by their defaults' types).
    `classes` may be a function of the parsed arguments.
    """
    extra_args = dict(extra_args or {})
    by_stage = dict(objective="contrastive", pairs_encoder="", init="")  # args of one stage only
    a = parse_arg(arg, root="", stage="experiment", preset="c512", steps=0, batch_size=0, arms=arms,
                  seeds=3, labels_per_class=0, folds="all", tiny=False, speaker_encoder="", arms_init="",
                  **by_stage, **extra_args)
    if not a.root:
        raise ValueError(f"configs/{corpus}.py needs root=<the downloaded {corpus} folder>, e.g. "
                         f"--config=configs/{corpus}.py:root=/data/{corpus}")
    if a.stage not in STAGES:
        raise ValueError(f"config argument stage={a.stage!r}: expected one of {', '.join(STAGES)}")
    for key, stage in (("objective", "pretrain"), ("pairs_encoder", "pretrain"), ("init", "finetune"),
                       ("speaker_encoder", "experiment"), ("arms_init", "experiment")):
        if a[key] != by_stage.get(key, "") and a.stage != stage:
            raise ValueError(f"config argument {key}={a[key]!r} applies to stage={stage} only, but this "
                             f"is stage={a.stage}: add stage={stage} or drop {key}=")
    tiny = bool(a.tiny)
    c = experiment_config(preset="tiny" if tiny else a.preset, steps=a.steps or (6 if tiny else 6000),
                          batch_size=a.batch_size or (8 if tiny else 64), tiny=tiny, arms=a.arms,
                          seeds=a.seeds, labels_per_class=a.labels_per_class,
                          speaker_encoder=a.speaker_encoder, arms_init=a.arms_init)
    c.data.corpus, c.data.root = corpus, a.root
    opts = dict(options or {})
    for key in extra_args:
        if key != trials_option:
            opts[key] = a[key]
    c.data.options = ml_collections.ConfigDict(opts)
    if trials_option and a[trials_option]:
        c.data.options[trials_option] = a[trials_option]  # trial speakers leave training
        c.verification.trials = a[trials_option]
    if not tiny:  # real data: budgets of a GPU box (our choice; see README "Corpora")
        c.log_every, c.checkpoint_every = 100, 1000
        c.arms.update(pretrain_steps=3000, pretrain_batch_size=32, speaker_batch_size=64,
                      pretrain_crop_seconds=2.0)
        c.finetune = finetune_config(steps=3000, batch_size=32, labels_per_class=a.labels_per_class)
        c.finetune.data.crop_seconds = 3.0
    c.finetune.model.preset = c.model.preset
    c.finetune.ser.classes = tuple(classes(a) if callable(classes) else classes)
    c.finetune.ser.target = target
    c.protocol.fold_option = fold_option
    c.protocol.folds = _folds(corpus, a.folds, folds)
    if a.stage == "experiment":
        return c
    if a.stage in ("speaker", "pretrain"):
        p = speaker_stage(c)
        p.unlock()
        p.stage = a.stage
        if a.stage == "pretrain":
            p.objective, p.pairs.encoder = a.objective, a.pairs_encoder
            p.total_steps, p.batch_size = c.arms.pretrain_steps, c.arms.pretrain_batch_size
        return p
    return finetune_stage(c, a.init, c.seed)


def _folds(corpus, arg, folds):
    """The folds that `folds=arg` chooses among the corpus's `folds` (() when it has none)."""
    text = str(arg).strip()
    if not folds:
        if text.lower() != "all":
            raise ValueError(f"config argument folds={arg!r}: configs/{corpus}.py has no folds (its "
                             "protocol is one train/dev/test split); drop folds=")
        return ()
    if text.lower() == "all":
        return tuple(folds)
    example = "+".join(str(f) for f in folds[:2])
    try:
        chosen = tuple(type(folds[0])(f.strip()) for f in text.split("+"))
    except ValueError:
        raise ValueError(f"config argument folds={arg!r}: expected `all` or folds joined by `+` "
                         f"from {list(folds)}, e.g. folds={example}") from None
    unknown = [f for f in chosen if f not in folds]
    if unknown:
        raise ValueError(f"config argument folds={arg!r}: unknown folds {unknown}; known {list(folds)}, "
                         f"e.g. folds={example}")
    return chosen
