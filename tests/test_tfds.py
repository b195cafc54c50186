"""TFDS builders (emosup.data.tfds) on the readers' fake miniature corpora: every split of every
built config holds exactly the reader's rows (speaker, emotion, label index, A/V/D or NaN, fold,
corpus label, audio = load_audio × 32768 as int16); skipped files are logged, never written;
missing or wrong manual_dir errors name what was expected."""
import ast
import logging
import pathlib

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

import emosup
import emosup.data.tfds as et
from emosup.audio import load_audio
from emosup.data.corpora import crema_d, esd, iemocap, msp_podcast, ravdess, voxceleb
from emosup.data.corpora.common import CorpusError
from test_corpus_crema_d import make_repo as make_crema_d
from test_corpus_esd import _build_original as make_esd
from test_corpus_iemocap import make_release as make_iemocap
from test_corpus_msp_podcast import make_release as make_msp
from test_corpus_ravdess import _build as make_ravdess
from test_corpus_voxceleb import _build as make_voxceleb

FOUR = ["neutral", "happy", "sad", "angry"]
NAMES = ["emosup_msp_podcast", "emosup_iemocap", "emosup_crema_d", "emosup_ravdess",
         "emosup_esd", "emosup_voxceleb"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds_corpora")
    make_ravdess(d / "ravdess")
    make_voxceleb(d / "voxceleb")
    return {"iemocap": make_iemocap(d / "IEMOCAP_full_release"),
            "msp": make_msp(d / "MSP-PODCAST-Publish-1.12"),
            "crema_d": make_crema_d(d / "CREMA-D"), "ravdess": d / "ravdess",
            "esd": make_esd(d / "esd"), "voxceleb": d / "voxceleb"}


def _build(name, config, root, data_dir):
    b = tfds.builder(name, config=config, data_dir=str(data_dir))
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    return b


def _split_sets(builder):
    return {s: builder.as_dataset(split=s) for s in builder.info.splits}


def _check(builder, datasets, prepared, label_names, counts, native_16k=True):
    """Every split equals the reader's rows; `counts` (split → rows) is written out by hand."""
    info = builder.info
    assert info.version == "1.0.0"
    assert info.metadata["label_names"] == label_names
    assert info.features["audio"].sample_rate == 16000
    rows = {}
    for u in prepared.utterances:
        rows.setdefault(u.split, []).append(u)
    assert {s: len(r) for s, r in rows.items()} == counts
    assert {s: v.num_examples for s, v in info.splits.items()} == counts
    assert set(datasets) == set(counts)
    skipped = {p for p, _ in prepared.skipped}
    for split, ds in datasets.items():
        got = {}
        for ex in tfds.as_numpy(ds):
            got[ex["path"].decode()] = ex
        assert sorted(got) == sorted(u.path for u in rows[split])  # no duplicates, no extras
        assert not skipped & set(got)
        for u in rows[split]:
            ex = got[u.path]
            assert ex["speaker"].decode() == u.speaker
            assert ex["emotion"].decode() == (u.emotion or "")
            assert ex["label"] == (label_names.index(u.emotion) if u.emotion else -1)
            assert ex["corpus_label"].decode() == u.extra["corpus_label"]
            assert ex["fold"] == int(u.extra.get("fold", -1))
            for dim in ("arousal", "valence", "dominance"):
                want = getattr(u, dim)
                if want is None:
                    assert np.isnan(ex[dim])
                else:
                    assert ex[dim] == np.float32(want)
            wav = load_audio(u.path)
            audio = ex["audio"]
            assert audio.dtype == np.int16 and audio.shape == wav.shape
            ref = np.clip(np.round(wav.astype(np.float64) * 32768), -32768, 32767)
            np.testing.assert_array_equal(audio, ref.astype(np.int16))
            assert np.abs(audio - np.round(wav.astype(np.float64) * 32767)).max() <= 1
            if native_16k:  # a 16 kHz 16-bit file is stored bit-exactly
                np.testing.assert_array_equal(audio, sf.read(u.path, dtype="int16")[0])


def test_registered_with_configs():
    assert set(NAMES) <= set(tfds.list_builders(with_community_datasets=False))
    configs = {n: [c.name for c in tfds.builder_cls(n).BUILDER_CONFIGS] for n in NAMES}
    assert configs == {
        "emosup_msp_podcast": ["default", "four_class"],
        "emosup_iemocap": ["default", "fold1", "fold2", "fold3", "fold4", "fold5"],
        "emosup_crema_d": ["default"], "emosup_ravdess": ["speech", "speech_and_song"],
        "emosup_esd": ["all", "english", "mandarin"], "emosup_voxceleb": ["default"]}
    assert all(tfds.builder_cls(n).VERSION == "1.0.0" for n in NAMES)


def test_iemocap_default_and_fold1(corpora, tmp_path, caplog):
    root = corpora["iemocap"]
    with caplog.at_level(logging.WARNING, logger="emosup.data.tfds"):
        b = _build("emosup_iemocap", None, root, tmp_path)
    s5 = root / "Session5" / "sentences" / "wav" / "Ses05F_impro02"
    assert [r.getMessage() for r in caplog.records if r.name == "emosup.data.tfds"] == [
        f"emosup_iemocap: skipped 2 files under {root} (not in the dataset): "
        f"{s5 / 'Ses05F_impro02_M000.wav'}: not found; {s5 / 'Ses05F_impro02_M001.wav'}: "
        "zero-length file"]
    p = iemocap.read(root, test_session=5, check_silence=True)
    _check(b, _split_sets(b), p, FOUR, {"train": 5, "test": 1})
    assert b.info.supervised_keys == ("audio", "label")
    # fold1 through tfds.load: session 1 is the test split.
    _build("emosup_iemocap", "fold1", root, tmp_path)
    sets = tfds.load("emosup_iemocap/fold1", data_dir=str(tmp_path), download=False)
    b1 = tfds.builder("emosup_iemocap/fold1", data_dir=str(tmp_path))
    _check(b1, sets, iemocap.read(root, test_session=1), FOUR, {"train": 2, "test": 4})


def test_msp_podcast_default_and_four_class(corpora, tmp_path):
    root = corpora["msp"]
    classes = FOUR + ["fear", "disgust", "surprise", "contempt"]
    b = _build("emosup_msp_podcast", None, root, tmp_path)
    p = msp_podcast.read(root, check_silence=True)
    counts = {"test": 2, "train": 3, "dev": 2, "test3": 3}  # the silent file is skipped
    _check(b, _split_sets(b), p, classes, counts)
    assert len(p.skipped) == 3
    b4 = _build("emosup_msp_podcast", "four_class", root, tmp_path)
    p4 = msp_podcast.read(root, four_class=True, check_silence=True)
    _check(b4, _split_sets(b4), p4, FOUR, counts)
    labels = sorted(int(ex["label"]) for ex in tfds.as_numpy(b4.as_dataset(split="train")))
    assert labels == [-1, -1, 2]  # surprise, fear unlabelled; sad = 2


def test_crema_d_through_main(corpora, tmp_path, capsys):
    root = corpora["crema_d"]
    assert et.main(["emosup_crema_d", "--manual_dir", str(root), "--data_dir", str(tmp_path)]) == 0
    b = tfds.builder("emosup_crema_d", data_dir=str(tmp_path))
    p = crema_d.read(root)
    counts = {}
    for u in p.utterances:
        counts[u.split] = counts.get(u.split, 0) + 1
    assert sum(counts.values()) == 22 and set(counts) == {"train", "dev", "test"}
    _check(b, _split_sets(b), p, FOUR + ["fear", "disgust"], counts)
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out == (f"emosup_crema_d/default/1.0.0 in {b.data_dir}: " + ", ".join(
        f"{k} {counts[k]}" for k in sorted(counts)))
    with pytest.raises(SystemExit):
        et.main(["emosup_crema_d/fold1", "--manual_dir", str(root)])
    assert "unknown config 'fold1' of emosup_crema_d; expected one of default" in \
        capsys.readouterr().err


@pytest.mark.parametrize("config,song,n", [("speech", False, 22), ("speech_and_song", True, 24)])
def test_ravdess_48k_resampled(corpora, tmp_path, config, song, n):
    root = corpora["ravdess"]
    b = _build("emosup_ravdess", config, root, tmp_path)
    p = ravdess.read(root, song=song)
    counts = {}
    for u in p.utterances:
        counts[u.split] = counts.get(u.split, 0) + 1
    assert sum(counts.values()) == n
    classes = FOUR + ["fear", "disgust", "surprise", "calm"]
    _check(b, _split_sets(b), p, classes, counts, native_16k=False)
    ex = next(iter(tfds.as_numpy(b.as_dataset(split="train"))))
    assert ex["audio"].shape == (3200,)  # 0.2 s at 48 kHz → 16 kHz


def test_esd_english(corpora, tmp_path):
    root = corpora["esd"]
    b = _build("emosup_esd", "english", root, tmp_path)
    p = esd.read(root, languages="english")
    assert sorted({u.speaker for u in p.utterances}) == ["0011", "0012", "0013"]
    counts = {}
    for u in p.utterances:
        counts[u.split] = counts.get(u.split, 0) + 1
    assert sum(counts.values()) == 12
    _check(b, _split_sets(b), p, FOUR + ["surprise"], counts)


def test_voxceleb_unlabelled(corpora, tmp_path):
    root = corpora["voxceleb"]
    b = _build("emosup_voxceleb", None, root, tmp_path)
    p = voxceleb.read(root, check_silence=True)
    _check(b, _split_sets(b), p, [], {"train": 3, "dev": 1, "test": 2})
    assert b.info.supervised_keys == ("audio", "speaker")
    exs = list(tfds.as_numpy(b.as_dataset(split="train")))
    assert {int(e["label"]) for e in exs} == {-1} and {e["emotion"] for e in exs} == {b""}


def test_manual_dir_errors(tmp_path):
    b = tfds.builder("emosup_iemocap", data_dir=str(tmp_path / "data"))
    missing = tmp_path / "missing"
    with pytest.raises(AssertionError) as e:
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=missing))
    assert f"Manual directory {missing} does not exist or is empty" in str(e.value)
    assert "manual_dir: IEMOCAP_full_release (the folder holding Session1..Session5)" in \
        str(e.value)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "notes.txt").write_text("x")
    with pytest.raises(CorpusError, match=f"^{wrong}: no Session1..Session5 folders; is this "
                                          "IEMOCAP_full_release\\?$"):
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=wrong))
    silent = tmp_path / "cremad"
    silent.mkdir()
    sf.write(str(silent / "1076_MTI_SAD_XX.wav"), np.zeros(1600, np.float32), 16000)
    bc = tfds.builder("emosup_crema_d", data_dir=str(tmp_path / "data"))
    with pytest.raises(CorpusError, match=f"^{silent}: no usable utterances for emosup_crema_d "
                                          r"\(1 files skipped\)$"):
        bc.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=silent))


def test_int16_conversion_and_nothing_else_imports_tfds():
    x = np.array([-1.5, -1.0, -0.5 / 32768, 0.4 / 32768, 0.99999, 1.0, 2.0], np.float32)
    assert et.to_int16(x).tolist() == [-32768, -32768, 0, 0, 32767, 32767, 32767]
    pkg = pathlib.Path(emosup.__file__).parent
    offenders = []
    for f in sorted(pkg.rglob("*.py")):
        if f == pkg / "data" / "tfds.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] \
                if isinstance(node, ast.ImportFrom) and node.module else []
            offenders += [f"{f}: {n}" for n in names
                          if n.startswith(("tensorflow_datasets", "emosup.data.tfds"))]
    assert offenders == []
