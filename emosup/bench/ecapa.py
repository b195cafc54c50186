"""Row group `ecapa`: emosup's jitted ECAPA train step vs SpeechBrain's PyTorch step."""
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from emosup import audio, config_lib, optim, parallel
from emosup.bench import common
from emosup.models import ecapa
ECAPA_TARGETS = {"c512": 1.5, "c1024": 1.5}  # target: >= 1.5x SpeechBrain's PyTorch step


def _jax_ecapa_step(preset, wavs, labels, n_spk, dtype=None):
    """(run, compile seconds, compiled executable) of emosup's ECAPA train step on one batch
    and one device (the reference's single device: a fair pair on a multi-GPU machine);
    run() takes one step and returns its metrics. `dtype` (e.g. jnp.bfloat16) is EcapaTdnn's
    computation dtype (parameters stay float32)."""
    from emosup.trainers import pretrain
    from emosup.models.encoders import build_encoder, ecapa_model_config

    mesh = parallel.make_mesh(jax.devices()[:1])  # PyTorch's step runs on one device too
    enc = build_encoder(ecapa_model_config(preset, None if dtype is None else {"dtype": dtype}))
    feat_shape = (1, 1 + wavs.shape[1] // audio.HOP, 80)
    cfg = ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=2e-6, warmup_steps=0, schedule="constant",
                                         final_lr_fraction=1.0, grad_clip=0.0))
    tx, _ = optim.make_optimizer(cfg, 100)
    loss_cfg = config_lib.pretrain_config().loss  # AAM m=0.2, s=30
    state = pretrain.create_state("speaker", enc, loss_cfg, n_spk, tx, jax.random.key(0), feat_shape, mesh)
    batch = parallel.to_global({"audio": wavs, "lengths": np.full(len(wavs), wavs.shape[1], np.int32),
                                "labels": labels, "weights": np.ones(len(wavs), np.float32)}, mesh)
    t = time.perf_counter()
    # The executable the training loop runs (jit_train_step: state donated), compiled here so
    # that its cost analysis is at hand for the MFU.
    compiled = pretrain.jit_train_step("speaker", enc, loss_cfg, mesh).lower(state, batch).compile()
    box = [state]

    def run():
        box[0], m = compiled(box[0], batch)
        return jax.block_until_ready(m)

    run()
    compile_s = time.perf_counter() - t
    return run, compile_s, compiled


def _torch_ecapa_step(preset, wavs, labels, n_spk, device=None, sync=lambda: None, bf16=False):
    """SpeechBrain's step with the same loss and optimiser (Fbank, sentence mean norm,
    ECAPA_TDNN, AAM-softmax, Adam) on `device` (default CPU); `bf16`: under bfloat16 autocast."""
    import torch
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
    from speechbrain.processing.features import InputNormalization

    device = device or torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    kw = dict(ecapa.PRESETS[preset])
    model = ECAPA_TDNN(kw.pop("input_size", 80), **{k: v for k, v in kw.items() if k in (
        "channels", "kernel_sizes", "dilations", "attention_channels", "res2net_scale", "se_channels",
        "global_context", "lin_neurons")}).to(device)
    weight = torch.nn.init.xavier_uniform_(torch.empty(n_spk, kw["lin_neurons"]))
    weight = torch.nn.Parameter(weight.to(device))
    fbank = Fbank(n_mels=80).to(device)
    norm = InputNormalization(norm_type="sentence", std_norm=False).to(device)
    loss_fn = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30))
    opt = torch.optim.Adam(list(model.parameters()) + [weight], lr=1e-3, weight_decay=2e-6)
    x = torch.tensor(wavs, device=device)
    y = torch.tensor(labels, dtype=torch.long, device=device)[:, None]
    lens = torch.ones(len(wavs), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    model.train()

    def run():
        opt.zero_grad()
        with autocast:
            feats = norm(fbank(x), lens)
            emb = model(feats, lens)[:, 0].float()
        cos = torch.nn.functional.linear(torch.nn.functional.normalize(emb),
                                         torch.nn.functional.normalize(weight))
        loss = loss_fn(cos[:, None], y)
        loss.backward()
        opt.step()
        sync()

    return run


def bench_ecapa(presets, batch, seconds, repeats):
    """One row per preset: emosup's jitted train step vs SpeechBrain's, calls alternating
    round by round (both see the same load); medians, spreads and per-round ratio quartiles.
    On a GPU also a bfloat16 row per preset (EcapaTdnn dtype=bfloat16 vs SpeechBrain under
    bf16 autocast, batch x4 to keep a GPU busy) with model FLOP utilisation (`_mfu`)."""
    rows = []
    n = int(seconds * audio.SAMPLE_RATE)
    n_spk = 100
    on_gpu = jax.default_backend() == "gpu"
    variants = [("float32", None, batch)] + ([("bfloat16", jnp.bfloat16, 4 * batch)] if on_gpu else [])
    try:
        import speechbrain  # noqa: F401

        tdev, sync = common.torch_device()
        ref_name = f"SpeechBrain ECAPA_TDNN (PyTorch, {tdev.type})"
    except ImportError as e:
        tdev, ref_name = None, f"unavailable ({e.name} not installed)"
    for preset in presets:
        for dtype_name, dtype, b in variants:
            wavs = common.speechlike(b, n)
            labels = (np.arange(b) % n_spk).astype(np.int32)
            run_jax, compile_s, compiled = _jax_ecapa_step(preset, wavs, labels, n_spk, dtype)
            fns = {"jax": run_jax}
            if tdev is not None:
                fns["torch"] = _torch_ecapa_step(preset, wavs, labels, n_spk, tdev, sync,
                                                 bf16=dtype is not None)
            times = common.interleaved_times(fns, repeats)
            label = "" if dtype is None else f" {dtype_name}"
            row = common.paired_row(f"ECAPA train step{label} [{preset}] B={b} {seconds:g}s", times["jax"],
                                    times.get("torch"), compile_s=compile_s, reference=ref_name,
                                    devices=common.devices_of_pair(tdev.type if tdev else "cpu"))
            if dtype is not None:  # XLA's FLOP count / time / the device's bf16 peak
                row["mfu"] = common.mfu(compiled, row["emosup_s"])
            if dtype is None and preset in ECAPA_TARGETS and "reference_s" in row:
                common.set_target(row, ECAPA_TARGETS[preset], ref_name)
            rows.append(row)
            common.print_row(row)
            common.print_spread(row)
    return rows
