"""`python -m emosup.convert speechbrain SRC_DIR OUT_DIR`
`python -m emosup.convert wav2vec2 SRC_DIR OUT_DIR [--keep-heads]`

speechbrain: SRC_DIR is a SpeechBrain model folder as `speechbrain/spkrec-ecapa-voxceleb`
ships it (`hyperparams.yaml` + `embedding_model.ckpt`).
wav2vec2: SRC_DIR is what HF `save_pretrained` writes for a wav2vec2 model (`config.json` +
`model.safetensors` or `pytorch_model.bin`, optionally `preprocessor_config.json`);
`--keep-heads` also keeps `projector`/`classifier`/`layer_weights`/`lm_head` under
`variables/heads`.

OUT_DIR becomes an emosup encoder folder (model.json + variables/). The conversion is strict:
any missing, unused or mis-shaped weight stops it, naming each.
"""
import sys

USAGE = ("usage: python -m emosup.convert speechbrain SRC_DIR OUT_DIR\n"
         "       python -m emosup.convert wav2vec2 SRC_DIR OUT_DIR [--keep-heads]")
SOURCES = ("speechbrain", "wav2vec2")


def _convert(kind, src, keep_heads):
    """(model_config, variables, one-line description)."""
    if kind == "speechbrain":
        import jax

        from emosup.convert import speechbrain_ecapa

        model_config, variables = speechbrain_ecapa.load_speechbrain_ecapa(src)
        n = sum(v.size for v in jax.tree.leaves(variables["params"]))
        return model_config, variables, (
            f"ECAPA-TDNN channels={model_config['ecapa']['channels']}, {n / 1e6:.2f}M parameters")
    from emosup.convert import hf_wav2vec2
    from emosup.models.wav2vec2 import Wav2Vec2Config

    model_config, variables = hf_wav2vec2.load_hf_wav2vec2(src, keep_heads=keep_heads)
    cfg = Wav2Vec2Config.from_dict(model_config["wav2vec2"])
    n = hf_wav2vec2.count_params(variables["params"])
    text = (f"wav2vec2 ({cfg.family}), {cfg.num_hidden_layers} layers x {cfg.hidden_size}, "
            f"{n / 1e6:.2f}M parameters")
    if keep_heads and model_config["heads"]:
        text += (f", heads: {', '.join(model_config['heads'])} "
                 f"({hf_wav2vec2.count_params(variables['heads']) / 1e6:.2f}M parameters)")
    elif keep_heads:
        text += ", no heads found"
    return model_config, variables, text


def main(argv):
    argv = list(argv)
    keep_heads = "--keep-heads" in argv
    if keep_heads:
        argv.remove("--keep-heads")
    if len(argv) != 3 or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2
    kind, src, out = argv
    if kind not in SOURCES:
        print(f"unknown source {kind!r}; supported: {', '.join(SOURCES)}\n{USAGE}", file=sys.stderr)
        return 2
    if keep_heads and kind != "wav2vec2":
        print(f"--keep-heads applies to wav2vec2 only\n{USAGE}", file=sys.stderr)
        return 2
    from emosup import checkpoint, errors
    from emosup.errors import ConversionError

    try:
        model_config, variables, text = _convert(kind, src, keep_heads)
        checkpoint.export_encoder(out, model_config, variables)
    except (ConversionError, checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
        errors.report("convert", e)
        return errors.EXIT_USER_ERROR
    print(f"converted {src} → {out}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
