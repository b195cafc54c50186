"""Utterance embeddings from an emosup checkpoint or a converted SpeechBrain / HF encoder.

  python -m emosup.embed --checkpoint=DIR --manifest=CSV --out=FILE.npz [--layer=L]

The .npz holds, one row per manifest row and in its order: `ids` (the manifest's `path`
values, as written), `embeddings` [N, D] float32 (all-NaN for a row that could not be embedded),
`valid` [N] bool (False on those rows) and `skipped` (the paths of the files that could not be
read or were too short, sorted; their reasons are in the log).

Each embedding is the encoder's output for that utterance alone, whatever the batching
(ECAPA-TDNN: SpeechBrain's `encode_batch`; wav2vec2: the mean of HF's `hidden_states[L]` over
the utterance's frames): see `emosup.models.encoders`. Batches are sharded over all devices.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import flags

from emosup import errors, logs
from emosup.data import manifest as manifest_lib
from emosup.data import pipeline
from emosup.models.encoders import Encoder, embed_paths


def main(argv):
    del argv
    logs.setup()
    m = manifest_lib.read_manifest(FLAGS.manifest, allowed_splits=None)
    enc = Encoder(FLAGS.checkpoint, layer=FLAGS.layer)
    skip_log = pipeline.SkipLog()
    emb, _, valid = embed_paths(enc, [u.path for u in m], batch_per_device=FLAGS.batch_per_device,
                                bucket_seconds=FLAGS.bucket_seconds, skip_log=skip_log)
    ids = np.array([u.id for u in m])
    np.savez(FLAGS.out, ids=ids, embeddings=emb, valid=valid,
             skipped=np.array(sorted(skip_log.as_dict())))
    print(f"wrote {FLAGS.out}: {len(ids)} utterances × {emb.shape[1]} ({int((~valid).sum())} skipped "
          f"as unreadable{': ' + ', '.join(sorted(skip_log.as_dict())[:5]) if len(skip_log) else ''})")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_string("checkpoint", None, "emosup checkpoint or converted encoder folder")
    flags.DEFINE_string("manifest", None, "CSV manifest (path,speaker[,emotion,split,...])")
    flags.DEFINE_string("out", None, "output .npz (ids, embeddings)")
    flags.DEFINE_integer("batch_per_device", 8, "utterances per device per batch")
    flags.DEFINE_float("bucket_seconds", 1.0, "batches are padded to a multiple of this")
    flags.DEFINE_integer("layer", None, "wav2vec2 only: HF hidden_states index to average "
                         "(0 = encoder input, -1 = last; default -1)")
    flags.mark_flags_as_required(["checkpoint", "manifest", "out"])
    errors.run_cli("embed", main)
