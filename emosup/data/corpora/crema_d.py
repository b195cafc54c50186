"""CREMA-D → manifest rows.

Expected folder (the GitHub repository CheyneyComputerScience/CREMA-D cloned *with git-lfs*,
or just its `AudioWAV/` folder; file names and labels as in that repository's README.md)::

    CREMA-D/AudioWAV/1001_DFA_ANG_XX.wav ...     # {Actor}_{Sentence}_{Emotion}_{Level}.wav

Rows:
* ``speaker``: the actor id (``"1001"``; 91 actors).
* ``emotion``: ANG DIS FEA HAP NEU SAD → angry disgust fear happy neutral sad (the intended
  emotion of the file name; corpus_label keeps the code).
* ``split``: speaker-disjoint ``train/dev/test`` from
  ``common.speaker_disjoint_splits(actors, fractions, seed)``. The actor set is taken from
  every well-named file, usable or not, so the split does not move when `check_silence`
  changes or a file is fetched later.
* ``extra``: corpus_label, duration, sentence (one of the 12 codes), level (LO MD HI XX).

File names are matched strictly: ``\\d{4}_<one of the 12 sentence codes>_<EMO>_<LO|MD|HI|XX>.wav``.
Anything else — e.g. the historically misnamed ``1040_ITH_SAD_X.wav`` — goes to
``Prepared.skipped`` with the reason, rather than guessing. Files that cannot be used (the
known silent ``1076_MTI_SAD_XX``, the zero-length ``1064_TIE_SAD_XX``, git-lfs pointer files
of a clone made without git-lfs, unreadable headers) go there too. `check_silence` is on by
default: the corpus is small (7,442 files) and has a known silent file. Dot files (macOS
``._x.wav``, ``.DS_Store``) are ignored.
"""
from __future__ import annotations

import os
import pathlib
import re
from typing import List, Sequence, Tuple

from emosup.data.corpora import common
from emosup.data.corpora.common import CorpusError

# Emotion codes and sentence codes: CheyneyComputerScience/CREMA-D README.md and file listing.
EMOTION_CODES = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy",
                 "NEU": "neutral", "SAD": "sad"}
SENTENCES = ("DFA", "IEO", "IOM", "ITH", "ITS", "IWL", "IWW", "MTI", "TAI", "TIE", "TSI", "WSI")
LEVELS = ("LO", "MD", "HI", "XX")  # XX: unspecified
_NAME = re.compile(r"^(\d{4})_(%s)_(%s)_(%s)\.wav$" % (
    "|".join(SENTENCES), "|".join(EMOTION_CODES), "|".join(LEVELS)))
NAME_RULE = ("name is not {Actor}_{Sentence}_{Emotion}_{Level}.wav with a 4-digit actor, "
             f"Sentence in {' '.join(SENTENCES)}, Emotion in {' '.join(EMOTION_CODES)}, "
             f"Level in {' '.join(LEVELS)}")


def find_audio_dir(root: pathlib.Path) -> pathlib.Path:
    """`root/AudioWAV`, or `root` itself when it directly holds CREMA-D wavs."""
    if (root / "AudioWAV").is_dir():
        return root / "AudioWAV"
    if any(_NAME.match(e.name) for e in os.scandir(root)):
        return root
    raise CorpusError(f"{root / 'AudioWAV'}: folder not found, and {root} holds no "
                      "{Actor}_{Sentence}_{Emotion}_{Level}.wav files; is this the CREMA-D "
                      "repository?")


def read(root, *, seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2),
         check_silence: bool = True) -> common.Prepared:
    """Reads a CREMA-D folder (see the module docstring for the rules).

    Args:
      root: the repository folder (with `AudioWAV/`) or the `AudioWAV` folder itself.
      seed: seed of the speaker shuffle behind the splits.
      fractions: train/dev/test fractions of the actors.
      check_silence: also read every file and skip all-zero ones.
    Returns:
      `common.Prepared`: rows in file-name order.
    """
    root = common.require_dir(root, "the CREMA-D repository folder with AudioWAV/")
    audio_dir = find_audio_dir(root)
    entries = sorted((e.name for e in os.scandir(audio_dir)
                      if not e.name.startswith(".") and not e.is_dir()))
    skipped: List[Tuple[str, str]] = []
    named = []
    for name in entries:
        m = _NAME.match(name)
        if m is None:
            skipped.append((str(audio_dir / name), NAME_RULE))
        else:
            named.append((name, m.groups()))
    if not named:
        raise CorpusError(f"{audio_dir}: no {{Actor}}_{{Sentence}}_{{Emotion}}_{{Level}}.wav "
                          "files")
    split_of = common.speaker_disjoint_splits((g[0] for _, g in named), fractions=fractions,
                                              seed=seed)
    utts = []
    for name, (actor, sentence, emo, level) in named:
        path = audio_dir / name
        why = common.audio_problem(path, check_silence=check_silence)
        if why is not None:
            skipped.append((str(path), why))
            continue
        utts.append(common.make_utterance(
            path, actor, EMOTION_CODES[emo], split_of[actor], corpus_label=emo,
            duration=common.duration_seconds(path),
            extra={"sentence": sentence, "level": level}))
    skipped.sort()
    return common.Prepared(utts, skipped)
