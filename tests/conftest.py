"""Test set-up: 8 fake CPU devices (before jax is imported), quiet TensorFlow."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_corpus_dir(tmp_path_factory):
    """The demo's tiny synthetic corpus, generated once per test session."""
    from helpers import DEMO, load_config

    from emosup.data.synthetic import generator

    out = tmp_path_factory.mktemp("synthetic")
    cfg = load_config(DEMO, f"tiny=1,synthetic_dir={out}")
    generator.generate(out, generator.SyntheticConfig(**cfg.data.synthetic.to_dict()), progress=False)
    return pathlib.Path(out)


# The test command (README, .ci/run) runs `-n 2 --dist loadfile --no-loadscope-reorder`: each
# file runs whole on one worker, so a module fixture (the 2-process job of test_multihost, the
# shared runs of test_learning and test_objectives, the VoxCeleb download) is computed once,
# and files are handed out in collection order. The longest files (minutes each) come first,
# so the two workers finish together instead of one idling while the other runs a long file
# picked up late. (pytest-xdist's `loadgroup` with `xdist_group` marks does not group under
# pytest 9: it renames `item._nodeid`, which pytest 9 no longer reads.)
_LONG_FIRST = ("test_multihost.py", "test_experiment.py", "test_voxceleb_ecapa.py", "test_corpus_experiment.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise
