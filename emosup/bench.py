"""Speed, side by side with the references, in one process on one machine.

  python -m emosup.bench [--presets=tiny,c512,c1024] [--out=bench.json] [--quick] [--only=w2v2]
                         [--pipeline_presets=tiny,c512] [--profile_dir=DIR]

Rows (each: emosup time, reference time, ratio = reference / emosup, > 1 means emosup is faster):
* ECAPA train step (Fbank + mean norm + ECAPA + AAM-softmax + Adam update), Flax/jit vs
  SpeechBrain's PyTorch ECAPA_TDNN with the same loss and optimiser, on the same batch, calls
  alternating round by round; target (issue): c512 and c1024 >= 1.5x. On a GPU also a
  bfloat16 row per preset (EcapaTdnn dtype=bfloat16 vs SpeechBrain under bf16 autocast) with
  model FLOP utilisation;
* Fbank: JAX (jit) vs SpeechBrain `Fbank(n_mels=80)` vs librosa, interleaved; target >= 3x
  SpeechBrain;
* per-speaker k-means: batched JAX Lloyd vs a scikit-learn `KMeans` loop over speakers, from
  the same initial centres;
* wav2vec 2.0 forward, and forward + backward of loss = mean(last_hidden_state): Flax/jit vs
  HF `Wav2Vec2Model` (PyTorch) with the same random weights and input, dropout off on both
  sides (Flax train=False, torch eval mode; gradients are enabled for the backward), for a
  tiny config (B=4 x 2 s) and the wav2vec2-base shapes (12 layers x 768, B=2 x 4 s), float32;
  JAX and PyTorch calls alternate round by round, so both see the same machine load; target:
  forward+backward >= 1.2x. On a GPU also bfloat16 forward+backward with model FLOP
  utilisation (PyTorch on CUDA under bf16 autocast when it has CUDA);
* tf.data pipeline (group `pipeline`): batch rows/s that `crop_batches` / `pair_batches`
  deliver from WAV files vs rows/s the jitted train step of the same objective and batch
  consumes (ECAPA `--pipeline_presets`); ratio = pipeline rate / step rate, target >= 3x.
* embedding (group `embed`): 48 WAV files of 1-8 s (mixed) to c1024 ECAPA embeddings,
  `embed.embed_paths` vs SpeechBrain's `EncoderClassifier.encode_batch` on length-sorted
  batches of the same files; target >= 2x;
`--only=fbank,kmeans,ecapa,embed,w2v2,pipeline` runs just those groups of rows (default: all);
`--profile_dir=DIR` also writes a jax.profiler trace of each group (DIR/<group>), the first
thing to look at before optimising a row.
Times are medians over repeated calls after warm-up (compile time is reported apart); rows
with a target print MET / NOT MET, and the last lines count them.
PyTorch, SpeechBrain and librosa are the test extras; rows whose reference is missing say so.
"""
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from emosup import audio, cluster, config_lib, errors, optim, parallel
from emosup.models import ecapa


def _median_time(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _speechlike(batch, n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / audio.SAMPLE_RATE
    f0 = rng.uniform(90, 250, (batch, 1))
    x = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 12))
    return (0.1 * x + 0.01 * rng.normal(size=(batch, n))).astype(np.float32)


# ----------------------------------------------------------------------------- FLOPs and MFU
# Dense (no structured sparsity) bfloat16 tensor-core peaks, FLOP/s, by `device_kind`
# substring; the first match wins, so specific names come before their family. Sources: the
# NVIDIA H100 datasheet (SXM 989 TFLOPS, PCIe 756, NVL 835: the sheet's "1,979 / 1,513 /
# 1,671 with sparsity", halved), the NVIDIA H200 datasheet (SXM 989, NVL 835: likewise
# halved), the NVIDIA A100 datasheet (312 TFLOPS BF16 dense) and the NVIDIA L4 datasheet
# (121 TFLOPS: "242 with sparsity", halved); nvidia.com/en-us/data-center/{h100,h200,a100,l4}/.
# ("GH200" contains "H200": its Hopper GPU has the same 989 TFLOPS.)
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("NVIDIA L4", 121e12),
)


def _compiled_flops(compiled):
    """FLOPs of one call of a compiled XLA executable by XLA's own count (`cost_analysis`),
    or None when the backend gives none. A [m, k] @ [k, n] product counts 2·m·n·k."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends/plugins do not implement it
        return None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per executable
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def _peak_bf16_flops(device_kind):
    for key, peak in PEAK_BF16_FLOPS:
        if key in device_kind:
            return peak
    return None


def _mfu(compiled, seconds, device_kind=None):
    """Model FLOP utilisation of one call of `compiled` that took `seconds`: XLA's FLOP count
    / seconds / the device's dense bf16 peak (`PEAK_BF16_FLOPS`). None when the device (by
    default `jax.devices()[0].device_kind`) is not in the table or XLA reports no FLOPs."""
    peak = _peak_bf16_flops(jax.devices()[0].device_kind if device_kind is None else device_kind)
    flops = _compiled_flops(compiled)
    if peak is None or flops is None or not seconds > 0:
        return None
    return flops / seconds / peak


def _torch_device():
    """(torch device, sync fn): CUDA when JAX runs on a GPU and PyTorch has CUDA, else CPU, so
    both sides run on the same kind of device."""
    import torch

    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        # XLA's default float32 GPU matmuls use TF32: let PyTorch do so too.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda"), torch.cuda.synchronize
    torch.set_num_threads(os.cpu_count() or 1)
    return torch.device("cpu"), (lambda: None)


# ----------------------------------------------------------------------------- ECAPA step
ECAPA_TARGETS = {"c512": 1.5, "c1024": 1.5}  # issue: >= 1.5x SpeechBrain's PyTorch step


def _jax_ecapa_step(preset, wavs, labels, n_spk, dtype=None):
    """(run, compile seconds, compiled executable) of emosup's ECAPA train step on one batch;
    run() takes one step and returns its metrics. `dtype` (e.g. jnp.bfloat16) is EcapaTdnn's
    computation dtype (parameters stay float32)."""
    from emosup import train
    from emosup.models.speaker import build_encoder

    mesh = parallel.make_mesh()
    kwargs = dict(ecapa.PRESETS[preset])
    if dtype is not None:
        kwargs["dtype"] = dtype
    enc = build_encoder({"encoder": "ecapa", "ecapa": kwargs})
    feat_shape = (1, 1 + wavs.shape[1] // audio.HOP, 80)
    cfg = ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=2e-6, warmup_steps=0, schedule="constant",
                                         final_lr_fraction=1.0, grad_clip=0.0))
    tx, _ = optim.make_optimizer(cfg, 100)
    loss_cfg = config_lib.pretrain_config().loss  # AAM m=0.2, s=30
    state = train.create_state("speaker", enc, loss_cfg, n_spk, tx, jax.random.key(0), feat_shape, mesh)
    batch = parallel.to_global({"audio": wavs, "lengths": np.full(len(wavs), wavs.shape[1], np.int32),
                                "labels": labels, "weights": np.ones(len(wavs), np.float32)}, mesh)
    t = time.perf_counter()
    # The executable the training loop runs (jit_train_step: state donated), compiled here so
    # that its cost analysis is at hand for the MFU.
    compiled = train.jit_train_step("speaker", enc, loss_cfg, mesh).lower(state, batch).compile()
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

        tdev, sync = _torch_device()
        ref_name = f"SpeechBrain ECAPA_TDNN (PyTorch, {tdev.type})"
    except ImportError as e:
        tdev, ref_name = None, f"unavailable ({e.name} not installed)"
    for preset in presets:
        for dtype_name, dtype, b in variants:
            wavs = _speechlike(b, n)
            labels = (np.arange(b) % n_spk).astype(np.int32)
            run_jax, compile_s, compiled = _jax_ecapa_step(preset, wavs, labels, n_spk, dtype)
            fns = {"jax": run_jax}
            if tdev is not None:
                fns["torch"] = _torch_ecapa_step(preset, wavs, labels, n_spk, tdev, sync,
                                                 bf16=dtype is not None)
            times = _interleaved_times(fns, repeats)
            label = "" if dtype is None else f" {dtype_name}"
            row = _paired_row(f"ECAPA train step{label} [{preset}] B={b} {seconds:g}s", times["jax"],
                              times.get("torch"), compile_s=compile_s, reference=ref_name)
            if dtype is not None:  # XLA's FLOP count / time / the device's bf16 peak
                row["mfu"] = _mfu(compiled, row["emosup_s"])
            if dtype is None and preset in ECAPA_TARGETS and "reference_s" in row:
                _set_target(row, ECAPA_TARGETS[preset], ref_name)
            rows.append(row)
            _print_row(row)
            _print_spread(row)
    return rows


# ----------------------------------------------------------------------------- Fbank
FBANK_TARGET = 3.0  # issue: JAX fbank >= 3x SpeechBrain's Fbank


def bench_fbank(batch, seconds, repeats):
    """JAX `audio.fbank` (jit) vs SpeechBrain `Fbank(n_mels=80)` and librosa on the same batch,
    all three called in turn each round; one row per reference."""
    n = int(seconds * audio.SAMPLE_RATE)
    wavs = _speechlike(batch, n)
    f = jax.jit(audio.fbank)
    x = jnp.asarray(wavs)
    jax.block_until_ready(f(x))
    fns = {"jax": lambda: jax.block_until_ready(f(x))}
    refs = {}
    try:
        import torch
        from speechbrain.lobes.features import Fbank

        tdev, sync = _torch_device()
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
    times = _interleaved_times(fns, repeats)
    rows = []
    name = f"Fbank 80 mels B={batch} {seconds:g}s"
    for key, ref_name in refs.items():
        row = _paired_row(name, times["jax"], times.get(key), reference=ref_name)
        if key == "sb" and "reference_s" in row:
            _set_target(row, FBANK_TARGET, ref_name)
        rows.append(row)
        _print_row(row)
        _print_spread(row)
    return rows


# ----------------------------------------------------------------------------- wav2vec2
# A tiny config with the real conv stack (receptive field 400, hop 320) and a small encoder.
W2V2_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
# (name, HF config overrides, batch, seconds, rounds): the tiny model's calls take
# milliseconds, where a loaded machine's scheduling dominates, so it gets a larger input
# (B=4 x 2 s, still the tiny config) and more rounds than the base model. --quick: 1/3.
W2V2_ROWS = (("tiny", W2V2_TINY, 4, 2.0, 21), ("base", {}, 2, 4.0, 6))
W2V2_TARGET = 1.2  # forward+backward: at least 1.2x HF PyTorch on the same machine (issue)


def _interleaved_times(fns, repeats, warmup=1):
    """{name: [seconds per call]}: each round calls every fn once, in turn, so all of them
    see the same machine load (on a shared machine load comes and goes within seconds)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def _paired_row(name, jax_times, ref_times, **extra):
    """A row from interleaved timings: medians, min-max spreads, the quartiles of the
    per-round ratios (reference / emosup of the same round) and the best-of ratio (fastest
    reference / fastest emosup call: each side's least disturbed run)."""
    row = {"name": name, "emosup_s": statistics.median(jax_times), **extra,
           "emosup_spread_s": [min(jax_times), max(jax_times)], "repeats": len(jax_times)}
    if ref_times:
        per_round = sorted(r / j for r, j in zip(ref_times, jax_times))
        q = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
        row.update(reference_s=statistics.median(ref_times),
                   reference_spread_s=[min(ref_times), max(ref_times)],
                   ratio_quartiles=[q[0], q[2]], ratio_best=min(ref_times) / min(jax_times))
    return row


def bench_wav2vec2(quick=False):
    """wav2vec 2.0 rows, float32 forward and forward+backward (``W2V2_ROWS``; medians over
    interleaved rounds). On a GPU also bfloat16 forward+backward rows with model FLOP
    utilisation (``_mfu``); PyTorch runs on CUDA there when it can."""
    from emosup.convert.hf_wav2vec2 import convert_state
    from emosup.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    try:
        import torch
        import transformers
    except ImportError as e:  # the HF model also supplies the weights: no reference, no row
        print(f"wav2vec2 rows skipped: {e.name} not installed", flush=True)
        return []
    on_gpu = jax.default_backend() == "gpu"
    tdev, sync = _torch_device()
    ref_name = f"HF Wav2Vec2Model {transformers.__version__} (PyTorch, {tdev.type})"
    rows = []
    for name, kwargs, batch, seconds, rounds in W2V2_ROWS:
        rounds = max(2, rounds // 3) if quick else rounds
        torch.manual_seed(0)
        hf = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**kwargs)).eval()  # HF init
        state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
        hf = hf.to(tdev)
        cfg = Wav2Vec2Config.from_hf_dict(hf.config.to_dict())
        params = jax.device_put(convert_state(state, cfg)["params"])
        variants = [("float32", jnp.float32, batch)]
        if on_gpu:  # a GPU wants a larger batch to be busy; bf16 is how one trains there
            variants.append(("bfloat16", jnp.bfloat16, 4 * batch))
        for dtype_name, dtype, b in variants:
            model = Wav2Vec2Model(cfg, dtype=dtype)
            wavs = _speechlike(b, int(seconds * audio.SAMPLE_RATE))
            x, xt = jnp.asarray(wavs), torch.from_numpy(wavs).to(tdev)
            autocast = torch.autocast(tdev.type, dtype=torch.bfloat16, enabled=dtype != jnp.float32)

            def loss(p, model=model, x=x):
                return jnp.mean(model.apply({"params": p}, x).last_hidden_state.astype(jnp.float32))

            def torch_fwd(xt=xt, autocast=autocast):
                with torch.no_grad(), autocast:
                    hf(xt)
                sync()

            def torch_bwd(xt=xt, autocast=autocast):
                hf.zero_grad(set_to_none=True)
                with autocast:
                    out = hf(xt).last_hidden_state
                out.float().mean().backward()
                sync()

            whats = [("forward+backward", jax.value_and_grad(loss), torch_bwd)]
            if dtype == jnp.float32:
                whats.insert(0, ("forward", lambda p, model=model, x=x: model.apply(
                    {"params": p}, x).last_hidden_state, torch_fwd))
            for what, fn, torch_fn in whats:
                t = time.perf_counter()
                compiled = jax.jit(fn).lower(params).compile()
                jax.block_until_ready(compiled(params))
                compile_s = time.perf_counter() - t
                fns = {"jax": lambda c=compiled: jax.block_until_ready(c(params)), "torch": torch_fn}
                times = _interleaved_times(fns, rounds)
                label = "" if dtype == jnp.float32 else f" {dtype_name}"
                row = _paired_row(f"wav2vec2 {what}{label} [{name}] B={b} {seconds:g}s", times["jax"],
                                  times["torch"], compile_s=compile_s, reference=ref_name)
                if dtype == jnp.bfloat16:  # model FLOPs (XLA's count) / time / the device's peak
                    row["mfu"] = _mfu(compiled, row["emosup_s"])
                if what == "forward+backward" and dtype == jnp.float32:
                    _set_target(row, W2V2_TARGET, ref_name)
                rows.append(row)
                _print_row(row)
                _print_spread(row)
    return rows


def _set_target(row, ratio, ref_name):
    """Marks a paired row with its target: at least `ratio` times faster than `ref_name`."""
    row["target"] = f">= {ratio:g}x {ref_name}"
    row["meets_target"] = row["reference_s"] / row["emosup_s"] >= ratio


def _print_spread(row):
    """The second line of an interleaved row: spreads, ratio quartiles, target, MFU."""
    parts = [f"emosup {row['emosup_spread_s'][0] * 1e3:.1f}-{row['emosup_spread_s'][1] * 1e3:.1f} ms"]
    if row.get("reference_spread_s"):
        lo, hi = row["reference_spread_s"]
        q1, q3 = row["ratio_quartiles"]
        parts += [f"reference {lo * 1e3:.1f}-{hi * 1e3:.1f} ms",
                  f"per-round ratio quartiles {q1:.2f}-{q3:.2f}x", f"best-of ratio {row['ratio_best']:.2f}x"]
    if "mfu" in row:
        parts.append("MFU " + ("unknown (device peak not known)" if row["mfu"] is None
                               else f"{100 * row['mfu']:.1f}%"))
    text = f"    over {row['repeats']} interleaved rounds: " + ", ".join(parts)
    if "meets_target" in row:
        text += f"\n    target {row['target']}: {'MET' if row['meets_target'] else 'NOT MET'}"
    print(text, flush=True)


# ----------------------------------------------------------------------------- embedding
EMBED_TARGET = 2.0  # embedding real-length utterances: at least 2x SpeechBrain's encode_batch (issue)


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
            e = clf.encode_batch(x, rel).reshape(len(idx), -1).numpy()
            for r, i in enumerate(idx):
                out[i] = e[r]
    return np.stack(out)


def bench_embed(preset="c1024", n_files=48, batch=8, repeats=3):
    """Embedding `n_files` utterances of 1-8 s (mixed) with a random `preset` ECAPA, from WAV
    files to embeddings: `embed.embed_paths` (length-sorted 1 s buckets, files decoded in
    threads) vs SpeechBrain's `EncoderClassifier.encode_batch` over the same files, length-
    sorted batches of the same size, torch on all cores; interleaved rounds. Compile time
    (one program per bucket length) is reported apart."""
    import tempfile

    from emosup.embed import Encoder, embed_paths
    from emosup.models.speaker import build_encoder

    name = f"embed {preset}, {n_files} files of 1-8 s"
    cfg = {"encoder": "ecapa", "ecapa": dict(ecapa.PRESETS[preset]), "features": {"n_mels": 80, "mean_norm": "sentence"}}
    variables = build_encoder(cfg).init(jax.random.key(0), np.zeros((1, 101, 80), np.float32), None)
    enc = Encoder(model_config=cfg, variables=dict(variables), name=f"random {preset}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = _write_wavs(tmp, n_files, lo=1.0, hi=8.0)
        t0 = time.perf_counter()
        embed_paths(enc, paths, batch_per_device=batch, progress=False)  # compiles every bucket
        compile_s = time.perf_counter() - t0
        fns = {"emosup": lambda: embed_paths(enc, paths, batch_per_device=batch, progress=False)}
        ref_name = "SpeechBrain encode_batch (no reference)"
        try:
            import torch
            from speechbrain.inference.classifiers import EncoderClassifier
            from speechbrain.lobes.features import Fbank
            from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier
            from speechbrain.processing.features import InputNormalization

            torch.set_num_threads(os.cpu_count() or 1)
            e = cfg["ecapa"]
            model = ECAPA_TDNN(input_size=80, channels=list(e["channels"]), kernel_sizes=list(e["kernel_sizes"]),
                               dilations=list(e["dilations"]), attention_channels=e["attention_channels"],
                               lin_neurons=e["lin_neurons"])
            clf = EncoderClassifier(modules={
                "compute_features": Fbank(n_mels=80),
                "mean_var_norm": InputNormalization(norm_type="sentence", std_norm=False),
                "embedding_model": model, "classifier": Classifier(input_size=e["lin_neurons"], out_neurons=2)},
                hparams={})
            clf.mods.eval()
            fns["reference"] = lambda: _speechbrain_embed(paths, clf, batch)
            ref_name = f"SpeechBrain encode_batch (torch {torch.__version__})"
        except ImportError:
            pass
        times = _interleaved_times(fns, repeats)
    row = _paired_row(name, times["emosup"], times.get("reference"), reference=ref_name,
                      compile_s=compile_s, files=n_files)
    _print_row(row)
    if "reference" in times:
        _set_target(row, EMBED_TARGET, "SpeechBrain")
    _print_spread(row)
    return [row]


# ----------------------------------------------------------------------------- tf.data pipeline
PIPELINE_TARGET = 3.0  # the pipeline must deliver >= 3x the examples/s the train step consumes


def _write_wavs(folder, n, seed=0, lo=2.0, hi=6.0):
    """n speech-like 16-bit WAVs of lo-hi seconds (uniform) at 16 kHz (what the corpora hold) -> paths."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        wav = _speechlike(1, int(rng.uniform(lo, hi) * audio.SAMPLE_RATE), seed=seed * 100_003 + i)[0]
        paths.append(os.path.join(folder, f"utt{i:04d}.wav"))
        sf.write(paths[-1], wav, audio.SAMPLE_RATE, subtype="PCM_16")
    return paths


def _pipeline_times(make_iter, batches, repeats):
    """Seconds per batch of fresh iterators (different steps each time), after a warm-up
    batch each (TensorFlow start-up, thread pools, the first file opens)."""
    per_batch = []
    for r in range(repeats):
        it = make_iter(start_step=r * (batches + 1), num_steps=(r + 1) * (batches + 1))
        next(it)
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        per_batch.append((time.perf_counter() - t) / batches)
    return per_batch


def _train_step_times(objective, preset, batch, n_spk, repeats):
    """(seconds per step, compile seconds) of the objective's jitted train step (emosup.train,
    the pretrain config's loss and optimiser) on this host-local batch."""
    from emosup import train
    from emosup.models.speaker import build_encoder

    cfg = config_lib.pretrain_config(preset=preset, objective=objective)
    mesh = parallel.make_mesh()
    model_config = train.model_config_from(cfg)
    encoder = build_encoder(model_config)
    tx, _ = optim.make_optimizer(cfg.optim, 100)
    feat_shape = (1, 1 + batch["audio"].shape[-1] // audio.HOP, model_config["features"]["n_mels"])
    state = train.create_state(objective, encoder, cfg.loss, n_spk, tx, jax.random.key(0), feat_shape, mesh)
    step = train.jit_train_step(objective, encoder, cfg.loss, mesh)
    gbatch = parallel.to_global(batch, mesh)
    box = [state]

    def run():
        box[0], m = step(box[0], gbatch)
        jax.block_until_ready(m)

    t = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return times, compile_s


def bench_pipeline(presets, quick=False, n_files=200, n_speakers=20,
                   objectives=("speaker", "contrastive"), sizes=None):
    """tf.data throughput vs the train step's consumption, in batch rows per second.

    Data: ``n_files`` WAVs (2-6 s) in a temporary folder, ``n_speakers`` speakers. Rows:
    * speaker objective: ``pipeline.crop_batches`` with the pretrain/speaker config's crop and
      batch (2 s, 32), vs the ``speaker`` train step (AAM-softmax);
    * pair objectives: ``pipeline.pair_batches`` (anchor, positive, K=2 negatives; a pair table
      from ``pairs.build_pair_table`` on random embeddings) with the demo arms' crop and
      anchors per step (1 s, 8), vs the ``contrastive`` train step;
    for each ECAPA preset. ratio = pipeline rows/s / train-step rows/s; target >= 3x.
    ``objectives`` picks the setups; ``sizes`` {objective: (crop seconds, batch)} overrides
    the configs' (the tests use small ones).
    """
    import tempfile

    from emosup.data import pairs, pipeline

    speaker_cfg = config_lib.speaker_config()
    arms = config_lib.experiment_config().arms
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        paths = _write_wavs(folder, n_files)
        labels = (np.arange(n_files) % n_speakers).astype(np.int32)
        skip_log = pipeline.SkipLog()
        lengths, _ = pipeline.scan_utterances(paths, skip_log)
        emb = np.random.default_rng(0).standard_normal((n_files, 192)).astype(np.float32)
        table = pairs.build_pair_table(emb, labels, k=2, num_negatives=2, seed=0)
        setups = (
            ("speaker", "crop_batches", speaker_cfg.data.crop_seconds, speaker_cfg.batch_size,
             lambda **kw: pipeline.crop_batches(paths, labels, lengths, **kw)),
            ("contrastive", f"pair_batches K={table.num_negatives}", arms.pretrain_crop_seconds,
             arms.pretrain_batch_size,
             lambda **kw: pipeline.pair_batches(paths, labels, lengths, table, **kw)),
        )
        for objective, source, seconds, batch_size, make in setups:
            if objective not in objectives:
                continue
            seconds, batch_size = (sizes or {}).get(objective, (seconds, batch_size))
            crop = int(round(seconds * audio.SAMPLE_RATE))

            def make_iter(start_step, num_steps, make=make, crop=crop, batch_size=batch_size):
                return make(crop_samples=crop, global_batch=batch_size, local_batch=batch_size,
                            process_index=0, seed=0, start_step=start_step, num_steps=num_steps,
                            skip_log=skip_log)

            per_batch = _pipeline_times(make_iter, batches=4 if quick else 12, repeats=2 if quick else 3)
            batch = next(make_iter(0, 1))
            crops = int(np.prod(batch["lengths"].shape))
            for preset in presets:
                steps, compile_s = _train_step_times(objective, preset, batch, n_speakers,
                                                     repeats=2 if quick else 4)
                pipe_rate = batch_size / statistics.median(per_batch)
                step_rate = batch_size / statistics.median(steps)
                row = {"name": f"tf.data {source} [{objective} step, {preset}] B={batch_size} {seconds:g}s",
                       # emosup_s = the pipeline's time per batch, reference_s = the step's: the
                       # printed ratio is then pipeline rate / step rate.
                       "emosup_s": statistics.median(per_batch), "reference_s": statistics.median(steps),
                       "reference": f"jitted {objective} train step [{preset}]", "compile_s": compile_s,
                       "pipeline_rows_per_s": pipe_rate, "step_rows_per_s": step_rate,
                       "crops_per_row": crops // batch_size,
                       "pipeline_spread_s": [min(per_batch), max(per_batch)],
                       "step_spread_s": [min(steps), max(steps)],
                       "target": f">= {PIPELINE_TARGET:g}x",
                       "meets_target": pipe_rate >= PIPELINE_TARGET * step_rate}
                rows.append(row)
                _print_row(row)
                print(f"    pipeline {pipe_rate:.1f} rows/s ({pipe_rate * crops / batch_size:.0f} crops/s; "
                      f"{min(per_batch) * 1e3:.0f}-{max(per_batch) * 1e3:.0f} ms per batch), train step "
                      f"{step_rate:.1f} rows/s ({min(steps) * 1e3:.0f}-{max(steps) * 1e3:.0f} ms per step)\n"
                      f"    target pipeline >= {PIPELINE_TARGET:g}x the train step: "
                      f"{'MET' if row['meets_target'] else 'NOT MET'}", flush=True)
    return rows


# ----------------------------------------------------------------------------- k-means
def _kmeans_corpus(n_utt, n_spk, dim, seed=0):
    """Synthetic utterance embeddings [n_utt, dim] and speaker ids for the k-means rows.

    Speaker sizes vary (gamma(2) weights, mean n_utt / n_spk); an utterance is its speaker's
    centre + (one of 5 emotion offsets + within-speaker variation) in a shared 8-d subspace +
    a little isotropic noise: Lloyd then needs several iterations per speaker, as on real
    embeddings (isotropic 192-d noise converges in 2). Built in chunks so the temporaries
    stay small next to x in the peak-memory figure."""
    rng = np.random.default_rng(seed)
    w = rng.gamma(2.0, size=n_spk)
    spk = rng.choice(n_spk, size=n_utt, p=w / w.sum())
    basis = np.linalg.qr(rng.standard_normal((dim, 8)))[0].T.astype(np.float32)
    emo = rng.standard_normal((5, 8)).astype(np.float32)
    centres = rng.standard_normal((n_spk, dim), dtype=np.float32) * np.float32(2 / np.sqrt(dim))
    x = np.empty((n_utt, dim), np.float32)
    for i in range(0, n_utt, 1 << 16):
        n = min(1 << 16, n_utt - i)
        z = emo[rng.integers(0, 5, n)] + rng.standard_normal((n, 8), dtype=np.float32)
        x[i:i + n] = (centres[spk[i:i + n]] + np.float32(0.3) * (z @ basis)
                      + rng.standard_normal((n, dim), dtype=np.float32) * np.float32(0.05 / np.sqrt(dim)))
    return x, spk


def _peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sklearn_kmeans_loop(x, spk, k, seed, cap_s, labels, segments, between):
    """scikit-learn per speaker (speakers with > k utterances), from the k-means++ centres
    per_speaker_kmeans draws for run 0 (kmeans_plusplus_init with the same seed words and
    speaker ids, in the same padded shapes), n_init=1, lloyd. Times only the KMeans fits,
    under the faster of 1 OpenMP thread or the default (measured on a sample), or says why
    it did not run within cap_s. The loop runs in ``segments`` interleaved slices of the
    speakers, each after a call of ``between`` (a timed run of ours), so that both sides see
    the same machine load. Also counts the speakers whose labels equal ``labels`` (ours)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    xs = cluster._l2n(x)
    _, order, starts, sizes = cluster._speaker_rows(spk)
    big = np.nonzero(sizes > k)[0]
    jobs = []  # (points, init, our labels) per speaker, in per_speaker_kmeans's padded shapes
    for slot_ids, m, _ in cluster._plan(sizes[big], x.shape[1], 1 << 26, 1):
        ids = big[slot_ids[slot_ids >= 0]]
        padded, mask = cluster._pack(xs, order, starts, sizes, ids, m)
        init = cluster.kmeans_plusplus_init((seed, 0), padded, mask, k, speaker_ids=ids)
        for j, s in enumerate(ids):
            rows = order[starts[s]:starts[s] + sizes[s]]
            jobs.append((padded[j, :sizes[s]], init[j], labels[rows]))

    def fit(job):
        return KMeans(n_clusters=k, init=job[1], n_init=1, algorithm="lloyd").fit(job[0]).labels_

    sample = jobs[::max(1, len(jobs) // 60)]
    per_fit = {}
    for threads in (1, None):
        with threadpool_limits(limits=threads, user_api="openmp"):
            fit(sample[0])
            t = time.perf_counter()
            for job in sample:
                fit(job)
            per_fit[threads] = (time.perf_counter() - t) / len(sample)
    threads = min(per_fit, key=per_fit.get)
    setting = f"{'1 OpenMP thread' if threads == 1 else 'default threads'} (per fit: 1 thread " \
              f"{per_fit[1] * 1e3:.2f} ms, default {per_fit[None] * 1e3:.2f} ms)"
    estimate = per_fit[threads] * len(jobs)
    if estimate > cap_s:
        for _ in range(segments):
            between()
        return {"status": f"not run (> cap: ~{estimate:.0f} s estimated > {cap_s:.0f} s)",
                "estimate_s": estimate, "setting": setting}
    equal, seg_s, total = 0, [], 0.0
    with threadpool_limits(limits=threads, user_api="openmp"):
        for i in range(segments):
            between()
            t = time.perf_counter()
            for job in jobs[i::segments]:
                equal += int(np.array_equal(fit(job), job[2]))
            seg_s.append(time.perf_counter() - t)
            total += seg_s[-1]
            if total > cap_s:
                return {"status": f"not finished within the {cap_s:.0f} s cap", "setting": setting}
    return {"status": "ok", "seconds": total, "segments_s": seg_s, "setting": setting,
            "speakers": len(jobs), "labels_equal": equal}


def _kmeans_child(n_utt, n_spk, dim, k, repeats, cap_s, mode):
    """One size in a fresh process (run by bench_kmeans): prints one JSON line of figures.

    mode "fixed": cluster.per_speaker_kmeans(k) (the pair service's clustering with k fixed),
    cold (first call, compiles) and warm, then the scikit-learn loop. mode "silhouette":
    build_pair_table(k=None) -- per_speaker_kmeans for k = 2..6 (sharing compiled programs),
    silhouettes, choice of k per speaker and the pair draws: the pair service's default."""
    from emosup.data import pairs

    x, spk = _kmeans_corpus(n_utt, n_spk, dim)
    out = {"utterances": n_utt, "speakers_present": int(len(np.unique(spk))),
           "data_mb": x.nbytes / 2 ** 20, "rss_after_data_mb": _peak_rss_mb(), "warm_s": []}
    if mode == "fixed":
        run = lambda: cluster.per_speaker_kmeans(x, spk, k, seed=0)
    else:
        run = lambda: pairs.build_pair_table(x, spk, k=None, k_range=(2, 3, 4, 5, 6), seed=0)

    def timed():
        t = time.perf_counter()
        run()
        out["warm_s"].append(time.perf_counter() - t)

    t = time.perf_counter()
    result = run()
    out["cold_s"] = time.perf_counter() - t
    timed()
    out["peak_rss_mb"] = _peak_rss_mb()  # before any scikit-learn work
    if mode == "fixed":
        sizes = np.bincount(spk)
        out["speakers_clustered"] = int((sizes > k).sum())
        out["sklearn"] = _sklearn_kmeans_loop(x, spk, k, 0, cap_s, result, max(1, repeats), timed)
    else:
        out["k_counts"] = result.stats["k_counts"]
        for _ in range(repeats):
            timed()
    print("KMEANS_JSON " + json.dumps(out), flush=True)


def bench_kmeans(sizes=(10_000, 100_000, 1_000_000), n_speakers=10_000, dim=192, k=4, repeats=3,
                 cap_s=600.0, silhouette_sizes=(10_000, 100_000, 1_000_000), target=10.0,
                 target_size=100_000):
    """Pair-table clustering at scale: for each number of utterances (n_speakers speakers,
    dim-d), in a fresh subprocess each so that peak memory (ru_maxrss) is that size's own:
    per_speaker_kmeans with k fixed (cold = first call incl. compiles, warm = median of
    ``repeats`` + 1 further calls, spread min-max) vs the scikit-learn per-speaker KMeans loop
    (same k-means++ init, n_init=1, lloyd; not run when estimated above cap_s; run in
    ``repeats`` slices interleaved with our calls), and the silhouette choice of k
    (build_pair_table(k=None)) at ``silhouette_sizes``. Ratio = sklearn loop / our median
    warm call; its spread pairs each sklearn slice with our call just before it."""
    import subprocess

    rows, per_1k = [], []
    jobs = [(n, "fixed") for n in sizes] + [(n, "silhouette") for n in silhouette_sizes]
    for n, mode in jobs:
        code = (f"from emosup import bench; bench._kmeans_child({n}, {n_speakers}, {dim}, {k}, "
                f"{repeats}, {cap_s}, {mode!r})")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("KMEANS_JSON ")]
        if proc.returncode or not line:
            print(f"k-means {n} utt ({mode}) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(line[0][len("KMEANS_JSON "):])
        warm = statistics.median(r["warm_s"]) if r["warm_s"] else r["cold_s"]
        what = f"k={k}" if mode == "fixed" else "k by silhouette 2..6"
        row = {"name": f"pair clustering {n // 1000}k utt, {r['speakers_present']} spk, {dim}-d, {what}",
               "emosup_s": warm, "compile_s": r["cold_s"] - warm, "cold_s": r["cold_s"],
               "warm_spread_s": [min(r["warm_s"] or [warm]), max(r["warm_s"] or [warm])],
               "peak_rss_mb": r["peak_rss_mb"], "data_mb": r["data_mb"],
               "rss_after_data_mb": r["rss_after_data_mb"], "utterances": n, "mode": mode}
        sk = r.get("sklearn")
        if mode == "fixed":
            row["reference"] = "scikit-learn KMeans loop over speakers"
            row["reference_setting"] = sk["setting"]
            row["reference_status"] = sk["status"]
            if sk["status"] == "ok":
                row["reference_s"] = sk["seconds"]
                row["ratio_cold"] = sk["seconds"] / r["cold_s"]
                # each sklearn slice (scaled to the whole loop) over our run just before it
                segs = sk["segments_s"]
                paired = [s * len(segs) / w for s, w in zip(segs, r["warm_s"][1:])]
                row["ratio_spread"] = [min(paired), max(paired)]
                row["labels_equal_speakers"] = f"{sk['labels_equal']}/{sk['speakers']}"
        else:
            row["reference"] = "(no reference run)"
            row["k_counts"] = r["k_counts"]
        _print_row(row)
        extra = (f"    cold {r['cold_s']:.2f} s, warm {warm:.2f} s (spread {row['warm_spread_s'][0]:.2f}-"
                 f"{row['warm_spread_s'][1]:.2f} s over {len(r['warm_s'])}), peak RSS {r['peak_rss_mb']:.0f} MB "
                 f"(data {r['data_mb']:.0f} MB, after making it {r['rss_after_data_mb']:.0f} MB)")
        if mode == "fixed":
            if sk["status"] == "ok":
                extra += (f"\n    sklearn {sk['seconds']:.2f} s, {sk['setting']}; ratio warm "
                          f"{row['ratio']:.1f}x (spread {row['ratio_spread'][0]:.1f}-{row['ratio_spread'][1]:.1f}x), "
                          f"cold {row['ratio_cold']:.1f}x; labels equal to sklearn for "
                          f"{row['labels_equal_speakers']} speakers")
            else:
                extra += f"\n    sklearn: {sk['status']}; {sk['setting']}"
            if n == target_size:
                ok = row.get("ratio") is not None and row["ratio"] >= target
                row["target"] = f">= {target:g}x the scikit-learn loop (warm)"
                row["meets_target"] = ok
                extra += (f"\n    target >= {target:g}x the sklearn loop at {n // 1000}k utterances (warm): "
                          f"{'MET' if ok else 'NOT MET'}"
                          + ("" if row.get("ratio_cold") is None else
                             f" (cold, incl. compiles: {row['ratio_cold']:.1f}x)"))
            per_1k.append((n, warm / n * 1e6, r["cold_s"] / n * 1e6))
        print(extra, flush=True)
        rows.append(row)
    if per_1k:
        print("  k-means growth, ms per 1k utterances (warm | cold): " + ", ".join(
            f"{n // 1000}k: {w:.1f} | {c:.1f}" for n, w, c in per_1k), flush=True)
    return rows


def _print_row(row):
    ref = row.get("reference_s")
    ratio = (ref / row["emosup_s"]) if ref else None
    row["ratio"] = ratio
    comp = f" (compile {row['compile_s']:.1f}s)" if "compile_s" in row else ""
    print(f"{row['name']:<48} emosup {row['emosup_s'] * 1e3:9.2f} ms{comp} | "
          f"{row['reference']:<40} {'' if ref is None else f'{ref * 1e3:9.2f} ms'} | "
          f"{'' if ratio is None else f'{ratio:5.2f}x'}", flush=True)


GROUPS = ("fbank", "kmeans", "ecapa", "embed", "w2v2", "pipeline")  # --only's names, in the order rows are run


def main(argv):
    del argv
    quick = FLAGS.quick
    presets = [p for p in FLAGS.presets.split(",") if p]
    print(f"emosup bench — {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on {jax.devices()[0].platform} x{len(jax.devices())}")
    groups = [g for g in FLAGS.only.split(",") if g] or list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise errors.UserError(f"--only: unknown group(s) {unknown}; known: {','.join(GROUPS)}")
    runs = {
        "fbank": lambda: bench_fbank(batch=8, seconds=3.0, repeats=5 if quick else 20),
        "kmeans": lambda: bench_kmeans(
            sizes=(10_000, 100_000) if quick else (10_000, 100_000, 1_000_000), repeats=1 if quick else 3,
            silhouette_sizes=(10_000,) if quick else (10_000, 100_000, 1_000_000)),
        "ecapa": lambda: bench_ecapa(presets, batch=FLAGS.batch, seconds=FLAGS.seconds, repeats=2 if quick else 5),
        "embed": lambda: bench_embed(n_files=16 if quick else 48, repeats=2 if quick else 3),
        "w2v2": lambda: bench_wav2vec2(quick),
        "pipeline": lambda: bench_pipeline([p for p in FLAGS.pipeline_presets.split(",") if p], quick),
    }
    rows = []
    for group in GROUPS:
        if group not in groups:
            continue
        if FLAGS.profile_dir:  # a jax.profiler trace per group (TensorBoard's profile tab, Perfetto)
            with jax.profiler.trace(os.path.join(FLAGS.profile_dir, group)):
                rows += runs[group]()
            print(f"profile of {group}: {os.path.join(FLAGS.profile_dir, group)}", flush=True)
        else:
            rows += runs[group]()
    meets = [r for r in rows if r.get("ratio") and r["ratio"] > 1.0]
    print(f"\n{len(meets)}/{len(rows)} rows: emosup faster than the reference")
    targeted = [r for r in rows if "meets_target" in r]
    if targeted:
        missed = [r["name"] for r in targeted if not r["meets_target"]]
        print(f"{len(targeted) - len(missed)}/{len(targeted)} rows meet their target"
              + (f"; not met: {'; '.join(missed)}" if missed else ""))
    with open(FLAGS.out, "w") as f:
        json.dump({"machine": {"node": platform.node(), "cpu_count": os.cpu_count(),
                               "backend": jax.devices()[0].platform, "devices": len(jax.devices()),
                               "python": sys.version.split()[0], "jax": jax.__version__},
                   "rows": rows}, f, indent=2)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_string("presets", "tiny,c512,c1024", "ECAPA presets to time")
    flags.DEFINE_integer("batch", 8, "ECAPA batch size")
    flags.DEFINE_float("seconds", 2.0, "ECAPA crop length in seconds")
    flags.DEFINE_string("out", "bench.json", "where the table goes as JSON")
    flags.DEFINE_bool("quick", False, "fewer repeats and a smaller k-means problem")
    flags.DEFINE_string("only", "", "comma-separated row groups to run: fbank,kmeans,ecapa,embed,w2v2,"
                        "pipeline (default: all)")
    flags.DEFINE_string("pipeline_presets", "tiny,c512", "ECAPA presets whose train step the "
                        "tf.data pipeline rows compare against")
    flags.DEFINE_string("profile_dir", "", "if set, write a jax.profiler trace of each row group under "
                        "DIR/<group> (view with TensorBoard's profile plugin or ui.perfetto.dev)")
    errors.run_cli("bench", main)
