"""What every corpus reader shares: the error type, emotion names, file checks, splits.

A reader (`emosup/data/corpora/<name>.py`) turns the folder a user downloaded into a list of
`manifest.Utterance` rows plus a list of skipped files with the reason, without importing
TensorFlow or JAX. `emosup.prepare` writes the rows as a CSV manifest; the TFDS builders in
`emosup.data.tfds` read the same rows.

Manifest conventions for readers:
* `id` and `path` are the absolute audio path; `speaker` is corpus-qualified only where the
  corpus's own ids could collide (e.g. IEMOCAP `Ses01F`).
* `emotion` is one of `EMOTIONS` (lower-case English) or None (unlabelled);
  `extra["corpus_label"]` keeps the corpus's own code (`hap`, `ANG`, `03`, ...).
* `extra["fold"]` (string) where the corpus has a standard cross-validation fold;
  `extra["duration"]` in seconds (`%.3f`) from the file header.
* `arousal/valence/dominance` on the corpus's own scale (the reader's docstring says which).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import random
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from emosup.data.manifest import Utterance
from emosup.errors import UserError

# The normalised label set: lower-case English emotion names (each corpus's own code stays in `corpus_label`).
EMOTIONS = ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise", "contempt", "calm")
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"  # git-lfs pointer files
SILENCE_LEVEL = 1e-7  # |x| below this everywhere: a silent file (same rule as emosup.audio)
AUDIO_EXTENSIONS = (".wav", ".flac")


class CorpusError(UserError):
    """A corpus folder that cannot be read; the message names the file (and line) at fault."""


@dataclasses.dataclass
class Prepared:
    """A reader's result: the rows, and the files left out with the reason for each."""

    utterances: List[Utterance]
    skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)


def require_dir(root, what: str) -> pathlib.Path:
    """`root` as an absolute Path, or a CorpusError saying what folder was expected."""
    p = pathlib.Path(root).expanduser().absolute()
    if not p.is_dir():
        raise CorpusError(f"{p}: not a folder (expected {what})")
    return p


def is_hidden(path: pathlib.Path) -> bool:
    """macOS AppleDouble (`._x.wav`) and dot files: never audio."""
    return path.name.startswith(".")


def audio_problem(path, check_silence: bool = False) -> Optional[str]:
    """Why `path` cannot be used as audio, or None when it can.

    Checks: the file exists and is not empty, is not a git-lfs pointer (a clone without
    git-lfs), libsndfile can read its header, it has samples, and (with `check_silence`,
    which reads the whole file) it is not all zeros.
    """
    p = os.fspath(path)
    try:
        size = os.path.getsize(p)
    except OSError:
        return "not found"
    if size == 0:
        return "zero-length file"
    with open(p, "rb") as f:
        head = f.read(len(LFS_POINTER_PREFIX))
    if head == LFS_POINTER_PREFIX:
        return "git-lfs pointer file, not audio (fetch it with `git lfs pull`)"
    try:
        info = sf.info(p)
    except Exception as e:  # libsndfile raises several types for corrupt data
        return f"unreadable audio ({str(e).strip() or type(e).__name__})"
    if info.frames <= 0:
        return "no samples"
    if check_silence:
        try:
            x, _ = sf.read(p, dtype="float32", always_2d=True)
        except Exception as e:
            return f"unreadable audio ({str(e).strip() or type(e).__name__})"
        if not np.any(np.abs(x) >= SILENCE_LEVEL):
            return "silent (all samples zero)"
    return None


def duration_seconds(path) -> Optional[float]:
    try:
        info = sf.info(os.fspath(path))
    except Exception:
        return None
    return info.frames / info.samplerate if info.samplerate > 0 else None


def speaker_disjoint_splits(speakers: Iterable[str], fractions: Sequence[float] = (0.7, 0.1, 0.2),
                            seed: int = 0,
                            names: Sequence[str] = ("train", "dev", "test")) -> Dict[str, str]:
    """Assigns whole speakers to splits: a seeded shuffle of the sorted speaker list, cut at
    the cumulative `fractions` (rounded; every split with a positive fraction gets at least one
    speaker when there are enough). The result depends only on the speaker set and the seed."""
    spk = sorted(set(speakers))
    if len(fractions) != len(names) or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions {tuple(fractions)} must be {len(names)} non-negative "
                         "numbers with a positive sum")
    random.Random(seed).shuffle(spk)
    total = float(sum(fractions))
    wanted = [f / total for f in fractions]
    n = len(spk)
    counts = [int(round(w * n)) for w in wanted]
    # Give every non-empty split one speaker where possible, taking from the largest.
    for i, w in enumerate(wanted):
        if w > 0 and counts[i] == 0 and n >= sum(1 for x in wanted if x > 0):
            j = int(np.argmax(counts))
            counts[j] -= 1
            counts[i] += 1
    counts[int(np.argmax(counts))] += n - sum(counts)
    out, k = {}, 0
    for name, c in zip(names, counts):
        for s in spk[k:k + c]:
            out[s] = name
        k += c
    return out


def make_utterance(path, speaker: str, emotion: Optional[str], split: str, *,
                   corpus_label: str = "", fold: Optional[str] = None,
                   dims: Optional[Tuple[Optional[float], Optional[float], Optional[float]]] = None,
                   duration: Optional[float] = None,
                   extra: Optional[Mapping[str, str]] = None) -> Utterance:
    """One manifest row with the conventions above (absolute path as id)."""
    if emotion is not None and emotion not in EMOTIONS:
        raise ValueError(f"emotion {emotion!r} is not one of {EMOTIONS}")
    p = str(pathlib.Path(path).absolute())
    ex = {"corpus_label": corpus_label}
    if fold is not None:
        ex["fold"] = str(fold)
    if duration is not None:
        ex["duration"] = f"{duration:.3f}"
    if extra:
        ex.update({k: str(v) for k, v in extra.items()})
    a, v, d = dims if dims is not None else (None, None, None)
    return Utterance(id=p, path=p, speaker=str(speaker), emotion=emotion, split=split,
                     arousal=a, valence=v, dominance=d, extra=ex)


def summary(prepared: Prepared) -> str:
    """Counts per split, per class and per speaker, and the skipped files (for the CLI)."""
    utts = prepared.utterances
    lines = [f"{len(utts)} utterances, {len({u.speaker for u in utts})} speakers"]
    by_split: Dict[str, List[Utterance]] = {}
    for u in utts:
        by_split.setdefault(u.split, []).append(u)
    for split in sorted(by_split):
        rows = by_split[split]
        emo: Dict[str, int] = {}
        for u in rows:
            emo[u.emotion or "(unlabelled)"] = emo.get(u.emotion or "(unlabelled)", 0) + 1
        spk: Dict[str, int] = {}
        for u in rows:
            spk[u.speaker] = spk.get(u.speaker, 0) + 1
        lines.append(f"  {split}: {len(rows)} utterances, {len(spk)} speakers")
        lines.append("    classes: " + ", ".join(f"{k} {v}" for k, v in sorted(emo.items())))
        per = sorted(spk.items())
        shown = ", ".join(f"{k} {v}" for k, v in per[:20])
        lines.append("    speakers: " + shown + (f", ... ({len(per) - 20} more)" if len(per) > 20 else ""))
    if prepared.skipped:
        lines.append(f"skipped {len(prepared.skipped)} files:")
        for path, why in prepared.skipped[:50]:
            lines.append(f"  {path}: {why}")
        if len(prepared.skipped) > 50:
            lines.append(f"  ... ({len(prepared.skipped) - 50} more)")
    return "\n".join(lines)
