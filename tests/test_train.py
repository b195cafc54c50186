"""Speaker training: kill-and-resume gives the unbroken run's parameters; NaN guard; skips."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import DEMO, REPO, load_config

from emosup import losses
from emosup.trainers import loop, pretrain
from emosup.data import pipeline


def _config(corpus_dir):
    return load_config(DEMO, f"tiny=1,synthetic_dir={corpus_dir}")


def _final_state(workdir):
    mngr = ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints")
    step = mngr.latest_step()
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    mngr.close()
    return step, state


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_killed_run_resumes_to_identical_parameters(tmp_path, synthetic_corpus_dir):
    steps = 40
    cfg_arg = f"{DEMO}:tiny=1,synthetic_dir={synthetic_corpus_dir},steps={steps}"
    # 2 fake devices keep the subprocesses quick; the sharded path is still exercised.
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    unbroken = tmp_path / "unbroken"
    cmd = [sys.executable, "-m", "emosup.train", f"--config={cfg_arg}", "--config.checkpoint_every=4"]
    subprocess.run(cmd + [f"--workdir={unbroken}"], check=True, cwd=REPO, timeout=600,
                   capture_output=True, env=env)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + [f"--workdir={killed}"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    ckpt_dir = killed / "checkpoints"
    try:
        while time.time() < deadline:
            done = [p for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.exists() else []
            if done:
                break
            assert proc.poll() is None, "training ended before the test could kill it"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at, _ = _final_state(killed)
    assert killed_at is not None and killed_at < steps, "the kill must land mid-run"

    subprocess.run(cmd + [f"--workdir={killed}"], check=True, cwd=REPO, timeout=600, capture_output=True,
                   env=env)
    step_a, state_a = _final_state(unbroken)
    step_b, state_b = _final_state(killed)
    assert step_a == step_b == steps
    for a, b in zip(_leaves(state_a), _leaves(state_b)):
        np.testing.assert_array_equal(a, b)


def test_nan_guard_names_step_window(tmp_path, synthetic_corpus_dir, monkeypatch):
    import jax.numpy as jnp

    real = losses.aam_softmax

    def poisoned(*args, **kwargs):
        loss, logits = real(*args, **kwargs)
        return loss * jnp.nan, logits

    monkeypatch.setattr(losses, "aam_softmax", poisoned)
    with pytest.raises(loop.NonFiniteError, match=r"steps 2\.\.2"):
        pretrain.run(_config(synthetic_corpus_dir), tmp_path / "nan")


def test_unreadable_files_are_skipped_and_reported(tmp_path, synthetic_corpus_dir):
    from emosup.data import manifest as manifest_lib
    from emosup.data.synthetic.voices import SYNTHETIC_SPLITS

    m = manifest_lib.read_manifest(synthetic_corpus_dir / "manifest.csv", allowed_splits=SYNTHETIC_SPLITS)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00not really a wav file")
    rows = [u for u in m if u.split == "unlabelled"]
    csv = tmp_path / "mine.csv"
    lines = ["path,speaker,split"] + [f"{u.path},{u.speaker},train" for u in rows] + [f"{bad},{rows[0].speaker},train"]
    csv.write_text("\n".join(lines) + "\n")
    cfg = _config(synthetic_corpus_dir)
    cfg.data.manifest = str(csv)
    result = pretrain.run(cfg, tmp_path / "skip")
    assert str(bad) in result["skipped"]
    assert np.isfinite(result["final"]["loss"])


def test_crop_sampler_is_a_pure_function_of_step():
    lengths = np.array([16000, 0, 8000, 32000, 24000])
    a = pipeline.CropSampler(lengths, 12000, global_batch=4, seed=3)
    b = pipeline.CropSampler(lengths, 12000, global_batch=4, seed=3)
    seq_a = [a(s, r) for s in range(6) for r in range(4)]
    seq_b = [b(s, r) for s in reversed(range(6)) for r in range(4)][::-1]
    assert sorted(seq_a) == sorted(seq_b) and seq_a == [b(s, r) for s in range(6) for r in range(4)]
    assert all(u != 1 for u, _ in seq_a), "the empty utterance is never drawn"
    for u, off in seq_a:
        assert 0 <= off <= max(lengths[u] - 12000, 0)
    # One epoch (4 readable utterances) covers each exactly once.
    assert sorted(u for u, _ in seq_a[:4]) == [0, 2, 3, 4]
