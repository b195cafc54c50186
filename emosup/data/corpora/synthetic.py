"""The built-in synthetic emotional speech corpus (seeded, deterministic, written as WAV files).

Why: the pipeline, the clustering study and the tests need speech whose structure mirrors the
paper's premise (speaker identity dominates an utterance's global structure; emotion shifts it
*within* a speaker) without downloading a corpus. Every choice below is ours.

Signal model (source-filter, numpy/scipy; smooth controls at a 5 ms rate, upsampled linearly):
* Source: Rosenberg (1971) glottal pulses, read from a one-period table at the phase of a
  time-varying f0 (speaker median × emotion level; declination, per-syllable accents, slow drift,
  jitter at the control rate), shimmer per period, lip-radiation derivative, one-pole spectral
  tilt, pulse-synchronous aspiration noise (breathiness).
* Tract: a cascade of 5 Klatt-style resonators (unity gain at DC) with per-segment formants:
  vowel targets (Peterson & Barney 1952) × the speaker's vocal-tract scale × speaker-specific
  vowel offsets, or nasal/approximant targets; one sosfilt call per segment, state carried over.
* Consonants: fricatives and stop bursts as band-passed noise (a parallel branch), stop closures
  silent or with a voice bar. Syllables are random (C)V(C): content varies independently of
  emotion. Random pauses, lead/trail silence.
* Channel per speaker: high-pass, peaking EQ, a partial notch at 3.5-5 kHz, a noise floor. The
  level is set on the vowel RMS; a peak guard keeps |x| <= 0.95 (never clips).

Speakers alternate low voices (f0 median 90-140 Hz, tract scale ~0.96) and high voices
(170-260 Hz, ~1.12) and draw tilt, open/speed quotient, jitter, shimmer, breathiness, speaking
rate, accent habits, level, channel and an emotional style (expressiveness, per-emotion
multipliers). Splits `unlabelled`, `labelled`, `test` have disjoint speakers.

Emotions (profiles for neutral, happy, sad, angry, fear, disgust, surprise, calm) are offsets
*relative* to the speaker: f0 level (semitones), f0 range ×, tempo ×, loudness dB, breathiness
dB, tension (lax <-> pressed voice), jitter ×, and an arousal/valence/dominance point. Each
utterance draws an intensity (0.5-1.2 × the speaker's expressiveness) scaling the profile, plus
independent noise per dimension, so neighbours overlap (happy/angry share high arousal; sad,
calm and neutral are close). The largest f0 shift (3 semitones) is small beside the spread of
speaker medians (~18 semitones), and tract scale, vowel space and channel are speaker-only. The
manifest carries the drawn arousal/valence/dominance (in [-1, 1]) for dimensional SER.

Determinism: speaker parameters come from `default_rng([seed, 0, split, speaker])`, an
utterance's from `default_rng([seed, 1, split, speaker, emotion, k])` (emotion = its index in
`KNOWN_EMOTIONS`): the bytes do not depend on worker count, order or the other emotions listed.
Output: `out_dir/wav/<split>/<speaker>/<speaker>_<emotion>_<k>.wav` (16 kHz 16-bit PCM by
default), `out_dir/manifest.csv` (relative path, speaker, emotion, split, a/v/d, duration) and
`out_dir/corpus.json`, written last: when it matches the request the corpus is complete (cache).
Speed: ~3.5 ms of CPU per 2 s utterance; 276-302 utt/s with 2 workers on a 2-core VM that
other jobs shared (load ~2.2).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
from absl import logging
from scipy import signal

from emosup.data import manifest as manifest_lib

SYNTHETIC_SPLITS = ("unlabelled", "labelled", "test")
_SPLIT_PREFIX = {"unlabelled": "u", "labelled": "l", "test": "t"}
# Bump when the signal model changes, so cached corpora are regenerated.
GENERATOR_VERSION = "emosup-synthetic-1"
KNOWN_EMOTIONS = ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise", "calm")


@dataclasses.dataclass(frozen=True)
class EmotionProfile:
    """Offsets relative to the speaker's own voice (directions follow the vocal-expression
    literature, e.g. Juslin & Laukka 2003; magnitudes are ours)."""

    f0_st: float        # f0 level shift, semitones
    f0_range: float     # × the speaker's f0 excursions (accents, declination, drift)
    tempo: float        # × syllable rate
    loudness_db: float  # vowel level change
    breath_db: float    # aspiration noise change
    tension: float      # -1 lax … +1 pressed: open quotient, tilt, bandwidths
    jitter: float       # × the speaker's jitter
    avd: Tuple[float, float, float]  # arousal, valence, dominance in [-1, 1]


EMOTION_PROFILES: Dict[str, EmotionProfile] = {
    "neutral": EmotionProfile(0.0, 1.00, 1.00, 0.0, 0.0, 0.0, 1.0, (0.0, 0.0, 0.0)),
    "happy": EmotionProfile(2.0, 1.60, 1.08, 2.5, 0.0, 0.1, 1.0, (0.5, 0.7, 0.2)),
    "sad": EmotionProfile(-1.5, 0.70, 0.82, -4.0, 4.0, -0.4, 1.2, (-0.6, -0.6, -0.4)),
    "angry": EmotionProfile(2.2, 1.20, 1.10, 5.0, -2.0, 0.9, 1.3, (0.8, -0.6, 0.6)),
    "fear": EmotionProfile(3.0, 0.90, 1.15, 1.0, 3.0, 0.3, 1.8, (0.6, -0.7, -0.5)),
    "disgust": EmotionProfile(-0.8, 0.90, 0.88, 0.5, 0.0, 0.4, 1.1, (0.1, -0.7, 0.3)),
    "surprise": EmotionProfile(2.8, 1.60, 1.00, 2.0, 1.0, 0.1, 1.0, (0.6, 0.3, 0.0)),
    "calm": EmotionProfile(-0.7, 0.85, 0.92, -2.0, 2.0, -0.2, 1.0, (-0.4, 0.3, 0.0)),
}
# Per-utterance noise on each emotion dimension (f0 st, log range, log tempo, dB, dB, tension):
# comparable to half the gap between neighbouring profiles, so classes overlap.
_EMO_NOISE = (0.8, 0.12, 0.06, 1.2, 2.0, 0.15)

# Vowel F1-F3 (Hz), adult male averages from Peterson & Barney (1952): i ɪ ɛ æ ɑ ɔ ʊ u ʌ ɝ.
_VOWELS = np.array([[270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410],
                    [730, 1090, 2440], [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240],
                    [640, 1190, 2390], [490, 1350, 1690]], dtype=np.float64)
# Segment kinds.
_SIL, _VOWEL, _FRIC, _CLOSURE, _BURST, _NASAL, _APPROX = range(7)
# Consonants: (kind, voiced, noise centre Hz, noise bandwidth Hz, F1, F2, F3); our rough values.
_CONSONANTS = (
    (_FRIC, 0, 5000, 2000, 300, 1600, 2600), (_FRIC, 1, 5000, 2000, 300, 1600, 2600),  # s z
    (_FRIC, 0, 2800, 1200, 300, 1800, 2500), (_FRIC, 0, 4500, 4000, 300, 1100, 2400),  # ʃ f
    (_FRIC, 0, 1500, 2500, 500, 1500, 2500),                                           # h
    (_CLOSURE, 0, 900, 1500, 300, 900, 2300), (_CLOSURE, 0, 3800, 2000, 300, 1700, 2600),  # p t
    (_CLOSURE, 0, 2000, 1000, 300, 2000, 2400), (_CLOSURE, 1, 900, 1500, 300, 900, 2300),  # k b
    (_CLOSURE, 1, 3800, 2000, 300, 1700, 2600), (_CLOSURE, 1, 2000, 1000, 300, 2000, 2400),
    (_NASAL, 1, 0, 0, 250, 1100, 2300), (_NASAL, 1, 0, 0, 250, 1500, 2500),            # m n
    (_APPROX, 1, 0, 0, 360, 1300, 2700), (_APPROX, 1, 0, 0, 350, 1200, 1600),          # l r
    (_APPROX, 1, 0, 0, 300, 700, 2200), (_APPROX, 1, 0, 0, 280, 2200, 2900),           # w j
)
# Formant bandwidths (Hz) before speaker/tension scaling; in the range of Klatt (1980) defaults.
_BANDWIDTHS = np.array([70.0, 100.0, 140.0, 200.0, 260.0])
_CONS_FORMANTS = np.array([c[4:7] for c in _CONSONANTS], dtype=np.float64)
_CONS_VOICED = np.array([c[1] == 1 for c in _CONSONANTS])
# Voicing amplitude per segment kind (indexed by kind; unvoiced obstruents get 0 below).
_VOICING = np.array([0.0, 1.0, 0.25, 0.06, 0.0, 0.45, 0.7])  # sil V fric closure burst nasal approx
_PULSE_TABLE = 4096  # samples of one Rosenberg period; the phase indexes it
_REF_DB = -30.0     # vowel RMS of a neutral utterance at speaker level 0, dBFS
_PEAK = 0.95        # peak guard: never write a sample beyond this


@dataclasses.dataclass
class SyntheticConfig:
    """What to generate. Fields by keyword; `from_dict` takes a dict or ml_collections dict."""

    seed: int = 0
    speakers_unlabelled: int = 24
    speakers_labelled: int = 8
    speakers_test: int = 8
    utterances_per_speaker_emotion: int = 10
    emotions: Sequence[str] = ("neutral", "happy", "sad", "angry")
    min_duration: float = 1.5
    max_duration: float = 3.0
    sample_rate: int = 16000

    def __post_init__(self):
        self.emotions = tuple(self.emotions)
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the bad field."""
        def bad(field, why):
            raise ValueError(f"SyntheticConfig.{field}: {why}")
        for f, low in (("speakers_unlabelled", 0), ("speakers_labelled", 0),
                       ("speakers_test", 0), ("utterances_per_speaker_emotion", 1)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                bad(f, f"must be an integer >= {low}, got {v!r}")
        if self.speakers_unlabelled + self.speakers_labelled + self.speakers_test == 0:
            bad("speakers_unlabelled", "all three speaker counts are 0")
        if not self.emotions:
            bad("emotions", "is empty")
        for e in self.emotions:
            if e not in EMOTION_PROFILES:
                bad("emotions", f"unknown emotion {e!r}; known: {', '.join(KNOWN_EMOTIONS)}")
        if len(set(self.emotions)) != len(self.emotions):
            bad("emotions", f"repeats a name: {self.emotions}")
        if not 0.3 <= self.min_duration <= self.max_duration:
            bad("min_duration", f"need 0.3 <= min_duration <= max_duration, got "
                f"{self.min_duration} and {self.max_duration}")
        if not isinstance(self.sample_rate, (int, np.integer)) or self.sample_rate < 8000:
            bad("sample_rate", f"must be an integer >= 8000, got {self.sample_rate!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SyntheticConfig":
        d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"SyntheticConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["emotions"] = list(self.emotions)
        return d

    def num_speakers(self, split: str) -> int:
        return int(getattr(self, f"speakers_{split}"))

    def speaker_names(self, split: str) -> List[str]:
        return [f"{_SPLIT_PREFIX[split]}{i:03d}" for i in range(self.num_speakers(split))]


@dataclasses.dataclass
class Speaker:
    """A synthetic speaker's voice, channel and emotional style."""

    name: str
    f0: float                 # median f0, Hz
    formant_scale: float      # vocal-tract length factor (>1: shorter tract, higher formants)
    f45: np.ndarray           # F4, F5 in Hz
    bw_scale: float
    vowel_offsets: np.ndarray  # [10, 3] multipliers on the vowel table
    tilt: float               # one-pole low-pass coefficient on the source
    open_quotient: float
    speed_quotient: float
    jitter: float
    shimmer: float
    breath_db: float
    rate: float               # syllables per second
    declination_st: float
    accent_st: float
    accent_prob: float
    level_db: float
    snr_db: float
    channel_sos: np.ndarray   # [4, 6] high-pass, peaking EQ, antiresonance
    expressiveness: float
    style: np.ndarray         # [len(KNOWN_EMOTIONS), 6] multipliers on the profile offsets


def _peaking_sos(fc: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    """Peaking-EQ biquad as one sos row [6] (RBJ Audio EQ Cookbook formulas)."""
    w0, amp = 2 * np.pi * min(fc, 0.45 * sr) / sr, 10 ** (gain_db / 40)
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * amp, -2 * np.cos(w0), 1 - alpha * amp])
    a = np.array([1 + alpha / amp, -2 * np.cos(w0), 1 - alpha / amp])
    return np.concatenate([b / a[0], a / a[0]])


def make_speaker(seed: int, split: str, index: int, sample_rate: int) -> Speaker:
    """The deterministic voice of speaker `index` of `split`."""
    rng = np.random.default_rng([seed, 0, SYNTHETIC_SPLITS.index(split), index])
    high = index % 2 == 1  # alternate low and high voices so every split has both
    if high:
        f0, scale = rng.uniform(170, 260), np.clip(rng.normal(1.12, 0.05), 0.95, 1.2)
    else:
        f0, scale = rng.uniform(90, 140), np.clip(rng.normal(0.96, 0.05), 0.8, 1.1)
    # Fixed speaker spectrum: high-pass (microphone), a peaking EQ (room/microphone colour) and
    # a partial notch at 3.5-5 kHz (the hypopharyngeal antiresonance that varies by speaker).
    sr = sample_rate
    channel = np.concatenate([
        signal.butter(2, rng.uniform(60, 120), "highpass", fs=sr, output="sos"),
        _peaking_sos(rng.uniform(500, 4000), rng.uniform(-6, 6), rng.uniform(0.7, 2.0), sr)[None],
        _peaking_sos(rng.uniform(3500, 5000) * scale, rng.uniform(-15, -6), rng.uniform(2, 5),
                     sr)[None]])
    return Speaker(
        name=f"{_SPLIT_PREFIX[split]}{index:03d}", f0=float(f0), formant_scale=float(scale),
        f45=np.array([rng.uniform(3200, 3700), rng.uniform(4300, 4900)]) * scale,
        bw_scale=rng.uniform(0.8, 1.3), vowel_offsets=rng.normal(1.0, 0.06, (len(_VOWELS), 3)),
        tilt=rng.uniform(0.3, 0.85), open_quotient=rng.uniform(0.45, 0.7),
        speed_quotient=rng.uniform(1.5, 3.0), jitter=rng.uniform(0.003, 0.015),
        shimmer=rng.uniform(0.02, 0.08), breath_db=rng.uniform(-28, -16),
        rate=rng.uniform(3.5, 5.5), declination_st=rng.uniform(1, 3),
        accent_st=rng.uniform(1.5, 3.5), accent_prob=rng.uniform(0.25, 0.5),
        level_db=rng.normal(0, 4), snr_db=rng.uniform(30, 45), channel_sos=channel,
        expressiveness=rng.uniform(0.7, 1.3),
        style=np.clip(rng.normal(1.0, 0.2, (len(KNOWN_EMOTIONS), 6)), 0.5, 1.5))


def _segments(rng, spk: Speaker, n_speech: int, tempo: float, sr: int):
    """Random (C)V(C) syllables with pauses filling `n_speech` samples.

    Returns per-segment int arrays: kind, length (samples), syllable index (-1 in pauses),
    consonant row (-1 for none) and vowel row (-1 for none).
    """
    n_syl = max(1, int(round(n_speech / sr * spk.rate * tempo)))
    # All random draws up front (one call each): lexical content is independent of emotion.
    w = np.exp(rng.normal(0, 0.25, n_syl))
    w[-1] *= 1.3  # phrase-final lengthening
    has_onset, has_coda = rng.random(n_syl) < 0.8, rng.random(n_syl) < 0.25
    vowels = rng.integers(len(_VOWELS), size=n_syl)
    cons = rng.integers(len(_CONSONANTS), size=(n_syl, 2))
    pause = rng.random(n_syl) < 0.1
    pause_w = rng.uniform(0.5, 1.2, n_syl)
    kind, weight, syl, con, vow = [], [], [], [], []

    def add(k, wt, s, c=-1, v=-1):
        kind.append(k), weight.append(wt), syl.append(s), con.append(c), vow.append(v)

    def consonant(i, c, share):
        if _CONSONANTS[c][0] == _CLOSURE:  # a stop: closure, then a burst
            add(_CLOSURE, w[i] * share * 0.7, i, c), add(_BURST, w[i] * share * 0.3, i, c)
        else:
            add(_CONSONANTS[c][0], w[i] * share, i, c)

    for i in range(n_syl):
        if has_onset[i]:
            consonant(i, cons[i, 0], 0.3)
        add(_VOWEL, w[i] * 0.55, i, v=vowels[i])
        if has_coda[i]:
            consonant(i, cons[i, 1], 0.2)
        if pause[i] and i < n_syl - 1:
            add(_SIL, pause_w[i], -1)
    weight = np.asarray(weight)
    bounds = np.round(np.cumsum(weight) / weight.sum() * n_speech).astype(np.int64)
    return (np.asarray(kind), np.diff(bounds, prepend=0), np.asarray(syl), np.asarray(con),
            np.asarray(vow))


def _upsample(v: np.ndarray, hop: int, n: int) -> np.ndarray:
    """Linear interpolation of control values `v` (v[j] at sample j·hop) to `n` samples.

    np.repeat-based: several times cheaper than np.interp at audio rate.
    """
    ramp = np.tile(np.arange(hop) / hop, len(v) - 1)
    return (np.repeat(v[:-1], hop) + np.repeat(np.diff(v), hop) * ramp)[:n]


def _rbj_bandpass(fc: float, bw: float, sr: int):
    """Band-pass biquad with 0 dB peak gain (RBJ Audio EQ Cookbook formulas)."""
    fc = min(fc, 0.45 * sr)
    w0 = 2 * np.pi * fc / sr
    alpha = np.sin(w0) / (2 * max(fc / bw, 0.3))
    a0 = 1 + alpha
    return np.array([alpha, 0.0, -alpha]) / a0, np.array([1.0, -2 * np.cos(w0) / a0,
                                                          (1 - alpha) / a0])


try:  # scipy's Cython kernel behind sosfilt: same numbers without ~20 µs of checks per call
    from scipy.signal._sosfilt import _sosfilt as _sos_kernel
except ImportError:  # pragma: no cover - other scipy layouts use the public function
    _sos_kernel = None


def _sosfilt_inplace(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> None:
    """Filters contiguous float64 `x` [T] in place through `sos` [S, 6]; updates `zi` [S, 2]."""
    if _sos_kernel is not None:
        _sos_kernel(sos, x[None], zi[None])
    else:
        x[:], zi[:] = signal.sosfilt(sos, x, zi=zi)


def synthesize(spk: Speaker, emotion: str, rng: np.random.Generator, sample_rate: int,
               min_duration: float, max_duration: float) -> Tuple[np.ndarray, np.ndarray]:
    """One utterance. Returns (waveform float32 [T], |x| ≤ 0.95; arousal/valence/dominance [3]).

    Smooth quantities (f0 contour, envelopes) are computed at a 5 ms control rate and linearly
    upsampled; only the source, the filters and the noises run at audio rate.
    """
    sr = sample_rate
    prof = EMOTION_PROFILES[emotion]
    style = spk.style[KNOWN_EMOTIONS.index(emotion)]
    n = int(round(rng.uniform(min_duration, max_duration) * sr))
    hop = max(1, int(0.005 * sr))
    nf = n // hop + 2
    tf = np.arange(nf) * hop  # control frame → sample position

    # --- this utterance's emotion parameters: scaled profile + independent noise ---
    s = spk.expressiveness * rng.uniform(0.5, 1.2)
    z = rng.normal(0.0, _EMO_NOISE)
    f0_st = s * style[0] * prof.f0_st + z[0]
    f0_range = np.exp(s * style[1] * np.log(prof.f0_range) + z[1])
    tempo = np.exp(s * style[2] * np.log(prof.tempo) + z[2])
    loud_db = s * style[3] * prof.loudness_db + z[3]
    breath_db = spk.breath_db + s * style[4] * prof.breath_db + z[4]
    tension = float(np.clip(s * style[5] * prof.tension + z[5], -1, 1))
    avd = np.clip(s * np.asarray(prof.avd) + rng.normal(0, 0.1, 3), -1, 1)

    # --- segments: lead silence, syllables, trail silence ---
    lead = int(min(rng.uniform(0.05, 0.2), 0.15 * n / sr) * sr)
    trail = int(min(rng.uniform(0.05, 0.2), 0.15 * n / sr) * sr)
    kind, lens, syl, cons, vow = _segments(rng, spk, n - lead - trail, tempo, sr)
    kind = np.concatenate([[_SIL], kind, [_SIL]])
    lens = np.concatenate([[lead], lens, [trail]])
    syl, cons, vow = (np.concatenate([[-1], a, [-1]]) for a in (syl, cons, vow))
    keep = lens > 0
    kind, lens, syl, cons, vow = kind[keep], lens[keep], syl[keep], cons[keep], vow[keep]
    n_seg = len(kind)
    ends = np.cumsum(lens)
    starts = ends - lens
    seg_f = np.minimum(np.searchsorted(ends, tf, side="right"), n_seg - 1)  # segment per frame
    pos_f = np.clip((tf - starts[seg_f]) / lens[seg_f], 0.0, 1.0)

    # --- formants per segment: vowel targets, or the consonant's; × speaker scale ---
    f123 = np.where((vow >= 0)[:, None], _VOWELS[vow] * spk.vowel_offsets[vow],
                    _CONS_FORMANTS[np.maximum(cons, 0)])
    f123 = f123 * np.exp(rng.normal(0, 0.03, (n_seg, 3)))  # coarticulation variety
    freqs = np.concatenate([f123 * spk.formant_scale, np.tile(spk.f45, (n_seg, 1))], axis=1)
    freqs *= 1 + 0.02 * avd[1]  # smiling shortens the tract a little (positive valence)
    freqs = np.minimum(freqs, 0.45 * sr)
    bws = _BANDWIDTHS * spk.bw_scale * (1 - 0.2 * tension) * (1 + 0.02 * max(breath_db + 22, 0))
    bws = np.tile(bws, (n_seg, 1))
    bws[kind == _NASAL, 0] *= 2.0
    r = np.exp(-np.pi * bws / sr)
    c = 2 * r * np.cos(2 * np.pi * freqs / sr)
    sos = np.zeros((n_seg, 5, 6))
    sos[..., 0] = 1 - c + r * r   # unity gain at DC, as Klatt's resonators
    sos[..., 3], sos[..., 4], sos[..., 5] = 1.0, -c, r * r

    # --- amplitude envelope (control rate): voicing per segment, stress, vowel rise-fall ---
    voiced = (cons >= 0) & _CONS_VOICED[np.maximum(cons, 0)]
    seg_voice = _VOICING[kind] * np.where((kind == _FRIC) | (kind == _CLOSURE),
                                          voiced.astype(float), 1.0)
    n_syl = int(syl.max()) + 1
    accented = rng.random(n_syl) < spk.accent_prob
    seg_voice = seg_voice * np.where(syl >= 0, np.where(accented, 1.4, 1.0)[syl], 1.0)
    rise_fall = np.where(kind[seg_f] == _VOWEL, 0.55 + 0.45 * np.sin(np.pi * pos_f), 1.0)
    env_f = seg_voice[seg_f] * rise_fall
    env_f = np.convolve(np.pad(env_f, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    voice_env = _upsample(env_f, hop, n)

    # --- f0 contour (control rate, semitones re the speaker median) ---
    valid = syl >= 0
    syl_start = np.full(n_syl, n, dtype=np.int64)
    np.minimum.at(syl_start, syl[valid], starts[valid])
    syl_end = np.zeros(n_syl, dtype=np.int64)
    np.maximum.at(syl_end, syl[valid], ends[valid])
    syl_f = syl[seg_f]
    sy = np.maximum(syl_f, 0)
    pos_syl = np.clip((tf - syl_start[sy]) / np.maximum(syl_end[sy] - syl_start[sy], 1), 0, 1)
    heights = np.where(accented, spk.accent_st * rng.uniform(0.5, 1.2, n_syl), 0.0)
    contour = np.where(syl_f >= 0, heights[sy] * np.sin(np.pi * pos_syl) ** 2, 0.0)
    contour += spk.declination_st * (0.5 - tf / n)
    knots = np.arange(0, n + int(0.15 * sr), int(0.15 * sr))
    contour += np.interp(tf, knots, rng.normal(0, 0.5, len(knots)))  # slow drift
    log_f0 = (f0_st + f0_range * contour) / 12.0
    # Jitter at the control rate (≈ one pitch period), scaled up for e.g. fear.
    log_f0 += spk.jitter * prof.jitter ** s * rng.standard_normal(nf) / np.log(2)
    f0 = np.clip(spk.f0 * 2.0 ** _upsample(log_f0, hop, n), 50.0, min(600.0, sr / 8))

    # --- glottal source: Rosenberg pulses (table lookup of the phase), shimmer, breath ---
    phase = np.cumsum(f0) / sr
    period = phase.astype(np.int64)
    frac = phase - period
    oq = float(np.clip(spk.open_quotient * (1 - 0.25 * tension), 0.3, 0.85))
    sq = spk.speed_quotient * (1 + 0.3 * tension)
    tp, tn = oq * sq / (1 + sq), oq / (1 + sq)
    grid = np.arange(_PULSE_TABLE) / _PULSE_TABLE
    table = np.where(grid < tp, 0.5 * (1 - np.cos(np.pi * grid / tp)),
                     np.where(grid < tp + tn, np.cos(np.pi * (grid - tp) / (2 * tn)), 0.0))
    flow = table[(frac * _PULSE_TABLE).astype(np.intp)]
    shimmer = np.maximum(1 + spk.shimmer * rng.standard_normal(period[-1] + 1), 0.0)
    pulses = np.diff(flow, prepend=flow[0]) * shimmer[period]
    pulses *= 1.0 / (np.sqrt(np.mean(pulses ** 2)) + 1e-12)
    tilt = float(np.clip(spk.tilt - 0.3 * tension, 0.0, 0.95))
    pulses = signal.lfilter([1 - tilt], [1, -tilt], pulses)
    # Unit-variance white noise: [:n] aspiration (reversed: room noise), [n:] frication. Uniform
    # rather than Gaussian draws: 4x cheaper, and the filters make it Gaussian-like anyway.
    noise = (rng.random(2 * n) - 0.5) * np.sqrt(12.0)
    breath = noise[:n] * (10 ** (breath_db / 20))
    breath *= np.where(frac < oq, 1.0, 0.4)  # pulse-synchronous: louder while the glottis is open
    src = (pulses + breath) * voice_env

    # --- vocal tract: one cascade per segment, filter state carried across segments ---
    y = np.ascontiguousarray(src)
    zi = np.zeros((5, 2))
    for i in range(n_seg):
        _sosfilt_inplace(sos[i], y[starts[i]:ends[i]], zi)
    is_vowel = np.repeat(kind == _VOWEL, lens)
    vowel_rms = np.sqrt(np.mean(y[is_vowel] ** 2)) if is_vowel.any() else np.std(y) + 1e-9

    # --- frication and bursts: band-passed noise, a parallel branch ---
    ramp = max(int(0.005 * sr), 1)
    for i in np.nonzero((kind == _FRIC) | (kind == _BURST))[0]:
        a, b = starts[i], ends[i]
        _, voiced_c, fc, bw = _CONSONANTS[cons[i]][:4]
        fc = fc * spk.formant_scale if fc > 2000 else fc  # sibilants follow the tract size
        bb, aa = _rbj_bandpass(fc, bw, sr)
        chunk = signal.lfilter(bb, aa, noise[n + a:n + b])
        k = np.arange(b - a)
        env = np.minimum(1.0, np.minimum(k + 1, b - a - k) / ramp)
        amp = (0.8 if kind[i] == _BURST else 0.35) * (0.6 if voiced_c else 1.0)
        y[a:b] += chunk * env * (amp * vowel_rms / (np.sqrt(np.mean(chunk ** 2)) + 1e-12))

    # --- channel, level, noise floor, peak guard ---
    y = signal.sosfilt(spk.channel_sos, y)
    level = np.sqrt(np.mean(y[is_vowel] ** 2)) if is_vowel.any() else np.std(y) + 1e-9
    target_db = _REF_DB + spk.level_db + loud_db + rng.normal(0, 1.0)
    y *= 10 ** (target_db / 20) / (level + 1e-12)
    floor = signal.lfilter([1.0], [1.0, -0.7], noise[n - 1::-1])  # pinkish room noise
    y += floor * (10 ** ((target_db - spk.snr_db) / 20) / np.std(floor))
    peak = np.max(np.abs(y))
    if peak > _PEAK:
        y *= _PEAK / peak
    return y.astype(np.float32), avd


def _work(out_dir: str, cfg: Dict[str, Any], split: str, index: int,
          jobs: Sequence[Tuple[str, int]]) -> List[Tuple[str, float, Tuple[float, ...]]]:
    """Writes one speaker's utterances `jobs` = [(emotion, k)]; returns (relpath, seconds, avd)."""
    sr = cfg["sample_rate"]
    spk = make_speaker(cfg["seed"], split, index, sr)
    split_id = SYNTHETIC_SPLITS.index(split)
    (pathlib.Path(out_dir) / "wav" / split / spk.name).mkdir(parents=True, exist_ok=True)
    rows = []
    for emotion, k in jobs:
        rng = np.random.default_rng(
            [cfg["seed"], 1, split_id, index, KNOWN_EMOTIONS.index(emotion), k])
        wav, avd = synthesize(spk, emotion, rng, sr, cfg["min_duration"], cfg["max_duration"])
        rel = f"wav/{split}/{spk.name}/{spk.name}_{emotion}_{k:03d}.wav"
        sf.write(os.path.join(out_dir, rel), wav, sr, subtype="PCM_16", format="WAV")
        rows.append((rel, len(wav) / sr, tuple(float(v) for v in avd)))
    return rows


def _tasks(cfg: SyntheticConfig, chunk: int = 48):
    """(split, speaker index, [(emotion, k)]) pieces in manifest order."""
    tasks = []
    for split in SYNTHETIC_SPLITS:
        for i in range(cfg.num_speakers(split)):
            jobs = [(e, k) for e in cfg.emotions
                    for k in range(cfg.utterances_per_speaker_emotion)]
            tasks += [(split, i, jobs[j:j + chunk]) for j in range(0, len(jobs), chunk)]
    return tasks


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _pool_context():
    """fork where safe (cheap, needs no importable __main__); spawn once JAX/TF/torch or other
    threads run in this process, because forking running thread pools can deadlock."""
    threaded = threading.active_count() > 1 or any(
        m in sys.modules for m in ("jax", "tensorflow", "torch"))
    if threaded or sys.platform != "linux":
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("fork")


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def generate(out_dir, config: Optional[SyntheticConfig] = None, workers: Optional[int] = None,
             progress: bool = True) -> pathlib.Path:
    """Generates the corpus in `out_dir` (or finds it cached) and returns its manifest path.

    A complete corpus has `corpus.json` (written last) equal to this generator version and
    config; then nothing is written. Otherwise `wav/`, `manifest.csv` and `corpus.json` are
    removed and everything is generated again. `workers` processes (default: the usable CPUs;
    1 = this process) write the files; see `_pool_context` for fork vs spawn.
    """
    cfg = config if config is not None else SyntheticConfig()
    cfg.validate()
    out = pathlib.Path(out_dir).expanduser().absolute()
    manifest_path, meta_path = out / "manifest.csv", out / "corpus.json"
    cfg_json = json.loads(json.dumps(cfg.to_dict()))
    if meta_path.is_file() and manifest_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if meta.get("version") == GENERATOR_VERSION and meta.get("config") == cfg_json:
            logging.info("synthetic corpus: cached in %s (%s files)", out, meta.get("num_files"))
            return manifest_path
        logging.info("synthetic corpus: %s holds another config or version; regenerating", out)
    # Clean a previous (partial or different) corpus; only the names this module writes.
    meta_path.unlink(missing_ok=True)
    manifest_path.unlink(missing_ok=True)
    shutil.rmtree(out / "wav", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    tasks = _tasks(cfg)
    total = sum(len(t[2]) for t in tasks)
    workers = max(1, min(workers or _default_workers(), len(tasks)))
    results: List[Any] = [None] * len(tasks)
    t0 = last = time.monotonic()
    done = 0

    def report():
        nonlocal last
        now = time.monotonic()
        if progress and now - last >= 5.0:
            last = now
            logging.info("synthetic corpus: %d/%d utterances, %.0f utt/s", done, total,
                         done / max(now - t0, 1e-9))

    args = (str(out), cfg.to_dict())
    if workers > 1:
        try:
            ctx = _pool_context()
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futs = {pool.submit(_work, *args, split, idx, jobs): i
                        for i, (split, idx, jobs) in enumerate(tasks)}
                for fut in concurrent.futures.as_completed(futs):
                    i = futs[fut]
                    results[i] = fut.result()
                    done += len(tasks[i][2])
                    report()
        except concurrent.futures.process.BrokenProcessPool as e:
            # e.g. a spawned worker could not import the caller's __main__ (`python -`).
            logging.warning("synthetic corpus: worker processes failed (%s); continuing in "
                            "this process", e)
    for i, (split, idx, jobs) in enumerate(tasks):  # everything (workers=1) or what is left
        if results[i] is None:
            results[i] = _work(*args, split, idx, jobs)
            done += len(jobs)
            report()
    elapsed = time.monotonic() - t0

    utts = []
    for (split, idx, jobs), rows in zip(tasks, results):
        speaker = f"{_SPLIT_PREFIX[split]}{idx:03d}"
        for (emotion, _), (rel, seconds, avd) in zip(jobs, rows):
            utts.append(manifest_lib.Utterance(
                id=rel, path=str(out / rel), speaker=speaker, emotion=emotion, split=split,
                arousal=round(avd[0], 4), valence=round(avd[1], 4), dominance=round(avd[2], 4),
                extra={"duration": f"{seconds:.4f}"}))
    manifest_lib.write_manifest(utts, manifest_path, relative_to=out)
    _write_json_atomic(meta_path, {
        "version": GENERATOR_VERSION, "config": cfg_json, "num_files": len(utts),
        "speakers": {s: cfg.speaker_names(s) for s in SYNTHETIC_SPLITS},
        "hours": round(sum(float(u.extra["duration"]) for u in utts) / 3600, 4)})
    logging.info("synthetic corpus: wrote %d utterances to %s in %.1f s (%.0f utt/s, %d workers)",
                 total, out, elapsed, total / max(elapsed, 1e-9), workers)
    return manifest_path

