"""Shared test helpers (imported by tests; pytest puts tests/ on sys.path)."""
import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.py"


def load_config(path, arg=""):
    """Loads configs/X.py:arg as `--config=...` would (then lock it, as the CLI does)."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.lock()
    return config


def export_random_tiny_ecapa(out, seed):
    """A random tiny ECAPA exported to `out` as a converted encoder would be (its clusters give
    pairs; it feeds fusion); returns `out`."""
    import jax
    import numpy as np

    from emosup import checkpoint
    from emosup.models.ecapa import PRESETS
    from emosup.models.speaker import build_encoder

    cfg = {"encoder": "ecapa", "ecapa": dict(PRESETS["tiny"]), "features": {"n_mels": 80}, "source": "random"}
    variables = build_encoder(cfg).init(jax.random.key(seed), np.zeros((1, 101, 80), np.float32), None)
    checkpoint.export_encoder(out, cfg, dict(variables))
    return out
