#!/usr/bin/env bash
# Create ./.venv and install emosup into it (editable).
#   bash launch/setup.sh          runtime dependencies only
#   bash launch/setup.sh --test   plus the test extras (pytest and the PyTorch reference
#                                 implementations: torch 2.13.0 CPU, speechbrain, transformers)
#   bash launch/setup.sh --fix-torchaudio-only
# Idempotent: re-running reuses the venv and lets pip skip what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mode=${1:-}

fix_torchaudio() {
  # PyPI's newest torchaudio is a CUDA build whose extension libraries link libtorch_cuda;
  # beside the CPU torch they fail to load and `import speechbrain` dies. Without the .so
  # files torchaudio imports as pure Python, which is all speechbrain needs here.
  .venv/bin/python - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("torchaudio")
if spec is not None:
    lib = pathlib.Path(spec.origin).parent / "lib"
    for so in lib.glob("*.so"):
        so.unlink()
        print(f"setup.sh: removed {so.name} (CUDA-only torchaudio extension)")
PY
}

if [ "$mode" = "--fix-torchaudio-only" ]; then fix_torchaudio; exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ "$mode" = "--test" ]; then
  .venv/bin/pip install --disable-pip-version-check -q -e '.[test]'
  fix_torchaudio
else
  .venv/bin/pip install --disable-pip-version-check -q -e .
fi
echo "setup.sh: emosup installed in $(pwd)/.venv"
