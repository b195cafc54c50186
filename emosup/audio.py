"""Audio I/O and the SpeechBrain-exact log-mel front end, in NumPy/JAX.

Two halves:

* File loading (NumPy, host side): ``load_audio`` / ``load_segment`` / ``audio_info`` read
  WAV/FLAC with soundfile, mix to mono, resample to 16 kHz with soxr and reject unusable
  files with an ``AudioError`` that names the file and the problem.
* Features (pure ``jnp``, jit-compatible): ``fbank`` reproduces
  ``speechbrain.lobes.features.Fbank(n_mels=80)`` and ``speechbrain_features`` the front end
  of SpeechBrain's ``EncoderClassifier.encode_batch`` for ECAPA (fbank followed by
  ``InputNormalization(norm_type="sentence", std_norm=False)``), so ported ECAPA weights see
  the same inputs they were trained on. ``fbank_np`` is a float64 NumPy twin of ``fbank``
  kept as a readable reference for the tests.

Layout is channels-last throughout: waveforms ``[B, N]``, features ``[B, T, F]``.
"""

from __future__ import annotations

import os
import re
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import soundfile as sf
import soxr

from emosup.errors import UserError

SAMPLE_RATE = 16000  # SpeechBrain STFT/Fbank default sample_rate (speechbrain/lobes/features.py)
HOP = 160  # 10 ms hop at 16 kHz: SpeechBrain STFT hop_length=10 ms (processing/features.py)
N_FFT = 400  # SpeechBrain Fbank n_fft=400; win_length=25 ms = 400 samples (lobes/features.py)
N_MELS = 80  # ECAPA-TDNN input size: Fbank(n_mels=80) in the spkrec-ecapa recipe
N_FREQ = N_FFT // 2 + 1  # one-sided STFT bins (torch.stft onesided=True)
F_MAX = SAMPLE_RATE // 2  # Fbank f_max default = sample_rate / 2 (lobes/features.py)
AMIN = 1e-10  # Filterbank amin: power clamp before log10 (processing/features.py)
TOP_DB = 80.0  # Filterbank top_db: per-utterance dynamic-range floor (processing/features.py)
LEN_EPS = 1e-6  # make_padding_mask eps in processing/features.py (speechbrain 1.1.2)
SILENCE_LEVEL = 1e-7  # |x| below this everywhere counts as a silent (unusable) file

PathLike = Union[str, os.PathLike]


class AudioError(UserError):
    """A file that cannot be used as audio; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------
# File loading
# --------------------------------------------------------------------------------------------


def _resampled_length(n: int, orig_sr: int, sample_rate: int) -> int:
    """Length soxr produces for ``n`` input samples: round-half-up of n * out / in.

    Integer arithmetic so that e.g. 1.5 -> 2 exactly as soxr does (checked in the tests).
    """
    return (2 * n * sample_rate + orig_sr) // (2 * orig_sr)


# libsndfile's header log line for a WAV whose `data` chunk claims more bytes than the file
# holds, e.g. "data : 16000 (should be 957)"; it then reads the samples that are there.
_WAV_DATA_CUT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Sizes that streaming writers put in the header when the length is not known up front.
_WAV_UNKNOWN_SIZE = 0x7FFFF000


def _check_truncated(p: str, info) -> None:
    """A WAV cut short (an interrupted copy or download) would silently load as a shorter clip."""
    if info.format not in ("WAV", "WAVEX"):
        return
    m = _WAV_DATA_CUT.search(info.extra_info or "")
    if m and int(m.group(2)) < int(m.group(1)) < _WAV_UNKNOWN_SIZE:
        raise AudioError(
            f"audio file '{p}': truncated (its header declares {int(m.group(1))} bytes of samples, "
            f"the file holds {int(m.group(2))}): copy or download it again, or leave it out"
        )


def _open_info(path: PathLike):
    """soundfile.info with our error messages (missing / unreadable / truncated / zero samples)."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise AudioError(f"audio file '{p}': not found")
    try:
        info = sf.info(p)
    except Exception as e:  # libsndfile raises several types for corrupt data
        raise AudioError(f"audio file '{p}': unreadable ({e})") from e
    _check_truncated(p, info)
    if info.frames <= 0:
        raise AudioError(f"audio file '{p}': empty (zero samples)")
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(
            f"audio file '{p}': unreadable (sample rate {info.samplerate}, "
            f"{info.channels} channels)"
        )
    return info


def _read_mono(path: PathLike, start: int = 0, frames: int = -1) -> np.ndarray:
    """Read ``frames`` samples from ``start`` (native rate), mix to mono float32 [n]."""
    p = os.fspath(path)
    try:
        data, _ = sf.read(p, start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"audio file '{p}': unreadable ({e})") from e
    if not np.isfinite(data).all():
        # Checked before resampling: soxr would smear one NaN over the whole filter span.
        raise AudioError(f"audio file '{p}': non-finite samples (NaN or Inf)")
    # Channel mean, like SpeechBrain recipes' mono downmix; float32 is exact enough here.
    return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]


def _check_silence(wav: np.ndarray, path: PathLike, what: str = "") -> None:
    if wav.size == 0 or float(np.max(np.abs(wav))) < SILENCE_LEVEL:
        raise AudioError(
            f"audio file '{os.fspath(path)}': silent{what} (peak |x| < {SILENCE_LEVEL:g})"
        )


def _resample(wav: np.ndarray, orig_sr: int, sample_rate: int) -> np.ndarray:
    if orig_sr == sample_rate:
        return wav
    # soxr "HQ" is soxr's default and what librosa calls res_type="soxr_hq".
    return np.asarray(soxr.resample(wav, orig_sr, sample_rate), dtype=np.float32)


def audio_info(path: PathLike, sample_rate: int = SAMPLE_RATE) -> Tuple[int, int, int]:
    """Cheap header read: ``(num_frames_at_16k, orig_sample_rate, channels)``.

    ``num_frames_at_16k`` equals ``len(load_audio(path))`` (soxr's output length), so
    manifests can store durations without decoding. Raises ``AudioError`` for a missing,
    unreadable, truncated or empty file (not for NaN/silence: that needs the samples).
    """
    info = _open_info(path)
    n = _resampled_length(int(info.frames), int(info.samplerate), sample_rate)
    return n, int(info.samplerate), int(info.channels)


def load_audio(
    path: PathLike, sample_rate: int = SAMPLE_RATE, *, check_silence: bool = True
) -> np.ndarray:
    """Read a WAV/FLAC file as mono float32 ``[N]`` at ``sample_rate``.

    Any channel count is averaged to mono, any rate is resampled with soxr (HQ).
    Raises ``AudioError`` ("not found", "unreadable", "truncated", "empty", "non-finite",
    "silent").
    """
    info = _open_info(path)
    wav = _read_mono(path)
    if wav.shape[0] == 0:  # header claimed frames but none decoded (truncated file)
        raise AudioError(f"audio file '{os.fspath(path)}': empty (zero samples)")
    wav = _resample(wav, int(info.samplerate), sample_rate)
    if check_silence:
        _check_silence(wav, path)
    return wav


def crop_or_pad(wav: np.ndarray, length: int, offset: int = 0) -> np.ndarray:
    """``wav[offset:offset+length]``, zero-padded at the end to exactly ``length``.

    Args: wav ``[N]``; returns ``[length]`` with wav's dtype.
    """
    if length < 0 or offset < 0:
        raise ValueError(f"crop_or_pad: length ({length}) and offset ({offset}) must be >= 0")
    wav = np.asarray(wav)
    seg = wav[offset : offset + length]
    if seg.shape[0] < length:
        seg = np.concatenate([seg, np.zeros(length - seg.shape[0], dtype=wav.dtype)])
    return seg


def load_segment(
    path: PathLike,
    length: int,
    offset: int = 0,
    sample_rate: int = SAMPLE_RATE,
    *,
    check_silence: bool = True,
) -> np.ndarray:
    """Read ``length`` samples starting at ``offset`` (both at ``sample_rate``) as float32.

    Files already at ``sample_rate`` are read partially (soundfile start/frames), others are
    loaded whole, resampled and sliced; either way the result equals
    ``crop_or_pad(load_audio(path), length, offset)``. Zero-padded past the end.
    ``check_silence`` applies to the returned *segment*: pass False for random crops that
    may legitimately land on digital silence (or past the end).
    """
    if length < 0 or offset < 0:
        raise ValueError(
            f"load_segment('{os.fspath(path)}'): length ({length}) and offset ({offset}) "
            "must be >= 0"
        )
    info = _open_info(path)
    if int(info.samplerate) == sample_rate:
        start = min(offset, int(info.frames))
        wav = _read_mono(path, start=start, frames=min(length, int(info.frames) - start))
    else:
        wav = _resample(_read_mono(path), int(info.samplerate), sample_rate)
        wav = wav[offset : offset + length]
    seg = crop_or_pad(wav, length)
    if check_silence:
        _check_silence(seg, path, f" segment [{offset}, {offset + length})")
    return seg


# --------------------------------------------------------------------------------------------
# Features: SpeechBrain Fbank(n_mels=80), exactly
# --------------------------------------------------------------------------------------------


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + hz / 700.0)  # HTK mel: Filterbank._to_mel


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)  # inverse HTK mel: Filterbank._to_hz


def _mel_matrix_f64() -> np.ndarray:
    """SpeechBrain's triangular filterbank ``[N_FREQ, N_MELS]`` in float64.

    n_mels+2 points evenly spaced in mel between 0 and 8000 Hz; filter i is centred at
    point i+1 with half-width equal to the spacing to its *left* neighbour (SpeechBrain uses
    one band for both sides, so triangles are symmetric in Hz, unlike librosa's), evaluated
    on the 201 linearly spaced STFT bin frequencies, peak 1, no area normalisation.
    """
    hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(float(F_MAX)), N_MELS + 2))
    band = (hz[1:] - hz[:-1])[:-1]
    centre = hz[1:-1]
    freqs = np.linspace(0.0, float(F_MAX), N_FREQ)
    slope = (freqs[:, None] - centre[None, :]) / band[None, :]
    return np.maximum(0.0, np.minimum(slope + 1.0, 1.0 - slope))


def _hamming_f64() -> np.ndarray:
    # torch.hamming_window(400) is periodic: denominator N, not N-1.
    n = np.arange(N_FFT, dtype=np.float64)
    return 0.54 - 0.46 * np.cos(2.0 * np.pi * n / N_FFT)


_MEL_F64 = _mel_matrix_f64()
_WIN_F64 = _hamming_f64()
_MEL_F32 = _MEL_F64.astype(np.float32)
_WIN_F32 = _WIN_F64.astype(np.float32)


def num_frames(n_samples: int) -> int:
    """STFT frames for ``n_samples`` with center=True: ``1 + n // HOP``."""
    return 1 + int(n_samples) // HOP


def _as_batch(wavs, xp):
    wavs = xp.asarray(wavs)
    if wavs.ndim == 1:
        wavs = wavs[None, :]
    if wavs.ndim != 2:
        raise ValueError(f"fbank: expected waveforms [N] or [B, N], got shape {wavs.shape}")
    return wavs


def fbank_np(wavs) -> np.ndarray:
    """Float64 NumPy reference of ``fbank``: ``[N]`` or ``[B, N]`` -> ``[B, T, 80]``."""
    x = _as_batch(wavs, np).astype(np.float64)
    b, n = x.shape
    t = num_frames(n)
    # center=True with pad_mode="constant": n_fft//2 zeros each side (torch.stft).
    xp = np.pad(x, ((0, 0), (N_FFT // 2, N_FFT // 2)))
    idx = np.arange(t)[:, None] * HOP + np.arange(N_FFT)[None, :]
    frames = xp[:, idx] * _WIN_F64  # [B, T, 400]
    spec = np.fft.rfft(frames, axis=-1)
    power = spec.real**2 + spec.imag**2  # spectral_magnitude(power=1): re^2 + im^2
    db = 10.0 * np.log10(np.maximum(power @ _MEL_F64, AMIN))  # multiplier 10, ref 1.0
    floor = db.max(axis=(1, 2), keepdims=True) - TOP_DB
    return np.maximum(db, floor)


def _frames(x: jax.Array) -> jax.Array:
    """Zero-padded (center=True) STFT frames ``[B, T, N_FFT]``.

    A gather of ``t * HOP + arange(N_FFT)`` from the padded signal. In a jitted fbank on
    CPU (jax 0.10.2, (8, 48000)) it measured 1.9 ms against 2.3 ms for hop chunks joined
    by a concatenation, and 2.2 ms for stacked chunks.
    """
    t = num_frames(x.shape[1])
    xp = jnp.pad(x, ((0, 0), (N_FFT // 2, N_FFT // 2)))
    idx = np.arange(t)[:, None] * HOP + np.arange(N_FFT)[None, :]
    return xp[:, idx]


def fbank(wavs, valid_frames=None) -> jax.Array:
    """SpeechBrain ``Fbank(n_mels=80)`` in jnp: ``[N]`` or ``[B, N]`` -> ``[B, T, 80]`` float32.

    T = 1 + N // 160. A 1-D input is treated as a batch of one (as ``encode_batch`` does).
    The dB floor (max - 80) is taken over each row's whole [T, F], padding included, exactly
    as SpeechBrain does on a padded batch. Jit-compatible (shapes are static).

    Uses ``jnp.fft.rfft``: on CPU for (8, 48000) it measured ~1.8 ms vs ~3.8 ms for a
    [400, 402] matmul DFT (jax 0.10.2, 2 cores), so the FFT is kept. Also measured and not
    kept (same input, CPU time): frames as three hop-sized slices of a reshaped signal
    (0.71 ms vs 0.32 ms for the gather), the batch split in two independent halves (no
    gain), and the mel product split into bands of bins x the filters they touch (no
    consistent gain over one dense [201, 80] product).

    valid_frames (optional int [B]): take each row's dB floor over its first valid_frames
    frames only, so a row padded at the end gets the floor its unpadded audio would get.
    """
    x = _as_batch(wavs, jnp).astype(jnp.float32)  # Fbank casts inputs to float32
    spec = jnp.fft.rfft(_frames(x) * _WIN_F32, axis=-1)  # [B, T, 201]
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    db = 10.0 * jnp.log10(jnp.maximum(power @ _MEL_F32, AMIN))
    if valid_frames is None:
        floor = jnp.max(db, axis=(1, 2), keepdims=True) - TOP_DB
    else:
        valid = jnp.arange(db.shape[1])[None, :, None] < jnp.asarray(valid_frames)[:, None, None]
        floor = jnp.max(jnp.where(valid, db, -jnp.inf), axis=(1, 2), keepdims=True) - TOP_DB
    return jnp.maximum(db, floor)


# --------------------------------------------------------------------------------------------
# Lengths and sentence mean normalisation (SpeechBrain conventions)
# --------------------------------------------------------------------------------------------


def relative_lengths(sample_lengths, max_len: int) -> jax.Array:
    """SpeechBrain ``wav_lens``: ``n / max_len`` as float32 ``[B]``.

    SpeechBrain divides Python ints in float64 and stores float32; for concrete inputs we do
    the same. Under jit the division is done in float32, which gives the identical value
    while lengths are below 2**24 samples (float division is correctly rounded).
    """
    if max_len <= 0:
        raise ValueError(f"relative_lengths: max_len must be > 0, got {max_len}")
    if isinstance(sample_lengths, jax.core.Tracer):
        return jnp.asarray(sample_lengths).astype(jnp.float32) / jnp.float32(max_len)
    n = np.asarray(sample_lengths, dtype=np.float64).reshape(-1)
    if (n < 0).any() or (n > max_len).any():
        raise ValueError(
            f"relative_lengths: sample lengths {n.astype(np.int64).tolist()} must lie in "
            f"[0, {max_len}]"
        )
    return jnp.asarray((n / max_len).astype(np.float32))


def frame_lengths(rel_lengths, n_frames: int) -> jax.Array:
    """Valid-frame counts as SpeechBrain's models see them: ``rel * T`` in float32 ``[B]``.

    Kept as a float on purpose: ECAPA's masks are ``arange(T) < rel * T``
    (dataio.length_to_mask called from ECAPA_TDNN.py), a float comparison.
    """
    return jnp.asarray(rel_lengths, dtype=jnp.float32) * jnp.float32(n_frames)


def sentence_mean_norm(feats, rel_lengths) -> jax.Array:
    """``InputNormalization(norm_type="sentence", std_norm=False)`` in eval mode.

    feats ``[B, T, F]``, rel_lengths ``[B]`` -> ``[B, T, F]``. Each utterance's mean over its
    valid frames is subtracted from *all* its frames (padding too, as avoid_padding_norm=False).
    Valid frames follow speechbrain 1.1.2 ``make_padding_mask``: frame i is valid iff
    ``i < rel*T - 1e-6`` in float32, i.e. the count is ceil(rel*T) up to that epsilon (not a
    round). An utterance with no valid frame is left unnormalised instead of becoming NaN.
    """
    feats = jnp.asarray(feats)
    t = feats.shape[1]
    rel = jnp.asarray(rel_lengths, dtype=jnp.float32)
    limit = rel * jnp.float32(t) - jnp.float32(LEN_EPS)
    mask = (jnp.arange(t, dtype=jnp.float32)[None, :] < limit[:, None]).astype(feats.dtype)
    count = jnp.sum(mask, axis=1)[:, None]  # [B, 1]
    total = jnp.einsum("bt,btf->bf", mask, feats)
    mean = total / jnp.maximum(count, 1.0)
    return feats - mean[:, None, :]


def speechbrain_features(
    wavs, sample_lengths: Optional[Union[Sequence[int], np.ndarray, jax.Array]] = None
) -> Tuple[jax.Array, jax.Array]:
    """Front end of SpeechBrain ``EncoderClassifier.encode_batch`` for ECAPA.

    wavs ``[B, N]`` (or ``[N]``) zero-padded at the end; sample_lengths ``[B]`` true lengths
    in samples (None = all full). Returns ``(feats [B, T, 80] float32, frame_lengths [B]
    float32)``: Fbank(n_mels=80) then sentence mean normalisation with the relative lengths;
    frame_lengths = rel * T for the model's masks. Jit-compatible.
    """
    x = _as_batch(wavs, jnp)
    feats = fbank(x)
    b, n = x.shape
    if sample_lengths is None:
        rel = jnp.ones((b,), dtype=jnp.float32)
    else:
        rel = relative_lengths(sample_lengths, n)
    return sentence_mean_norm(feats, rel), frame_lengths(rel, feats.shape[1])


def utterance_features(wavs, sample_lengths) -> Tuple[jax.Array, jax.Array]:
    """Per-utterance front end, independent of how utterances are batched and padded.

    wavs ``[B, N]`` zero-padded at the end, sample_lengths int ``[B]``. Row b equals, on its
    first ``1 + n_b // 160`` frames, what SpeechBrain's ``encode_batch`` front end (Fbank, then
    sentence mean normalisation) computes for that utterance alone, unpadded: frames before
    the end see the same samples and zeros, and the dB floor and the mean use only those
    frames. Returns (feats [B, T, 80], valid frame counts [B] as float32). Pair it with an
    encoder built with ``per_utterance_padding=True`` for embeddings equal to SpeechBrain's
    on each utterance alone.
    """
    x = _as_batch(wavs, jnp)
    n_valid = 1 + jnp.asarray(sample_lengths, jnp.int32) // HOP
    feats = fbank(x, n_valid)
    mask = (jnp.arange(feats.shape[1])[None, :] < n_valid[:, None]).astype(feats.dtype)
    mean = jnp.einsum("bt,btf->bf", mask, feats) / n_valid[:, None].astype(feats.dtype)
    return feats - mean[:, None, :], n_valid.astype(jnp.float32)
