"""IEMOCAP reader on a fake miniature release: speaker from the last name token (impro05a,
script02_2, marker-wearer ≠ speaker), [V, A, D] order, 4-class vs all classes, session splits,
ignored annotator files and AppleDouble files, skipped wavs, exact errors."""
import pytest
from helpers import write_wav

from emosup.data import manifest as manifest_lib
from emosup.data.corpora import iemocap
from emosup.data.corpora.common import CorpusError

HEAD = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
# dialog file → (summary lines with their annotator lines)
EVAL = {
    1: {"Ses01F_impro01": [
        ("[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.0000, 2.2500]",
         "C-E2:\tNeutral;\t()\nA-E3:\tval 3; act 2; dom  2;\t()"),
        ("[10.0100 - 11.5000]\tSes01F_impro01_M000\tfru\t[2.0000, 3.5000, 3.0000]",
         "C-E1:\tFrustration;\t()"),
        ("[12.0000 - 13.2500]\tSes01F_impro01_M001\texc\t[4.0000, 3.5000, 3.2500]", ""),
    ], "Ses01F_script02_2": [
        ("[1.0000 - 2.0000]\tSes01F_script02_2_F000\thap\t[4.5000, 3.0000, 3.0000]", ""),
        ("[3.0000 - 4.0000]\tSes01F_script02_2_M000\tsad\t[1.5000, 2.0000, 1.5000]",
         "A-E1:\tval 2; act 2;\t()"),  # one of the attribute lines without dom
    ]},
    3: {"Ses03M_impro05a": [
        ("[140.2250 - 145.6000]\tSes03M_impro05a_F017\tang\t[1.5000, 4.0000, 4.5000]",
         "C-E1:\tAnger;\t()\nA-E3:\tval 2; act 4; dom  4;\t()"),
        ("[150.0000 - 151.0000]\tSes03M_impro05a_M002\txxx\t[3.0000, 3.0000, 3.0000]", ""),
        ("[152.0000 - 153.0000]\tSes03M_impro05a_M003\tfea\t[2.0000, 4.5000, 2.0000]", ""),
    ]},
    5: {"Ses05F_impro02": [
        ("[1.0000 - 2.0000]\tSes05F_impro02_F000\tsad\t[2.0000, 1.5000, 2.0000]", ""),
        ("[3.0000 - 4.0000]\tSes05F_impro02_M000\thap\t[4.0000, 3.0000, 3.0000]", ""),  # no wav
        ("[5.0000 - 6.0000]\tSes05F_impro02_M001\tneu\t[3.0000, 3.0000, 3.0000]", ""),  # empty
        ("[7.0000 - 8.0000]\tSes05F_impro02_F001\tsur\t[3.5000, 4.0000, 3.0000]", ""),
    ]},
}


def make_release(root):
    for k, dialogs in EVAL.items():
        ev = root / f"Session{k}" / "dialog" / "EmoEvaluation"
        ev.mkdir(parents=True)
        for dialog, entries in dialogs.items():
            text = HEAD + "".join(s + "\n" + (a + "\n" if a else "") + "\n" for s, a in entries)
            (ev / f"{dialog}.txt").write_text(text)
            for s, _ in entries:
                utt = s.split("\t")[1]
                wav = root / f"Session{k}" / "sentences" / "wav" / dialog / f"{utt}.wav"
                if utt == "Ses05F_impro02_M000":
                    continue
                if utt == "Ses05F_impro02_M001":
                    wav.parent.mkdir(parents=True, exist_ok=True)
                    wav.write_bytes(b"")
                    continue
                write_wav(wav)
        # Files the reader must not open: per-annotator folders and macOS metadata.
        (ev / "Categorical").mkdir()
        (ev / "Categorical" / "x_e1_cat.txt").write_text("[broken line\n")
        (ev / f"._Ses0{k}_meta.txt").write_bytes(b"\x00\x05\x16\x07[\xff\xfe")
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release")


def _rows(prepared):
    return [(u.path.rsplit("/", 1)[1][:-4], u.speaker, u.emotion, u.split, u.extra["fold"],
             u.arousal, u.valence, u.dominance, u.extra["corpus_label"])
            for u in prepared.utterances]


def test_four_class_rows_exact(release):
    p = iemocap.read(release)
    # (name, speaker, emotion, split, fold, arousal, valence, dominance, code); arousal is the
    # *second* bracket value, valence the first.
    assert _rows(p) == [
        ("Ses01F_impro01_F000", "Ses01F", "neutral", "train", "1", 2.0, 2.5, 2.25, "neu"),
        ("Ses01F_impro01_M001", "Ses01M", "happy", "train", "1", 3.5, 4.0, 3.25, "exc"),
        ("Ses01F_script02_2_F000", "Ses01F", "happy", "train", "1", 3.0, 4.5, 3.0, "hap"),
        ("Ses01F_script02_2_M000", "Ses01M", "sad", "train", "1", 2.0, 1.5, 1.5, "sad"),
        ("Ses03M_impro05a_F017", "Ses03F", "angry", "train", "3", 4.0, 1.5, 4.5, "ang"),
        ("Ses05F_impro02_F000", "Ses05F", "sad", "test", "5", 1.5, 2.0, 2.0, "sad"),
    ]
    s5 = release / "Session5" / "sentences" / "wav" / "Ses05F_impro02"
    assert p.skipped == [(str(s5 / "Ses05F_impro02_M000.wav"), "not found"),
                         (str(s5 / "Ses05F_impro02_M001.wav"), "zero-length file")]
    u = p.utterances[4]
    assert u.path == str(release / "Session3" / "sentences" / "wav" / "Ses03M_impro05a"
                         / "Ses03M_impro05a_F017.wav")
    assert u.extra == {"corpus_label": "ang", "fold": "3", "duration": "0.200",
                       "dialog": "Ses03M_impro05a", "gender": "F"}


def test_all_classes_and_session_splits(release):
    p = iemocap.read(release, all_classes=True, test_session=1, dev_session=3)
    assert [(r[0], r[2], r[3], r[8]) for r in _rows(p)] == [
        ("Ses01F_impro01_F000", "neutral", "test", "neu"),
        ("Ses01F_impro01_M000", None, "test", "fru"),
        ("Ses01F_impro01_M001", "happy", "test", "exc"),
        ("Ses01F_script02_2_F000", "happy", "test", "hap"),
        ("Ses01F_script02_2_M000", "sad", "test", "sad"),
        ("Ses03M_impro05a_F017", "angry", "dev", "ang"),
        ("Ses03M_impro05a_M002", None, "dev", "xxx"),
        ("Ses03M_impro05a_M003", "fear", "dev", "fea"),
        ("Ses05F_impro02_F000", "sad", "train", "sad"),
        ("Ses05F_impro02_F001", "surprise", "train", "sur"),
    ]
    splits = {}
    for u in p.utterances:
        splits.setdefault(u.speaker, set()).add(u.split)
    assert splits == {"Ses01F": {"test"}, "Ses01M": {"test"}, "Ses03F": {"dev"},
                      "Ses03M": {"dev"}, "Ses05F": {"train"}}
    assert {u.split for u in iemocap.read(release, test_session=0).utterances} == {"train"}


def test_speaker_of_last_token():
    assert iemocap.speaker_of("Ses03M_impro05a_F017") == "Ses03F"
    assert iemocap.speaker_of("Ses01F_script02_2_M000") == "Ses01M"
    assert iemocap.speaker_of("Ses05M_script01_1b_FXX0") == "Ses05F"


def test_manifest_round_trip(release, tmp_path):
    p = iemocap.read(release, all_classes=True, dev_session=3)
    csv = manifest_lib.write_manifest(p.utterances, tmp_path / "m.csv")
    assert manifest_lib.read_manifest(csv, allowed_splits=None).utterances == p.utterances
    assert manifest_lib.read_manifest(csv).utterances == p.utterances  # train/dev/test only


def test_bad_options():
    with pytest.raises(ValueError, match="^dev_session and test_session are both 5$"):
        iemocap.read("/nonexistent", dev_session=5)
    with pytest.raises(ValueError, match=r"^test_session must be one of 1..5 \(or 0 for none\), "
                                         "got 6$"):
        iemocap.read("/nonexistent", test_session=6)


def _one_session(tmp_path, lines, k=2):
    root = tmp_path / "IEMOCAP_full_release"
    ev = root / f"Session{k}" / "dialog" / "EmoEvaluation"
    ev.mkdir(parents=True)
    f = ev / "Ses02F_impro01.txt"
    f.write_text(HEAD + "\n".join(lines) + "\n")
    return root, f


@pytest.mark.parametrize("line,message", [
    ("[1.0 - 2.0]\tSes02F_impro01_F000\tneu\t[2.5, 2.5]",
     "malformed summary line '[1.0 - 2.0]\\tSes02F_impro01_F000\\tneu\\t[2.5, 2.5]'; expected "
     "'[START - END]<tab>UTTERANCE<tab>CODE<tab>[V, A, D]'"),
    ("[1.0 - 2.0]\tSes02F_impro01_F000\tcalm\t[2.5, 2.5, 2.5]",
     "unknown emotion code 'calm'; expected one of neu hap exc sad ang fea sur dis fru oth xxx"),
    ("[1.0 - 2.0]\tSes04F_impro01_F000\tneu\t[2.5, 2.5, 2.5]",
     "utterance Ses04F_impro01_F000 belongs to session 4, but the file is in Session2"),
    ("[1.0 - 2.0]\tSes02F-impro01-F000\tneu\t[2.5, 2.5, 2.5]",
     "utterance name 'Ses02F-impro01-F000' is not of the form Ses0<1-5><M|F>_<dialog>_<M|F><nnn>"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    ok = "[0.5 - 0.9]\tSes02F_impro01_M000\tneu\t[2.5, 2.5, 2.5]"
    root, f = _one_session(tmp_path, [ok, "", line])
    with pytest.raises(CorpusError) as e:
        iemocap.read(root)
    assert str(e.value) == f"{f}:5: {message}"


def test_structure_errors(tmp_path):
    line = "[0.5 - 0.9]\tSes02F_impro01_M000\tneu\t[2.5, 2.5, 2.5]"
    root, f = _one_session(tmp_path, [line, line])
    with pytest.raises(CorpusError) as e:
        iemocap.read(root)
    assert str(e.value) == f"{f}:4: utterance Ses02F_impro01_M000 repeats {f}:3"
    f.unlink()
    with pytest.raises(CorpusError) as e:
        iemocap.read(root)
    assert str(e.value) == f"{f.parent}: no EmoEvaluation *.txt files"
    (root / "Session4").mkdir()
    f.write_text(HEAD)
    with pytest.raises(CorpusError) as e:
        iemocap.read(root)
    assert str(e.value) == (f"{root / 'Session4' / 'dialog' / 'EmoEvaluation'}: EmoEvaluation "
                            "folder not found (expected Session4/dialog/EmoEvaluation/*.txt)")
    with pytest.raises(CorpusError) as e:
        iemocap.read(tmp_path)
    assert str(e.value) == (f"{tmp_path}: no Session1..Session5 folders; is this "
                            "IEMOCAP_full_release?")
