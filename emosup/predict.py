"""Emotion of audio files from a fine-tuned emosup model.

  python -m emosup.predict --checkpoint=runs/ft a.wav b.flac [--json]

Prints, per file, the predicted emotion and every class probability (and arousal/valence/
dominance when the head has them), as a table or as JSON. Files that cannot be read are
reported per file and make the exit status 1.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from emosup import checkpoint, logs
from emosup.data import pipeline
from emosup.embed import Encoder, embed_paths
from emosup.models.heads import SerHead


def load_model(directory):
    """(Encoder, head module, head params, classes, dimensions) of a fine-tuned model folder."""
    if not os.path.isfile(os.path.join(directory, checkpoint.MODEL_JSON)) and os.path.isdir(
            os.path.join(directory, "checkpoints")):
        raise checkpoint.CheckpointError(
            f"{directory} holds no finished fine-tuned model: it has checkpoints/ but no "
            f"{checkpoint.MODEL_JSON}, which ECAPA fine-tuning writes with variables/ when it ends "
            "(the wav2vec2 arms export none): rerun an unfinished fine-tuning command to finish it, "
            "then give its workdir")
    model_config = checkpoint.read_model_json(directory)
    ser = model_config.get("ser")
    if not ser:
        raise checkpoint.CheckpointError(
            f"{directory} holds no emotion head (model.json has no 'ser'): give a folder written by "
            "fine-tuning (configs/finetune.py), not a pretrained encoder")
    variables = checkpoint.restore_variables(os.path.join(os.path.abspath(directory), "variables"))
    enc = Encoder(model_config=model_config, variables={
        "params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]["encoder"]})
    head = SerHead(num_classes=len(ser["classes"]), num_dims=len(ser["dimensions"]), hidden=ser["head_hidden"])
    return enc, head, variables["params"]["ser_head"], list(ser["classes"]), list(ser["dimensions"])


def predict(directory, paths):
    """List of per-file dicts: {"path", "emotion", "probabilities": {class: p}, [dimensions]} or {"path", "error"}."""
    enc, head, head_params, classes, dims = load_model(directory)
    skip_log = pipeline.SkipLog()
    emb, _, valid = embed_paths(enc, list(paths), batch_per_device=4, skip_log=skip_log, progress=False)
    logits, reg = head.apply({"params": head_params}, jnp.asarray(np.nan_to_num(emb)))
    out = []
    reasons = skip_log.as_dict()
    for i, p in enumerate(paths):
        if not valid[i]:
            out.append({"path": p, "error": reasons.get(p, "unreadable")})
            continue
        row = {"path": p}
        if classes:
            probs = np.asarray(jax.nn.softmax(logits[i]))
            row["emotion"] = classes[int(np.argmax(probs))]
            row["probabilities"] = {c: float(v) for c, v in zip(classes, probs)}
        if dims:
            row.update({d: float(v) for d, v in zip(dims, np.asarray(reg[i]))})
        out.append(row)
    return out


def format_table(rows):
    classes = next((list(r["probabilities"]) for r in rows if "probabilities" in r), [])
    dims = [d for d in ("arousal", "valence", "dominance") if any(d in r for r in rows)]
    header = ["file", "emotion"] * bool(classes) + classes + dims
    if not classes:
        header = ["file"] + dims
    lines = [" | ".join(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['path']} | ERROR: {r['error']}")
            continue
        cells = [r["path"]] + ([r["emotion"]] + [f"{r['probabilities'][c]:.3f}" for c in classes] if classes else [])
        cells += [f"{r[d]:.3f}" for d in dims]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main(argv):
    logs.setup()
    files = argv[1:]
    if not files:
        print("usage: python -m emosup.predict --checkpoint=DIR a.wav [b.wav ...] [--json]", file=sys.stderr)
        return 2
    try:
        rows = predict(FLAGS.checkpoint, files)
    except checkpoint.CheckpointError as e:
        print(f"emosup.predict: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if FLAGS.json else format_table(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_string("checkpoint", None, "fine-tuned model folder (configs/finetune.py workdir)")
    flags.DEFINE_bool("json", False, "print JSON instead of a table")
    flags.mark_flags_as_required(["checkpoint"])
    app.run(lambda argv: sys.exit(main(argv)))
