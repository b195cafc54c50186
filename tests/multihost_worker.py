"""One process of the real 2-process job of test_multihost.py (run as a script, 4 CPU devices).

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES HOST:PORT OUT_JSON CORPUS_DIR ENCODER_DIR STEPS \
      OBJ[,OBJ...] [--perturb-pairs]

Joins the job through emosup.distributed, trains each objective with emosup.pretrain.run into
OUT_JSON's folder / <objective>, and writes OUT_JSON: for each objective the (step, row,
utterances) that THIS process's input pipeline read. `multihost_config` is the config both
this job and the test's 1-process reference use.
"""
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from helpers import REPO, load_config, use_tiny_corpus  # noqa: E402


def multihost_config(objective, corpus_dir, encoder, steps):
    c = load_config(REPO / "configs" / "pretrain.py",
                    f"objective={objective},pairs_encoder={encoder},synthetic_dir={corpus_dir},"
                    f"steps={steps},batch_size=8")
    c.unlock()
    use_tiny_corpus(c, corpus_dir)
    c.data.crop_seconds, c.log_every, c.checkpoint_every = 1.0, 1, 2
    c.optim.warmup_steps = 1
    c.pairs.k, c.pairs.num_negatives = 2, 2
    if objective == "contrastive":  # also rebuild the pairs from the encoder being trained, once
        c.pairs.refresh_every = 2
    c.lock()
    return c


def record_reads(current):
    """Wraps the samplers of emosup.data.pipeline once: every (step, row) this process loads
    goes to the list `current[0]`."""
    import numpy as np

    from emosup.data import pipeline

    for cls in (pipeline.CropSampler, pipeline.PairSampler):
        original = cls.__call__

        def call(self, step, row, _original=original):
            utts, offsets = _original(self, step, row)
            current[0].append([int(step), int(row), [int(u) for u in np.atleast_1d(utts)]])
            return utts, offsets

        cls.__call__ = call


def perturb_pairs():
    """This process clusters with another seed: its pair table differs from the other hosts'."""
    from emosup.pairs import build

    original = build.build_pair_table

    def perturbed(*args, **kwargs):
        kwargs["seed"] = kwargs.get("seed", 0) + 1
        return original(*args, **kwargs)

    build.build_pair_table = perturbed


def main(argv):
    pid, n, address, out_json, corpus_dir, encoder, steps, objectives, *options = argv
    from emosup import distributed, logs
    from emosup.trainers import pretrain

    if "--perturb-pairs" in options:
        perturb_pairs()

    logs.setup()
    distributed.initialize("auto", address, int(n), int(pid), timeout_s=120)
    logs.quiet_other_processes()
    out_json = pathlib.Path(out_json)
    reads, current = {}, [None]
    record_reads(current)
    for objective in objectives.split(","):
        current[0] = log = []
        pretrain.run(multihost_config(objective, corpus_dir, encoder, int(steps)), out_json.parent / objective)
        # one entry per (step, row) read
        reads[objective] = sorted({(s, r): u for s, r, u in log}.items())
    out_json.write_text(json.dumps({"process": int(pid), "reads": reads}))


if __name__ == "__main__":
    # Before jax is imported: 4 fake CPU devices in this process. (Only when run as the
    # worker: the test imports multihost_config from here into its 8-device process.)
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main(sys.argv[1:])
