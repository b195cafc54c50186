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
