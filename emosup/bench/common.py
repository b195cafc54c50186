"""What every row group of the bench shares: speech-like test input, interleaved timing,
XLA FLOP counts and model FLOP utilisation, the PyTorch device, and the table's rows."""
import os
import statistics
import time

import jax
import numpy as np

from emosup import audio


def speechlike(batch, n, seed=0):
    """[batch, n] float32 harmonic voices (f0 90-250 Hz) with a little noise, at 16 kHz."""
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


def compiled_flops(compiled):
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


def mfu(compiled, seconds, device_kind=None):
    """Model FLOP utilisation of one call of `compiled` that took `seconds`: XLA's FLOP count
    / seconds / the device's dense bf16 peak (`PEAK_BF16_FLOPS`). None when the device (by
    default `jax.devices()[0].device_kind`) is not in the table or XLA reports no FLOPs."""
    peak = _peak_bf16_flops(jax.devices()[0].device_kind if device_kind is None else device_kind)
    flops = compiled_flops(compiled)
    if peak is None or flops is None or not seconds > 0:
        return None
    return flops / seconds / peak


def torch_device():
    """(torch device, sync fn): CUDA when JAX runs on a GPU and PyTorch has CUDA, else CPU, so
    both sides run on the same kind of device."""
    import torch

    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        # XLA's default float32 GPU matmuls use TF32: let PyTorch do so too.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda"), torch.cuda.synchronize
    torch.set_num_threads(os.cpu_count() or 1)
    return torch.device("cpu"), (lambda: None)


def _side(backend):
    return f"all {os.cpu_count()} CPU cores" if backend == "cpu" else f"one {backend} device"


def devices_of_pair(reference_backend):
    """What a paired row gives each side: emosup's paired rows use one JAX device (all cores
    on a CPU) and PyTorch's device from ``torch_device`` (``reference_backend``: "cpu",
    "cuda"), or a reference that has only the CPU."""
    jax_side = _side(jax.default_backend())
    ref_side = _side("cpu" if reference_backend == "cpu" else jax.default_backend())
    if jax_side == ref_side:
        return f"each side: {jax_side}"
    return f"emosup: {jax_side}; the reference: {ref_side} (it has no {jax.default_backend()} path here)"


def interleaved_times(fns, repeats, warmup=1):
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


def paired_row(name, jax_times, ref_times, **extra):
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


def set_target(row, ratio, ref_name):
    """Marks a paired row with its target: at least `ratio` times faster than `ref_name`."""
    row["target"] = f">= {ratio:g}x {ref_name}"
    row["meets_target"] = row["reference_s"] / row["emosup_s"] >= ratio


def print_spread(row):
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


def print_row(row):
    ref = row.get("reference_s")
    ratio = (ref / row["emosup_s"]) if ref else None
    row["ratio"] = ratio
    comp = f" (compile {row['compile_s']:.1f}s)" if "compile_s" in row else ""
    print(f"{row['name']:<48} emosup {row['emosup_s'] * 1e3:9.2f} ms{comp} | "
          f"{row['reference']:<40} {'' if ref is None else f'{ref * 1e3:9.2f} ms'} | "
          f"{'' if ratio is None else f'{ratio:5.2f}x'}", flush=True)


def write_wavs(folder, n, seed=0, lo=2.0, hi=6.0):
    """n speech-like 16-bit WAVs of lo-hi seconds (uniform) at 16 kHz (what the corpora hold) -> paths."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        wav = speechlike(1, int(rng.uniform(lo, hi) * audio.SAMPLE_RATE), seed=seed * 100_003 + i)[0]
        paths.append(os.path.join(folder, f"utt{i:04d}.wav"))
        sf.write(paths[-1], wav, audio.SAMPLE_RATE, subtype="PCM_16")
    return paths
