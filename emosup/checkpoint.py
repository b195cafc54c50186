"""Checkpoints: Orbax CheckpointManager for training runs, and exported encoders.

Two folder layouts carry an encoder, and `load_encoder_variables` reads both:

* a training workdir: `model.json` + `checkpoints/<step>/{state,meta}` (Orbax, atomic, keep-N).
  `state` is the whole train state (params, batch_stats, optimizer, step), `meta` a JSON
  record with everything else needed to resume exactly (config, counters).
* an exported encoder (what `emosup.convert` writes): `model.json` + `variables/`
  (Orbax StandardCheckpointer of {"params", "batch_stats"}).

`model.json` says which encoder and front end the variables belong to, e.g.
`{"encoder": "ecapa", "ecapa": {...EcapaTdnn kwargs}, "features": {"n_mels": 80,
"mean_norm": "sentence"}, "source": "..."}`.
"""
import json
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from emosup.errors import UserError

MODEL_JSON = "model.json"


class CheckpointError(UserError):
    pass


class Checkpointer:
    """Resumable training checkpoints in `workdir/checkpoints` (async saves, keep the last N)."""

    def __init__(self, workdir, keep=2):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step, state, meta, extra=None):
        """Saves train state, the meta JSON and `extra`: {item name: pytree of arrays} (e.g.
        the pair tables, or fine-tuning's best variables so far)."""
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        for name, tree in (extra or {}).items():
            if name in ("state", "meta"):
                raise ValueError(f"checkpoint item name {name!r} is reserved")
            items[name] = ocp.args.StandardSave(tree)
        self.manager.save(step, args=ocp.args.Composite(**items))

    def restore(self, abstract_state, extra=()):
        """(state, meta, extras) of the latest checkpoint, or (None, None, {}) when there is none.

        `abstract_state` is a pytree of jax.ShapeDtypeStruct (with shardings) or arrays;
        `extras` maps each name of `extra` that the checkpoint holds to its pytree of numpy arrays.
        """
        step = self.manager.latest_step()
        if step is None:
            return None, None, {}
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        items = dict(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        present = [n for n in extra if (self.directory / str(step) / n).is_dir()]
        for name in present:
            items[name] = ocp.args.StandardRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        extras = {n: jax.tree.map(np.asarray, restored[n]) for n in present if restored.get(n) is not None}
        return restored.state, restored.meta, extras

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        """Finishes in-flight saves and releases the manager; safe to call twice."""
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()
            self.manager = None


def write_model_json(directory, model_config):
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        tmp = directory / (MODEL_JSON + ".tmp")
        tmp.write_text(json.dumps(model_config, indent=2, sort_keys=True))
        os.replace(tmp, directory / MODEL_JSON)


def read_model_json(directory):
    path = pathlib.Path(directory) / MODEL_JSON
    if not pathlib.Path(directory).is_dir():
        raise CheckpointError(
            f"{directory}: no such folder (expected an emosup training workdir or a folder "
            "written by `python -m emosup.convert`)")
    if not path.is_file():
        raise CheckpointError(
            f"{directory} is not an emosup checkpoint: {MODEL_JSON} is missing (expected a "
            "training workdir or a folder written by `python -m emosup.convert`)")
    try:
        model_config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); export or convert the "
                              "encoder again into an empty folder") from e
    if not isinstance(model_config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(model_config).__name__}; "
                              "export or convert the encoder again into an empty folder")
    return model_config


def params_fingerprint(params) -> str:
    """sha256 (first 16 hex digits) over every parameter's path, dtype, shape and bytes: equal
    iff two encoders hold the same weights, so a result can show what it actually loaded."""
    import hashlib

    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda t: jax.tree_util.keystr(t[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def describe_encoder(directory, model_config, variables) -> dict:
    """What an encoder loaded from `directory` is: its folder, where it came from (model.json
    `source`), its ECAPA channels and the fingerprint of the weights actually loaded."""
    out = {"path": str(pathlib.Path(directory).absolute()), "source": model_config.get("source"),
           "encoder": model_config.get("encoder"), "params_fingerprint": params_fingerprint(variables["params"])}
    if model_config.get("encoder") == "ecapa":
        out["channels"] = list(model_config["ecapa"]["channels"])
    return out


def export_encoder(out_dir, model_config, variables):
    """Writes an exported encoder: model.json + variables/ (params, batch_stats)."""
    out_dir = pathlib.Path(out_dir).absolute()
    if (out_dir / "variables").exists():
        raise CheckpointError(f"{out_dir / 'variables'} already exists; choose an empty OUT_DIR")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out_dir / "variables", variables)
    checkpointer.wait_until_finished()
    write_model_json(out_dir, model_config)


def numpy_target(tree_metadata):
    """numpy arrays of the saved shapes/dtypes: restoring into them gives host arrays on any
    process, whatever devices (and processes) wrote the checkpoint."""
    return jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), dict(tree_metadata))


def restore_variables(path):
    """The pytree of an Orbax StandardCheckpointer folder (`variables/`), as numpy arrays."""
    checkpointer = ocp.StandardCheckpointer()
    try:
        meta = checkpointer.metadata(path)
        return checkpointer.restore(path, numpy_target(getattr(meta, "item_metadata", meta)))
    except Exception as e:  # Orbax raises many types for a missing or damaged folder
        raise CheckpointError(
            f"{path}: not a readable variables folder ({type(e).__name__}: {e}); it is incomplete "
            "or damaged: write it again (rerun the conversion or the fine-tuning into an empty "
            "folder)") from e
    finally:
        checkpointer.close()


def restore_state(ckpt_dir):
    """(step, train state as numpy arrays) of the latest checkpoint in `ckpt_dir` — readable
    in any job, e.g. one process reading what a multi-host run wrote.

    The saved shapes come from the `state` item's own handler: `CheckpointManager.item_metadata`
    would visit every item of the step and log a warning for each one it holds no handler for
    (`meta`, the pair tables, fine-tuning's best variables). Restoring `state` alone visits no
    other item."""
    manager = ocp.CheckpointManager(ckpt_dir)
    try:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"{ckpt_dir} holds no finished checkpoint: the run stopped "
                                  "before its first one; rerun its command to train it")
        saved = ocp.StandardCheckpointHandler().metadata(manager.directory / str(step) / "state")
        target = numpy_target(getattr(saved, "item_metadata", saved))
        return step, manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    finally:
        manager.close()


def load_encoder_variables(directory):
    """(model_config, {"params", "batch_stats"}) of the encoder stored in `directory`.

    For a training workdir, the encoder is the `encoder` subtree of the latest checkpoint's
    train state.
    """
    directory = pathlib.Path(directory).absolute()
    model_config = read_model_json(directory)
    if (directory / "variables").is_dir():
        variables = restore_variables(directory / "variables")
        params, stats = variables["params"], variables.get("batch_stats", {})
        if "ser_head" in params:  # a fine-tuned model: encoder + heads (wav2vec2 has its own `encoder`)
            params, stats = params["encoder"], stats.get("encoder", {})
        return model_config, {"params": params, "batch_stats": stats}
    ckpt_dir = directory / "checkpoints"
    if not ckpt_dir.is_dir():
        raise CheckpointError(
            f"{directory} has {MODEL_JSON} but neither variables/ nor checkpoints/: a training run "
            "stopped before its first checkpoint (rerun its command), or a copy that left them "
            "out (copy the whole folder)")
    step, state = restore_state(ckpt_dir)
    try:
        params = state["params"]["encoder"]
        batch_stats = state["batch_stats"].get("encoder", {})
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir}/{step} has no encoder in its train state") from e
    return model_config, {"params": params, "batch_stats": batch_stats}
