"""Reading PyTorch / safetensors weight files safely, and strict key accounting.

Checkpoints come from strangers: PyTorch files are read by emosup's own reader of torch's
checkpoint format (``torch_zip.load_torch_file``), which accepts only tensors and plain
containers and refuses any pickle that asks for anything else, executing nothing from it;
safetensors are read with ``safetensors.numpy``. Neither needs torch, a test-only dependency
of emosup.

``map_state`` turns a flat ``{name: array}`` source into nested Flax collections following
explicit ``Rule``s and fails with ONE ``ConversionError`` that lists every missing, unused
and mis-shaped key, so a broken checkpoint is diagnosed in one run.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from emosup.convert.torch_zip import load_torch_file
from emosup.errors import ConversionError

TORCH_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"


def load_torch_state(path: os.PathLike | str) -> dict[str, np.ndarray]:
    """Load a flat tensor dict from ``.ckpt``/``.bin``/``.pt``/``.pth`` or ``.safetensors``.

    Returns ``{name: np.ndarray}`` (bfloat16 widened to float32). Raises FileNotFoundError
    naming the path, ConversionError for a refused, unreadable or non-flat file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors.numpy import load_file

        return {k: np.asarray(v) for k, v in load_file(path).items()}
    if suffix not in TORCH_SUFFIXES:
        raise ConversionError(
            f"{path}: unknown weight file type {suffix!r}; expected one of "
            f"{list(TORCH_SUFFIXES) + [SAFETENSORS_SUFFIX]}"
        )
    obj = load_torch_file(path)
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"{path}: expected a mapping of names to tensors, got {type(obj).__name__}"
        )
    for name, value in obj.items():
        if not isinstance(value, np.ndarray):
            raise ConversionError(
                f"{path}: expected a flat mapping of names to tensors, but {str(name)!r} holds "
                f"a {type(value).__name__} (a nested checkpoint? extract the model's state_dict)"
            )
    return {str(k): v for k, v in obj.items()}


Transform = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    """Take ``source`` from the flat dict, apply ``transform`` and store it at
    ``collection`` / ``path``; the result must have shape ``shape``."""

    source: str
    collection: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    transform: Optional[Transform] = None


def _set_nested(tree: dict, keys: Sequence[str], value) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def map_state(
    source: Mapping[str, np.ndarray],
    rules: Iterable[Rule],
    ignore: Sequence[str] = (),
    what: str = "checkpoint",
) -> dict[str, dict]:
    """Apply ``rules`` to ``source``; every source key must be used or ignored.

    Args:
      source: flat ``{name: array}``.
      rules: one per target leaf.
      ignore: regular expressions (``re.search``) for source keys that are dropped on
        purpose, e.g. ``r"num_batches_tracked$"``.
      what: name of the source used in the error message (e.g. the file path).
    Returns:
      ``{collection: nested dict of arrays}``.
    Raises:
      ConversionError listing all missing, unused and mis-shaped keys at once.
    """
    out: dict[str, dict] = {}
    used: set[str] = set()
    missing, mismatched = [], []
    for rule in rules:
        if rule.source not in source:
            missing.append(rule.source)
            continue
        used.add(rule.source)
        value = np.asarray(source[rule.source])
        try:
            new = value if rule.transform is None else np.asarray(rule.transform(value))
        except Exception as e:  # e.g. a transpose on a tensor of the wrong rank
            mismatched.append(f"{rule.source}: shape {value.shape} cannot be converted ({e})")
            continue
        if tuple(new.shape) != tuple(rule.shape):
            mismatched.append(
                f"{rule.source}: shape {tuple(value.shape)} gives {tuple(new.shape)}, expected "
                f"{tuple(rule.shape)} for {rule.collection}/{'/'.join(rule.path)}"
            )
            continue
        _set_nested(out.setdefault(rule.collection, {}), rule.path, new)
    patterns = [re.compile(p) for p in ignore]
    unused = sorted(
        k for k in source if k not in used and not any(p.search(k) for p in patterns)
    )
    if missing or unused or mismatched:
        lines = [f"{what}: conversion failed"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unused:
            lines.append(f"  unused keys ({len(unused)}): " + ", ".join(unused))
        if mismatched:
            lines.append(f"  mis-shaped keys ({len(mismatched)}):")
            lines.extend("    " + m for m in mismatched)
        raise ConversionError(
            "\n".join(lines),
            missing=missing,
            unused=unused,
            mismatched=[m.split(":", 1)[0] for m in mismatched],
        )
    return out
