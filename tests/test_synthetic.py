"""The synthetic corpus: layout, determinism, caching, WAV format, and that its structure is the
one the paper's premise needs (speaker dominates; emotion present within speakers, not trivial)."""
import json
import multiprocessing

import ml_collections
import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from emosup.data import manifest as manifest_lib
from emosup.data.synthetic import generator, speech, voices
from emosup.data.synthetic.generator import SyntheticConfig
from emosup.data.synthetic.voices import SYNTHETIC_SPLITS

SMALL = dict(seed=3, speakers_unlabelled=3, speakers_labelled=2, speakers_test=2,
             utterances_per_speaker_emotion=3, min_duration=0.5, max_duration=0.9)


def _gen(out, **kw):
    return generator.generate(out, SyntheticConfig(**{**SMALL, **kw}), workers=1, progress=False)


def _wavs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.wav"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "small"
    return out, _gen(out)


def test_layout_counts_and_speaker_disjoint_splits(small):
    out, path = small
    assert path == out / "manifest.csv"
    m = manifest_lib.read_manifest(path, allowed_splits=SYNTHETIC_SPLITS)
    assert len(m) == 7 * 4 * 3
    by_split = {s: m.select(split=s).speakers() for s in SYNTHETIC_SPLITS}
    assert by_split == {"unlabelled": ["u000", "u001", "u002"], "labelled": ["l000", "l001"],
                        "test": ["t000", "t001"]}
    for u in m:
        assert u.id == f"wav/{u.split}/{u.speaker}/{u.speaker}_{u.emotion}_{u.id[-7:-4]}.wav"
        assert u.path == str(out / u.id)
        assert -1 <= u.arousal <= 1 and -1 <= u.valence <= 1 and -1 <= u.dominance <= 1
    for spk in m.speakers():
        emos = [u.emotion for u in m.select(speakers=spk)]
        assert sorted(emos) == sorted(["neutral", "happy", "sad", "angry"] * 3)
    assert sorted(_wavs(out)) == sorted(u.id for u in m)  # nothing else was written
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["version"] == generator.GENERATOR_VERSION and meta["num_files"] == 84
    assert meta["config"] == SyntheticConfig(**SMALL).to_dict()


def test_wavs_are_16k_mono_pcm16_in_range_unclipped(small):
    out, path = small
    m = manifest_lib.read_manifest(path, allowed_splits=SYNTHETIC_SPLITS)
    for u in m:
        info = sf.info(u.path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        x, _ = sf.read(u.path, dtype="int16")
        assert 0.5 * 16000 - 1 <= len(x) <= 0.9 * 16000 + 1
        assert float(u.extra["duration"]) == pytest.approx(len(x) / 16000, abs=1e-4)
        peak = np.abs(x.astype(np.int32)).max()
        assert peak <= round(0.95 * 32767) + 1  # the peak guard; never clipped at 32767
        rms_db = 20 * np.log10(np.sqrt(np.mean((x / 32768.0) ** 2)))
        assert -60 < rms_db < -10, (u.id, rms_db)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_processes_write_the_same_bytes(small, tmp_path, monkeypatch, method):
    out, path = small
    monkeypatch.setattr(generator, "_pool_context",
                        lambda: multiprocessing.get_context(method))
    p2 = generator.generate(tmp_path / "w2", SyntheticConfig(**SMALL), workers=2, progress=False)
    assert _wavs(tmp_path / "w2") == _wavs(out)
    assert p2.read_bytes() == path.read_bytes()


def test_deterministic_independent_of_emotion_list_and_seeded(small, tmp_path):
    out, path = small
    ref = _wavs(out)
    # Same config, another directory: the same bytes.
    _gen(tmp_path / "again")
    assert _wavs(tmp_path / "again") == ref
    # An utterance does not depend on which other emotions the config lists.
    _gen(tmp_path / "sub", emotions=("sad",))
    sub = _wavs(tmp_path / "sub")
    assert len(sub) == 21 and all(sub[k] == ref[k] for k in sub)
    # Another seed gives other audio everywhere.
    _gen(tmp_path / "seed", seed=4)
    other = _wavs(tmp_path / "seed")
    assert sorted(other) == sorted(ref)
    assert all(other[k] != ref[k] for k in ref)


def test_cache_hit_writes_nothing_and_mismatch_regenerates(tmp_path):
    out = tmp_path / "c"
    _gen(out, utterances_per_speaker_emotion=2)
    files = sorted(out.rglob("*"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    assert _gen(out, utterances_per_speaker_emotion=2) == out / "manifest.csv"
    assert sorted(out.rglob("*")) == files
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    # Another config: regenerated cleanly (no file of the old one survives).
    junk = out / "wav" / "test" / "t000" / "junk.wav"
    junk.write_bytes(b"x")
    _gen(out, utterances_per_speaker_emotion=1)
    assert not junk.exists()
    assert len(_wavs(out)) == 7 * 4 * 1
    assert json.loads((out / "corpus.json").read_text())["config"][
        "utterances_per_speaker_emotion"] == 1
    # A partial run (no corpus.json) is regenerated too.
    (out / "corpus.json").unlink()
    before = (out / "manifest.csv").stat().st_mtime_ns
    _gen(out, utterances_per_speaker_emotion=1)
    assert (out / "corpus.json").is_file()
    assert (out / "manifest.csv").stat().st_mtime_ns != before


def test_config_construction_and_validation():
    cfg = SyntheticConfig.from_dict(ml_collections.ConfigDict(
        {"seed": 1, "emotions": ["calm", "fear"], "speakers_test": 1}))
    assert cfg.emotions == ("calm", "fear") and cfg.seed == 1 and cfg.speakers_unlabelled == 24
    assert SyntheticConfig(**cfg.to_dict()) == cfg
    assert SyntheticConfig(emotions=voices.KNOWN_EMOTIONS).emotions == voices.KNOWN_EMOTIONS
    with pytest.raises(ValueError, match="SyntheticConfig: unknown field.* speakers"):
        SyntheticConfig.from_dict({"speakers": 3})
    with pytest.raises(ValueError, match=r"SyntheticConfig.emotions: unknown emotion 'bored'"):
        SyntheticConfig(emotions=("happy", "bored"))
    with pytest.raises(ValueError, match=r"SyntheticConfig.emotions: repeats"):
        SyntheticConfig(emotions=("happy", "happy"))
    with pytest.raises(ValueError, match=r"SyntheticConfig.min_duration"):
        SyntheticConfig(min_duration=3.0, max_duration=2.0)
    with pytest.raises(ValueError, match=r"SyntheticConfig.speakers_test: must be an integer"):
        SyntheticConfig(speakers_test=-1)
    with pytest.raises(ValueError, match=r"SyntheticConfig.utterances_per_speaker_emotion"):
        SyntheticConfig(utterances_per_speaker_emotion=0)


def test_every_emotion_profile_synthesizes():
    spk = voices.make_speaker(0, "test", 1, 16000)
    for i, e in enumerate(voices.KNOWN_EMOTIONS):
        x, avd = speech.synthesize(spk, e, np.random.default_rng(i), 16000, 1.0, 1.0)
        assert x.shape == (16000,) and x.dtype == np.float32
        assert np.isfinite(x).all() and np.abs(x).max() <= 0.95 and x.std() > 1e-3
        assert avd.shape == (3,) and np.all(np.abs(avd) <= 1)


def test_segment_filter_kernel_equals_public_sosfilt():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(3000)
    sos = [signal.butter(4, f, fs=16000, output="sos") for f in (500, 2000, 4000)]
    y, zi = x.copy(), np.zeros((2, 2))
    ref, zr = np.empty_like(x), np.zeros((2, 2))
    for k, (a, b) in enumerate([(0, 1000), (1000, 1700), (1700, 3000)]):
        speech._sosfilt_inplace(sos[k], y[a:b], zi)
        ref[a:b], zr = signal.sosfilt(sos[k], x[a:b], zi=zr)
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(zi, zr)


# ---- structure: cheap numpy features -------------------------------------------------------

def _frames(x, size, hop):
    n = 1 + max(0, (len(x) - size) // hop)
    return x[np.arange(size)[None] + hop * np.arange(n)[:, None]]


def _mel_fb(sr=16000, n_fft=512, n_mels=40):
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731  (HTK mel formula)
    pts = 700 * (10 ** (np.linspace(0, mel(sr / 2), n_mels + 2) / 2595) - 1)
    f = np.linspace(0, sr / 2, n_fft // 2 + 1)
    lo, ce, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    return np.maximum(0, np.minimum((f - lo) / (ce - lo), (hi - f) / (hi - ce)))


def _features(x, fb, sr=16000):
    """(speaker features: MFCC-like mean+std; prosody: f0 median/spread, level, ..., f0 Hz)."""
    fr = _frames(x, 400, 160) * np.hanning(400)
    pw = np.abs(np.fft.rfft(fr, 512)) ** 2
    logmel = np.log(pw @ fb.T + 1e-10)
    e_db = 10 * np.log10(np.mean(fr ** 2, 1) + 1e-12)
    speech = e_db > e_db.max() - 30
    ceps = np.fft.irfft(logmel[speech], 2 * logmel.shape[1])[:, 1:20]  # DCT-like cepstrum
    spk = np.concatenate([ceps.mean(0), ceps.std(0)])
    # f0: peak of the normalised autocorrelation of 40 ms frames in 60-400 Hz.
    f2 = _frames(x, 640, 160)
    f2 = f2 - f2.mean(1, keepdims=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(f2, 1280)) ** 2, 1280)[:, :640]
    lo, hi = sr // 400, sr // 60
    lag = lo + np.argmax(ac[:, lo:hi], 1)
    voiced = (ac[np.arange(len(ac)), lag] / (ac[:, 0] + 1e-12) > 0.5) & speech[:len(ac)]
    lf = np.log2(sr / lag[voiced])
    hiband = (np.log(pw[speech][:, 128:].sum(1) + 1e-10)
              - np.log(pw[speech][:, :64].sum(1) + 1e-10)).mean()
    pros = np.array([np.median(lf), np.percentile(lf, 90) - np.percentile(lf, 10),
                     e_db[speech].mean(), e_db[speech].std(), voiced.mean(), hiband])
    return spk, pros


def _zscore(x):
    return (x - x.mean(0)) / (x.std(0) + 1e-9)


def _loo_1nn(x, y):
    z = _zscore(x)
    d = ((z[:, None] - z[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float(np.mean(y[d.argmin(1)] == y))


def _loo_centroid(x, y):
    """Leave-one-out nearest-class-mean accuracy on z-scored features."""
    z, labels, ok = _zscore(x), np.unique(y), 0
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        c = np.stack([z[rest & (y == lab)].mean(0) for lab in labels])
        ok += labels[((c - z[i]) ** 2).sum(1).argmin()] == y[i]
    return ok / len(y)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    cfg = SyntheticConfig(seed=0, speakers_unlabelled=0, speakers_labelled=6, speakers_test=0,
                          utterances_per_speaker_emotion=8, min_duration=1.0, max_duration=1.5)
    path = generator.generate(tmp_path_factory.mktemp("study"), cfg, workers=1, progress=False)
    m = manifest_lib.read_manifest(path, allowed_splits=SYNTHETIC_SPLITS)
    fb = _mel_fb()
    feats = [_features(sf.read(u.path)[0], fb) for u in m]
    return (m, np.array([f[0] for f in feats]), np.array([f[1] for f in feats]),
            np.array([u.speaker for u in m]), np.array([u.emotion for u in m]))


def test_speaker_dominates_global_structure(study):
    m, spk_x, _, spk, emo = study
    acc_spk, acc_emo = _loo_1nn(spk_x, spk), _loo_1nn(spk_x, emo)
    print(f"global 1-NN: speaker {acc_spk:.3f} (chance 1/6), emotion {acc_emo:.3f} (chance 1/4)")
    # Measured with seed 0: speaker 0.885, emotion 0.526 (seeds 0-5: 0.875-0.927, 0.41-0.53).
    assert acc_spk >= 0.75
    assert acc_spk >= acc_emo + 0.25  # a global neighbour shares the speaker, not the emotion


def test_emotion_present_within_speaker_but_not_trivial(study):
    m, _, pros, spk, emo = study
    accs = [_loo_centroid(pros[spk == s], emo[spk == s]) for s in np.unique(spk)]
    print("within-speaker emotion accuracy per speaker:", np.round(accs, 3), np.mean(accs))
    # Chance 0.25. Measured 0.531 with seed 0 (seeds 0-5: 0.48-0.62); confusions are
    # happy<->angry and neutral<->sad, as intended.
    assert 0.38 <= np.mean(accs) <= 0.8
    # Directions of the profiles, averaged within speakers: f0 and level angry/happy > sad.
    z = np.zeros_like(pros)
    for s in np.unique(spk):
        z[spk == s] = _zscore(pros[spk == s])
    mean = {e: z[emo == e].mean(0) for e in ("neutral", "happy", "sad", "angry")}
    assert mean["angry"][0] > mean["neutral"][0] > mean["sad"][0]    # f0 median
    assert mean["happy"][0] > mean["neutral"][0]
    assert mean["angry"][2] > mean["neutral"][2] > mean["sad"][2]    # level
    arousal = {e: np.mean([u.arousal for u in m if u.emotion == e]) for e in mean}
    assert arousal["angry"] > arousal["happy"] > arousal["neutral"] > arousal["sad"]


def test_measured_f0_follows_the_speaker(study):
    m, _, pros, spk, emo = study
    for s in np.unique(spk):
        voice = voices.make_speaker(0, "labelled", int(s[1:]), 16000)
        f0 = 2 ** np.median(pros[(spk == s) & (emo == "neutral"), 0])
        assert f0 == pytest.approx(voice.f0, rel=0.15), s  # measured worst 7.1 %
    low = [2 ** pros[spk == s, 0].mean() for s in ("l000", "l002", "l004")]
    high = [2 ** pros[spk == s, 0].mean() for s in ("l001", "l003", "l005")]
    assert max(low) < min(high)
