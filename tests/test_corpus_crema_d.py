"""CREMA-D reader on a fake miniature AudioWAV folder: strict names, silent / zero-length /
git-lfs pointer / misnamed files skipped with reasons, speaker-disjoint seeded splits."""
import pytest
from helpers import write_wav

from emosup.data import manifest as manifest_lib
from emosup.data.corpora import common, crema_d
from emosup.data.corpora.common import CorpusError

EMOS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
GOOD = [f"{1001 + a}_{s}_{EMOS[(a + i) % 6]}_XX.wav"
        for a in range(10) for i, s in enumerate(("DFA", "TIE"))] + ["1001_IEO_HAP_HI.wav",
                                                                     "1002_IEO_SAD_LO.wav"]
LFS = "version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 99\n"


def make_repo(root):
    audio = root / "AudioWAV"
    audio.mkdir(parents=True)
    for name in GOOD:
        write_wav(audio / name)
    write_wav(audio / "1076_MTI_SAD_XX.wav", silent=True)  # the corpus's known silent file
    (audio / "1064_TIE_SAD_XX.wav").write_bytes(b"")       # known zero-length file
    (audio / "1077_DFA_NEU_XX.wav").write_text(LFS)       # clone without git-lfs
    (audio / "1078_WSI_ANG_XX.wav").write_bytes(b"RIFF\x00\x00")  # broken header
    write_wav(audio / "1040_ITH_SAD_X.wav")                # historically misnamed
    write_wav(audio / "1002_DFA_CAL_XX.wav")               # not a CREMA-D emotion
    write_wav(audio / "1003_ABC_ANG_XX.wav")               # not a CREMA-D sentence
    (audio / "._1001_DFA_ANG_XX.wav").write_bytes(b"\x00\x05\x16\x07")  # ignored
    (audio / ".DS_Store").write_bytes(b"\x00")             # ignored
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("cremad") / "CREMA-D")


def test_rows_exact(repo):
    p = crema_d.read(repo)
    audio = repo / "AudioWAV"
    names = sorted(GOOD)
    assert [u.path for u in p.utterances] == [str(audio / n) for n in names]
    full = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral",
            "SAD": "sad"}
    for u, n in zip(p.utterances, names):
        actor, sentence, emo, level = n[:-4].split("_")
        assert (u.id, u.speaker, u.emotion, u.extra) == (
            u.path, actor, full[emo], {"corpus_label": emo, "duration": "0.200",
                                       "sentence": sentence, "level": level})
        assert (u.arousal, u.valence, u.dominance) == (None, None, None)
    assert p.utterances[0].speaker == "1001" and p.utterances[0].emotion == "angry"
    rule = crema_d.NAME_RULE
    assert p.skipped == sorted([
        (str(audio / "1002_DFA_CAL_XX.wav"), rule),
        (str(audio / "1003_ABC_ANG_XX.wav"), rule),
        (str(audio / "1040_ITH_SAD_X.wav"), rule),
        (str(audio / "1064_TIE_SAD_XX.wav"), "zero-length file"),
        (str(audio / "1076_MTI_SAD_XX.wav"), "silent (all samples zero)"),
        (str(audio / "1077_DFA_NEU_XX.wav"),
         "git-lfs pointer file, not audio (fetch it with `git lfs pull`)"),
        (str(audio / "1078_WSI_ANG_XX.wav"), p.skipped[-1][1]),
    ])
    assert p.skipped[-1][1].startswith("unreadable audio (")
    assert rule == ("name is not {Actor}_{Sentence}_{Emotion}_{Level}.wav with a 4-digit actor, "
                    "Sentence in DFA IEO IOM ITH ITS IWL IWW MTI TAI TIE TSI WSI, Emotion in "
                    "ANG DIS FEA HAP NEU SAD, Level in LO MD HI XX")


def test_speaker_disjoint_seeded_splits(repo):
    p = crema_d.read(repo)
    # The actor set behind the split includes actors whose only files are unusable.
    actors = [f"{1001 + a}" for a in range(10)] + ["1064", "1076", "1077", "1078"]
    want = common.speaker_disjoint_splits(actors, fractions=(0.7, 0.1, 0.2), seed=0)
    assert {u.speaker: u.split for u in p.utterances} == {a: want[a] for a in actors[:10]}
    by_split = {}
    for u in p.utterances:
        by_split.setdefault(u.split, set()).add(u.speaker)
    assert set(by_split) == {"train", "dev", "test"}
    assert not (by_split["train"] & by_split["dev"] or by_split["train"] & by_split["test"]
                or by_split["dev"] & by_split["test"])
    # Same seed → same split; the split does not move with check_silence.
    loud = crema_d.read(repo, check_silence=False)
    assert {u.speaker: u.split for u in loud.utterances if u.speaker != "1076"} == \
        {u.speaker: u.split for u in p.utterances}
    assert [u.speaker for u in loud.utterances if u.speaker == "1076"] == ["1076"]
    other = crema_d.read(repo, seed=5, fractions=(0.5, 0.25, 0.25))
    want5 = common.speaker_disjoint_splits(actors, fractions=(0.5, 0.25, 0.25), seed=5)
    assert {u.speaker: u.split for u in other.utterances} == {a: want5[a] for a in actors[:10]}
    assert want5 != want


def test_audiowav_folder_as_root_and_round_trip(repo, tmp_path):
    a = crema_d.read(repo)
    b = crema_d.read(repo / "AudioWAV")
    assert a.utterances == b.utterances and a.skipped == b.skipped
    csv = manifest_lib.write_manifest(a.utterances, tmp_path / "m.csv")
    assert manifest_lib.read_manifest(csv).utterances == a.utterances


def test_structure_errors(tmp_path):
    with pytest.raises(CorpusError) as e:
        crema_d.read(tmp_path)
    assert str(e.value) == (f"{tmp_path / 'AudioWAV'}: folder not found, and {tmp_path} holds "
                            "no {Actor}_{Sentence}_{Emotion}_{Level}.wav files; is this the "
                            "CREMA-D repository?")
    (tmp_path / "AudioWAV").mkdir()
    (tmp_path / "AudioWAV" / "readme.txt").write_text("x")
    with pytest.raises(CorpusError) as e:
        crema_d.read(tmp_path)
    assert str(e.value) == (f"{tmp_path / 'AudioWAV'}: no "
                            "{Actor}_{Sentence}_{Emotion}_{Level}.wav files")
    with pytest.raises(CorpusError) as e:
        crema_d.read(tmp_path / "missing")
    assert str(e.value) == (f"{tmp_path / 'missing'}: not a folder (expected the CREMA-D "
                            "repository folder with AudioWAV/)")
