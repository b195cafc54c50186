"""Calibration: the expected calibration error on hand-computed cases, temperature scaling on
synthetic logits (an overconfident model is softened back, a calibrated one left alone), the
fine-tuning summary (`ser.calibrate`), and `predict` applying the stored temperature."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, write_wav

from emosup import checkpoint, metrics, predict
from emosup.models.ecapa import PRESETS
from emosup.models.encoders import build_encoder, embed_paths
from emosup.models.heads import SerHead
from emosup.trainers import ser


def _probs(conf, label, pred, c=2):
    """Rows of `c` class probabilities, top class `pred` with probability `conf`."""
    p = np.full((len(conf), c), 0.0)
    for i, (k, q) in enumerate(zip(pred, conf)):
        p[i] = (1.0 - q) / (c - 1)
        p[i, k] = q
    return p, np.asarray(label)


# ---------------------------------------------------------------- ECE, computed by hand
def test_ece_of_a_perfectly_calibrated_model_is_zero():
    # 10 rows at confidence 0.8 with 8 right, 5 rows at 0.6 with 3 right: accuracy = confidence
    # in each bin.
    conf = [0.8] * 10 + [0.6] * 5
    pred = [0] * 15
    label = [0] * 8 + [1] * 2 + [0] * 3 + [1] * 2
    p, y = _probs(conf, label, pred)
    assert metrics.expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_an_always_certain_model_right_half_the_time_is_one_half():
    p, y = _probs([1.0] * 8, [0, 1] * 4, [0] * 8, c=4)
    assert metrics.expected_calibration_error(p, y) == pytest.approx(0.5)


def test_ece_weights_each_bin_by_its_share_of_the_rows():
    # 4 rows at 0.9, all right (gap 0.1); 2 rows at 0.6, one right (gap 0.1); 2 rows at 0.7,
    # both wrong (gap 0.7): ECE = (4·0.1 + 2·0.1 + 2·0.7) / 8 = 0.25.
    p, y = _probs([0.9] * 4 + [0.6] * 2 + [0.7] * 2, [0] * 4 + [0, 1] + [1, 1], [0] * 8)
    assert metrics.expected_calibration_error(p, y) == pytest.approx(0.25)
    # One bin (M = 1): |accuracy − mean confidence| = |5/8 − 0.775|.
    assert metrics.expected_calibration_error(p, y, num_bins=1) == pytest.approx(abs(5 / 8 - 0.775))


def test_ece_bins_are_closed_on_the_right():
    # 0.8 = 12/15 ends bin (11/15, 12/15]; 0.8 + 1e-9 opens the next one. Apart, the two rows'
    # gaps (0.2 right, 0.8 wrong) add; together they cancel to |0.5 − 0.8| = 0.3.
    p, y = _probs([0.8, 0.8 + 1e-9], [0, 1], [0, 0])
    assert metrics.expected_calibration_error(p, y) == pytest.approx((0.2 + 0.8) / 2)
    p, y = _probs([0.8, 0.8 - 1e-9], [0, 1], [0, 0])
    assert metrics.expected_calibration_error(p, y) == pytest.approx(0.3, abs=1e-8)


def test_ece_equals_a_direct_loop_over_the_bins():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(500, 5)) * 2
    y = rng.integers(0, 5, 500)
    p = metrics.softmax(logits)
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs((pred[in_bin] == y[in_bin]).mean() - conf[in_bin].mean())
    assert metrics.expected_calibration_error(p, y) == pytest.approx(ece, rel=1e-12)


def test_ece_rejects_bad_input():
    with pytest.raises(ValueError, match=r"labels\[1\] = 3 is outside \[0, 2\)"):
        metrics.expected_calibration_error(np.full((2, 2), 0.5), [0, 3])
    with pytest.raises(ValueError, match="no examples"):
        metrics.expected_calibration_error(np.zeros((0, 2)), [])


# ---------------------------------------------------------------- temperature scaling
def _calibrated(seed, n=20000, c=4, scale=1.5):
    """Logits of a calibrated model: labels drawn from softmax(logits)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * scale
    p = metrics.softmax(logits)
    labels = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)
    return logits, labels


def test_temperature_of_an_overconfident_model_is_recovered_and_lowers_ece():
    logits, y = _calibrated(0)
    over = logits * 10.0  # the same model, ten times too sure of itself
    t = metrics.fit_temperature(over, y)
    assert t == pytest.approx(10.0, rel=0.05)
    before = metrics.expected_calibration_error(metrics.softmax(over), y)
    after = metrics.expected_calibration_error(metrics.softmax(over, t), y)
    assert before > 0.2 and after < 0.03, (before, after)
    assert metrics.negative_log_likelihood(over, y, t) < metrics.negative_log_likelihood(over, y)
    # Dividing by T never changes the predicted class.
    np.testing.assert_array_equal(metrics.softmax(over, t).argmax(1), over.argmax(1))


def test_temperature_of_a_calibrated_model_is_about_one():
    logits, y = _calibrated(1)
    assert metrics.fit_temperature(logits, y) == pytest.approx(1.0, abs=0.05)
    # An underconfident one (logits halved) is sharpened back: T ≈ 0.5.
    assert metrics.fit_temperature(logits / 2, y) == pytest.approx(0.5, rel=0.05)


def test_temperature_is_the_nll_minimum_and_deterministic():
    logits, y = _calibrated(2, n=300)
    t = metrics.fit_temperature(logits * 3, y)
    assert t == metrics.fit_temperature(logits * 3, y)
    nll = metrics.negative_log_likelihood(logits * 3, y, t)
    for other in (t * 0.98, t * 1.02):
        assert nll < metrics.negative_log_likelihood(logits * 3, y, other)
    assert metrics.fit_temperature(np.zeros((5, 3)), [0, 1, 2, 0, 1]) == 1.0  # nothing to scale


# ---------------------------------------------------------------- the fine-tuning summary
def _scored(logits, labels):
    return {"logits": np.asarray(logits, np.float64), "labels": np.asarray(labels)}


def test_calibrate_fits_on_dev_and_reports_ece_on_dev_and_test():
    logits, y = _calibrated(4, n=2000)
    dev, test = _scored(logits[:1000] * 10, y[:1000]), _scored(logits[1000:] * 10, y[1000:])
    out = ser.calibrate(dev, test, "categorical")
    assert out["fitted_on"] == "dev" and "reason" not in out and out["ece_bins"] == 15
    assert out["temperature"] == metrics.fit_temperature(dev["logits"], dev["labels"])
    assert out["temperature"] == pytest.approx(10.0, rel=0.15)
    for split, s in (("dev", dev), ("test", test)):
        r = out[split]
        assert r["ece"] == metrics.expected_calibration_error(metrics.softmax(s["logits"]), s["labels"])
        assert r["ece_calibrated"] == metrics.expected_calibration_error(
            metrics.softmax(s["logits"], out["temperature"]), s["labels"])
        assert r["ece_calibrated"] < r["ece"] / 3 and r["nll_calibrated"] < r["nll"]
    json.dumps(out)  # goes into results.json and model.json as it is


def test_calibrate_with_too_few_dev_rows_keeps_t_1_and_says_why():
    logits, y = _calibrated(5, n=100)
    out = ser.calibrate(_scored(logits[:9] * 10, y[:9]), _scored(logits * 10, y), "both")
    assert out["temperature"] == 1.0 and out["fitted_on"] is None
    assert "dev has 9 scored utterance(s)" in out["reason"]
    assert out["test"]["ece"] == out["test"]["ece_calibrated"]
    assert ser.calibrate(None, _scored(logits, y), "categorical")["temperature"] == 1.0
    dimensional = ser.calibrate(None, {}, "dimensional")
    assert dimensional["temperature"] is None and "dimensional" in dimensional["reason"]


# ---------------------------------------------------------------- predict applies T
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A fine-tuned-model folder written by hand (random tiny ECAPA and head, 3 classes) with a
    recorded temperature of 2.5."""
    out = tmp_path_factory.mktemp("ft") / "model"
    cfg = {"encoder": "ecapa", "ecapa": dict(PRESETS["tiny"]), "features": {"n_mels": 80}, "source": "random"}
    enc = build_encoder(cfg)
    ev = enc.init(jax.random.key(0), np.zeros((1, 101, 80), np.float32), None)
    head = SerHead(num_classes=3)
    hp = head.init(jax.random.key(1), np.zeros((1, enc.lin_neurons), np.float32))["params"]
    cfg["ser"] = {"classes": ["angry", "happy", "sad"], "dimensions": [], "head_hidden": 0,
                  "temperature": 2.5, "calibration": {
                      "temperature": 2.5, "fitted_on": "dev", "ece_bins": 15,
                      "dev": {"ece": 0.3, "ece_calibrated": 0.05, "nll": 2.0, "nll_calibrated": 0.9}}}
    checkpoint.export_encoder(out, cfg, {"params": {"encoder": ev["params"], "ser_head": hp},
                                         "batch_stats": {"encoder": ev["batch_stats"]}})
    return out


def _wavs(tmp_path):
    return [str(write_wav(tmp_path / f"{i}.wav", seconds=1.0, seed=i)) for i in range(3)]


def _logits(directory, paths):
    enc, head, head_params, *_ = predict.load_model(directory)
    emb, _, valid = embed_paths(enc, paths, batch_per_device=4, progress=False)
    assert valid.all()
    return np.asarray(head.apply({"params": head_params}, emb)[0], np.float64)


def _set_ser(directory, **ser):
    model = checkpoint.read_model_json(directory)
    model["ser"] = {k: v for k, v in {**model["ser"], **ser}.items() if v is not None}
    (directory / checkpoint.MODEL_JSON).write_text(json.dumps(model))


def test_predict_applies_the_stored_temperature(tmp_path, model_dir):
    wavs = _wavs(tmp_path)
    logits = _logits(model_dir, wavs)
    notes = []
    rows = predict.predict(model_dir, wavs, notes)
    got = np.array([[r["probabilities"][c] for c in ("angry", "happy", "sad")] for r in rows])
    np.testing.assert_allclose(got, metrics.softmax(logits, 2.5), atol=1e-6)
    assert np.abs(got - metrics.softmax(logits)).max() > 1e-2  # T really made a difference
    assert all(r["temperature"] == 2.5 and r["calibrated"] for r in rows)
    assert notes == ["probabilities calibrated with temperature T=2.5 fitted on dev (ECE dev 0.3000 → 0.0500)"]


def test_predict_on_a_folder_without_a_temperature_is_uncalibrated(tmp_path, model_dir):
    old = tmp_path / "old"
    old.mkdir()
    (old / "variables").symlink_to(model_dir / "variables")
    (old / checkpoint.MODEL_JSON).write_text((model_dir / checkpoint.MODEL_JSON).read_text())
    _set_ser(old, temperature=None, calibration=None)  # as written before temperatures existed
    wavs = _wavs(tmp_path)
    notes = []
    rows = predict.predict(old, wavs, notes)
    got = np.array([[r["probabilities"][c] for c in ("angry", "happy", "sad")] for r in rows])
    np.testing.assert_allclose(got, metrics.softmax(_logits(old, wavs)), atol=1e-6)
    assert all(r["temperature"] == 1.0 and r["calibrated"] is False for r in rows)
    assert len(notes) == 1 and notes[0].startswith("probabilities uncalibrated (T=1")
    # A temperature that was not fitted (too small a dev set) is applied and named as such.
    _set_ser(old, temperature=1.0, calibration={"temperature": 1.0, "fitted_on": None,
                                                "reason": "dev has 4 scored utterance(s)"})
    assert predict.calibration_of(checkpoint.read_model_json(old)["ser"]) == (
        1.0, False, "probabilities uncalibrated (T=1: dev has 4 scored utterance(s))")
    _set_ser(old, temperature=-1.0)
    with pytest.raises(checkpoint.CheckpointError, match=r"model.json: ser.temperature=-1.0 must be a number > 0"):
        predict.predict(old, wavs)
    with pytest.raises(checkpoint.CheckpointError, match=r"ser.temperature='2' must be a number > 0"):
        predict.calibration_of({"temperature": "2"})


def test_predict_cli_says_how_the_probabilities_are_calibrated(tmp_path, model_dir):
    wav = _wavs(tmp_path)[0]
    line = "probabilities calibrated with temperature T=2.5 fitted on dev (ECE dev 0.3000 → 0.0500)"
    cmd = [sys.executable, "-m", "emosup.predict", f"--checkpoint={model_dir}", wav]
    table = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == line
    js = subprocess.run(cmd + ["--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert js.returncode == 0, js.stderr
    rows = json.loads(js.stdout)  # stdout stays pure JSON; the line goes to stderr
    assert rows[0]["temperature"] == 2.5 and rows[0]["calibrated"] is True
    assert line in js.stderr
