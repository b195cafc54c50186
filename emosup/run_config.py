"""`config.json` in every workdir, and resumes that refuse to mix two runs.

Every run (speaker training, pretraining, fine-tuning, the experiment, the study) writes
`WORKDIR/config.json` before its work starts:

    {"config": the full resolved config, "emosup": {"version", "commit" (when emosup runs from
     a git checkout; "+dirty" with uncommitted changes)}, "versions": {jax, flax, optax,
     orbax-checkpoint, numpy, ...}, "devices": {"platform", "count", "process_count",
     "kinds"}, "written": UTC time, "config_changes": [changes accepted on resume]}

`results.json`, `train_results.json` and `study.json` name it in their `config` field.

A rerun in a workdir that already holds a run's state (checkpoints or results) compares its
config with the saved one. Any difference outside `MAY_DIFFER` stops the run at once with a
`ConfigMismatchError` naming every differing field with both values: resuming would mix two
runs (e.g. a fine-tuning rerun with other labels per class would report the old model's score
under the new settings). For the rare deliberate change (e.g. training longer) set
`config.allow_config_change` to the dotted field names (comma-separated, or `all`); the
accepted changes are recorded in `config.json` under `config_changes`.
"""
import datetime
import importlib.metadata
import json
import os
import pathlib
import subprocess

from emosup.errors import ConfigError

CONFIG_JSON = "config.json"

# Fields that may differ between a run and its resume, at any depth (by their last name):
# they change how often a run logs or checkpoints, or how it was allowed to resume, never
# what it computes.
MAY_DIFFER = ("log_every", "checkpoint_every", "keep_checkpoints", "allow_config_change")

# The experiment's own workdir: arms and seeds may be added on a rerun (each arm × seed has its
# own workdir, checked on its own); everything else the arms share must stay.
EXPERIMENT_MAY_DIFFER = ("arms.names", "arms.seeds")

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow-cpu",
             "tensorflow", "scikit-learn", "ml-collections")


class ConfigMismatchError(ConfigError):
    """A workdir made with another config than the rerun's (see the module docstring)."""


def _commit():
    here = pathlib.Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment():
    """emosup's version and commit, the library versions and the devices of this process."""
    import jax

    versions = {}
    for p in _PACKAGES:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        version = importlib.metadata.version("emosup")
    except importlib.metadata.PackageNotFoundError:
        version = None
    devices = jax.devices()
    return {"emosup": {"version": version, "commit": _commit()}, "versions": versions,
            "devices": {"platform": devices[0].platform, "count": len(devices),
                        "process_count": jax.process_count(),
                        "kinds": sorted({d.device_kind for d in devices})}}


def _plain(config):
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(d, default=str))  # tuples -> lists, paths -> str: as saved


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _ignored(field, ignore):
    return field.rsplit(".", 1)[-1] in MAY_DIFFER or any(
        field == p or field.startswith(p + ".") for p in ignore)


def differences(saved, new, ignore=()):
    """[(field, saved value, new value)] for every dotted field that differs, except those in
    MAY_DIFFER and under the `ignore` prefixes; a field present on one side only counts."""
    a, b = _flatten(_plain(saved)), _flatten(_plain(new))
    missing = object()
    diffs = []
    for field in sorted(set(a) | set(b)):
        if _ignored(field, ignore):
            continue
        va, vb = a.get(field, missing), b.get(field, missing)
        if va != vb:
            diffs.append((field, "(absent)" if va is missing else va, "(absent)" if vb is missing else vb))
    return diffs


def _allowed(config):
    allow = config.get("allow_config_change", "")  # a ConfigDict or, for the study CLI, a dict
    return {s.strip() for s in str(allow or "").split(",") if s.strip()}


def read(workdir):
    """The saved config.json of `workdir` as a dict, or None."""
    path = pathlib.Path(workdir) / CONFIG_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); it records the config this workdir was made "
                          "with: restore it, or use another --workdir") from e


def holds_state(workdir, results=()):
    """Whether `workdir` holds an earlier run's checkpoints or any of the `results` files."""
    workdir = pathlib.Path(workdir)
    ckpts = workdir / "checkpoints"
    if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
        return True
    return any((workdir / r).exists() for r in results)


def prepare(workdir, config, *, resuming, ignore=(), what="run"):
    """Checks a resume against the saved config, then writes `WORKDIR/config.json`.

    `resuming`: the workdir holds state of an earlier run (checkpoints or results), which this
    run would continue or report. `ignore`: dotted prefixes this run does not read. Raises
    ConfigMismatchError when the configs differ outside MAY_DIFFER, `ignore` and the
    fields listed in `config.allow_config_change`. Only process 0 writes.
    """
    import jax

    workdir = pathlib.Path(workdir)
    path = workdir / CONFIG_JSON
    saved = read(workdir)
    changes = list(saved.get("config_changes", [])) if saved else []
    if saved is not None and resuming:
        diffs = differences(saved.get("config", {}), config, ignore)
        allowed = _allowed(config)
        refused = [d for d in diffs if "all" not in allowed and d[0] not in allowed]
        if refused:
            listed = "; ".join(f"{f}: saved {json.dumps(s)}, now {json.dumps(n)}" for f, s, n in refused)
            names = ",".join(f for f, _, _ in refused)
            raise ConfigMismatchError(
                f"{workdir}: this workdir holds a {what} made with another config ({listed}); resuming "
                f"would mix the two runs. Use another --workdir, or rerun with the saved values, or "
                f"accept the change deliberately with --config.allow_config_change={names}")
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        changes += [{"field": f, "saved": s, "new": n, "accepted": now} for f, s, n in diffs]
    if jax.process_index() == 0:
        record = {"config": _plain(config), **environment(),
                  "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "config_changes": changes}
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)
    return path
