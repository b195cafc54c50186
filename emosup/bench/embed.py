"""Row group `embed`: WAV files to ECAPA embeddings, emosup vs SpeechBrain's encode_batch."""
import time

import jax
import numpy as np

from emosup.bench import common, reference
EMBED_TARGET = 2.0  # target, real-length utterances: at least 2x SpeechBrain's encode_batch


def _speechbrain_embed(paths, clf, batch):
    """SpeechBrain as a careful user embeds a list of files: read, sort by length, pad batches
    of `batch`, `encode_batch(wavs, wav_lens)` with relative lengths, no gradients."""
    import soundfile as sf
    import torch

    wavs = [sf.read(p, dtype="float32")[0] for p in paths]
    order = np.argsort([len(w) for w in wavs], kind="stable")
    out = [None] * len(wavs)
    with torch.no_grad():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            longest = max(len(wavs[i]) for i in idx)
            x = torch.zeros(len(idx), longest)
            for r, i in enumerate(idx):
                x[r, :len(wavs[i])] = torch.from_numpy(wavs[i])
            rel = torch.tensor([len(wavs[i]) / longest for i in idx])
            e = clf.encode_batch(x, rel).reshape(len(idx), -1).cpu().numpy()
            for r, i in enumerate(idx):
                out[i] = e[r]
    return np.stack(out)


def bench_embed(preset="c1024", n_files=48, batch=8, repeats=3):
    """Embedding `n_files` utterances of 1-8 s (mixed) with a random `preset` ECAPA, from WAV
    files to embeddings: `encoders.embed_paths` (length-sorted 1 s buckets, files decoded in
    threads) vs SpeechBrain's `EncoderClassifier.encode_batch` over the same files, length-
    sorted batches of the same size, PyTorch on the device `common.torch_device` picks (all
    cores on a CPU, CUDA beside a JAX GPU), emosup on one device; interleaved rounds. Compile time
    (one program per bucket length) is reported apart."""
    import tempfile

    from emosup import parallel
    from emosup.models.encoders import Encoder, build_encoder, ecapa_model_config, embed_paths

    name = f"embed {preset}, {n_files} files of 1-8 s"
    cfg = ecapa_model_config(preset)
    variables = build_encoder(cfg).init(jax.random.key(0), np.zeros((1, 101, 80), np.float32), None)
    enc = Encoder(model_config=cfg, variables=dict(variables), name=f"random {preset}")
    mesh = parallel.make_mesh(jax.local_devices()[:1])  # SpeechBrain's encode_batch has one device
    with tempfile.TemporaryDirectory() as tmp:
        paths = common.write_wavs(tmp, n_files, lo=1.0, hi=8.0)
        t0 = time.perf_counter()
        embed_paths(enc, paths, batch_per_device=batch, mesh=mesh, progress=False)  # compiles every bucket
        compile_s = time.perf_counter() - t0
        fns = {"emosup": lambda: embed_paths(enc, paths, batch_per_device=batch, mesh=mesh, progress=False)}
        ref_name, tdev = "SpeechBrain encode_batch (no reference)", None
        try:
            import torch

            tdev, _ = common.torch_device()  # CUDA when JAX has a GPU and PyTorch CUDA
            e = cfg["ecapa"]
            clf = reference.encoder_classifier(
                channels=list(e["channels"]), kernel_sizes=list(e["kernel_sizes"]), dilations=list(e["dilations"]),
                attention_channels=e["attention_channels"], lin_neurons=e["lin_neurons"], device=tdev)
            fns["reference"] = lambda: _speechbrain_embed(paths, clf, batch)
            ref_name = f"SpeechBrain encode_batch (torch {torch.__version__}, {tdev.type})"
        except ImportError:
            pass
        times = common.interleaved_times(fns, repeats)
    row = common.paired_row(name, times["emosup"], times.get("reference"), reference=ref_name,
                            compile_s=compile_s, files=n_files,
                            devices=common.devices_of_pair("cpu" if tdev is None else tdev.type))
    common.print_row(row)
    if "reference" in times:
        common.set_target(row, EMBED_TARGET, "SpeechBrain")
    common.print_spread(row)
    return [row]
