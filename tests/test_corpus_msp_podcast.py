"""MSP-Podcast reader on a fake miniature release: every class code, Unknown speakers, all
Split_Set values, Test3 by listing, both label-file spellings, skipped files, exact errors."""
import pytest
from helpers import write_wav

from emosup.data import manifest as manifest_lib
from emosup.data.corpora import msp_podcast
from emosup.data.corpora.common import CorpusError

HEADER = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n"
# (file, code, act, val, dom, spkr, gender, split set) -- header is line 1, these lines 2..
ROWS = [
    ("MSP-PODCAST_0001_0008.wav", "N", "2.2", "4.0", "2.6", "30", "Male", "Test1"),
    ("MSP-PODCAST_0001_0009.wav", "A", "3.777778", "3.555556", "3.777778", "39", "Male", "Test1"),
    ("MSP-PODCAST_0002_0001.wav", "S", "2.0", "2.5", "3.0", "12", "Female", "Train"),
    ("MSP-PODCAST_0002_0002.wav", "H", "5.0", "6.0", "4.0", "12", "Female", "Train"),
    ("MSP-PODCAST_0003_0001.wav", "U", "5.5", "4.5", "4.5", "Unknown", "Unknown", "Train"),
    ("MSP-PODCAST_0003_0002.wav", "F", "6.0", "2.0", "2.0", "Unknown", "", "Train"),
    ("MSP-PODCAST_0004_0001.wav", "D", "4.0", "2.0", "5.0", "Unknown", "", "Development"),
    ("MSP-PODCAST_0005_0001.wav", "C", "3.0", "3.0", "5.5", "7", "Male", "Development"),
    ("MSP-PODCAST_0006_0001.wav", "O", "4.0", "4.0", "4.0", "8", "Female", "Test2"),
    ("MSP-PODCAST_0006_0002.wav", "X", "3.5", "3.5", "3.5", "8", "Female", "Test2"),
    ("MSP-PODCAST_0007_0001.wav", "", "", "", "", "Unknown", "", "Test3"),
    ("MSP-PODCAST_0008_0001.wav", "H", "5.0", "5.0", "5.0", "040", "Male", "Train"),  # no audio
    ("MSP-PODCAST_0008_0002.wav", "S", "2.0", "2.0", "2.0", "40", "Male", "Train"),   # lfs
]
TEST3 = ("MSP-PODCAST_test3_0001.wav", "MSP-PODCAST_test3_0002.wav")


def make_release(root, label_name="labels_consensus.csv", audio_dir="Audios", rows=ROWS):
    (root / "Labels").mkdir(parents=True)
    (root / "Labels" / label_name).write_text(HEADER + "".join(",".join(r) + "\n" for r in rows))
    audio = root / audio_dir
    for r in rows:
        if r[0] == "MSP-PODCAST_0008_0001.wav":
            continue
        if r[0] == "MSP-PODCAST_0008_0002.wav":
            audio.mkdir(parents=True, exist_ok=True)
            (audio / r[0]).write_text("version https://git-lfs.github.com/spec/v1\n"
                                      "oid sha256:00\nsize 12\n")
            continue
        write_wav(audio / r[0], silent=r[0] == "MSP-PODCAST_0002_0002.wav")
    for name in TEST3:
        write_wav(audio / name)
    (audio / "._MSP-PODCAST_test3_0003.wav").write_bytes(b"\x00\x05\x16\x07junk")
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("msp") / "MSP-PODCAST-Publish-1.12")


def _rows(prepared):
    return [(u.path.rsplit("/", 1)[1], u.speaker, u.emotion, u.split, u.arousal, u.valence,
             u.dominance, u.extra["corpus_label"], u.extra["speaker_known"])
            for u in prepared.utterances]


EXPECTED = [
    ("MSP-PODCAST_0001_0008.wav", "30", "neutral", "test", 2.2, 4.0, 2.6, "N", "1"),
    ("MSP-PODCAST_0001_0009.wav", "39", "angry", "test", 3.777778, 3.555556, 3.777778, "A", "1"),
    ("MSP-PODCAST_0002_0001.wav", "12", "sad", "train", 2.0, 2.5, 3.0, "S", "1"),
    ("MSP-PODCAST_0002_0002.wav", "12", "happy", "train", 5.0, 6.0, 4.0, "H", "1"),
    ("MSP-PODCAST_0003_0001.wav", "unknown_0003", "surprise", "train", 5.5, 4.5, 4.5, "U", "0"),
    ("MSP-PODCAST_0003_0002.wav", "unknown_0003", "fear", "train", 6.0, 2.0, 2.0, "F", "0"),
    ("MSP-PODCAST_0004_0001.wav", "unknown_0004", "disgust", "dev", 4.0, 2.0, 5.0, "D", "0"),
    ("MSP-PODCAST_0005_0001.wav", "7", "contempt", "dev", 3.0, 3.0, 5.5, "C", "1"),
    ("MSP-PODCAST_0007_0001.wav", "unknown_0007", None, "test3", None, None, None, "", "0"),
    ("MSP-PODCAST_test3_0001.wav", "unknown_test3", None, "test3", None, None, None, "", "0"),
    ("MSP-PODCAST_test3_0002.wav", "unknown_test3", None, "test3", None, None, None, "", "0"),
]


def test_default_rows_exact(release):
    p = msp_podcast.read(release)
    assert _rows(p) == EXPECTED
    audio = release / "Audios"
    # The missing file and the git-lfs pointer are reported, O/X rows are dropped silently;
    # the silent file passes (check_silence is off by default for this corpus).
    assert p.skipped == [
        (str(audio / "MSP-PODCAST_0008_0001.wav"),
         f"not found (label row {release / 'Labels' / 'labels_consensus.csv'}:13)"),
        (str(audio / "MSP-PODCAST_0008_0002.wav"),
         "git-lfs pointer file, not audio (fetch it with `git lfs pull`)"),
    ]
    u = p.utterances[0]
    assert u.id == u.path == str(audio / "MSP-PODCAST_0001_0008.wav")
    assert u.extra == {"corpus_label": "N", "duration": "0.200", "recording": "0001",
                       "gender": "Male", "speaker_known": "1"}
    assert p.utterances[4].extra["gender"] == "Unknown"
    assert p.utterances[5].extra["recording"] == "0003"


def test_unknown_speakers_grouped_by_recording(release):
    p = msp_podcast.read(release)
    rec_of = {}
    for u in p.utterances:
        if u.speaker.startswith("unknown_") and u.split != "test3":
            rec_of.setdefault(u.speaker, set()).add(u.extra["recording"])
    assert rec_of == {"unknown_0003": {"0003"}, "unknown_0004": {"0004"}}
    split_of = {}
    for u in p.utterances:
        split_of.setdefault(u.speaker, set()).add(u.split)
    assert all(len(s) == 1 for s in split_of.values())  # no speaker in two splits here


def test_keep_other_four_class_and_options(release):
    p = msp_podcast.read(release, keep_other=True)
    extra = [r for r in _rows(p) if r[7] in ("O", "X")]
    assert extra == [
        ("MSP-PODCAST_0006_0001.wav", "8", None, "test2", 4.0, 4.0, 4.0, "O", "1"),
        ("MSP-PODCAST_0006_0002.wav", "8", None, "test2", 3.5, 3.5, 3.5, "X", "1"),
    ]
    assert len(p.utterances) == len(EXPECTED) + 2
    p4 = msp_podcast.read(release, four_class=True)
    assert [(r[0], r[2], r[7]) for r in _rows(p4)][:8] == [
        ("MSP-PODCAST_0001_0008.wav", "neutral", "N"), ("MSP-PODCAST_0001_0009.wav", "angry", "A"),
        ("MSP-PODCAST_0002_0001.wav", "sad", "S"), ("MSP-PODCAST_0002_0002.wav", "happy", "H"),
        ("MSP-PODCAST_0003_0001.wav", None, "U"), ("MSP-PODCAST_0003_0002.wav", None, "F"),
        ("MSP-PODCAST_0004_0001.wav", None, "D"), ("MSP-PODCAST_0005_0001.wav", None, "C")]
    default = msp_podcast.read(release)
    assert [u.arousal for u in p4.utterances] == [u.arousal for u in default.utterances]
    no3 = msp_podcast.read(release, include_test3=False)
    assert [r[0] for r in _rows(no3)] == [r[0] for r in EXPECTED[:9]]
    silent = msp_podcast.read(release, check_silence=True)
    assert "MSP-PODCAST_0002_0002.wav" not in [r[0] for r in _rows(silent)]
    assert (str(release / "Audios" / "MSP-PODCAST_0002_0002.wav"), "silent (all samples zero)") \
        in silent.skipped


def test_old_label_spelling_and_audio_folder(tmp_path):
    root = make_release(tmp_path / "MSP-PODCAST-Publish-1.6", label_name="labels_concensus.csv",
                        audio_dir="Audio")
    assert _rows(msp_podcast.read(root)) == EXPECTED


def test_manifest_round_trip(release, tmp_path):
    p = msp_podcast.read(release)
    csv = manifest_lib.write_manifest(p.utterances, tmp_path / "m.csv")
    back = manifest_lib.read_manifest(csv, allowed_splits=None)
    assert back.utterances == p.utterances
    assert sorted({u.split for u in back}) == ["dev", "test", "test3", "train"]


def _bad(tmp_path, rows, header=HEADER):
    root = tmp_path / "bad"
    (root / "Labels").mkdir(parents=True)
    (root / "Audios").mkdir()
    lab = root / "Labels" / "labels_consensus.csv"
    lab.write_text(header + "".join(",".join(r) + "\n" for r in rows))
    return root, lab


@pytest.mark.parametrize("row,message", [
    (("MSP-PODCAST_0001_0001.wav", "Z", "1", "1", "1", "3", "Male", "Train"),
     "unknown EmoClass 'Z'; expected one of A S H U F D C N O X"),
    (("MSP-PODCAST_0001_0001.wav", "N", "high", "1", "1", "3", "Male", "Train"),
     "EmoAct must be a number, got 'high'"),
    (("MSP-PODCAST_0001_0001.wav", "N", "1", "1", "1", "3", "Male", "Test4"),
     "unknown Split_Set 'Test4'; expected one of Train, Development, Test1, Test2, Test3"),
    (("MSP-PODCAST_0001_0001.wav", "N", "1", "1", "1", "Bob", "Male", "Train"),
     "SpkrID must be an integer or 'Unknown', got 'Bob'"),
    (("podcast_1.wav", "N", "1", "1", "1", "3", "Male", "Train"),
     "FileName 'podcast_1.wav' is not of the form MSP-PODCAST_<recording>_<segment>.wav"),
    (("MSP-PODCAST_0001_0001.wav", "N", "1", "1", "1", "3", "Train"),
     "expected 8 fields as in the header, found 7"),
])
def test_malformed_rows_name_file_and_line(tmp_path, row, message):
    good = ("MSP-PODCAST_0001_0002.wav", "N", "1", "1", "1", "3", "Male", "Train")
    root, lab = _bad(tmp_path, [good, row])
    with pytest.raises(CorpusError) as e:
        msp_podcast.read(root)
    assert str(e.value) == f"{lab}:3: {message}"


def test_structure_errors(tmp_path):
    row = ("MSP-PODCAST_0001_0002.wav", "N", "1", "1", "1", "3", "Male", "Train")
    root, lab = _bad(tmp_path, [row, row])
    with pytest.raises(CorpusError, match="repeats line 2$") as e:
        msp_podcast.read(root)
    assert str(e.value).startswith(f"{lab}:3: FileName")
    lab.write_text("FileName,EmoClass,EmoAct,EmoVal,SpkrID,Split_Set\n")
    with pytest.raises(CorpusError) as e:
        msp_podcast.read(root)
    assert str(e.value) == (f"{lab}:1: header lacks the column(s) EmoDom (found: "
                            "FileName,EmoClass,EmoAct,EmoVal,SpkrID,Split_Set)")
    lab.unlink()
    with pytest.raises(CorpusError) as e:
        msp_podcast.read(root)
    assert str(e.value).startswith(f"{lab}: label file not found (also looked for "
                                   "Labels/labels_concensus.csv")
    empty = tmp_path / "noaudio"
    (empty / "Labels").mkdir(parents=True)
    (empty / "Labels" / "labels_consensus.csv").write_text(HEADER)
    with pytest.raises(CorpusError) as e:
        msp_podcast.read(empty)
    assert str(e.value) == (f"{empty / 'Audios'}: audio folder not found (also looked for "
                            f"{empty / 'Audio'})")
