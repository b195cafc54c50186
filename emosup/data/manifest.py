"""Bring-your-own corpus: a CSV manifest with one row per utterance.

Format (UTF-8, a byte-order mark is tolerated, blank lines are skipped)::

    path,speaker,emotion,split,arousal,valence,dominance
    wav/a.wav,spk1,happy,train,0.7,0.5,0.2
    /data/b.wav,spk2,,test,,,

Required columns: ``path`` and ``speaker``. Optional: ``emotion`` (empty → unlabelled),
``split`` (empty or absent → ``train``), ``arousal``/``valence``/``dominance`` (floats, empty →
missing). Any other column is kept, as a string, in ``Utterance.extra`` (the synthetic corpus
uses this for ``duration``). Relative paths are relative to the folder that holds the CSV, so a
corpus folder with its manifest can be moved as a whole.

Every problem raises :class:`ManifestError` with a message ``"{csv}:{line}: {problem}"``, where
``line`` is the 1-based line number in the file (the header is line 1), so a user can jump to
the bad row in an editor.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import pathlib
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from emosup.errors import UserError

PathLike = Union[str, os.PathLike]

REQUIRED_COLUMNS = ("path", "speaker")
DIMENSION_COLUMNS = ("arousal", "valence", "dominance")
STANDARD_COLUMNS = ("path", "speaker", "emotion", "split") + DIMENSION_COLUMNS
DEFAULT_SPLITS = ("train", "dev", "test")
# A row without a split value belongs to the training split.
DEFAULT_SPLIT = "train"


class ManifestError(UserError):
    """A manifest that cannot be read; the message names the file and the line."""


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One row of a manifest.

    ``id`` is the ``path`` value exactly as written in the CSV (stable across machines);
    ``path`` is the absolute audio path. ``extra`` holds any non-standard columns as strings.
    """

    id: str
    path: str
    speaker: str
    emotion: Optional[str] = None
    split: str = DEFAULT_SPLIT
    arousal: Optional[float] = None
    valence: Optional[float] = None
    dominance: Optional[float] = None
    extra: Dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Manifest:
    """An ordered list of utterances plus the file they came from (``source``)."""

    utterances: List[Utterance]
    source: str = ""

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    def __getitem__(self, i: int) -> Utterance:
        return self.utterances[i]

    def select(self, split: Union[None, str, Sequence[str]] = None,
               speakers: Union[None, str, Iterable[str]] = None) -> "Manifest":
        """Rows whose split is in ``split`` and speaker in ``speakers`` (None = any); order kept."""
        splits = None if split is None else ({split} if isinstance(split, str) else set(split))
        spks = None if speakers is None else (
            {speakers} if isinstance(speakers, str) else set(speakers))
        kept = [u for u in self.utterances
                if (splits is None or u.split in splits) and (spks is None or u.speaker in spks)]
        return Manifest(kept, self.source)

    def speakers(self) -> List[str]:
        """Sorted unique speaker names."""
        return sorted({u.speaker for u in self.utterances})

    def emotions(self) -> List[str]:
        """Sorted unique emotion labels (unlabelled rows ignored)."""
        return sorted({u.emotion for u in self.utterances if u.emotion is not None})

    def speaker_index(self) -> Dict[str, int]:
        """Speaker name → integer id, in sorted-name order (stable for a given speaker set)."""
        return {s: i for i, s in enumerate(self.speakers())}

    def emotion_index(self) -> Dict[str, int]:
        """Emotion label → integer id, in sorted-label order."""
        return {e: i for i, e in enumerate(self.emotions())}


def _parse_float(value: str, column: str, where: str) -> Optional[float]:
    if value == "":
        return None
    try:
        x = float(value)
    except ValueError:
        raise ManifestError(f"{where}: column '{column}' must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ManifestError(f"{where}: column '{column}' must be finite, got {value!r}")
    return x


def _read_header(reader, src: str) -> Tuple[List[str], int]:
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue  # leading blank lines
        names = [cell.strip() for cell in row]
        line = reader.line_num
        seen = set()
        for name in names:
            if name == "":
                raise ManifestError(f"{src}:{line}: header has an empty column name")
            if name in seen:
                raise ManifestError(f"{src}:{line}: header repeats column '{name}'")
            seen.add(name)
        for col in REQUIRED_COLUMNS:
            if col not in seen:
                raise ManifestError(
                    f"{src}:{line}: header lacks the required column '{col}' "
                    f"(required: {','.join(REQUIRED_COLUMNS)}; found: {','.join(names)})")
        return names, line
    raise ManifestError(
        f"{src}:1: empty file, expected a header with the columns {','.join(REQUIRED_COLUMNS)}")


def read_manifest(csv_path: PathLike, allowed_splits: Optional[Sequence[str]] = DEFAULT_SPLITS,
                  check_files: bool = True) -> Manifest:
    """Reads and validates a CSV manifest.

    Args:
      csv_path: the CSV file.
      allowed_splits: split values accepted in the ``split`` column; None accepts any.
      check_files: also require every audio file to exist.
    Returns:
      A :class:`Manifest` in file order, ``source`` = the CSV's absolute path.
    Raises:
      ManifestError: naming the file, the line and the problem.
    """
    csv_file = pathlib.Path(csv_path).expanduser().absolute()
    src = str(csv_file)
    if not csv_file.is_file():
        raise ManifestError(f"{src}:0: manifest file not found")
    base = csv_file.parent
    allowed = None if allowed_splits is None else tuple(allowed_splits)
    utterances: List[Utterance] = []
    first_line: Dict[str, int] = {}  # resolved path → line it first appeared on
    raw = csv_file.read_bytes()
    try:
        # utf-8-sig drops a byte-order mark that spreadsheet programs like to write.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ManifestError(f"{src}:{line}: not UTF-8 text ({e.reason})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        names, _ = _read_header(reader, src)
        for row in reader:
            line = reader.line_num
            where = f"{src}:{line}"
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if len(row) != len(names):
                raise ManifestError(
                    f"{where}: expected {len(names)} fields (as in the header), "
                    f"found {len(row)}")
            rec = {name: cell.strip() for name, cell in zip(names, row)}
            raw_path = rec["path"]
            if not raw_path:
                raise ManifestError(f"{where}: empty 'path'")
            if not rec["speaker"]:
                raise ManifestError(f"{where}: empty 'speaker'")
            split = rec.get("split", "") or DEFAULT_SPLIT
            if allowed is not None and split not in allowed:
                shown = repr(rec.get("split", "")) if rec.get("split") else (
                    f"'' (an empty split counts as '{DEFAULT_SPLIT}')")
                raise ManifestError(
                    f"{where}: unknown split {shown}; allowed: {', '.join(allowed)}")
            dims = {c: _parse_float(rec.get(c, ""), c, where) for c in DIMENSION_COLUMNS}
            resolved = os.path.normpath(os.path.join(base, os.path.expanduser(raw_path)))
            if resolved in first_line:
                raise ManifestError(
                    f"{where}: duplicate path {raw_path!r} (also on line "
                    f"{first_line[resolved]})")
            first_line[resolved] = line
            if check_files and not os.path.isfile(resolved):
                raise ManifestError(f"{where}: audio file not found: {resolved}")
            extra = {k: v for k, v in rec.items() if k not in STANDARD_COLUMNS}
            utterances.append(Utterance(
                id=raw_path, path=resolved, speaker=rec["speaker"],
                emotion=rec.get("emotion") or None, split=split, extra=extra, **dims))
    except csv.Error as e:
        raise ManifestError(f"{src}:{reader.line_num}: malformed CSV ({e})") from None
    if not utterances:
        raise ManifestError(f"{src}:{max(reader.line_num, 1)}: no utterances (only a header)")
    return Manifest(utterances, src)


def _fmt_float(x: Optional[float]) -> str:
    # repr() round-trips exactly through float().
    return "" if x is None else repr(float(x))


def write_manifest(utterances: Iterable[Utterance], csv_path: PathLike,
                   relative_to: Optional[PathLike] = None) -> pathlib.Path:
    """Writes utterances as a CSV manifest that :func:`read_manifest` reads back.

    Columns: ``path,speaker,emotion,split,arousal,valence,dominance`` and then every ``extra``
    key in first-seen order. ``path`` is written relative to ``relative_to`` when given (pass
    the CSV's folder to make a movable corpus), else as the absolute ``Utterance.path``. The
    file is written to a temporary name and renamed, so readers never see half a manifest.
    Returns the CSV path.
    """
    out = pathlib.Path(csv_path).expanduser().absolute()
    utts = list(utterances)
    extra_cols: List[str] = []
    for u in utts:
        for k in u.extra:
            if k in STANDARD_COLUMNS:
                raise ValueError(f"utterance {u.id!r}: extra column {k!r} clashes with a "
                                 "standard column")
            if k not in extra_cols:
                extra_cols.append(k)
    rel = None if relative_to is None else pathlib.Path(relative_to).expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(list(STANDARD_COLUMNS) + extra_cols)
        for u in utts:
            p = u.path
            if rel is not None:
                p = pathlib.PurePath(os.path.relpath(u.path, rel)).as_posix()
            w.writerow([p, u.speaker, u.emotion or "", u.split,
                        _fmt_float(u.arousal), _fmt_float(u.valence), _fmt_float(u.dominance)]
                       + [u.extra.get(k, "") for k in extra_cols])
    os.replace(tmp, out)
    return out
