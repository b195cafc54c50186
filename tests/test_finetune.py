"""Fine-tuning: row roles and bad labelled sets (no audio needed), then end to end on the tiny
synthetic corpus: dimensional (CCC) targets, and a killed run resuming to the same result."""
import json

import jax
import numpy as np
import pytest
from helpers import export_random_tiny_ecapa, tiny_finetune_config

from emosup import checkpoint, config_lib, metrics
from emosup.data.corpus import Corpus
from emosup.data.manifest import Manifest, Utterance
from emosup.trainers import ser, ser_ecapa


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
    train_rows, dev, test, classes = ser.split_rows(_cfg(), c)
    assert classes == ["happy", "sad"]
    assert [u.emotion for u in train_rows].count("happy") == 2 and len(train_rows) == 4
    dev_spk = {u.speaker for u in dev}
    assert len(dev_spk) == 1 and not dev_spk & {u.speaker for u in train_rows}
    assert {u.speaker for u in test} == {"t"}
    again = ser.split_rows(_cfg(), c)[0]
    assert [u.id for u in again] == [u.id for u in train_rows]  # seeded


def test_dev_split_is_used_when_present():
    c = _corpus(_rows(["a", "b"], ["happy", "sad"], 3, "train") + _rows(["d"], ["happy", "sad"], 1, "dev")
                + _rows(["t"], ["happy", "sad"], 1, "test"))
    train_rows, dev, _, _ = ser.split_rows(_cfg(), c)
    assert {u.speaker for u in dev} == {"d"} and {u.speaker for u in train_rows} == {"a", "b"}


def test_labelled_set_missing_a_class():
    rows = _rows(["a", "b", "c", "e"], ["happy"], 3, "train") + _rows(["t"], ["happy", "sad"], 1, "test")
    with pytest.raises(ValueError, match=r"no utterance of class 'sad'"):
        ser.split_rows(_cfg(classes=("happy", "sad")), _corpus(rows))


def test_emotions_the_config_does_not_know():
    c = _corpus(_rows(["a", "b"], ["happy", "sad"], 2, "train") + _rows(["t"], ["happy", "bored"], 1, "test"))
    with pytest.raises(ValueError, match=r"test rows have emotions \['bored'\]"):
        ser.split_rows(_cfg(), c)
    with pytest.raises(ValueError, match=r"fine-tuning rows have emotions \['sad'\]"):
        ser.split_rows(_cfg(classes=("happy",)), c)


# ---------------------------------------------------------------- end to end on tiny audio
def test_dimensional_finetuning_reports_ccc(tmp_path, synthetic_corpus_dir):
    result = ser_ecapa.run(tiny_finetune_config(synthetic_corpus_dir, "both", steps=4), tmp_path)
    test = result["test"]
    for d in ("arousal", "valence", "dominance"):
        assert -1.0 <= test[f"ccc_{d}"] <= 1.0
    assert test["ccc_mean"] == pytest.approx(np.mean([test[f"ccc_{d}"] for d in ser.DIMENSIONS]))
    assert 0.0 <= test["macro_f1"] <= 1.0 and len(test["confusion"]) == len(result["classes"])
    model = json.loads((tmp_path / "model.json").read_text())
    assert model["ser"]["dimensions"] == ["arousal", "valence", "dominance"]
    assert model["ser"]["classes"] == result["classes"]
    # The categorical half is calibrated; the dimensional one has no temperature.
    assert result["calibration"]["fitted_on"] == "dev" and model["ser"]["temperature"] == result["temperature"]
    assert 0.0 <= test["ece"] <= 1.0 and "ece" in result["history"][-1]["dev"]


def test_killed_finetuning_resumes_to_the_same_result(tmp_path, synthetic_corpus_dir, monkeypatch):
    cfg = tiny_finetune_config(synthetic_corpus_dir, "dimensional")
    unbroken = ser_ecapa.run(cfg, tmp_path / "unbroken")
    assert unbroken["temperature"] is None and "ece" not in unbroken["test"]  # nothing to calibrate

    real = ser.pipeline.crop_batches

    def crash_after_3(*a, **k):
        it = real(*a, **k)
        for _ in range(3):  # steps 1-3 run, the dev evaluation at step 2 is checkpointed
            yield next(it)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(ser.pipeline, "crop_batches", crash_after_3)
    with pytest.raises(KeyboardInterrupt):
        ser_ecapa.run(cfg, tmp_path / "crashed")
    assert (tmp_path / "crashed" / "checkpoints" / "2").is_dir()
    assert not (tmp_path / "crashed" / "results.json").exists()
    monkeypatch.setattr(ser.pipeline, "crop_batches", real)
    resumed = ser_ecapa.run(cfg, tmp_path / "crashed")
    assert [h["step"] for h in resumed["history"]] == [2, 4, 6]
    assert resumed["history"] == unbroken["history"]
    assert resumed["test"] == unbroken["test"] and resumed["best_step"] == unbroken["best_step"]
    _, a = checkpoint.load_encoder_variables(tmp_path / "unbroken")
    _, b = checkpoint.load_encoder_variables(tmp_path / "crashed")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------- an arm starts where it says; the schedule
def _record_saves(monkeypatch):
    """{step: host copy of the state's params and batch_stats} at every checkpoint (one per
    dev evaluation), taken before the next step can donate the state."""
    saved = {}
    real = checkpoint.Checkpointer.save

    def spy(self, step, state, meta, extra=None):
        saved[step] = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        return real(self, step, state, meta, extra)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", spy)
    return saved


def _equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_finetuning_starts_from_init_bit_for_bit_stays_frozen_then_moves(tmp_path, synthetic_corpus_dir,
                                                                         monkeypatch):
    init_dir = export_random_tiny_ecapa(tmp_path / "init", 11)
    _, init = checkpoint.load_encoder_variables(init_dir)
    cfg = tiny_finetune_config(synthetic_corpus_dir, "categorical", steps=4)
    cfg.init, cfg.eval_every, cfg.ser.freeze_steps = str(init_dir), 1, 2
    created = {}
    real_create = ser_ecapa.FinetuneState.create

    def spy_create(**kw):
        created.update(jax.device_get({"params": kw["params"], "batch_stats": kw["batch_stats"]}))
        return real_create(**kw)

    monkeypatch.setattr(ser_ecapa.FinetuneState, "create", staticmethod(spy_create))
    saved = _record_saves(monkeypatch)
    ser_ecapa.run(cfg, tmp_path / "ft")
    assert _equal(created["params"]["encoder"], init["params"]), "the encoder starts as the init"
    assert _equal(created["batch_stats"]["encoder"], init["batch_stats"])
    assert sorted(saved) == [1, 2, 3, 4]
    for step in (1, 2):  # frozen: weights and running statistics untouched, the head learns
        assert _equal(saved[step]["params"]["encoder"], init["params"]), f"encoder moved at step {step}"
        assert _equal(saved[step]["batch_stats"]["encoder"], init["batch_stats"])
        assert not _equal(saved[step]["params"]["ser_head"], created["params"]["ser_head"])
    for step in (3, 4):  # unfrozen: every weight matrix of the encoder is trained
        moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved[step]["params"]["encoder"]),
                                                          jax.tree.leaves(init["params"]))]
        assert np.mean(moved) > 0.9, f"step {step}: only {np.mean(moved):.0%} of the encoder's tensors moved"
        assert not _equal(saved[step]["batch_stats"]["encoder"], init["batch_stats"])


def test_the_test_set_is_scored_with_the_best_dev_weights(tmp_path, synthetic_corpus_dir, monkeypatch):
    """Dev scores are set here (best at step 2 of 4, so neither the first nor the last);
    the test rows must then be scored with exactly the step-2 variables."""
    cfg = tiny_finetune_config(synthetic_corpus_dir, "categorical", steps=4)
    cfg.eval_every, cfg.ser.freeze_steps = 1, 0
    dev_scores = iter([0.2, 0.7, 0.4, 0.5])
    scored, dev_out = [], []
    real_evaluate = ser_ecapa.evaluate

    def spy_evaluate(encoder, head, head_params, rows, classes, target, **kw):
        out = real_evaluate(encoder, head, head_params, rows, classes, target, **kw)
        if rows[0].split == "test":
            scored.append(jax.device_get({"encoder": encoder.variables, "ser_head": head_params}))
        else:
            out["macro_f1"] = next(dev_scores)
            dev_out.append(out)
        return out

    monkeypatch.setattr(ser_ecapa, "evaluate", spy_evaluate)
    saved = _record_saves(monkeypatch)
    result = ser_ecapa.run(cfg, tmp_path / "ft")
    assert [h["dev"]["macro_f1"] for h in result["history"]] == [0.2, 0.7, 0.4, 0.5]
    assert result["best_step"] == 2 and result["dev_score"] == 0.7
    assert len(scored) == 1
    best = {"encoder": {"params": saved[2]["params"]["encoder"], "batch_stats": saved[2]["batch_stats"]["encoder"]},
            "ser_head": saved[2]["params"]["ser_head"]}
    last = {"encoder": {"params": saved[4]["params"]["encoder"], "batch_stats": saved[4]["batch_stats"]["encoder"]},
            "ser_head": saved[4]["params"]["ser_head"]}
    assert _equal(scored[0], best) and not _equal(scored[0], last)
    # The exported model is the best one too.
    exported = checkpoint.restore_variables(tmp_path / "ft" / "variables")
    assert _equal(exported["params"], saved[2]["params"])
    # The temperature is fitted on the dev logits of those step-2 variables, reported with ECE
    # and stored in model.json for predict.
    cal = result["calibration"]
    assert cal["fitted_on"] == "dev" and len(dev_out[1]["labels"]) >= ser.MIN_CALIBRATION_ROWS
    assert result["temperature"] == cal["temperature"] == metrics.fit_temperature(
        dev_out[1]["logits"], dev_out[1]["labels"])
    assert cal["dev"]["ece"] == dev_out[1]["ece"] and cal["test"]["ece"] == result["test"]["ece"]
    assert cal["dev"]["nll_calibrated"] <= cal["dev"]["nll"]
    model = json.loads((tmp_path / "ft" / "model.json").read_text())
    assert model["ser"]["temperature"] == result["temperature"] and model["ser"]["calibration"] == cal
    on_disk = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert on_disk["calibration"] == cal and "logits" not in on_disk["test"]
    # Rerun when finished: the best variables come from the checkpoint and dev is scored again
    # with them, giving the same temperature.
    monkeypatch.undo()
    again = ser_ecapa.run(cfg, tmp_path / "ft")
    assert again["temperature"] == pytest.approx(result["temperature"], rel=1e-6)
    assert again["calibration"]["dev"]["ece"] == pytest.approx(cal["dev"]["ece"], abs=1e-9)
