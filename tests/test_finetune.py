"""Fine-tuning: row roles and bad labelled sets (no audio needed), then end to end on the tiny
synthetic corpus: dimensional (CCC) targets, and a killed run resuming to the same result."""
import json

import jax
import numpy as np
import pytest
from helpers import REPO, load_config, use_tiny_corpus

from emosup import checkpoint, config_lib, finetune
from emosup.data.corpus import Corpus
from emosup.data.manifest import Manifest, Utterance


def _corpus(rows):
    utts = [Utterance(id=f"{s}_{e}_{i}.wav", path=f"/x/{s}_{e}_{i}.wav", speaker=s, emotion=e, split=sp)
            for s, e, i, sp in rows]
    return Corpus(name="fake", manifest=Manifest(utts, "/x/m.csv"), manifest_path="/x/m.csv",
                  train_split="train", study_split="test", splits=("train", "dev", "test"))


def _cfg(**ser):
    c = config_lib.finetune_config(labels_per_class=2)
    c.ser.update(ser)
    return c


def _rows(speakers, emotions, n, split):
    return [(s, e, i, split) for s in speakers for e in emotions for i in range(n)]


def test_roles_dev_speakers_are_held_out_and_labels_per_class():
    c = _corpus(_rows(["a", "b", "c", "d"], ["happy", "sad"], 3, "train") + _rows(["t"], ["happy", "sad"], 2, "test"))
    train_rows, dev, test, classes = finetune._split_rows(_cfg(), c)
    assert classes == ["happy", "sad"]
    assert [u.emotion for u in train_rows].count("happy") == 2 and len(train_rows) == 4
    dev_spk = {u.speaker for u in dev}
    assert len(dev_spk) == 1 and not dev_spk & {u.speaker for u in train_rows}
    assert {u.speaker for u in test} == {"t"}
    again = finetune._split_rows(_cfg(), c)[0]
    assert [u.id for u in again] == [u.id for u in train_rows]  # seeded


def test_dev_split_is_used_when_present():
    c = _corpus(_rows(["a", "b"], ["happy", "sad"], 3, "train") + _rows(["d"], ["happy", "sad"], 1, "dev")
                + _rows(["t"], ["happy", "sad"], 1, "test"))
    train_rows, dev, _, _ = finetune._split_rows(_cfg(), c)
    assert {u.speaker for u in dev} == {"d"} and {u.speaker for u in train_rows} == {"a", "b"}


def test_labelled_set_missing_a_class():
    rows = _rows(["a", "b", "c", "e"], ["happy"], 3, "train") + _rows(["t"], ["happy", "sad"], 1, "test")
    with pytest.raises(ValueError, match=r"no utterance of class 'sad'"):
        finetune._split_rows(_cfg(classes=("happy", "sad")), _corpus(rows))


def test_emotions_the_config_does_not_know():
    c = _corpus(_rows(["a", "b"], ["happy", "sad"], 2, "train") + _rows(["t"], ["happy", "bored"], 1, "test"))
    with pytest.raises(ValueError, match=r"test rows have emotions \['bored'\]"):
        finetune._split_rows(_cfg(), c)
    with pytest.raises(ValueError, match=r"fine-tuning rows have emotions \['sad'\]"):
        finetune._split_rows(_cfg(classes=("happy",)), c)


# ---------------------------------------------------------------- end to end on tiny audio
FINETUNE = REPO / "configs" / "finetune.py"


def _tiny(corpus_dir, target, steps=6):
    c = load_config(FINETUNE, f"synthetic_dir={corpus_dir},steps={steps},batch_size=8,"
                              f"labels_per_class=2,target={target}")
    c.unlock()
    use_tiny_corpus(c, corpus_dir)
    c.data.crop_seconds, c.eval_every, c.ser.freeze_steps, c.ser.dev_fraction = 1.0, 2, 2, 0.5
    return c


def test_dimensional_finetuning_reports_ccc(tmp_path, synthetic_corpus_dir):
    result = finetune.run(_tiny(synthetic_corpus_dir, "both", steps=4), tmp_path)
    test = result["test"]
    for d in ("arousal", "valence", "dominance"):
        assert -1.0 <= test[f"ccc_{d}"] <= 1.0
    assert test["ccc_mean"] == pytest.approx(np.mean([test[f"ccc_{d}"] for d in finetune.DIMENSIONS]))
    assert 0.0 <= test["macro_f1"] <= 1.0 and len(test["confusion"]) == len(result["classes"])
    model = json.loads((tmp_path / "model.json").read_text())
    assert model["ser"]["dimensions"] == ["arousal", "valence", "dominance"]
    assert model["ser"]["classes"] == result["classes"]


def test_killed_finetuning_resumes_to_the_same_result(tmp_path, synthetic_corpus_dir, monkeypatch):
    cfg = _tiny(synthetic_corpus_dir, "dimensional")
    unbroken = finetune.run(cfg, tmp_path / "unbroken")

    real = finetune.pipeline.crop_batches

    def crash_after_3(*a, **k):
        it = real(*a, **k)
        for _ in range(3):  # steps 1-3 run, the dev evaluation at step 2 is checkpointed
            yield next(it)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(finetune.pipeline, "crop_batches", crash_after_3)
    with pytest.raises(KeyboardInterrupt):
        finetune.run(cfg, tmp_path / "crashed")
    assert (tmp_path / "crashed" / "checkpoints" / "2").is_dir()
    assert not (tmp_path / "crashed" / "results.json").exists()
    monkeypatch.setattr(finetune.pipeline, "crop_batches", real)
    resumed = finetune.run(cfg, tmp_path / "crashed")
    assert [h["step"] for h in resumed["history"]] == [2, 4, 6]
    assert resumed["history"] == unbroken["history"]
    assert resumed["test"] == unbroken["test"] and resumed["best_step"] == unbroken["best_step"]
    _, a = checkpoint.load_encoder_variables(tmp_path / "unbroken")
    _, b = checkpoint.load_encoder_variables(tmp_path / "crashed")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
