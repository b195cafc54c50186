"""VoxCeleb reader, trial lists and cosine EER on a faked miniature copy (16 kHz WAVs of 0.2 s,
an AAC folder that soundfile cannot decode, a converted copy)."""
import math
import pathlib

import numpy as np
import pytest
from helpers import write_wav

from emosup.data import manifest
from emosup.data.corpora import common, voxceleb

LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 123\n"
M4A = b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isomiso2\x00\x00\x00\x08free"
V1 = "vox1/wav"            # VoxCeleb1 wav folder, two levels down
V2_AAC = "vox2/dev/aac"    # VoxCeleb2 as shipped, three levels down
V2_WAV = "vox2/wav"        # one converted VoxCeleb2 file


def _bytes(path, data):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


GOOD = {  # relative to V1 → iden split code
    "id10001/aaaaaaaaaaa/00001.wav": "1", "id10001/aaaaaaaaaaa/00002.wav": "1",
    "id10001/bbbbbbbbbbb/00001.wav": "2", "id10002/ccccccccccc/00001.wav": "3",
    "id10002/ccccccccccc/00002.wav": "1", "id10003/ddddddddddd/00002.wav": "3",
}
SILENT = "id10003/ddddddddddd/00001.wav"


def _build(root):
    for k, rel in enumerate(GOOD):
        write_wav(root / V1 / rel, seed=k)
    write_wav(root / V1 / SILENT, silent=True)
    d = root / V1 / "id10003" / "ddddddddddd"
    _bytes(d / "00003.wav", b"")
    _bytes(d / "00004.wav", LFS)
    _bytes(d / "._00002.wav", b"\x00\x05\x16\x07")
    write_wav(d / "1.wav")
    write_wav(root / V1 / "id10003" / "stray.wav")
    for n in (1, 2, 3):
        _bytes(root / V2_AAC / "id00012" / "eeeeeeeeeee" / f"{n:05d}.m4a", M4A)
    write_wav(root / V2_WAV / "id00012" / "eeeeeeeeeee" / "00003.wav", seed=99)  # converted copy
    lines = [f"{code} {rel}" for rel, code in GOOD.items()] + [
        f"1 {SILENT}", "1 id10009/zzzzzzzzzzz/00001.wav"]  # a file this copy lacks
    (root / "vox1" / "iden_split.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("voxceleb")
    _build(r)
    return r


def _rel(root, path):
    return pathlib.Path(path).relative_to(root).as_posix()


AAC_REASON = ("AAC .m4a that soundfile cannot decode here ({why}); convert every file once to "
              "16 kHz mono WAV with `ffmpeg -y -i in.m4a -ac 1 -vn -acodec pcm_s16le -ar 16000 "
              "out.wav`, keeping idXXXXX/<video>/NNNNN.wav under a wav/ folder")


def test_find_containers(root):
    assert voxceleb.find_containers(root) == [root / V1, root / V2_AAC, root / V2_WAV]
    assert voxceleb.find_containers(root / V1) == [root / V1]


def test_iden_split_rows_and_skipped(root):
    p = voxceleb.read(root)
    got = {_rel(root, u.path): (u.speaker, u.emotion, u.split, u.extra) for u in p.utterances}
    names = {"1": "train", "2": "dev", "3": "test"}
    want = {f"{V1}/{rel}": (rel[:7], None, names[c],
                            {"corpus_label": "", "duration": "0.200", "video": rel.split("/")[1]})
            for rel, c in {**GOOD, SILENT: "1"}.items()}
    assert got == want
    assert [u.path for u in p.utterances] == sorted(u.path for u in p.utterances)
    why = common.audio_problem(root / V2_AAC / "id00012/eeeeeeeeeee/00001.m4a")
    assert why.startswith("unreadable audio")
    first = root / V2_AAC / "id00012/eeeeeeeeeee/00001.m4a"
    split_file = root / "vox1" / "iden_split.txt"
    assert sorted((_rel(root, f), r) for f, r in p.skipped) == sorted([
        (f"{V1}/id10003/ddddddddddd/00003.wav", "zero-length file"),
        (f"{V1}/id10003/ddddddddddd/00004.wav",
         "git-lfs pointer file, not audio (fetch it with `git lfs pull`)"),
        (f"{V1}/id10003/ddddddddddd/1.wav", "bad VoxCeleb name, expected NNNNN.wav (five digits)"),
        (f"{V1}/id10003/stray.wav", "expected idXXXXX/<video>/NNNNN.wav (no video folder)"),
        (f"{V2_AAC}/id00012/eeeeeeeeeee/00001.m4a", AAC_REASON.format(why=why)),
        (f"{V2_AAC}/id00012/eeeeeeeeeee/00002.m4a", "AAC .m4a that soundfile cannot decode here "
         f"(the ffmpeg conversion command is in the entry for {first})"),
        (f"{V2_WAV}/id00012/eeeeeeeeeee/00003.wav", f"not listed in {split_file}"),
    ])
    # The ffmpeg command appears once, and the .m4a with a converted twin is not mentioned.
    assert sum("ffmpeg" in r and "pcm_s16le" in r for _, r in p.skipped) == 1
    assert not any(f.endswith("00003.m4a") for f, _ in p.skipped)


def test_check_silence_and_unchecked(root):
    p = voxceleb.read(root, check_silence=True)
    assert (str(root / V1 / SILENT), "silent (all samples zero)") in p.skipped
    assert len(p.utterances) == len(GOOD)
    fast = voxceleb.read(root, check_audio=False)
    # Unopened: the empty and pointer files are listed, but iden_split.txt still filters.
    assert {_rel(root, u.path) for u in fast.utterances} == {
        f"{V1}/{r}" for r in list(GOOD) + [SILENT]}
    assert all("duration" not in u.extra for u in fast.utterances)
    assert voxceleb.read(root / V2_WAV).utterances[0].split == "train"  # no split file there


TRIALS = [
    ("1", "id10001/aaaaaaaaaaa/00001.wav", "id10001/aaaaaaaaaaa/00002.wav"),
    ("0", "id10001/aaaaaaaaaaa/00001.wav", "id10002/ccccccccccc/00001.wav"),
    ("1", "id10001/aaaaaaaaaaa/00001.wav", "id10001/bbbbbbbbbbb/00001.wav"),
    ("1", "id10001/aaaaaaaaaaa/00001.wav", "id10002/ccccccccccc/00002.wav"),
    ("0", "id10001/aaaaaaaaaaa/00001.wav", "id10003/ddddddddddd/00002.wav"),
    ("0", "id10001/aaaaaaaaaaa/00001.wav", "id10003/ddddddddddd/00001.wav"),
]


@pytest.fixture()
def trial_file(root):
    f = root / "veri_test2.txt"
    f.write_text("\n".join(" ".join(t) for t in TRIALS) + "\n\n")
    return f


def test_trials_hold_out_their_speakers(root):
    (root / "veri_small.txt").write_text(
        "1 id10002/ccccccccccc/00001.wav id10002/ccccccccccc/00002.wav\n"
        "0 id10002/ccccccccccc/00001.wav id10003/ddddddddddd/00002.wav\n")
    p = voxceleb.read(root, trials="veri_small.txt")  # relative: found in ROOT
    splits = {u.speaker: u.split for u in p.utterances}
    assert splits == {"id10001": "train", "id10002": "test", "id10003": "test",
                      "id00012": "train"}
    assert _rel(root, [u for u in p.utterances if u.speaker == "id00012"][0].path) == \
        f"{V2_WAV}/id00012/eeeeeeeeeee/00003.wav"
    assert len(p.utterances) == len(GOOD) + 2
    with pytest.raises(common.CorpusError, match="nope.txt: trial list not found"):
        voxceleb.read(root, trials="nope.txt")


def test_read_trials(root, trial_file):
    rows = {_rel(root, u.path): u.path for u in voxceleb.read(root).utterances}
    trials = voxceleb.read_trials(trial_file, root)
    assert trials == [(int(lab), rows[f"{V1}/{e}"], rows[f"{V1}/{t}"]) for lab, e, t in TRIALS]
    assert voxceleb.read_trials(trial_file, root / V1) == trials  # ROOT may be wav/ itself


@pytest.mark.parametrize("line, message", [
    ("1 id10001/aaaaaaaaaaa/00001.wav", "expected 3 fields 'label enrol test', found 2"),
    ("2 id10001/aaaaaaaaaaa/00001.wav id10001/aaaaaaaaaaa/00002.wav",
     "label must be 1 \\(same speaker\\) or 0, got '2'"),
    ("1 Eartha_Kitt/x6uYqmx31kE/00001.wav id10001/aaaaaaaaaaa/00002.wav",
     "'Eartha_Kitt/x6uYqmx31kE/00001.wav' is not an idXXXXX/<video>/NNNNN.wav path \\(a "
     "celebrity-name path from an old VoxCeleb1 list"),
    ("0 id10001/aaaaaaaaaaa/00001.wav id10001/00002.wav",
     "'id10001/00002.wav' is not an idXXXXX/<video>/NNNNN.wav path$"),
    ("1 id10001/aaaaaaaaaaa/00001.wav id10001/aaaaaaaaaaa/00009.wav",
     "1 trial paths name audio that is not under .*: line 2: id10001/aaaaaaaaaaa/00009.wav$"),
])
def test_bad_trial_lines(root, tmp_path, line, message):
    f = tmp_path / "list.txt"
    f.write_text(f"1 id10001/aaaaaaaaaaa/00001.wav id10001/aaaaaaaaaaa/00002.wav\n{line}\n")
    where = f"{f}:2: " if "not under" not in message else f"{f}: "
    with pytest.raises(common.CorpusError) as e:
        voxceleb.read_trials(f, root)
    assert str(e.value).startswith(where)
    assert e.match(message)


def test_verification_eer_by_hand(root, trial_file):
    trials = voxceleb.read_trials(trial_file, root)
    enrol = trials[0][1]
    # Test vectors at cosine c from the enrolment vector [2, 0]; norms differ so that a raw dot
    # product would rank the trials differently (the 0.8 non-target, norm 10, would come first:
    # EER 1/3 at threshold 1.4 below, and EER 1 for the first four trials).
    cosines = [0.9, 0.8, 0.7, 0.3, 0.1, 0.0]
    norms = [0.5, 10.0, 1.0, 3.0, 1.0, 1.0]
    emb = {enrol: np.array([2.0, 0.0])}
    for (_, _, t), c, n in zip(trials, cosines, norms):
        emb[t] = n * np.array([c, math.sqrt(1 - c * c)])
    # Descending: T .9, N .8, T .7, T .3, N .1, N 0. Accepting ≥ 0.7 gives FAR 1/3 (one of three
    # non-targets) and FRR 1/3 (the 0.3 target): FAR = FRR there, so EER = 1/3 at 0.7.
    rate, thr = voxceleb.verification_eer(emb, trials)
    assert rate == pytest.approx(1 / 3, abs=1e-12)
    assert thr == pytest.approx(0.7, abs=1e-12)
    # The first four trials only (T .9, N .8, T .7, T .3): FAR/FRR go (0, 1) → (0, 2/3) at
    # 0.9 → (1, 2/3) at 0.8; FAR − FRR crosses 0 at 2/3 of that last step, so the EER is
    # 0 + 2/3·(1 − 0) = 2/3 at the threshold 0.9 + 2/3·(0.8 − 0.9) = 5/6.
    rate, thr = voxceleb.verification_eer(emb, trials[:4])
    assert rate == pytest.approx(2 / 3, abs=1e-12)
    assert thr == pytest.approx(5 / 6, abs=1e-12)
    with pytest.raises(ValueError, match=f"trial 0: no embedding for {trials[0][2]}"):
        voxceleb.verification_eer({enrol: emb[enrol]}, trials)
    with pytest.raises(ValueError, match="has norm 0.0"):
        voxceleb.verification_eer({**emb, enrol: np.zeros(2)}, trials)


def test_csv_round_trip(root, tmp_path, trial_file):
    p = voxceleb.read(root, trials=str(trial_file))
    csv = manifest.write_manifest(p.utterances, tmp_path / "vox.csv")
    assert manifest.read_manifest(csv, allowed_splits=None).utterances == p.utterances


def test_structure_errors(root, tmp_path):
    with pytest.raises(common.CorpusError, match=f"{tmp_path}: no VoxCeleb speaker folders"):
        voxceleb.read(tmp_path)
    # Files that are all unusable: no rows, every file in `skipped` (prepare lists them).
    empty = _bytes(tmp_path / "v" / "wav" / "id10001" / "aaaaaaaaaaa" / "00001.wav", b"")
    assert voxceleb.read(tmp_path / "v") == common.Prepared([], [(str(empty), "zero-length file")])
    empty.unlink()
    with pytest.raises(common.CorpusError, match="no VoxCeleb audio files"):
        voxceleb.read(tmp_path / "v")
    bad = tmp_path / "bad_split.txt"
    bad.write_text("1 id10001/aaaaaaaaaaa/00001.wav\n4 id10001/aaaaaaaaaaa/00002.wav\n")
    with pytest.raises(common.CorpusError, match=f"{bad}:2: expected 'N idXXXXX"):
        voxceleb.read(root, iden_split=str(bad))
    other = tmp_path / "other_split.txt"
    other.write_text("1 id19999/zzzzzzzzzzz/00001.wav\n")
    with pytest.raises(common.CorpusError, match=f"{other}: lists none of the"):
        voxceleb.read(root, iden_split=str(other))
