"""The wav2vec2 arms end to end on the tiny synthetic corpus: SER alone, + intra-speaker
contrastive pairs, + speaker loss, and fusion with an ECAPA embedding; a converted HF
checkpoint as the starting point; and a killed run's skipped files kept by its resume."""
import json

import jax
import numpy as np
import pytest
from helpers import export_random_tiny_ecapa, DEMO, load_config
from test_wav2vec2 import make_hf

from emosup import audio, checkpoint, comparison, config_lib
from emosup.convert.hf_wav2vec2 import load_hf_wav2vec2
from emosup.data import corpus as corpus_lib
from emosup.trainers import ser, ser_w2v2


@pytest.fixture(scope="module")
def speaker_dir(tmp_path_factory):
    """A random tiny ECAPA exported as an encoder: its clusters give pairs, it feeds fusion."""
    return export_random_tiny_ecapa(tmp_path_factory.mktemp("spk") / "enc", 3)


def _config(corpus_dir, **w2v2):
    c = load_config(DEMO, f"tiny=1,seeds=1,synthetic_dir={corpus_dir}")
    c.unlock()
    c.finetune.total_steps, c.finetune.eval_every, c.finetune.ser.freeze_steps = 4, 2, 1
    c.w2v2.update(w2v2)
    c.lock()
    return c


def test_every_arm_in_the_comparison(tmp_path, synthetic_corpus_dir, speaker_dir):
    """All four arms through comparison.run: each trains (the pair arms with their extra
    losses), scores every unseen test utterance, and the table names the wav2vec2 source."""
    config = _config(synthetic_corpus_dir)
    config.unlock()
    config.arms.names = config_lib.W2V2_ARMS
    config.lock()
    corpus = corpus_lib.open_corpus(config.data, tmp_path)
    results = comparison.run(config, tmp_path, corpus, speaker_dir)
    assert list(results["arms"]) == list(config_lib.W2V2_ARMS)
    assert "no pretrained checkpoint" in results["wav2vec2"]
    assert "wav2vec2 arms: random" in (tmp_path / "results.md").read_text()
    for arm in config_lib.W2V2_ARMS:
        r = json.loads((tmp_path / "finetune" / arm / "seed0" / "results.json").read_text())
        assert r["classes"] == ["angry", "happy", "neutral", "sad"]
        assert np.sum(r["test"]["confusion"]) == 48  # every test utterance scored once
        assert r["test"]["macro_f1"] == results["arms"][arm]["macro_f1"]["runs"][0]
        assert [h["step"] for h in r["history"]] == [2, 4]
        assert ("contrastive_loss" in r["history"][-1]) == (arm in ("w2v2_contrastive", "w2v2_multitask"))
        assert ("speaker_loss" in r["history"][-1]) == (arm == "w2v2_multitask")
        assert all(np.isfinite(h["loss"]) for h in r["history"])
        assert (tmp_path / f"confusion_{arm}.png").stat().st_size > 0


def test_converted_hf_checkpoint_is_the_starting_point(tmp_path, synthetic_corpus_dir, speaker_dir, monkeypatch):
    hf_dir = tmp_path / "hf"
    make_hf(seed=4).save_pretrained(hf_dir)
    from emosup.convert.__main__ import main as convert_main

    assert convert_main(["wav2vec2", str(hf_dir), str(tmp_path / "w2v2")]) == 0
    config = _config(synthetic_corpus_dir, init=str(tmp_path / "w2v2"))
    config.unlock()
    config.finetune.ser.freeze_steps = 2  # steps 1-2 frozen (checkpoint at 2), 3-4 trained (at 4)
    config.lock()
    corpus = corpus_lib.open_corpus(config.data, tmp_path)
    seen, saved = {}, {}
    real_create = ser_w2v2.train_state.TrainState.create
    real_save = checkpoint.Checkpointer.save

    def spy(**kw):
        seen["body"] = kw["params"]["ser"]["wav2vec2"]
        return real_create(**kw)

    def spy_save(self, step, state, meta, extra=None):
        saved[step] = jax.device_get(state.params["ser"]["wav2vec2"])
        return real_save(self, step, state, meta, extra)

    monkeypatch.setattr(ser_w2v2.train_state.TrainState, "create", staticmethod(spy))
    monkeypatch.setattr(checkpoint.Checkpointer, "save", spy_save)
    r = ser_w2v2.run(config_lib.w2v2_stage(config, 0, speaker_dir), tmp_path / "ft", corpus, "w2v2")
    _, converted = load_hf_wav2vec2(hf_dir)
    body = converted["params"]
    jax.tree.map(np.testing.assert_array_equal, seen["body"], body)  # before any step
    assert r["wav2vec2"].startswith("huggingface:")
    # Calibrated like the ECAPA fine-tuning: a temperature fitted on dev, ECE before and after.
    cal = json.loads((tmp_path / "ft" / "results.json").read_text())["calibration"]
    assert cal == r["calibration"] and cal["fitted_on"] == "dev" and r["temperature"] == cal["temperature"] > 0
    assert cal["test"]["ece"] == r["test"]["ece"] and cal["dev"]["nll_calibrated"] <= cal["dev"]["nll"]
    assert "logits" not in r["test"] and "logits" not in r["history"][-1]["dev"]
    assert sorted(saved) == [2, 4]
    jax.tree.map(np.testing.assert_array_equal, saved[2], body)  # frozen: bit for bit
    # The convolutional feature encoder stays frozen throughout (as HF's recipes do) ...
    jax.tree.map(np.testing.assert_array_equal, saved[4]["feature_extractor"], body["feature_extractor"])
    # ... and every other tensor of the body is trained once the freeze ends.
    rest = [(a, b) for k in body if k != "feature_extractor"
            for a, b in zip(jax.tree.leaves(saved[4][k]), jax.tree.leaves(body[k]))]
    moved = [not np.array_equal(a, b) for a, b in rest]
    assert np.mean(moved) > 0.9, f"only {np.mean(moved):.0%} of the transformer's tensors moved"



def test_a_resumed_run_still_lists_the_files_it_skipped(tmp_path, synthetic_corpus_dir, speaker_dir, monkeypatch):
    """A training file fails to decode in the steps before a crash (a corrupt file, replaced
    before the rerun): the resumed run no longer meets it, and still reports it as skipped,
    from the checkpoint's record."""
    config = _config(synthetic_corpus_dir)
    corpus = corpus_lib.open_corpus(config.data, tmp_path)
    cfg = config_lib.w2v2_stage(config, 0, speaker_dir)
    bad = ser.split_rows(cfg, corpus)[0][0].path
    real_segment, real_batches = audio.load_segment, ser.pipeline.crop_batches

    def corrupt(path, *a, **k):
        if path == bad:
            raise audio.AudioError(f"{path}: corrupt frames")
        return real_segment(path, *a, **k)

    def crash_after_3(*a, **k):
        it = real_batches(*a, **k)
        for _ in range(3):  # steps 1-3 run, the dev evaluation at step 2 is checkpointed
            yield next(it)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(audio, "load_segment", corrupt)
    monkeypatch.setattr(ser.pipeline, "crop_batches", crash_after_3)
    with pytest.raises(KeyboardInterrupt):
        ser_w2v2.run(cfg, tmp_path / "ft", corpus, "w2v2")
    assert (tmp_path / "ft" / "checkpoints" / "2").is_dir()
    assert not (tmp_path / "ft" / "results.json").exists()
    monkeypatch.undo()
    resumed = ser_w2v2.run(cfg, tmp_path / "ft", corpus, "w2v2")
    assert [h["step"] for h in resumed["history"]] == [2, 4]
    assert list(resumed["skipped"]) == [bad] and "corrupt frames" in resumed["skipped"][bad]
    on_disk = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert on_disk["skipped"] == resumed["skipped"]
