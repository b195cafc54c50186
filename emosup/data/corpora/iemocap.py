"""IEMOCAP (`IEMOCAP_full_release`) → manifest rows.

Expected folder (the release's README.txt and layout)::

    IEMOCAP_full_release/
      Session1/ ... Session5/
        dialog/EmoEvaluation/Ses01F_impro01.txt ...        # one summary file per dialog
        dialog/EmoEvaluation/Categorical/ Attribute/ ...   # per-annotator files: ignored
        sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav

Only the summary lines of the EmoEvaluation files are read (tab-separated; a ``%`` header,
per-annotator lines and blank lines are skipped)::

    [140.2250 - 145.6000]	Ses01F_impro05_F019	ang	[1.5000, 4.0000, 4.5000]

Rows:
* ``speaker``: the session and the gender letter of the utterance name's *last* token —
  ``Ses03M_impro05a_F017`` → ``Ses03F``. (The dialog prefix names the actor wearing the
  motion-capture markers, not the one speaking; fixed character positions break on
  ``impro05a``-style names.) 10 speakers.
* ``emotion`` (default, the standard 4-class set of 5,531 utterances): neu → neutral,
  hap and exc → happy, sad → sad, ang → angry; rows with other codes are dropped.
  ``all_classes=True`` keeps every row: fea → fear, sur → surprise, dis → disgust, and
  fru (frustrated), oth (other) and xxx (no majority) — which have no normalised name —
  unlabelled (emotion None) with ``extra["corpus_label"]`` keeping the code.
* ``valence/arousal/dominance``: the bracket is **[V, A, D]** in that order, 1–5 scale, kept
  as is.
* ``extra["fold"]``: the session number 1..5 (leave-one-session-out folds);
  ``split``: session `test_session` → ``test``, session `dev_session` (if any) → ``dev``,
  the others ``train``.
* ``extra``: corpus_label, fold, duration, dialog, gender (M/F).

A summary line whose wav is missing or unusable goes to ``Prepared.skipped``. A session
without EmoEvaluation files, a malformed summary line, an unknown emotion code or an
utterance filed under the wrong session raises ``CorpusError`` naming file and line.
`check_silence` (reads every sample) is off by default.
"""
from __future__ import annotations

import math
import pathlib
import re
from typing import Dict, List, Optional, Tuple

from emosup.data.corpora import common
from emosup.data.corpora.common import CorpusError

SESSIONS = (1, 2, 3, 4, 5)
# The standard 4-class set with exc merged into hap (speechbrain
# recipes/IEMOCAP/iemocap_prepare.py: 5,531 utterances).
FOUR_CLASS = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}
# Further codes of the EmoEvaluation files; None = no normalised name, kept unlabelled.
OTHER_CLASSES = {"fea": "fear", "sur": "surprise", "dis": "disgust", "fru": None, "oth": None,
                 "xxx": None}
# A summary line: [start - end] <tab> utterance <tab> code <tab> [V, A, D]. Looser about
# spaces than Strong-AI-Lab/emotion:datasets/IEMOCAP/process.py's regex, same fields.
_NUM = r"(-?\d+(?:\.\d*)?)"
_SUMMARY = re.compile(rf"^\[\s*{_NUM}\s*-\s*{_NUM}\s*\]\s+(\S+)\s+(\S+)\s+"
                      rf"\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]\s*$")
# Utterance names: Ses0<session><marker gender>_<dialog part(s)>_<speaker gender><3 chars>,
# e.g. Ses01F_impro01_M000, Ses01F_script02_2_F000, Ses03M_impro05a_F017.
_UTT = re.compile(r"^Ses0([1-5])[MF]_\S+_([MF])[A-Z0-9]{3}$")


def _evaluation_files(session_dir: pathlib.Path) -> List[pathlib.Path]:
    folder = session_dir / "dialog" / "EmoEvaluation"
    if not folder.is_dir():
        raise CorpusError(f"{folder}: EmoEvaluation folder not found (expected "
                          f"{session_dir.name}/dialog/EmoEvaluation/*.txt)")
    # Top level only: the per-annotator subfolders hold other formats; `._x.txt` is macOS
    # AppleDouble metadata.
    files = sorted(p for p in folder.glob("*.txt") if p.is_file() and not common.is_hidden(p))
    if not files:
        raise CorpusError(f"{folder}: no EmoEvaluation *.txt files")
    return files


def parse_evaluation(path: pathlib.Path, session: int
                     ) -> List[Tuple[int, str, str, Tuple[float, float, float]]]:
    """The summary lines of one EmoEvaluation file: (line, utterance, code, (V, A, D))."""
    src = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{src}: not UTF-8 text ({e.reason})") from None
    out = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("["):
            continue  # '%' header, annotator lines ("C-E1:", "A-E3:"), blank lines
        m = _SUMMARY.match(line)
        if not m:
            raise CorpusError(f"{src}:{n}: malformed summary line {raw!r}; expected "
                              "'[START - END]<tab>UTTERANCE<tab>CODE<tab>[V, A, D]'")
        utt, code = m.group(3), m.group(4)
        u = _UTT.match(utt)
        if not u:
            raise CorpusError(f"{src}:{n}: utterance name {utt!r} is not of the form "
                              "Ses0<1-5><M|F>_<dialog>_<M|F><nnn>")
        if int(u.group(1)) != session:
            raise CorpusError(f"{src}:{n}: utterance {utt} belongs to session {u.group(1)}, "
                              f"but the file is in Session{session}")
        if code not in FOUR_CLASS and code not in OTHER_CLASSES:
            raise CorpusError(f"{src}:{n}: unknown emotion code {code!r}; expected one of "
                              f"{' '.join(list(FOUR_CLASS) + list(OTHER_CLASSES))}")
        vad = tuple(float(m.group(i)) for i in (5, 6, 7))
        if not all(math.isfinite(x) for x in vad):
            raise CorpusError(f"{src}:{n}: non-finite [V, A, D] {vad}")
        out.append((n, utt, code, vad))
    return out


def speaker_of(utterance: str) -> str:
    """`Ses03M_impro05a_F017` → `Ses03F`: the session plus the *speaking* actor's gender."""
    return utterance[:5] + utterance.rsplit("_", 1)[1][0]


def read(root, *, all_classes: bool = False, test_session: int = 5,
         dev_session: Optional[int] = None, check_silence: bool = False) -> common.Prepared:
    """Reads `IEMOCAP_full_release` (see the module docstring for the rules).

    Args:
      root: the folder holding Session1..Session5 (a subset of sessions is accepted).
      all_classes: keep every row (fru/oth/xxx unlabelled) instead of the 4-class set.
      test_session: the session whose rows get split `test` (1..5; 0 = none).
      dev_session: the session whose rows get split `dev` (None or 0 = none).
      check_silence: also read every file and skip all-zero ones.
    Returns:
      `common.Prepared`: rows by session, dialog file and line.
    """
    dev_session = dev_session or None
    for name, value in (("test_session", test_session), ("dev_session", dev_session)):
        if value is not None and value not in (0,) + SESSIONS:
            raise ValueError(f"{name} must be one of 1..5 (or 0 for none), got {value!r}")
    if test_session and dev_session == test_session:
        raise ValueError(f"dev_session and test_session are both {test_session}")
    root = common.require_dir(root, "IEMOCAP_full_release with Session1..Session5")
    sessions = [k for k in SESSIONS if (root / f"Session{k}").is_dir()]
    if not sessions:
        raise CorpusError(f"{root}: no Session1..Session5 folders; is this "
                          "IEMOCAP_full_release?")
    utts: List = []
    skipped: List[Tuple[str, str]] = []
    seen: Dict[str, str] = {}
    for k in sessions:
        sdir = root / f"Session{k}"
        split = "test" if k == test_session else "dev" if k == dev_session else "train"
        for ev in _evaluation_files(sdir):
            for n, utt, code, (val, act, dom) in parse_evaluation(ev, k):
                if utt in seen:
                    raise CorpusError(f"{ev}:{n}: utterance {utt} repeats {seen[utt]}")
                seen[utt] = f"{ev}:{n}"
                if code in FOUR_CLASS:
                    emotion = FOUR_CLASS[code]
                elif all_classes:
                    emotion = OTHER_CLASSES[code]
                else:
                    continue
                dialog = utt.rsplit("_", 1)[0]
                path = sdir / "sentences" / "wav" / dialog / f"{utt}.wav"
                why = common.audio_problem(path, check_silence=check_silence)
                if why is not None:
                    skipped.append((str(path), why))
                    continue
                utts.append(common.make_utterance(
                    path, speaker_of(utt), emotion, split, corpus_label=code, fold=str(k),
                    dims=(act, val, dom), duration=common.duration_seconds(path),
                    extra={"dialog": dialog, "gender": utt.rsplit("_", 1)[1][0]}))
    return common.Prepared(utts, skipped)
