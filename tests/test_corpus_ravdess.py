"""RAVDESS reader on a faked miniature copy (48 kHz WAVs of 0.2 s)."""
import os
import pathlib
import sys

import pytest
from helpers import write_wav

from emosup.data import manifest
from emosup.data.corpora import common, ravdess

SR = 48000
LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 123\n"


def _bytes(path, data):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


SPEECH = "Audio_Speech_Actors_01-24"
SONG = "Audio_Song_Actors_01-24"


def _build(root):
    """Actors 01-10 (two speech takes each) in an unzip folder, song for 01 and 03 only (02 has
    none, like Actor_18), the problem files in Actor_04, a Kaggle-style duplicate, a file
    directly in ROOT, one three levels down and one too deep to be searched."""
    for a in range(1, 11):
        write_wav(root / SPEECH / f"Actor_{a:02d}" / f"03-01-01-01-01-01-{a:02d}.wav", seed=a, sr=SR)
        write_wav(root / SPEECH / f"Actor_{a:02d}" / f"03-01-05-02-02-02-{a:02d}.wav", seed=100 + a, sr=SR)
    write_wav(root / SONG / "Actor_01" / "03-02-03-01-01-01-01.wav", seed=201, sr=SR)
    write_wav(root / SONG / "Actor_03" / "03-02-06-02-01-02-03.wav", seed=203, sr=SR)
    a4 = root / SPEECH / "Actor_04"
    write_wav(a4 / "03-01-04-01-01-01-04.wav", silent=True, sr=SR)
    _bytes(a4 / "03-01-04-01-02-01-04.wav", b"")
    _bytes(a4 / "03-01-04-02-01-01-04.wav", LFS)
    _bytes(a4 / "._03-01-01-01-01-01-04.wav", b"\x00\x05\x16\x07AppleDouble")
    write_wav(a4 / "03-01-09-01-01-01-04.wav", sr=SR)
    write_wav(a4 / "03-01-01-02-01-02-04.wav", sr=SR)
    write_wav(a4 / "not-a-ravdess-file.wav", sr=SR)
    write_wav(a4 / "03-01-02-01-01-01-05.wav", sr=SR)  # actor 05 in Actor_04's folder
    _bytes(a4 / "01-01-01-01-01-01-04.mp4", b"\x00\x00\x00\x18ftypmp42")
    write_wav(a4 / "02-01-03-01-01-01-04.wav", sr=SR)  # video-only modality under a .wav name
    write_wav(root / SPEECH / "Actor_06" / "01-01-05-02-02-02-06.wav", sr=SR)  # twin of the 03- take
    write_wav(root / "Actor_07" / "03-01-01-01-01-01-07.wav", seed=7, sr=SR)  # Kaggle's second copy
    write_wav(root / "03-01-08-01-01-01-11.wav", seed=11, sr=SR)
    write_wav(root / "unzipped" / "inner" / "Actor_12" / "03-01-07-01-01-01-12.wav", seed=12, sr=SR)
    write_wav(root / "a" / "b" / "c" / "Actor_13" / "03-01-02-01-01-01-13.wav", sr=SR)  # too deep
    _bytes(root / "README.txt", b"RAVDESS")
    _bytes(root / "__MACOSX" / SPEECH / "Actor_01" / "._03-01-01-01-01-01-01.wav", b"x")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("ravdess")
    _build(r)
    return r


def _rel(root, u):
    return pathlib.Path(u.path).relative_to(root).as_posix()


def test_rows_are_speech_with_parsed_fields(root):
    p = ravdess.read(root)
    got = {_rel(root, u): u for u in p.utterances}
    expected = {f"{SPEECH}/Actor_{a:02d}/03-01-05-02-02-02-{a:02d}.wav" for a in range(1, 11)}
    expected |= {f"{SPEECH}/Actor_{a:02d}/03-01-01-01-01-01-{a:02d}.wav" for a in range(1, 11)
                 if a != 7}
    expected |= {"Actor_07/03-01-01-01-01-01-07.wav", "03-01-08-01-01-01-11.wav",
                 "unzipped/inner/Actor_12/03-01-07-01-01-01-12.wav"}
    assert set(got) == expected
    assert [u.path for u in p.utterances] == sorted(u.path for u in p.utterances)
    u = got[f"{SPEECH}/Actor_03/03-01-05-02-02-02-03.wav"]
    assert u.id == u.path == str(root / SPEECH / "Actor_03" / "03-01-05-02-02-02-03.wav")
    assert (u.speaker, u.emotion) == ("Actor_03", "angry")
    assert u.extra == {"corpus_label": "05", "duration": "0.200", "intensity": "strong",
                       "statement": "02", "repetition": "02", "vocal_channel": "speech",
                       "gender": "male"}
    u = got[f"{SPEECH}/Actor_10/03-01-01-01-01-01-10.wav"]
    assert (u.speaker, u.emotion, u.extra["gender"], u.extra["intensity"]) == (
        "Actor_10", "neutral", "female", "normal")
    assert (got["03-01-08-01-01-01-11.wav"].speaker, got["03-01-08-01-01-01-11.wav"].emotion) == (
        "Actor_11", "surprise")
    assert got["unzipped/inner/Actor_12/03-01-07-01-01-01-12.wav"].emotion == "disgust"
    assert all(u.arousal is None and u.valence is None and u.dominance is None
               for u in p.utterances)


def test_skipped_files_and_reasons(root):
    p = ravdess.read(root)
    a4 = f"{SPEECH}/Actor_04"
    got = sorted((pathlib.Path(f).relative_to(root).as_posix(), why) for f, why in p.skipped)
    assert got == sorted([
        (f"{a4}/01-01-01-01-01-01-04.mp4", "video file, not audio (the audio is in "
         "Audio_Speech_Actors_01-24.zip / Audio_Song_Actors_01-24.zip)"),
        (f"{a4}/02-01-03-01-01-01-04.wav", "modality 02 is video-only (no sound)"),
        (f"{a4}/03-01-01-02-01-02-04.wav",
         "bad RAVDESS name: neutral (emotion 01) has no strong intensity (02)"),
        (f"{a4}/03-01-02-01-01-01-05.wav",
         "the name says actor 05 but the file is in folder Actor_04"),
        (f"{a4}/03-01-04-01-01-01-04.wav", "silent (all samples zero)"),
        (f"{a4}/03-01-04-01-02-01-04.wav", "zero-length file"),
        (f"{a4}/03-01-04-02-01-01-04.wav",
         "git-lfs pointer file, not audio (fetch it with `git lfs pull`)"),
        (f"{a4}/03-01-09-01-01-01-04.wav",
         "bad RAVDESS name: field 3 (emotion) is '09', expected one of 01, 02, 03, 04, 05, 06, "
         "07, 08"),
        (f"{a4}/not-a-ravdess-file.wav", "bad RAVDESS name, expected " + ravdess.NAME_FORMAT),
        (f"{SPEECH}/Actor_06/01-01-05-02-02-02-06.wav",
         f"same recording as {root / SPEECH / 'Actor_06' / '03-01-05-02-02-02-06.wav'} "
         "(audio-only 03 preferred over audio-video 01)"),
        (f"{SPEECH}/Actor_07/03-01-01-01-01-01-07.wav",
         f"duplicate of {root / 'Actor_07' / '03-01-01-01-01-01-07.wav'} (same file name)"),
    ])
    # AppleDouble files, __MACOSX, README, songs (opt-in) and the too-deep file: not mentioned.
    mentioned = {pathlib.Path(f).name for f, _ in p.skipped} | {
        pathlib.Path(u.path).name for u in p.utterances}
    assert not any(n.startswith("._") or n.endswith(".txt") or n.startswith("03-02-")
                   for n in mentioned)
    assert "03-01-02-01-01-01-13.wav" not in mentioned


def test_song_adds_vocal_channel_02(root):
    p = ravdess.read(root, song=True)
    songs = {_rel(root, u): u for u in p.utterances if u.extra["vocal_channel"] == "song"}
    assert set(songs) == {f"{SONG}/Actor_01/03-02-03-01-01-01-01.wav",
                          f"{SONG}/Actor_03/03-02-06-02-01-02-03.wav"}
    u = songs[f"{SONG}/Actor_03/03-02-06-02-01-02-03.wav"]
    assert (u.speaker, u.emotion, u.extra["intensity"], u.extra["repetition"]) == (
        "Actor_03", "fear", "strong", "02")
    assert len(p.utterances) == len(ravdess.read(root).utterances) + 2
    # Actor_02 has no song files and still has its speech rows.
    assert [u.extra["vocal_channel"] for u in p.utterances if u.speaker == "Actor_02"] == [
        "speech", "speech"]


def test_speaker_disjoint_split_deterministic(root):
    p = ravdess.read(root, seed=3)
    speakers = {u.speaker for u in p.utterances}
    assert len(speakers) == 12
    want = common.speaker_disjoint_splits(speakers, fractions=(0.7, 0.1, 0.2), seed=3)
    assert {u.speaker: u.split for u in p.utterances} == want
    per_split = {}
    for u in p.utterances:
        per_split.setdefault(u.split, set()).add(u.speaker)
    assert {k: len(v) for k, v in per_split.items()} == {"train": 9, "dev": 1, "test": 2}
    assert not (per_split["train"] & per_split["test"] or per_split["train"] & per_split["dev"]
                or per_split["dev"] & per_split["test"])
    assert ravdess.read(root, seed=3) == p
    other = ravdess.read(root, seed=4)
    assert {u.speaker: u.split for u in other.utterances} != want


def test_check_silence_off_keeps_the_silent_file(root):
    p = ravdess.read(root, check_silence=False)
    assert f"{SPEECH}/Actor_04/03-01-04-01-01-01-04.wav" in {_rel(root, u) for u in p.utterances}


def test_csv_round_trip(root, tmp_path):
    p = ravdess.read(root, song=True)
    csv = manifest.write_manifest(p.utterances, tmp_path / "ravdess.csv")
    back = manifest.read_manifest(csv, allowed_splits=None)
    assert back.utterances == p.utterances


def test_parse_name():
    assert ravdess.parse_name("03-01-06-01-02-01-12.wav") == {
        "modality": "03", "vocal_channel": "01", "emotion": "06", "intensity": "01",
        "statement": "02", "repetition": "01", "actor": "12"}
    with pytest.raises(ValueError, match=r"field 7 \(actor\) is '25', expected 01..24"):
        ravdess.parse_name("03-01-06-01-02-01-25.wav")
    with pytest.raises(ValueError, match=r"field 1 \(modality\) is '04'"):
        ravdess.parse_name("04-01-06-01-02-01-12.wav")
    with pytest.raises(ValueError, match="bad RAVDESS name, expected MM-VV"):
        ravdess.parse_name("03-01-06-01-02-12.wav")


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(common.CorpusError, match=f"{tmp_path / 'nope'}: not a folder"):
        ravdess.read(tmp_path / "nope")
    empty = tmp_path / "empty"
    write_wav(empty / "Actor_01" / "03-02-01-01-01-01-01.wav", sr=SR)  # song only
    with pytest.raises(common.CorpusError,
                       match=f"{empty}: no RAVDESS audio to read \\(1 audio files .*pass "
                             "song=True for the song files\\)$"):
        ravdess.read(empty)
    # Files that are all unusable: no rows, every file in `skipped` (prepare lists them).
    bad = tmp_path / "bad"
    _bytes(bad / "Actor_01" / "03-01-01-01-01-01-01.wav", b"")
    assert ravdess.read(bad) == common.Prepared(
        [], [(str(bad / "Actor_01" / "03-01-01-01-01-01-01.wav"), "zero-length file")])


def test_no_tensorflow_or_jax_import():
    import subprocess

    code = ("import sys, emosup.data.corpora.ravdess, emosup.data.corpora.esd, "
            "emosup.data.corpora.voxceleb; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('jax', 'flax', 'tensorflow', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=pathlib.Path(__file__).resolve().parents[1], check=True,
                         env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve()
                                                              .parents[1])})
    assert out.stdout.strip() == "[]"
