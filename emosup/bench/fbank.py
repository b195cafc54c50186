"""Row group `fbank`: JAX filterbank features vs SpeechBrain's Fbank and librosa."""
import jax
import jax.numpy as jnp

from emosup import audio
from emosup.bench import common
FBANK_TARGET = 3.0  # target: JAX fbank >= 3x SpeechBrain's Fbank


def bench_fbank(batch, seconds, repeats):
    """JAX `audio.fbank` (jit) vs SpeechBrain `Fbank(n_mels=80)` and librosa on the same batch,
    all three called in turn each round; one row per reference."""
    n = int(seconds * audio.SAMPLE_RATE)
    wavs = common.speechlike(batch, n)
    f = jax.jit(audio.fbank)
    x = jnp.asarray(wavs)
    jax.block_until_ready(f(x))
    fns = {"jax": lambda: jax.block_until_ready(f(x))}
    refs, tdev = {}, None
    try:
        import torch
        from speechbrain.lobes.features import Fbank

        tdev, sync = common.torch_device()
        sb = Fbank(n_mels=80).to(tdev)
        xt = torch.tensor(wavs, device=tdev)

        def sb_call():
            with torch.no_grad():
                sb(xt)
            sync()

        fns["sb"] = sb_call
        refs["sb"] = f"SpeechBrain Fbank (PyTorch, {tdev.type})"
    except ImportError as e:
        refs["sb"] = f"unavailable ({e.name})"
    try:
        import librosa

        def lib():
            s = librosa.feature.melspectrogram(y=wavs, sr=audio.SAMPLE_RATE, n_fft=400, hop_length=160,
                                               win_length=400, window="hamming", n_mels=80, htk=True,
                                               norm=None, center=True, pad_mode="constant", power=2.0)
            return librosa.power_to_db(s, amin=1e-10, top_db=None)

        fns["librosa"] = lib
        refs["librosa"] = "librosa melspectrogram + power_to_db"
    except ImportError as e:
        refs["librosa"] = f"unavailable ({e.name})"
    times = common.interleaved_times(fns, repeats)
    rows = []
    name = f"Fbank 80 mels B={batch} {seconds:g}s"
    for key, ref_name in refs.items():
        devices = common.devices_of_pair(tdev.type if key == "sb" and tdev is not None else "cpu")
        row = common.paired_row(name, times["jax"], times.get(key), reference=ref_name, devices=devices)
        if key == "sb" and "reference_s" in row:
            common.set_target(row, FBANK_TARGET, ref_name)
        rows.append(row)
        common.print_row(row)
        common.print_spread(row)
    return rows
