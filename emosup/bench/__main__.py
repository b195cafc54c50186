"""Speed, side by side with the references, in one process on one machine.

  python -m emosup.bench [--presets=tiny,c512,c1024] [--out=bench.json] [--quick] [--only=w2v2]
                         [--pipeline_presets=tiny,c512] [--profile_dir=DIR]

Rows (each: emosup time, reference time, ratio = reference / emosup, > 1 means emosup is faster):
* ECAPA train step (Fbank + mean norm + ECAPA + AAM-softmax + Adam update), Flax/jit vs
  SpeechBrain's PyTorch ECAPA_TDNN with the same loss and optimiser, on the same batch, calls
  alternating round by round; target: c512 and c1024 >= 1.5x. On a GPU also a
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
* tf.data pipeline (group `pipeline`), files read cold: batch rows/s that `crop_batches` /
  `pair_batches` deliver alone vs rows/s the jitted train step of the same objective and batch
  consumes (ECAPA `--pipeline_presets`; ratio = pipeline rate / step rate, target >= 3x), and the
  trainer's loop on the live pipeline vs on an in-memory batch, both in one process at once
  (ratio = in-memory / live time per step, target >= 0.9x; with the share of the time the
  step sat idle waiting for data). These rows compare emosup with itself and are left out of
  the count of rows where emosup beats its reference.
* embedding (group `embed`): 48 WAV files of 1-8 s (mixed) to c1024 ECAPA embeddings,
  `encoders.embed_paths` vs SpeechBrain's `EncoderClassifier.encode_batch` on length-sorted
  batches of the same files; target >= 2x;
`--only=fbank,kmeans,ecapa,embed,w2v2,pipeline` runs just those groups of rows (default: all);
`--profile_dir=DIR` also writes a jax.profiler trace of each group (DIR/<group>), the first
thing to look at before optimising a row.
Every paired row gives emosup and its reference the same devices: one accelerator each on a GPU
machine (PyTorch has one device; the JAX side is restricted to one), all cores on a CPU (XLA's
thread pool, torch.set_num_threads(cpu_count)).
Times are medians over repeated calls after warm-up (compile time is reported apart); rows
with a target print MET / NOT MET, and the last lines count them.
PyTorch, SpeechBrain and librosa are the test extras; rows whose reference is missing say so.
"""
import json
import os
import platform
import sys

import jax
from absl import flags

from emosup import errors
from emosup.bench import ecapa, embed, fbank, kmeans, pipeline, w2v2

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
        "fbank": lambda: fbank.bench_fbank(batch=8, seconds=3.0, repeats=5 if quick else 20),
        "kmeans": lambda: kmeans.bench_kmeans(
            sizes=(10_000, 100_000) if quick else (10_000, 100_000, 1_000_000), repeats=1 if quick else 3,
            silhouette_sizes=(10_000,) if quick else (10_000, 100_000, 1_000_000)),
        "ecapa": lambda: ecapa.bench_ecapa(presets, batch=FLAGS.batch, seconds=FLAGS.seconds, repeats=2 if quick else 5),
        "embed": lambda: embed.bench_embed(n_files=16 if quick else 48, repeats=2 if quick else 3),
        "w2v2": lambda: w2v2.bench_wav2vec2(quick),
        "pipeline": lambda: pipeline.bench_pipeline([p for p in FLAGS.pipeline_presets.split(",") if p], quick),
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
    # The pipeline's rows compare emosup with itself (pipeline vs step, live vs in-memory loop).
    versus = [r for r in rows if r.get("reference_s") and not r.get("internal")]
    meets = [r for r in versus if r["ratio"] > 1.0]
    print(f"\n{len(meets)}/{len(versus)} rows with a reference implementation: emosup faster")
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
