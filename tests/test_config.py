"""Bad configs fail at start, naming the field."""
import subprocess
import sys

import pytest
from helpers import DEMO, REPO, load_config

from emosup import config_lib
from emosup.trainers import pretrain


def test_unknown_config_argument_is_named():
    with pytest.raises(ValueError, match=r"'stepz' is not known"):
        load_config(DEMO, "stepz=3")
    with pytest.raises(ValueError, match=r"expected key=value"):
        config_lib.parse_arg("manifest", manifest="")


def test_unknown_override_on_the_command_line_is_named(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "emosup.train", f"--config={REPO / 'configs' / 'speaker.py'}",
         "--config.optim.learning_rate=1e-3", f"--workdir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "learning_rate" in proc.stderr


def test_bad_values_are_named(tmp_path):
    cfg = load_config(DEMO, "tiny=1")
    cfg.unlock()
    cfg.model.preset = "huge"
    with pytest.raises(ValueError, match=r"config.model.preset='huge'"):
        pretrain.run(cfg, tmp_path)
    cfg = load_config(DEMO, "tiny=1")
    cfg.unlock()
    cfg.optim.schedule = "linear"
    with pytest.raises(ValueError, match=r"config.optim.schedule='linear'"):
        pretrain.run(cfg, tmp_path / "w")
    cfg = load_config(DEMO, "tiny=1")
    cfg.unlock()
    cfg.batch_size = 0
    with pytest.raises(ValueError, match=r"config.batch_size=0"):
        pretrain.run(cfg, tmp_path / "w")
