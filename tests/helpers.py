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


def write_wav(path, samples=None, *, sr=16000, seconds=0.2, seed=0, silent=False, subtype="PCM_16"):
    """Writes a mono WAV at `path` (parents made) and returns the path.

    `samples` (float array in [-1, 1]) is written as given; otherwise `seconds` of seeded
    low-level noise (silence with `silent=True`)."""
    import numpy as np
    import soundfile as sf

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples is None:
        n = int(round(seconds * sr))
        samples = np.zeros(n) if silent else 0.1 * np.random.default_rng(seed).standard_normal(n)
    sf.write(str(path), np.asarray(samples, np.float32), sr, subtype=subtype)
    return path


def use_tiny_corpus(config, corpus_dir):
    """Points an unlocked stage config at the `synthetic_corpus_dir` fixture's corpus (the
    demo's tiny settings, config_lib.TINY_SYNTHETIC, with which the fixture generated it)."""
    from emosup import config_lib

    config.data.synthetic_dir = str(corpus_dir)
    config.data.synthetic.update(config_lib.TINY_SYNTHETIC)
    return config
