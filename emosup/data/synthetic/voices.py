"""Speakers and emotions of the synthetic corpus.

Speakers alternate low voices (f0 median 90-140 Hz, tract scale ~0.96) and high voices
(170-260 Hz, ~1.12) and draw tilt, open/speed quotient, jitter, shimmer, breathiness, speaking
rate, accent habits, level, channel and an emotional style (expressiveness, per-emotion
multipliers). Splits `unlabelled`, `labelled`, `test` have disjoint speakers.

Emotions (profiles for neutral, happy, sad, angry, fear, disgust, surprise, calm) are offsets
*relative* to the speaker: f0 level (semitones), f0 range ×, tempo ×, loudness dB, breathiness
dB, tension (lax <-> pressed voice), jitter ×, and an arousal/valence/dominance point. The
largest f0 shift (3 semitones) is small beside the spread of speaker medians (~18 semitones),
and tract scale, vowel space and channel are speaker-only.

A speaker's parameters come from `default_rng([seed, 0, split, speaker])` (split = its index
in `SYNTHETIC_SPLITS`).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import numpy as np
from scipy import signal

# The corpus's splits, each with its own speakers (u000.., l000.., t000..).
SYNTHETIC_SPLITS = ("unlabelled", "labelled", "test")
_SPLIT_PREFIX = {"unlabelled": "u", "labelled": "l", "test": "t"}
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
# Vowel F1-F3 (Hz), adult male averages from Peterson & Barney (1952): i ɪ ɛ æ ɑ ɔ ʊ u ʌ ɝ.
VOWELS = np.array([[270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410],
                   [730, 1090, 2440], [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240],
                   [640, 1190, 2390], [490, 1350, 1690]], dtype=np.float64)


def speaker_name(split: str, index: int) -> str:
    """The name of speaker `index` of `split`: u000, l003, t012, ..."""
    return f"{_SPLIT_PREFIX[split]}{index:03d}"


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
        name=speaker_name(split, index), f0=float(f0), formant_scale=float(scale),
        f45=np.array([rng.uniform(3200, 3700), rng.uniform(4300, 4900)]) * scale,
        bw_scale=rng.uniform(0.8, 1.3), vowel_offsets=rng.normal(1.0, 0.06, (len(VOWELS), 3)),
        tilt=rng.uniform(0.3, 0.85), open_quotient=rng.uniform(0.45, 0.7),
        speed_quotient=rng.uniform(1.5, 3.0), jitter=rng.uniform(0.003, 0.015),
        shimmer=rng.uniform(0.02, 0.08), breath_db=rng.uniform(-28, -16),
        rate=rng.uniform(3.5, 5.5), declination_st=rng.uniform(1, 3),
        accent_st=rng.uniform(1.5, 3.5), accent_prob=rng.uniform(0.25, 0.5),
        level_db=rng.normal(0, 4), snr_db=rng.uniform(30, 45), channel_sos=channel,
        expressiveness=rng.uniform(0.7, 1.3),
        style=np.clip(rng.normal(1.0, 0.2, (len(KNOWN_EMOTIONS), 6)), 0.5, 1.5))
