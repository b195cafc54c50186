"""MSP-Podcast (releases 1.x and 2.0) → manifest rows.

Expected folder (the release as unpacked; layout from the release's readme.txt)::

    MSP-PODCAST-Publish-1.12/
      Audios/MSP-PODCAST_0001_0008.wav ...      # flat (`Audio/` is accepted too)
      Audios/MSP-PODCAST_test3_0001.wav ...     # Test3: no label rows
      Labels/labels_consensus.csv               # releases <= 1.8: labels_concensus.csv

`labels_consensus.csv` has the header
``FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set`` (Gender optional here).

Rows:
* ``emotion``: EmoClass A S H U F D C N → angry sad happy surprise fear disgust contempt
  neutral. O (other) and X (no agreement) rows are dropped (the official 8-class task drops
  them) unless ``keep_other=True``, which keeps them unlabelled (emotion None, corpus_label
  O/X) for dimensional or speaker use. ``four_class=True`` keeps the rows of the other
  classes too but unlabelled (emotion None; corpus_label keeps the code), so only
  neutral/happy/sad/angry carry a class and the A/V/D of every row stays usable.
* ``arousal/valence/dominance`` = EmoAct/EmoVal/EmoDom, consensus means on the corpus's
  **1–7** scale, kept as they are (an empty cell → missing).
* ``speaker``: SpkrID as an integer string (``"30"``). SpkrID ``Unknown`` (or empty) becomes
  ``unknown_<recording>`` (the 4-digit recording id of the file name) so that unknown-speaker
  segments of one podcast stay in one group and never leak across splits under
  speaker-grouped sampling; such rows carry ``extra["speaker_known"] = "0"`` (others "1"):
  speaker tasks (speaker classification, per-speaker clustering) should exclude them.
* ``split``: Split_Set Train → ``train``, Development → ``dev``, Test1 → ``test``,
  Test2 → ``test2``, Test3 → ``test3``. Test3 audio is found by listing the audio folder for
  ``MSP-PODCAST_test3_*.wav`` (its labels are hidden): split ``test3``, emotion None, speaker
  ``unknown_test3``, speaker_known "0". The test sets share speakers with each other; the
  corpus says never to train on any of them.
* ``extra``: corpus_label, duration, recording, gender (as written), speaker_known.

A label row whose audio file is missing or unusable goes to ``Prepared.skipped`` with the
reason. A missing label file, a missing column or a malformed row raises ``CorpusError``
naming the file and line. `check_silence` (reads every sample) is off by default: the corpus
is 200k+ files.
"""
from __future__ import annotations

import csv
import io
import math
import os
import pathlib
import re
from typing import Dict, List, Optional, Tuple

from emosup.data.corpora import common
from emosup.data.corpora.common import CorpusError

# EmoClass codes (msplabresearch/MSP-Podcast_Challenge:process_labels_for_categorical.py,
# Strong-AI-Lab/emotion:datasets/MSP-PODCAST/process.py).
CLASS_CODES = {"A": "angry", "S": "sad", "H": "happy", "U": "surprise", "F": "fear",
               "D": "disgust", "C": "contempt", "N": "neutral"}
OTHER_CODES = ("O", "X")  # other, no agreement: not in the official 8-class task
FOUR_CLASSES = ("neutral", "happy", "sad", "angry")
# Split_Set values (msplabresearch/MSP-Podcast_Challenge:utils/data/podcast.py SPLIT_MAP).
SPLITS = {"Train": "train", "Development": "dev", "Test1": "test", "Test2": "test2",
          "Test3": "test3"}
LABEL_FILES = ("labels_consensus.csv", "labels_concensus.csv")  # <= 1.8 ships the typo
AUDIO_DIRS = ("Audios", "Audio")
REQUIRED_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Split_Set")
UNKNOWN_SPEAKER = "unknown"
TEST3_SPEAKER = "unknown_test3"
_NAME = re.compile(r"^MSP-PODCAST_(\d+)_[^/\\]+\.wav$")  # group 1: the recording id
_TEST3 = re.compile(r"^MSP-PODCAST_test3_[^/\\]+\.wav$", re.IGNORECASE)


def find_label_file(root: pathlib.Path) -> pathlib.Path:
    """`Labels/labels_consensus.csv`, else the <= 1.8 spelling, else a CorpusError."""
    for name in LABEL_FILES:
        p = root / "Labels" / name
        if p.is_file():
            return p
    raise CorpusError(
        f"{root / 'Labels' / LABEL_FILES[0]}: label file not found (also looked for "
        f"Labels/{LABEL_FILES[1]}, the spelling of releases <= 1.8); is {root} the unpacked "
        "MSP-Podcast release folder?")


def find_audio_dir(root: pathlib.Path) -> pathlib.Path:
    for name in AUDIO_DIRS:
        if (root / name).is_dir():
            return root / name
    raise CorpusError(f"{root / AUDIO_DIRS[0]}: audio folder not found (also looked for "
                      f"{root / AUDIO_DIRS[1]})")


def _dim(value: str, column: str, where: str) -> Optional[float]:
    value = value.strip()
    if value == "":
        return None
    try:
        x = float(value)
    except ValueError:
        raise CorpusError(f"{where}: {column} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise CorpusError(f"{where}: {column} must be finite, got {value!r}")
    return x


def _speaker(spkr: str, recording: str, where: str) -> Tuple[str, bool]:
    s = spkr.strip()
    if s == "" or s.lower() == UNKNOWN_SPEAKER:
        return f"{UNKNOWN_SPEAKER}_{recording}", False
    if not s.isdigit():
        raise CorpusError(f"{where}: SpkrID must be an integer or 'Unknown', got {spkr!r}")
    return str(int(s)), True


def read(root, *, keep_other: bool = False, four_class: bool = False,
         include_test3: bool = True, check_silence: bool = False) -> common.Prepared:
    """Reads an MSP-Podcast release folder (see the module docstring for the rules).

    Args:
      root: the release folder (holds `Labels/` and `Audios/`).
      keep_other: keep O/X rows, unlabelled, instead of dropping them.
      four_class: only neutral/happy/sad/angry keep their class; other rows become unlabelled.
      include_test3: add the Test3 files found in the audio folder (split `test3`).
      check_silence: also read every file and skip all-zero ones (slow on the full corpus).
    Returns:
      `common.Prepared`: rows in label-file order, then Test3 files in name order.
    """
    root = common.require_dir(root, "the MSP-Podcast release folder with Labels/ and Audios/")
    label_file = find_label_file(root)
    audio_dir = find_audio_dir(root)
    # One listing instead of a stat per row: the corpus has 200k+ files.
    present = {e.name for e in os.scandir(audio_dir) if e.is_file()}
    src = str(label_file)
    try:
        text = label_file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{src}: not UTF-8 text ({e.reason})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise CorpusError(f"{src}:1: empty file, expected the header "
                          f"{','.join(REQUIRED_COLUMNS)}")
    cols = [c.strip() for c in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise CorpusError(f"{src}:1: header lacks the column(s) {', '.join(missing)} "
                          f"(found: {','.join(cols)})")
    utts: List = []
    skipped: List[Tuple[str, str]] = []
    seen: Dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        where = f"{src}:{line}"
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(cols):
            raise CorpusError(f"{where}: expected {len(cols)} fields as in the header, "
                              f"found {len(row)}")
        rec = {c: v.strip() for c, v in zip(cols, row)}
        name = rec["FileName"]
        split_set = rec["Split_Set"]
        if split_set not in SPLITS:
            raise CorpusError(f"{where}: unknown Split_Set {split_set!r}; expected one of "
                              f"{', '.join(SPLITS)}")
        m = _NAME.match(name)
        if m:
            recording = m.group(1)
        elif _TEST3.match(name):
            recording = "test3"
        else:
            raise CorpusError(f"{where}: FileName {name!r} is not of the form "
                              "MSP-PODCAST_<recording>_<segment>.wav")
        if name in seen:
            raise CorpusError(f"{where}: FileName {name!r} repeats line {seen[name]}")
        seen[name] = line
        code = rec["EmoClass"]
        if split_set == "Test3" and code == "":
            emotion = None  # hidden labels
        elif code in CLASS_CODES:
            emotion = CLASS_CODES[code]
        elif code in OTHER_CODES:
            if not keep_other:
                continue
            emotion = None
        else:
            raise CorpusError(f"{where}: unknown EmoClass {code!r}; expected one of "
                              f"{' '.join(list(CLASS_CODES) + list(OTHER_CODES))}")
        if four_class and emotion not in FOUR_CLASSES:
            emotion = None
        dims = (_dim(rec["EmoAct"], "EmoAct", where), _dim(rec["EmoVal"], "EmoVal", where),
                _dim(rec["EmoDom"], "EmoDom", where))
        speaker, known = _speaker(rec["SpkrID"], recording, where)
        path = audio_dir / name
        if name not in present:
            skipped.append((str(path), "not found (label row " + where + ")"))
            continue
        why = common.audio_problem(path, check_silence=check_silence)
        if why is not None:
            skipped.append((str(path), why))
            continue
        utts.append(common.make_utterance(
            path, speaker, emotion, SPLITS[split_set], corpus_label=code, dims=dims,
            duration=common.duration_seconds(path),
            extra={"recording": recording, "gender": rec.get("Gender", ""),
                   "speaker_known": "1" if known else "0"}))
    if include_test3:
        for name in sorted(present):
            if name in seen or not _TEST3.match(name):
                continue
            path = audio_dir / name
            why = common.audio_problem(path, check_silence=check_silence)
            if why is not None:
                skipped.append((str(path), why))
                continue
            utts.append(common.make_utterance(
                path, TEST3_SPEAKER, None, "test3", corpus_label="",
                duration=common.duration_seconds(path),
                extra={"recording": "test3", "gender": "", "speaker_known": "0"}))
    return common.Prepared(utts, skipped)
