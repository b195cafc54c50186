"""One synthetic utterance: a source-filter model in numpy/scipy.

Smooth controls at a 5 ms rate, upsampled linearly:
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

Each utterance draws an intensity (0.5-1.2 × the speaker's expressiveness) scaling its emotion
profile, plus independent noise per dimension, so neighbours overlap (happy/angry share high
arousal; sad, calm and neutral are close). It carries the drawn arousal/valence/dominance (in
[-1, 1]) for dimensional SER.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import signal

from emosup.data.synthetic.voices import EMOTION_PROFILES, KNOWN_EMOTIONS, VOWELS, Speaker

# Per-utterance noise on each emotion dimension (f0 st, log range, log tempo, dB, dB, tension):
# comparable to half the gap between neighbouring profiles, so classes overlap.
_EMO_NOISE = (0.8, 0.12, 0.06, 1.2, 2.0, 0.15)
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
    vowels = rng.integers(len(VOWELS), size=n_syl)
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
    f123 = np.where((vow >= 0)[:, None], VOWELS[vow] * spk.vowel_offsets[vow],
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
