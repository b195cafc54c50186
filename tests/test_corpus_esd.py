"""ESD reader on faked miniature copies (16 kHz WAVs of 0.2 s): the original layout and the
flattened mirror layout."""
import pathlib

import pytest
from helpers import write_wav

from emosup.data import manifest
from emosup.data.corpora import common, esd

LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 123\n"
TOP = "Emotion Speech Dataset"


def _bytes(path, data):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# Per speaker: (emotion folder, split folder, utterance id); ids sit in their emotion's block.
GOOD = [("Neutral", "evaluation", 1), ("Angry", "train", 401), ("Happy", "test", 721),
        ("Surprise", "evaluation", 1401)]
SPEAKERS = ("0001", "0002", "0003", "0011", "0012", "0013")


def _build_original(root):
    """Three Mandarin (0001-0003) and three English (0011-0013) speakers under the zip's top
    folder, and the problem files in 0011."""
    base = root / TOP
    _bytes(base / "ReadMe.txt", b"0001 Chinese Female\n")
    for s in SPEAKERS:
        for k, (emo, split, utt) in enumerate(GOOD):
            write_wav(base / s / emo / split / f"{s}_{utt:06d}.wav", seed=int(s) * 10 + k)
    # Transcripts in the speakers' own encodings: never read.
    _bytes(base / "0001" / "0001.txt",
           "0001_000001\t打远一看，它们的确很是美丽。\t中立\n".encode("gb2312"))
    _bytes(base / "0011" / "0011.txt", "0011_000001\tAuthor of the danger trail.\tNeutral\n"
           .encode("utf-16"))
    s = base / "0011"
    write_wav(s / "Happy" / "train" / "0011_000351.wav")  # Angry block, Happy folder
    write_wav(s / "Sad" / "test" / "0011_001100.wav", silent=True)
    _bytes(s / "Neutral" / "train" / "0011_000100.wav", b"")
    _bytes(s / "Neutral" / "train" / "0011_000101.wav", LFS)
    _bytes(s / "Neutral" / "train" / "._0011_000102.wav", b"\x00\x05\x16\x07")
    write_wav(s / "Neutral" / "train" / "0011_100.wav")
    write_wav(s / "Neutral" / "train" / "0012_000103.wav")
    write_wav(s / "Neutral" / "train" / "0011_001751.wav")
    write_wav(s / "0011_000104.wav")
    return base


def _build_flat(root):
    """Flattened mirror (no split folders) mixed with one split folder; ROOT holds the speaker
    folders itself."""
    write_wav(root / "0005" / "Angry" / "0005_000351.wav", seed=1)
    write_wav(root / "0005" / "Angry" / "0005_000700.wav", seed=2)
    write_wav(root / "0015" / "Sad" / "0015_001071.wav", seed=3)
    write_wav(root / "0015" / "Sad" / "train" / "0015_001201.wav", seed=4)
    write_wav(root / "0015" / "Sad" / "test" / "0015_001071.wav", seed=5)  # same id again


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    r = tmp_path_factory.mktemp("esd")
    return r, _build_original(r)


def _rel(base, path):
    return pathlib.Path(path).relative_to(base).as_posix()


def test_original_layout_rows(original):
    root, base = original
    p = esd.read(root)
    got = {_rel(base, u.path): u for u in p.utterances}
    assert set(got) == {f"{s}/{e}/{sp}/{s}_{i:06d}.wav" for s in SPEAKERS for e, sp, i in GOOD}
    u = got["0011/Angry/train/0011_000401.wav"]
    assert (u.speaker, u.emotion) == ("0011", "angry")
    assert u.extra == {"corpus_label": "Angry", "duration": "0.200", "language": "english",
                       "gender": "male", "official_split": "train"}
    u = got["0001/Surprise/evaluation/0001_001401.wav"]
    assert (u.speaker, u.emotion, u.extra["language"], u.extra["gender"],
            u.extra["official_split"]) == ("0001", "surprise", "mandarin", "female", "evaluation")
    assert {(u.extra["corpus_label"], u.emotion) for u in p.utterances} == {
        ("Neutral", "neutral"), ("Angry", "angry"), ("Happy", "happy"), ("Surprise", "surprise")}
    assert got["0012/Happy/test/0012_000721.wav"].extra["gender"] == "male"
    assert got["0013/Happy/test/0013_000721.wav"].extra["gender"] == "male"
    assert got["0002/Happy/test/0002_000721.wav"].extra["gender"] == "female"


def test_original_layout_skipped(original):
    root, base = original
    got = sorted((_rel(base, f), why) for f, why in esd.read(root).skipped)
    assert got == sorted([
        ("0011/Happy/train/0011_000351.wav",
         "mislabelled: id 000351 is in the Angry block (351-700) but the file is in Happy/"),
        ("0011/Sad/test/0011_001100.wav", "silent (all samples zero)"),
        ("0011/Neutral/train/0011_000100.wav", "zero-length file"),
        ("0011/Neutral/train/0011_000101.wav",
         "git-lfs pointer file, not audio (fetch it with `git lfs pull`)"),
        ("0011/Neutral/train/0011_100.wav",
         "bad ESD name, expected SSSS_NNNNNN.wav (e.g. 0011_000351.wav)"),
        ("0011/Neutral/train/0012_000103.wav",
         "the name says speaker 0012 but the file is in folder 0011"),
        ("0011/Neutral/train/0011_001751.wav", "utterance id 001751 outside 000001..001750"),
        ("0011/0011_000104.wav", "audio file outside an emotion folder (label unknown)"),
    ])


def test_block_check_can_be_turned_off(original):
    root, base = original
    p = esd.read(root, check_blocks=False)
    u = [u for u in p.utterances if _rel(base, u.path) == "0011/Happy/train/0011_000351.wav"]
    assert [(x.emotion, x.extra["official_split"]) for x in u] == [("happy", "train")]


def test_languages(original):
    root, _ = original
    assert {u.speaker for u in esd.read(root, languages="english").utterances} == {
        "0011", "0012", "0013"}
    assert {u.speaker for u in esd.read(root, languages=" Mandarin ").utterances} == {
        "0001", "0002", "0003"}
    assert len(esd.read(root, languages="mandarin,english").utterances) == 24
    with pytest.raises(ValueError, match="languages='french': expected a comma-separated "
                                         "subset of english, mandarin"):
        esd.read(root, languages="french")


def test_speaker_disjoint_default_split(original):
    root, _ = original
    p = esd.read(root, seed=5)
    want = common.speaker_disjoint_splits(SPEAKERS, fractions=(0.7, 0.1, 0.2), seed=5)
    assert {u.speaker: u.split for u in p.utterances} == want
    assert sorted(want.values()) == ["dev", "test", "train", "train", "train", "train"]
    assert esd.read(root, seed=5) == p
    assert {u.speaker: u.split for u in esd.read(root, seed=6).utterances} != want


def test_official_split(original):
    root, base = original
    p = esd.read(root, official_split=True)
    assert {_rel(base, u.path).split("/")[2]: u.split for u in p.utterances} == {
        "evaluation": "dev", "train": "train", "test": "test"}
    # The official split puts every speaker in all three splits.
    for s in SPEAKERS:
        assert {u.split for u in p.utterances if u.speaker == s} == {"train", "dev", "test"}


def test_flattened_layout(tmp_path):
    _build_flat(tmp_path)
    p = esd.read(tmp_path, official_split=True)
    got = {_rel(tmp_path, u.path): (u.speaker, u.emotion, u.split, u.extra["official_split"],
                                    u.extra["language"], u.extra["gender"])
           for u in p.utterances}
    assert got == {
        "0005/Angry/0005_000351.wav": ("0005", "angry", "dev", "evaluation", "mandarin", "male"),
        "0005/Angry/0005_000700.wav": ("0005", "angry", "train", "train", "mandarin", "male"),
        "0015/Sad/0015_001071.wav": ("0015", "sad", "test", "test", "english", "female"),
        "0015/Sad/train/0015_001201.wav": ("0015", "sad", "train", "train", "english", "female"),
    }
    assert p.skipped == [(str(tmp_path / "0015/Sad/test/0015_001071.wav"),
                          f"duplicate of {tmp_path / '0015/Sad/0015_001071.wav'}")]


def test_helpers():
    assert [esd.block_emotion(i) for i in (1, 350, 351, 700, 701, 1050, 1051, 1400, 1401, 1750)] \
        == ["Neutral", "Neutral", "Angry", "Angry", "Happy", "Happy", "Sad", "Sad", "Surprise",
            "Surprise"]
    assert [esd.official_split_of(i) for i in (1, 20, 21, 50, 51, 350, 351, 371, 1420, 1421)] == [
        "evaluation", "evaluation", "test", "test", "train", "train", "evaluation", "test",
        "evaluation", "test"]


def test_csv_round_trip(original, tmp_path):
    root, _ = original
    p = esd.read(root)
    csv = manifest.write_manifest(p.utterances, tmp_path / "esd.csv")
    assert manifest.read_manifest(csv, allowed_splits=None).utterances == p.utterances


def test_structure_errors(tmp_path):
    with pytest.raises(common.CorpusError, match=f"{tmp_path}: no ESD speaker folders"):
        esd.read(tmp_path)
    write_wav(tmp_path / TOP / "0011" / "Angry" / "train" / "0011_000351.wav")
    write_wav(tmp_path / TOP / "0021" / "Angry" / "train" / "0021_000351.wav")
    with pytest.raises(common.CorpusError,
                       match=f"{tmp_path / TOP / '0021'}: not an ESD speaker folder"):
        esd.read(tmp_path)
    (tmp_path / TOP / "0021" / "Angry" / "train" / "0021_000351.wav").unlink()
    (tmp_path / TOP / "0021" / "Angry" / "train").rmdir()
    (tmp_path / TOP / "0021" / "Angry").rmdir()
    (tmp_path / TOP / "0021").rmdir()
    (tmp_path / TOP / "0011" / "Calm").mkdir()
    with pytest.raises(common.CorpusError, match=f"{tmp_path / TOP / '0011' / 'Calm'}: not an "
                                                 "ESD emotion folder"):
        esd.read(tmp_path)
    (tmp_path / TOP / "0011" / "Calm").rmdir()
    (tmp_path / TOP / "0011" / "Angry" / "dev").mkdir()
    with pytest.raises(common.CorpusError, match="Angry/dev: not an ESD split folder"):
        esd.read(tmp_path)
    (tmp_path / TOP / "0011" / "Angry" / "dev").rmdir()
    with pytest.raises(common.CorpusError, match="no ESD speaker folders for languages=mandarin"):
        esd.read(tmp_path, languages="mandarin")
    assert [u.speaker for u in esd.read(tmp_path).utterances] == ["0011"]
    # Files that are all unusable: no rows, every file in `skipped` (prepare lists them).
    bad = _bytes(tmp_path / "b" / "0012" / "Angry" / "0012_000400.wav", b"")
    assert esd.read(tmp_path / "b") == common.Prepared([], [(str(bad), "zero-length file")])
    (tmp_path / "c" / "0012" / "Angry").mkdir(parents=True)
    with pytest.raises(common.CorpusError, match="c: no ESD audio files in the speaker folders"):
        esd.read(tmp_path / "c")
