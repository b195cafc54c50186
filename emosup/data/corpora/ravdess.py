"""RAVDESS reader: the audio-only speech (and optionally song) release → manifest rows.

Layout (Zenodo record 1188976): `Audio_Speech_Actors_01-24.zip` unpacks to
`Actor_01/ … Actor_24/`, 60 files each (1,440, 16-bit 48 kHz); the song zip has the same
`Actor_NN/` folders except Actor_18 (no song). A file is named `MM-VV-EE-II-SS-RR-AA.wav`::

    MM modality      01 audio-video, 02 video-only, 03 audio-only
    VV vocal channel 01 speech, 02 song
    EE emotion       01 neutral 02 calm 03 happy 04 sad 05 angry 06 fearful 07 disgust 08 surprised
    II intensity     01 normal, 02 strong (neutral has no strong take)
    SS statement     01 "Kids are talking by the door", 02 "Dogs are sitting by the door"
    RR repetition    01, 02
    AA actor         01..24, odd = male, even = female

The reader walks ROOT and up to three folder levels below it, so `ROOT/Actor_NN/*.wav`, files
directly in ROOT, and an extra unzip folder (`ROOT/Audio_Speech_Actors_01-24/Actor_NN/`) all
work. The actor comes from the file name; a file inside an `Actor_NN` folder of another actor
is skipped. The name is parsed strictly (seven two-digit fields, each in range); a bad name is
skipped with the reason.

Rows: speaker `Actor_NN`; emotion neutral calm happy sad angry fear disgust surprise;
`extra`: corpus_label (the EE code), intensity (normal|strong), statement (01|02), repetition
(01|02), vocal_channel (speech|song), gender (male|female), duration. Splits hold whole actors
out: `common.speaker_disjoint_splits` with fractions 0.7/0.1/0.2 and `seed`.

What is left out:
* song files (VV = 02) unless `song=True`: silently, they are not part of the speech corpus;
* hidden files (macOS `._x.wav`), `__MACOSX/` folders and non-audio files: silently;
* in `skipped`, with the reason: bad names, video (`.mp4` files and modality 02 names),
  an audio-video (01) name whose audio-only (03) twin is present (same recording), a second
  copy of a file name seen elsewhere (the Kaggle mirror ships every file twice), files of the
  wrong `Actor_NN` folder, and files `common.audio_problem` rejects (empty, git-lfs pointer,
  unreadable, silent).

Options (keyword, for `python -m emosup.prepare ravdess ROOT --key=value`):
  song: bool = False          also list the song files (vocal channel 02).
  seed: int = 0               seed of the speaker-disjoint split.
  check_silence: bool = True  read every file to reject all-zero audio (1,440 small files).
"""
from __future__ import annotations

import os
import pathlib
import re
from typing import Dict, List, Tuple

from emosup.data.corpora import common

# Emotion code → normalised label (Zenodo record 1188976 code table).
EMOTION_CODES = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
                 "06": "fear", "07": "disgust", "08": "surprise"}
MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
VOCAL_CHANNELS = {"01": "speech", "02": "song"}
INTENSITIES = {"01": "normal", "02": "strong"}
NUM_ACTORS = 24  # Actor_01 .. Actor_24 (Zenodo description)
MAX_DEPTH = 3  # folder levels below ROOT that are searched for files
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train/dev/test share of actors

_NAME_RE = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_ACTOR_DIR_RE = re.compile(r"^actor_(\d+)$", re.IGNORECASE)
_VIDEO_EXTENSIONS = (".mp4",)
NAME_FORMAT = "MM-VV-EE-II-SS-RR-AA (seven two-digit fields, e.g. 03-01-06-01-02-01-12.wav)"


def parse_name(filename: str) -> Dict[str, str]:
    """The seven fields of a RAVDESS file name, checked; ValueError with the reason otherwise.

    Returns the codes under `modality vocal_channel emotion intensity statement repetition
    actor` (two-digit strings), e.g. `parse_name("03-01-06-01-02-01-12.wav")["actor"] == "12"`.
    """
    stem = filename.rsplit(".", 1)[0] if "." in filename else filename
    m = _NAME_RE.match(stem)
    if not m:
        raise ValueError(f"bad RAVDESS name, expected {NAME_FORMAT}")
    mm, vv, ee, ii, ss, rr, aa = m.groups()
    fields = (("modality", mm, MODALITIES), ("vocal channel", vv, VOCAL_CHANNELS),
              ("emotion", ee, EMOTION_CODES), ("intensity", ii, INTENSITIES),
              ("statement", ss, {"01": 1, "02": 2}), ("repetition", rr, {"01": 1, "02": 2}))
    for i, (what, code, table) in enumerate(fields, start=1):
        if code not in table:
            raise ValueError(f"bad RAVDESS name: field {i} ({what}) is {code!r}, expected one of "
                             f"{', '.join(sorted(table))}")
    if not 1 <= int(aa) <= NUM_ACTORS:
        raise ValueError(f"bad RAVDESS name: field 7 (actor) is {aa!r}, expected 01..{NUM_ACTORS}")
    if ee == "01" and ii == "02":
        raise ValueError("bad RAVDESS name: neutral (emotion 01) has no strong intensity (02)")
    return {"modality": mm, "vocal_channel": vv, "emotion": ee, "intensity": ii,
            "statement": ss, "repetition": rr, "actor": aa}


def _walk(root: pathlib.Path) -> List[pathlib.Path]:
    """Files (not hidden, not in __MACOSX) in ROOT and up to MAX_DEPTH levels below, sorted."""
    out: List[pathlib.Path] = []
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise common.CorpusError(f"{folder}: cannot list the folder ({e.strerror})") from None
        for e in entries:
            if e.name.startswith(".") or e.name == "__MACOSX":
                continue
            if e.is_dir():
                if depth < MAX_DEPTH:
                    stack.append((pathlib.Path(e.path), depth + 1))
            elif e.is_file():
                out.append(pathlib.Path(e.path))
    return sorted(out, key=str)


def read(root, *, song: bool = False, seed: int = 0, check_silence: bool = True) -> common.Prepared:
    """Reads a RAVDESS folder (see the module docstring) into rows and skipped files.

    Raises CorpusError when ROOT is not a folder or holds no RAVDESS file at all; when every
    file is unusable the result has no rows and every file in `skipped`.
    """
    base = common.require_dir(root, "the RAVDESS folder with Actor_01 ... Actor_24")
    skipped: List[Tuple[str, str]] = []
    # key (all fields but modality) → (modality, path, codes) of the candidate kept so far
    chosen: Dict[str, Tuple[str, pathlib.Path, Dict[str, str]]] = {}
    seen_names: Dict[str, str] = {}
    n_audio = 0
    for path in _walk(base):
        ext = path.suffix.lower()
        if ext in _VIDEO_EXTENSIONS:
            skipped.append((str(path), "video file, not audio (the audio is in Audio_Speech_"
                                       "Actors_01-24.zip / Audio_Song_Actors_01-24.zip)"))
            continue
        if ext not in common.AUDIO_EXTENSIONS:
            continue  # README, spreadsheets, ...
        n_audio += 1
        try:
            codes = parse_name(path.name)
        except ValueError as e:
            skipped.append((str(path), str(e)))
            continue
        if codes["vocal_channel"] == "02" and not song:
            continue  # the song half is opt-in
        if codes["modality"] == "02":
            skipped.append((str(path), "modality 02 is video-only (no sound)"))
            continue
        m = _ACTOR_DIR_RE.match(path.parent.name)
        if m and int(m.group(1)) != int(codes["actor"]):
            skipped.append((str(path), f"the name says actor {codes['actor']} but the file is in "
                                       f"folder {path.parent.name}"))
            continue
        name = path.name.lower()
        if name in seen_names:
            skipped.append((str(path), f"duplicate of {seen_names[name]} (same file name)"))
            continue
        seen_names[name] = str(path)
        key = path.stem[3:]
        if key in chosen:
            # The audio-only file (03) and the audio of the audio-video file (01) are one take.
            old_mod, old_path, _ = chosen[key]
            keep_new = codes["modality"] == "03" and old_mod != "03"
            loser, winner = (old_path, path) if keep_new else (path, old_path)
            skipped.append((str(loser), f"same recording as {winner} (audio-only 03 preferred "
                                        "over audio-video 01)"))
            if not keep_new:
                continue
        chosen[key] = (codes["modality"], path, codes)

    kept: List[Tuple[pathlib.Path, Dict[str, str]]] = []
    for _, path, codes in chosen.values():
        why = common.audio_problem(path, check_silence=check_silence)
        if why is not None:
            skipped.append((str(path), why))
        else:
            kept.append((path, codes))
    if not kept and not skipped:
        raise common.CorpusError(
            f"{base}: no RAVDESS audio to read ({n_audio} audio files found in the folder and "
            f"{MAX_DEPTH} levels below; expected Actor_NN/{NAME_FORMAT}"
            f"{'' if song else ', speech only: pass song=True for the song files'})")

    speaker_of = lambda codes: f"Actor_{codes['actor']}"  # noqa: E731
    splits = common.speaker_disjoint_splits({speaker_of(c) for _, c in kept},
                                            fractions=SPLIT_FRACTIONS, seed=seed)
    rows = []
    for path, c in sorted(kept, key=lambda pc: str(pc[0])):
        spk = speaker_of(c)
        rows.append(common.make_utterance(
            path, spk, EMOTION_CODES[c["emotion"]], splits[spk], corpus_label=c["emotion"],
            duration=common.duration_seconds(path),
            extra={"intensity": INTENSITIES[c["intensity"]], "statement": c["statement"],
                   "repetition": c["repetition"],
                   "vocal_channel": VOCAL_CHANNELS[c["vocal_channel"]],
                   "gender": "male" if int(c["actor"]) % 2 == 1 else "female"}))
    skipped.sort()
    return common.Prepared(rows, skipped)
