"""CSV manifest reader/writer: parsing, every validation error (file:line: problem), round trip."""
import dataclasses
import os

import pytest

from emosup.data import manifest as manifest_lib
from emosup.data.manifest import ManifestError, Utterance


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _write(tmp_path, text, name="m.csv", bom=False):
    csv = tmp_path / name
    csv.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return csv


@pytest.fixture
def good(tmp_path):
    """A CSV with a BOM, relative and absolute paths, blank lines, optional and extra columns."""
    a = _touch(tmp_path / "wav" / "a.wav")
    b = _touch(tmp_path / "elsewhere" / "b.wav")
    c = _touch(tmp_path / "wav" / "c.wav")
    text = (
        "path,speaker,emotion,split,arousal,valence,dominance,gender\n"   # line 1
        "wav/a.wav,s1, happy ,train,0.5,-1.25,3,f\n"                      # line 2
        "\n"                                                              # line 3 (blank)
        f"{b},s2,,test,,,,m\n"                                            # line 4
        "wav/c.wav,s1,sad,,1e-1,,,\n"                                     # line 5
        "\n")
    return _write(tmp_path, text, bom=True), a, b, c


def test_good_csv_parses_to_expected_utterances(good):
    csv, a, b, c = good
    m = manifest_lib.read_manifest(csv)
    assert m.source == str(csv)
    assert m.utterances == [
        Utterance(id="wav/a.wav", path=str(a), speaker="s1", emotion="happy", split="train",
                  arousal=0.5, valence=-1.25, dominance=3.0, extra={"gender": "f"}),
        Utterance(id=str(b), path=str(b), speaker="s2", emotion=None, split="test",
                  extra={"gender": "m"}),
        Utterance(id="wav/c.wav", path=str(c), speaker="s1", emotion="sad", split="train",
                  arousal=0.1, extra={"gender": ""}),
    ]
    assert os.path.isabs(m[0].path)


def test_minimal_columns_default_to_train_and_unlabelled(tmp_path):
    _touch(tmp_path / "x.wav")
    m = manifest_lib.read_manifest(_write(tmp_path, "speaker,path\nspkA,x.wav\n"))
    assert m.utterances == [Utterance(id="x.wav", path=str(tmp_path / "x.wav"), speaker="spkA")]
    assert m[0].split == "train" and m[0].emotion is None and m[0].extra == {}


def test_manifest_helpers(good):
    m = manifest_lib.read_manifest(good[0])
    assert len(m) == 3 and [u.id for u in m][0] == "wav/a.wav"
    assert m.speakers() == ["s1", "s2"]
    assert m.emotions() == ["happy", "sad"]
    assert m.speaker_index() == {"s1": 0, "s2": 1}
    assert m.emotion_index() == {"happy": 0, "sad": 1}
    assert [u.id for u in m.select(split="train")] == ["wav/a.wav", "wav/c.wav"]
    assert len(m.select(split=["train", "test"])) == 3
    assert len(m.select(split=("dev",))) == 0
    assert [u.speaker for u in m.select(speakers="s2")] == ["s2"]
    assert [u.id for u in m.select(split="train", speakers=["s1", "s2"])] == [
        "wav/a.wav", "wav/c.wav"]
    assert m.select(split="test").source == m.source


HEADER = "path,speaker,emotion,split,arousal\n"


@pytest.mark.parametrize("text,expected", [
    ("path,emotion\na.wav,happy\n",
     ":1: header lacks the required column 'speaker'"),
    ("speaker,emotion\ns1,happy\n",
     ":1: header lacks the required column 'path'"),
    ("path,speaker,speaker\na.wav,s1,s1\n", ":1: header repeats column 'speaker'"),
    (HEADER + "a.wav,s1,happy,train,0\nb.wav,,sad,train,1\n", ":3: empty 'speaker'"),
    (HEADER + "\n,s1,happy,train,0\n", ":3: empty 'path'"),
    (HEADER + "a.wav,s1,happy,validation,0\n",
     ":2: unknown split 'validation'; allowed: train, dev, test"),
    (HEADER + "a.wav,s1,happy,train,high\n", ":2: column 'arousal' must be a number, got 'high'"),
    (HEADER + "a.wav,s1,happy,train,nan\n", ":2: column 'arousal' must be finite, got 'nan'"),
    (HEADER + "a.wav,s1,happy,train,0\nb.wav,s1,sad,dev,0\n\n./a.wav,s2,sad,test,1\n",
     ":5: duplicate path './a.wav' (also on line 2)"),
    (HEADER + "a.wav,s1,happy,train\n", ":2: expected 5 fields (as in the header), found 4"),
    ("", ":1: empty file, expected a header with the columns path,speaker"),
    ("\n\n", ":1: empty file"),
    (HEADER + "\n", ":2: no utterances (only a header)"),
])
def test_bad_input_names_line_and_problem(tmp_path, text, expected):
    _touch(tmp_path / "a.wav")
    _touch(tmp_path / "b.wav")
    csv = _write(tmp_path, text)
    with pytest.raises(ManifestError) as e:
        manifest_lib.read_manifest(csv)
    assert str(e.value).startswith(str(csv) + ":")
    assert expected in str(e.value)


def test_missing_audio_file_names_line_and_resolved_path(tmp_path):
    _touch(tmp_path / "a.wav")
    csv = _write(tmp_path, "path,speaker\na.wav,s1\nsub/missing.wav,s2\n")
    with pytest.raises(ManifestError) as e:
        manifest_lib.read_manifest(csv)
    assert str(e.value) == f"{csv}:3: audio file not found: {tmp_path / 'sub' / 'missing.wav'}"
    # The check can be switched off (e.g. for a manifest of files still to be written).
    m = manifest_lib.read_manifest(csv, check_files=False)
    assert m[1].path == str(tmp_path / "sub" / "missing.wav")


def test_empty_split_and_custom_allowed_splits(tmp_path):
    _touch(tmp_path / "a.wav")
    csv = _write(tmp_path, "path,speaker,split\na.wav,s1,labelled\n")
    assert manifest_lib.read_manifest(csv, allowed_splits=("labelled",))[0].split == "labelled"
    csv = _write(tmp_path, "path,speaker,split\na.wav,s1,\n", name="n.csv")
    with pytest.raises(ManifestError, match=r":2: unknown split '' \(an empty split counts as "
                                            r"'train'\); allowed: labelled, test"):
        manifest_lib.read_manifest(csv, allowed_splits=("labelled", "test"))


def test_allowed_splits_none_accepts_any_split(tmp_path):
    _touch(tmp_path / "a.wav")
    _touch(tmp_path / "b.wav")
    csv = _write(tmp_path, "path,speaker,split\na.wav,s1,fold3\nb.wav,s1,\n")
    assert [u.split for u in manifest_lib.read_manifest(csv, allowed_splits=None)] == [
        "fold3", "train"]


def test_missing_manifest_file(tmp_path):
    with pytest.raises(ManifestError, match="manifest file not found"):
        manifest_lib.read_manifest(tmp_path / "nope.csv")


def test_write_read_round_trip(good, tmp_path):
    m = manifest_lib.read_manifest(good[0])
    # Relative to the new CSV's folder: paths like ../wav/a.wav that resolve to the same files.
    out = manifest_lib.write_manifest(m, tmp_path / "copy" / "m2.csv",
                                      relative_to=tmp_path / "copy")
    header = out.read_text(encoding="utf-8").splitlines()[0]
    assert header == "path,speaker,emotion,split,arousal,valence,dominance,gender"
    back = manifest_lib.read_manifest(out)
    assert [u.id for u in back] == ["../wav/a.wav", "../elsewhere/b.wav", "../wav/c.wav"]
    strip = lambda u: {k: v for k, v in vars(u).items() if k != "id"}  # noqa: E731
    assert [strip(u) for u in back] == [strip(u) for u in m]
    # Absolute paths when no relative_to is given; float values survive exactly.
    u = Utterance(id="x", path=str(good[1]), speaker="s", emotion="angry", split="dev",
                  arousal=0.1 + 0.2, valence=-1e-17, dominance=None, extra={"duration": "1.5"})
    back = manifest_lib.read_manifest(manifest_lib.write_manifest([u], tmp_path / "abs.csv"))
    assert back.utterances == [dataclasses.replace(u, id=str(good[1]))]


def test_write_rejects_extra_key_clashing_with_standard_column(tmp_path):
    u = Utterance(id="x", path="/x.wav", speaker="s", extra={"split": "train"})
    with pytest.raises(ValueError, match="extra column 'split' clashes"):
        manifest_lib.write_manifest([u], tmp_path / "m.csv")


def test_not_utf8_names_the_line(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_bytes(b"path,speaker\na.wav,s1\nb\xff.wav,s2\n")
    with pytest.raises(ManifestError, match=r"m\.csv:3: not UTF-8 text"):
        manifest_lib.read_manifest(csv, check_files=False)


def test_crlf_and_quoted_fields(tmp_path):
    _touch(tmp_path / "a, b.wav")
    csv = _write(tmp_path, 'path,speaker,note\r\n"a, b.wav",s1,"said ""hi"""\r\n')
    m = manifest_lib.read_manifest(csv)
    assert m.utterances == [Utterance(id="a, b.wav", path=str(tmp_path / "a, b.wav"),
                                      speaker="s1", extra={"note": 'said "hi"'})]
