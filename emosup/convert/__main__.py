"""`python -m emosup.convert speechbrain SRC_DIR OUT_DIR`

SRC_DIR is a SpeechBrain model folder as `speechbrain/spkrec-ecapa-voxceleb` ships it
(`hyperparams.yaml` + `embedding_model.ckpt`). OUT_DIR becomes an emosup encoder folder
(model.json + variables/) that `emosup.embed`, `emosup.study` and training `init=` accept.
The conversion is strict: any missing, unused or mis-shaped weight stops it, naming each.
"""
import sys

USAGE = "usage: python -m emosup.convert speechbrain SRC_DIR OUT_DIR"


def main(argv):
    if len(argv) != 3 or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2
    kind, src, out = argv
    if kind != "speechbrain":
        print(f"unknown source {kind!r}; supported: speechbrain\n{USAGE}", file=sys.stderr)
        return 2
    from emosup import checkpoint
    from emosup.convert import speechbrain_ecapa
    from emosup.convert.torch_state import ConversionError

    try:
        model_config, variables = speechbrain_ecapa.load_speechbrain_ecapa(src)
        checkpoint.export_encoder(out, model_config, variables)
    except (ConversionError, checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"emosup.convert: {e}", file=sys.stderr)
        return 1
    n = sum(v.size for v in __import__("jax").tree.leaves(variables["params"]))
    print(f"converted {src} → {out}: ECAPA-TDNN channels={model_config['ecapa']['channels']}, "
          f"{n / 1e6:.2f}M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
