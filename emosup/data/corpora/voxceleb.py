"""VoxCeleb1 / VoxCeleb2 reader (speaker ids, no emotion) and the verification trial lists.

Layout: `wav/idXXXXX/<11-char YouTube id>/NNNNN.wav` (VoxCeleb1, 16 kHz); VoxCeleb2 ships AAC
`aac/idXXXXX/<ytid>/NNNNN.m4a` (also `dev/aac/...`). The reader looks for "id folders"
(`id` + five digits) in ROOT and up to three levels below it, and reads every folder that
holds them (e.g. `vox1_dev_wav/wav` and `vox1_test_wav/wav` together), so ROOT may be the
`wav/` folder itself or any folder above it.

AAC: soundfile (libsndfile) has no AAC decoder and emosup reads audio with soundfile only, so
`.m4a` files become rows only if soundfile can open the first one; otherwise every `.m4a` goes
to `skipped`, the first with the conversion command that VoxCeleb users run once per file
(PaddleSpeech voxceleb README): ffmpeg -y -i in.m4a -ac 1 -vn -acodec pcm_s16le -ar 16000 out.wav
An `.m4a` next to a `.wav` of the same id/video/number (a converted copy) is ignored silently.

Rows: speaker = the id folder (`id10270`), emotion None, `extra`: corpus_label '' (none),
video (the YouTube id), duration (with `check_audio`). Splits:
* `trials=FILE` (a `label enrol test` list): verification protocol — the speakers named in the
  list go to `test`, all others to `train` (VoxCeleb1-O: train on the 1,211 dev speakers,
  test on the 40 of veri_test2.txt). This wins over an iden_split.txt found on disk.
* else `iden_split.txt` (lines `N id10003/na8-QEFmj44/00003.wav`, N = 1 train, 2 dev, 3
  test; the identification protocol, so the splits share speakers): taken from the `iden_split`
  option, or found in ROOT or a folder between ROOT and an id folder's parent. Files it does
  not list are skipped.
* else every row is `train`.
A relative FILE is looked up in the working directory, then in ROOT.

Options (keyword, for `python -m emosup.prepare voxceleb ROOT --key=value`):
  trials: str = ""             trial list whose speakers are held out as `test`.
  iden_split: str = ""         identification split file ("" = look for iden_split.txt).
  check_audio: bool = True     open every header (common.audio_problem) and record the duration;
                               False lists the files unopened (fast on VoxCeleb2's 1 M files).
  check_silence: bool = False  also read every file to reject all-zero audio (slow).

Also: `read_trials(path, root)` parses a trial list into absolute paths, and
`verification_eer(embeddings, trials)` scores it with cosine similarity.
"""
from __future__ import annotations

import os
import pathlib
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from emosup.data.corpora import common

MAX_DEPTH = 3  # folder levels below ROOT searched for id folders
FFMPEG_COMMAND = "ffmpeg -y -i in.m4a -ac 1 -vn -acodec pcm_s16le -ar 16000 out.wav"
AAC_EXTENSION = ".m4a"
IDEN_SPLIT_FILE = "iden_split.txt"
IDEN_SPLITS = {"1": "train", "2": "dev", "3": "test"}  # tensorflow_datasets voxceleb.py

_ID_RE = re.compile(r"^id\d{5}$")
_UTT_RE = re.compile(r"^\d{5}$")

Trial = Tuple[int, str, str]


def find_containers(root: pathlib.Path) -> List[pathlib.Path]:
    """Folders at or below ROOT (≤ MAX_DEPTH levels) that hold idXXXXX folders, sorted."""
    out: List[pathlib.Path] = []
    level = [root]
    for _ in range(MAX_DEPTH + 1):
        nxt = []
        for folder in level:
            try:
                subdirs = [e for e in os.scandir(folder) if e.is_dir()
                           and not e.name.startswith(".") and e.name != "__MACOSX"]
            except OSError as e:
                raise common.CorpusError(
                    f"{folder}: cannot list the folder ({e.strerror})") from None
            if any(_ID_RE.match(e.name) for e in subdirs):
                out.append(folder)
            else:
                nxt.extend(pathlib.Path(e.path) for e in subdirs)
        level = nxt
    return sorted(out, key=str)


def _containers_or_error(root: pathlib.Path) -> List[pathlib.Path]:
    found = find_containers(root)
    if not found:
        raise common.CorpusError(
            f"{root}: no VoxCeleb speaker folders (idXXXXX) in the folder or {MAX_DEPTH} levels "
            "below; expected e.g. wav/id10270/x6uYqmx31kE/00001.wav")
    return found


def _resolve_file(value: str, root: pathlib.Path, what: str) -> pathlib.Path:
    p = pathlib.Path(value).expanduser()
    for cand in ([p] if p.is_absolute() else [p.absolute(), root / p]):
        if cand.is_file():
            return cand
    raise common.CorpusError(f"{value}: {what} not found (looked in the working directory and "
                             f"in {root})")


def _parse_trial_lines(path: pathlib.Path) -> List[Tuple[int, int, str, str]]:
    """(line, label, enrol, test) for every non-blank line; CorpusError naming file:line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise common.CorpusError(f"{path}: cannot read the trial list ({e})") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{n}"
        if len(fields) != 3:
            raise common.CorpusError(f"{where}: expected 3 fields 'label enrol test', found "
                                     f"{len(fields)}: {line.strip()!r}")
        if fields[0] not in ("0", "1"):
            raise common.CorpusError(f"{where}: label must be 1 (same speaker) or 0, got "
                                     f"{fields[0]!r}")
        for rel in fields[1:]:
            parts = rel.split("/")
            if parts and not _ID_RE.match(parts[0]):
                raise common.CorpusError(
                    f"{where}: {rel!r} is not an idXXXXX/<video>/NNNNN.wav path"
                    + (" (a celebrity-name path from an old VoxCeleb1 list; use the current "
                       "list with VoxCeleb ids, e.g. veri_test2.txt)"
                       if re.match(r"^[A-Za-z][\w.'-]*$", parts[0]) else ""))
            if len(parts) != 3 or not all(parts):
                raise common.CorpusError(f"{where}: {rel!r} is not an idXXXXX/<video>/NNNNN.wav "
                                         "path")
        out.append((n, int(fields[0]), fields[1], fields[2]))
    if not out:
        raise common.CorpusError(f"{path}: no trials (expected lines 'label enrol test')")
    return out


def read_trials(path, root) -> List[Trial]:
    """A trial list (veri_test.txt, veri_test2.txt, list_test_hard2.txt, list_test_all2.txt) as
    `[(label, enrol_abs_path, test_abs_path)]`, label 1 = same speaker.

    Relative paths are resolved against the id folders under `root` (as `read` finds them), so
    they equal the `path` of the manifest rows. CorpusError for a malformed line (file:line)
    or a celebrity-name path, and for audio that is not there (counted, first few named).
    """
    trial_file = pathlib.Path(path).expanduser().absolute()
    if not trial_file.is_file():
        raise common.CorpusError(f"{trial_file}: trial list not found")
    base = common.require_dir(root, "the VoxCeleb folder")
    containers = _containers_or_error(base)
    cache: Dict[str, Optional[str]] = {}

    def locate(rel: str) -> Optional[str]:
        if rel not in cache:
            cache[rel] = next((str(c / rel) for c in containers if (c / rel).is_file()), None)
        return cache[rel]

    out: List[Trial] = []
    missing: List[str] = []
    for n, label, enrol, test in _parse_trial_lines(trial_file):
        paths = []
        for rel in (enrol, test):
            p = locate(rel)
            if p is None:
                missing.append(f"line {n}: {rel}")
            paths.append(p)
        out.append((label, paths[0], paths[1]))
    if missing:
        raise common.CorpusError(
            f"{trial_file}: {len(missing)} trial paths name audio that is not under "
            f"{', '.join(map(str, containers))}: {'; '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else ""))
    return out


def verification_eer(embeddings: Mapping[str, Sequence[float]],
                     trials: Sequence[Trial]) -> Tuple[float, float]:
    """Cosine-scored equal error rate of `trials` → (eer, threshold) from `emosup.metrics.eer`.

    embeddings: path → [D] vector (keys as in `read_trials`' output, i.e. manifest paths).
    """
    from emosup import metrics  # lazily: keep this module free of the training stack

    table = {os.fspath(k): v for k, v in embeddings.items()}
    unit: Dict[str, np.ndarray] = {}

    def vec(p: str, i: int) -> np.ndarray:
        if p not in unit:
            if p not in table:
                raise ValueError(f"trial {i}: no embedding for {p}")
            v = np.asarray(table[p], np.float64).reshape(-1)
            norm = float(np.linalg.norm(v))
            if not np.isfinite(norm) or norm == 0.0:
                raise ValueError(f"trial {i}: embedding of {p} has norm {norm} (cannot take "
                                 "a cosine)")
            unit[p] = v / norm
        return unit[p]

    scores = np.array([float(vec(e, i) @ vec(t, i)) for i, (_, e, t) in enumerate(trials)])
    labels = np.array([int(lab) for lab, _, _ in trials])
    return metrics.eer(scores, labels)


def _read_iden_split(path: pathlib.Path) -> Dict[str, str]:
    """relative path without extension → split name."""
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[0] not in IDEN_SPLITS:
                raise common.CorpusError(f"{path}:{n}: expected 'N idXXXXX/<video>/NNNNN.wav' "
                                         f"with N in 1, 2, 3, got {line.strip()!r}")
            out[os.path.splitext(fields[1])[0]] = IDEN_SPLITS[fields[0]]
    if not out:
        raise common.CorpusError(f"{path}: empty identification split file")
    return out


def read(root, *, trials: str = "", iden_split: str = "", check_audio: bool = True,
         check_silence: bool = False) -> common.Prepared:
    """Reads a VoxCeleb folder (see the module docstring) into rows and skipped files.

    When every file is unusable the result has no rows and every file in `skipped`.
    """
    base = common.require_dir(root, "the VoxCeleb folder (wav/idXXXXX/...)")
    containers = _containers_or_error(base)
    skipped: List[Tuple[str, str]] = []
    wavs: Dict[str, pathlib.Path] = {}  # "idX/video/NNNNN" → file
    aacs: Dict[str, pathlib.Path] = {}
    for c in containers:
        for spk in sorted(os.scandir(c), key=lambda e: e.name):
            if not (spk.is_dir() and _ID_RE.match(spk.name)):
                continue
            for video in sorted(os.scandir(spk.path), key=lambda e: e.name):
                if video.name.startswith("."):
                    continue
                if not video.is_dir():
                    if os.path.splitext(video.name)[1].lower() in common.AUDIO_EXTENSIONS + (
                            AAC_EXTENSION,):
                        skipped.append((video.path, "expected idXXXXX/<video>/NNNNN.wav (no "
                                                    "video folder)"))
                    continue
                for f in sorted(os.scandir(video.path), key=lambda e: e.name):
                    stem, ext = os.path.splitext(f.name)
                    ext = ext.lower()
                    if f.name.startswith(".") or not f.is_file() or ext not in (
                            common.AUDIO_EXTENSIONS + (AAC_EXTENSION,)):
                        continue
                    if not _UTT_RE.match(stem):
                        skipped.append((f.path, "bad VoxCeleb name, expected NNNNN.wav "
                                                "(five digits)"))
                        continue
                    key = f"{spk.name}/{video.name}/{stem}"
                    table = aacs if ext == AAC_EXTENSION else wavs
                    if key in table:
                        skipped.append((f.path, f"duplicate of {table[key]}"))
                        continue
                    table[key] = pathlib.Path(f.path)
    aacs = {k: p for k, p in aacs.items() if k not in wavs}  # converted copies win

    usable: Dict[str, pathlib.Path] = {}
    if aacs:
        first = aacs[min(aacs)]
        why = common.audio_problem(first)
        if why is None:
            wavs.update(aacs)  # this soundfile decodes AAC: treat them like any audio
        else:
            for k in sorted(aacs):
                reason = (f"AAC .m4a that soundfile cannot decode here ({why}); convert every "
                          f"file once to 16 kHz mono WAV with `{FFMPEG_COMMAND}`, keeping "
                          "idXXXXX/<video>/NNNNN.wav under a wav/ folder"
                          if k == min(aacs) else
                          "AAC .m4a that soundfile cannot decode here (the ffmpeg conversion "
                          f"command is in the entry for {first})")
                skipped.append((str(aacs[k]), reason))
    for k in sorted(wavs):
        why = common.audio_problem(wavs[k], check_silence) if (check_audio or check_silence) \
            else None
        if why is None:
            usable[k] = wavs[k]
        else:
            skipped.append((str(wavs[k]), why))

    if trials:
        held_out = {rel.split("/")[0] for _, _, e, t in
                    _parse_trial_lines(_resolve_file(trials, base, "trial list"))
                    for rel in (e, t)}
        split_of = lambda k: "test" if k.split("/")[0] in held_out else "train"  # noqa: E731
    else:
        split_file = (_resolve_file(iden_split, base, "identification split file")
                      if iden_split else _find_iden_split(base, containers))
        if split_file is None:
            split_of = lambda k: "train"  # noqa: E731
        else:
            iden = _read_iden_split(split_file)
            if usable and not any(k in iden for k in usable):
                raise common.CorpusError(
                    f"{split_file}: lists none of the {len(usable)} audio files under "
                    f"{', '.join(map(str, containers))} (is it this corpus's split file?)")
            for k in [k for k in usable if k not in iden]:
                skipped.append((str(usable.pop(k)), f"not listed in {split_file}"))
            split_of = iden.__getitem__

    if not usable and not skipped:
        raise common.CorpusError(f"{base}: no VoxCeleb audio files (idXXXXX/<video>/NNNNN.wav) "
                                 f"in {', '.join(map(str, containers))}")
    rows = []
    for k in sorted(usable, key=lambda k: str(usable[k])):
        spk, video, _ = k.split("/")
        p = usable[k]
        rows.append(common.make_utterance(
            p, spk, None, split_of(k),
            duration=common.duration_seconds(p) if check_audio else None,
            extra={"video": video}))
    skipped.sort()
    return common.Prepared(rows, skipped)


def _find_iden_split(base: pathlib.Path, containers: List[pathlib.Path]) -> Optional[pathlib.Path]:
    """iden_split.txt in ROOT, or in a folder between ROOT and an id folder's parent."""
    candidates = [base]
    for c in containers:
        p = c
        chain = []
        while p != base and base in p.parents:
            chain.append(p)
            p = p.parent
        candidates.extend(reversed(chain))
    for folder in dict.fromkeys(candidates):
        f = folder / IDEN_SPLIT_FILE
        if f.is_file():
            return f
    return None
