"""Row group `w2v2`: wav2vec 2.0 forward and forward+backward, Flax vs HF PyTorch."""
import time

import jax
import jax.numpy as jnp

from emosup import audio
from emosup.bench import common
# A tiny config with the real conv stack (receptive field 400, hop 320) and a small encoder.
W2V2_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
# (name, HF config overrides, batch, seconds, rounds): the tiny model's calls take
# milliseconds, where a loaded machine's scheduling dominates, so it gets a larger input
# (B=4 x 2 s, still the tiny config) and more rounds than the base model. --quick: 1/3.
W2V2_ROWS = (("tiny", W2V2_TINY, 4, 2.0, 21), ("base", {}, 2, 4.0, 6))
W2V2_TARGET = 1.2  # target, forward+backward: at least 1.2x HF PyTorch on the same machine


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
    tdev, sync = common.torch_device()
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
            wavs = common.speechlike(b, int(seconds * audio.SAMPLE_RATE))
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
                times = common.interleaved_times(fns, rounds)
                label = "" if dtype == jnp.float32 else f" {dtype_name}"
                row = common.paired_row(f"wav2vec2 {what}{label} [{name}] B={b} {seconds:g}s", times["jax"],
                                        times["torch"], compile_s=compile_s, reference=ref_name,
                                        devices=common.devices_of_pair(tdev.type))
                if dtype == jnp.bfloat16:  # model FLOPs (XLA's count) / time / the device's peak
                    row["mfu"] = common.mfu(compiled, row["emosup_s"])
                if what == "forward+backward" and dtype == jnp.float32:
                    common.set_target(row, W2V2_TARGET, ref_name)
                rows.append(row)
                common.print_row(row)
                common.print_spread(row)
    return rows
