"""Emotion of audio files from a fine-tuned emosup model.

  python -m emosup.predict --checkpoint=runs/ft a.wav b.flac [--json]

Prints, per file, the predicted emotion and every class probability (and arousal/valence/
dominance when the head has them), as a table or as JSON. Files that cannot be read are
reported per file and make the exit status 1.

The probabilities are softmax(logits / T) with the temperature T that fine-tuning fitted on its
dev set and stored in model.json (`ser.temperature`); a line before the table (on stderr with
--json) says so, and each JSON row carries `temperature` and `calibrated`. Folders fine-tuned
before temperatures were recorded use T = 1 and are reported as uncalibrated.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax.numpy as jnp
import numpy as np
from absl import flags

from emosup import checkpoint, errors, logs, metrics
from emosup.data import pipeline
from emosup.models.encoders import Encoder, embed_paths
from emosup.models.heads import SerHead


def calibration_of(ser, where=checkpoint.MODEL_JSON):
    """(temperature, fitted on dev?, one-line note) from model.json's `ser` entry (read from
    `where`, named in errors): T = 1 and "uncalibrated" when no temperature was recorded."""
    t = ser.get("temperature")
    cal = ser.get("calibration") or {}
    if t is None:
        return 1.0, False, "probabilities uncalibrated (T=1: this model was fine-tuned without a temperature)"
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (np.isfinite(t) and t > 0):
        raise checkpoint.CheckpointError(f"{where}: ser.temperature={t!r} must be a number > 0; "
                                         "fine-tune the model again")
    t = float(t)
    if cal.get("fitted_on") != "dev":
        return t, False, f"probabilities uncalibrated (T={t:g}: {cal.get('reason', 'no temperature fitted')})"
    dev = cal.get("dev") or {}
    ece = (f" (ECE dev {dev['ece']:.4f} → {dev['ece_calibrated']:.4f})"
           if "ece" in dev and "ece_calibrated" in dev else "")
    return t, True, f"probabilities calibrated with temperature T={t:.4g} fitted on dev{ece}"


def fine_tuned_models_under(directory, limit=50):
    """Folders below `directory` (an experiment workdir: finetune/<arm>/seed<N>, per fold too)
    holding a fine-tuned model, relative and sorted."""
    import pathlib

    root = pathlib.Path(directory)
    found = []
    for p in sorted(root.glob("**/" + checkpoint.MODEL_JSON)):
        if p.parent == root or len(found) >= limit:
            continue
        try:
            if json.loads(p.read_text()).get("ser"):
                found.append(str(p.parent.relative_to(root)))
        except (OSError, ValueError):
            continue
    return found


def load_model(directory):
    """(Encoder, head module, head params, classes, dimensions, calibration) of a fine-tuned
    model folder; calibration = `calibration_of(model.json's ser)`."""
    if os.path.isdir(directory) and not os.path.isfile(os.path.join(directory, checkpoint.MODEL_JSON)):
        inside = fine_tuned_models_under(directory)
        if inside:
            shown = ", ".join(inside[:8]) + (f" and {len(inside) - 8} more" if len(inside) > 8 else "")
            raise checkpoint.CheckpointError(
                f"{directory} is not itself a fine-tuned model, but holds {len(inside)}: {shown}; give one "
                f"of them, e.g. --checkpoint={os.path.join(directory, inside[0])}")
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
    return (enc, head, variables["params"]["ser_head"], list(ser["classes"]), list(ser["dimensions"]),
            calibration_of(ser, os.path.join(directory, checkpoint.MODEL_JSON)))


def predict(directory, paths, notes=None):
    """List of per-file dicts: {"path", "emotion", "probabilities": {class: p}, "temperature",
    "calibrated", [dimensions]} or {"path", "error"}. The probabilities are softmax(logits / T),
    T the model's recorded temperature (1 without one); `notes`, a list, gets the line saying
    so."""
    enc, head, head_params, classes, dims, (temperature, calibrated, note) = load_model(directory)
    if notes is not None and classes:
        notes.append(note)
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
            probs = metrics.softmax(np.asarray(logits[i]), temperature)
            row["emotion"] = classes[int(np.argmax(probs))]
            row["probabilities"] = {c: float(v) for c, v in zip(classes, probs)}
            row.update(temperature=temperature, calibrated=calibrated)
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
    notes = []
    rows = predict(FLAGS.checkpoint, files, notes)  # a CheckpointError is reported as one line
    for note in notes:  # stdout stays pure JSON with --json
        print(note, file=sys.stderr if FLAGS.json else sys.stdout)
    print(json.dumps(rows, indent=2) if FLAGS.json else format_table(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_string("checkpoint", None, "fine-tuned model folder (configs/finetune.py workdir)")
    flags.DEFINE_bool("json", False, "print JSON instead of a table")
    flags.mark_flags_as_required(["checkpoint"])
    errors.run_cli("predict", main)
