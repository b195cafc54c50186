"""Speed, side by side with the references, in one process on one machine.

  python -m emosup.bench [--presets=tiny,c512,c1024] [--out=bench.json] [--quick] [--only=w2v2]

Rows (each: emosup time, reference time, ratio = reference / emosup, > 1 means emosup is faster):
* ECAPA train step (Fbank + mean norm + ECAPA + AAM-softmax + Adam update), Flax/jit vs
  SpeechBrain's PyTorch ECAPA_TDNN with the same loss and optimiser, on the same batch;
* Fbank: JAX (jit) vs SpeechBrain `Fbank(n_mels=80)` vs librosa;
* per-speaker k-means: batched JAX Lloyd vs a scikit-learn `KMeans` loop over speakers, from
  the same initial centres;
* wav2vec 2.0 forward, and forward + backward of loss = mean(last_hidden_state): Flax/jit vs
  HF `Wav2Vec2Model` (PyTorch) with the same random weights and input, dropout off on both
  sides (Flax train=False, torch eval mode; gradients are enabled for the backward), for a
  tiny config and the wav2vec2-base shapes (12 layers x 768), float32.
`--only=fbank,kmeans,ecapa,w2v2` runs just those groups of rows (default: all).
Times are medians over repeated calls after warm-up (compile time is reported apart).
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
from absl import app, flags

from emosup import audio, cluster, config_lib, optim, parallel
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


# ----------------------------------------------------------------------------- ECAPA step
def _jax_ecapa_step(preset, wavs, labels, n_spk):
    from emosup import train
    from emosup.models.speaker import build_encoder

    mesh = parallel.make_mesh()
    enc = build_encoder({"encoder": "ecapa", "ecapa": dict(ecapa.PRESETS[preset])})
    feat_shape = (1, 1 + wavs.shape[1] // audio.HOP, 80)
    cfg = ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=2e-6, warmup_steps=0, schedule="constant",
                                         final_lr_fraction=1.0, grad_clip=0.0))
    tx, _ = optim.make_optimizer(cfg, 100)
    loss_cfg = config_lib.pretrain_config().loss  # AAM m=0.2, s=30
    state = train.create_state("speaker", enc, loss_cfg, n_spk, tx, jax.random.key(0), feat_shape, mesh)
    step = train.jit_train_step("speaker", enc, loss_cfg, mesh)
    batch = parallel.to_global({"audio": wavs, "lengths": np.full(len(wavs), wavs.shape[1], np.int32),
                                "labels": labels, "weights": np.ones(len(wavs), np.float32)}, mesh)
    box = [state]

    def run():
        box[0], m = step(box[0], batch)
        jax.block_until_ready(m)

    t = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t
    return run, compile_s


def _torch_ecapa_step(preset, wavs, labels, n_spk):
    import torch
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
    from speechbrain.processing.features import InputNormalization

    torch.set_num_threads(os.cpu_count() or 1)
    kw = dict(ecapa.PRESETS[preset])
    model = ECAPA_TDNN(kw.pop("input_size", 80), **{k: v for k, v in kw.items() if k in (
        "channels", "kernel_sizes", "dilations", "attention_channels", "res2net_scale", "se_channels",
        "global_context", "lin_neurons")})
    weight = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n_spk, kw["lin_neurons"])))
    fbank, norm = Fbank(n_mels=80), InputNormalization(norm_type="sentence", std_norm=False)
    loss_fn = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30))
    opt = torch.optim.Adam(list(model.parameters()) + [weight], lr=1e-3, weight_decay=2e-6)
    x, y = torch.tensor(wavs), torch.tensor(labels, dtype=torch.long)[:, None]
    lens = torch.ones(len(wavs))
    model.train()

    def run():
        opt.zero_grad()
        feats = norm(fbank(x), lens)
        emb = model(feats, lens)[:, 0]
        cos = torch.nn.functional.linear(torch.nn.functional.normalize(emb),
                                         torch.nn.functional.normalize(weight))
        loss = loss_fn(cos[:, None], y)
        loss.backward()
        opt.step()

    return run


def bench_ecapa(presets, batch, seconds, repeats):
    rows = []
    n = int(seconds * audio.SAMPLE_RATE)
    wavs = _speechlike(batch, n)
    n_spk = 100
    labels = (np.arange(batch) % n_spk).astype(np.int32)
    for preset in presets:
        run_jax, compile_s = _jax_ecapa_step(preset, wavs, labels, n_spk)
        t_jax = _median_time(run_jax, repeats)
        row = {"name": f"ECAPA train step [{preset}] B={batch} {seconds:g}s", "emosup_s": t_jax,
               "compile_s": compile_s}
        try:
            run_torch = _torch_ecapa_step(preset, wavs, labels, n_spk)
            row.update(reference="SpeechBrain ECAPA_TDNN (PyTorch)",
                       reference_s=_median_time(run_torch, repeats))
        except ImportError as e:
            row.update(reference=f"unavailable ({e.name} not installed)", reference_s=None)
        rows.append(row)
        _print_row(row)
    return rows


# ----------------------------------------------------------------------------- Fbank
def bench_fbank(batch, seconds, repeats):
    n = int(seconds * audio.SAMPLE_RATE)
    wavs = _speechlike(batch, n)
    f = jax.jit(audio.fbank)
    x = jnp.asarray(wavs)
    jax.block_until_ready(f(x))
    t_jax = _median_time(lambda: jax.block_until_ready(f(x)), repeats)
    rows = []
    name = f"Fbank 80 mels B={batch} {seconds:g}s"
    try:
        import torch
        from speechbrain.lobes.features import Fbank

        sb = Fbank(n_mels=80)
        xt = torch.tensor(wavs)
        with torch.no_grad():
            t_sb = _median_time(lambda: sb(xt), repeats)
        rows.append({"name": name, "emosup_s": t_jax, "reference": "SpeechBrain Fbank (PyTorch)",
                     "reference_s": t_sb})
    except ImportError as e:
        rows.append({"name": name, "emosup_s": t_jax, "reference": f"unavailable ({e.name})", "reference_s": None})
    try:
        import librosa

        def lib():
            s = librosa.feature.melspectrogram(y=wavs, sr=audio.SAMPLE_RATE, n_fft=400, hop_length=160,
                                               win_length=400, window="hamming", n_mels=80, htk=True,
                                               norm=None, center=True, pad_mode="constant", power=2.0)
            return librosa.power_to_db(s, amin=1e-10, top_db=None)

        rows.append({"name": name, "emosup_s": t_jax, "reference": "librosa melspectrogram + power_to_db",
                     "reference_s": _median_time(lib, repeats)})
    except ImportError as e:
        rows.append({"name": name, "emosup_s": t_jax, "reference": f"unavailable ({e.name})", "reference_s": None})
    for r in rows:
        _print_row(r)
    return rows


# ----------------------------------------------------------------------------- wav2vec2
# A tiny config with the real conv stack (receptive field 400, hop 320) and a small encoder.
W2V2_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def bench_wav2vec2(repeats):
    """Forward and forward+backward rows for [tiny] B=2 x 1 s and [base] B=2 x 4 s."""
    from emosup.convert.hf_wav2vec2 import convert_state
    from emosup.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    try:
        import torch
        import transformers
    except ImportError as e:  # the HF model also supplies the weights: no reference, no row
        print(f"wav2vec2 rows skipped: {e.name} not installed", flush=True)
        return []
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for name, kwargs, batch, seconds in (("tiny", W2V2_TINY, 2, 1.0), ("base", {}, 2, 4.0)):
        torch.manual_seed(0)
        hf = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**kwargs)).eval()  # HF init
        state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
        cfg = Wav2Vec2Config.from_hf_dict(hf.config.to_dict())
        params = jax.device_put(convert_state(state, cfg)["params"])
        model = Wav2Vec2Model(cfg)
        wavs = _speechlike(batch, int(seconds * audio.SAMPLE_RATE))
        x, xt = jnp.asarray(wavs), torch.from_numpy(wavs)

        def loss(p):
            return jnp.mean(model.apply({"params": p}, x).last_hidden_state)

        fwd = jax.jit(lambda p: model.apply({"params": p}, x).last_hidden_state)
        bwd = jax.jit(jax.value_and_grad(loss))

        def torch_fwd():
            with torch.no_grad():
                hf(xt)

        def torch_bwd():
            hf.zero_grad(set_to_none=True)
            hf(xt).last_hidden_state.mean().backward()

        for what, jax_fn, torch_fn in (("forward", fwd, torch_fwd), ("forward+backward", bwd, torch_bwd)):
            t = time.perf_counter()
            jax.block_until_ready(jax_fn(params))
            compile_s = time.perf_counter() - t
            row = {"name": f"wav2vec2 {what} [{name}] B={batch} {seconds:g}s",
                   "emosup_s": _median_time(lambda: jax.block_until_ready(jax_fn(params)), repeats),
                   "compile_s": compile_s,
                   "reference": f"HF Wav2Vec2Model {transformers.__version__} (PyTorch)",
                   "reference_s": _median_time(torch_fn, repeats)}
            rows.append(row)
            _print_row(row)
    return rows


# ----------------------------------------------------------------------------- k-means
def bench_kmeans(n_speakers, per_speaker, dim, k, repeats):
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    counts = rng.integers(per_speaker // 2, per_speaker * 3 // 2 + 1, n_speakers)
    speakers = np.repeat(np.arange(n_speakers), counts)
    x = rng.normal(size=(len(speakers), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    padded, mask, index, _ = cluster.group_by_speaker(x, speakers)
    init = np.asarray(cluster.kmeans_plusplus_init(0, padded, mask, k))

    def run_jax():
        jax.block_until_ready(cluster.batched_kmeans(padded, mask, init))

    run_jax()
    t_jax = _median_time(run_jax, repeats, warmup=0)

    def run_sklearn():
        for s in range(n_speakers):
            pts = padded[s][mask[s]]
            KMeans(n_clusters=k, init=init[s], n_init=1, algorithm="lloyd").fit(pts)

    t_sk = _median_time(run_sklearn, max(1, repeats // 2), warmup=0)
    row = {"name": f"per-speaker k-means {len(x)} utt, {n_speakers} spk, {dim}-d, k={k}",
           "emosup_s": t_jax, "reference": "scikit-learn KMeans loop over speakers", "reference_s": t_sk}
    _print_row(row)
    return [row]


def _print_row(row):
    ref = row.get("reference_s")
    ratio = (ref / row["emosup_s"]) if ref else None
    row["ratio"] = ratio
    comp = f" (compile {row['compile_s']:.1f}s)" if "compile_s" in row else ""
    print(f"{row['name']:<48} emosup {row['emosup_s'] * 1e3:9.2f} ms{comp} | "
          f"{row['reference']:<40} {'' if ref is None else f'{ref * 1e3:9.2f} ms'} | "
          f"{'' if ratio is None else f'{ratio:5.2f}x'}", flush=True)


GROUPS = ("fbank", "kmeans", "ecapa", "w2v2")  # --only's names, in the order rows are run


def main(argv):
    del argv
    quick = FLAGS.quick
    presets = [p for p in FLAGS.presets.split(",") if p]
    print(f"emosup bench — {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on {jax.devices()[0].platform} x{len(jax.devices())}")
    groups = [g for g in FLAGS.only.split(",") if g] or list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise app.UsageError(f"--only: unknown group(s) {unknown}; known: {','.join(GROUPS)}")
    rows = []
    if "fbank" in groups:
        rows += bench_fbank(batch=8, seconds=3.0, repeats=5 if quick else 20)
    if "kmeans" in groups:
        rows += bench_kmeans(n_speakers=200 if quick else 1000, per_speaker=40, dim=192, k=4,
                             repeats=2 if quick else 3)
    if "ecapa" in groups:
        rows += bench_ecapa(presets, batch=FLAGS.batch, seconds=FLAGS.seconds, repeats=2 if quick else 5)
    if "w2v2" in groups:
        rows += bench_wav2vec2(repeats=2 if quick else 3)
    meets = [r for r in rows if r.get("ratio") and r["ratio"] > 1.0]
    print(f"\n{len(meets)}/{len(rows)} rows: emosup faster than the reference")
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
    flags.DEFINE_string("only", "", "comma-separated row groups to run: fbank,kmeans,ecapa,w2v2 "
                        "(default: all)")
    app.run(main)
