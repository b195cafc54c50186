"""Checkpoints: what a training workdir holds is read back without Orbax warnings in the log."""
import logging

import numpy as np

from emosup import checkpoint

STATE = {"params": {"encoder": {"w": np.arange(3, dtype=np.float32)}, "classifier": {"weight": np.ones((2, 3), np.float32)}},
         "batch_stats": {"encoder": {"mean": np.zeros(3, np.float32)}}, "step": np.array(4, np.int32)}


def _training_workdir(path):
    """A workdir as pretraining leaves it: model.json and a step with state, meta and the pair tables."""
    ckpt = checkpoint.Checkpointer(path)
    ckpt.save(4, STATE, {"step": 4, "history": []}, extra={"pairs": {"anchors": np.arange(5, dtype=np.int32)}})
    ckpt.close()
    checkpoint.write_model_json(path, {"encoder": "ecapa", "ecapa": {"channels": [8]}, "source": "test"})
    return path


def _warnings(caplog, capfd):
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    printed = [line for line in capfd.readouterr().err.splitlines() if "WARNING" in line]
    return logged + printed


def test_encoder_of_a_training_workdir_loads_without_orbax_warnings(tmp_path, caplog, capfd):
    workdir = _training_workdir(tmp_path / "pretrain")
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        model_config, variables = checkpoint.load_encoder_variables(workdir)  # what fine-tuning's init does
        step, state = checkpoint.restore_state(workdir / "checkpoints")
    assert _warnings(caplog, capfd) == []
    assert model_config["source"] == "test" and step == 4
    np.testing.assert_array_equal(variables["params"]["w"], STATE["params"]["encoder"]["w"])
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], STATE["batch_stats"]["encoder"]["mean"])
    np.testing.assert_array_equal(state["params"]["classifier"]["weight"], STATE["params"]["classifier"]["weight"])


def test_resume_reads_state_meta_and_extras_without_orbax_warnings(tmp_path, caplog, capfd):
    workdir = _training_workdir(tmp_path / "run")
    capfd.readouterr()
    ckpt = checkpoint.Checkpointer(workdir)
    with caplog.at_level(logging.WARNING):
        state, meta, extras = ckpt.restore(STATE, extra=("pairs",))
        _, _, none = ckpt.restore(STATE)  # the pair tables stay on disk, unread
    ckpt.close()
    assert _warnings(caplog, capfd) == []
    assert meta == {"step": 4, "history": []} and none == {}
    np.testing.assert_array_equal(extras["pairs"]["anchors"], np.arange(5))
    np.testing.assert_array_equal(np.asarray(state["params"]["encoder"]["w"]), STATE["params"]["encoder"]["w"])
