"""Metrics equal scikit-learn's, and merged partial statistics equal the whole-set value."""
import warnings

import numpy as np
import pytest
from matplotlib.image import imread
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn import metrics as skm

from emosup import losses, metrics


def _labels_with_gaps(seed, n=200, c=5):
    """Random labels/preds where class 3 is never predicted and class 4 never occurs in truth."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)  # class 4 absent from the truth
    preds = np.where(rng.random(n) < 0.5, labels, rng.integers(0, 5, n))
    preds[preds == 3] = 0  # class 3 never predicted
    return labels, preds


def test_confusion_matrix_and_metrics_equal_sklearn():
    labels, preds = _labels_with_gaps(0)
    c = 5
    cm = metrics.confusion_matrix(labels, preds, c)
    assert cm.dtype == np.int64 and cm.shape == (5, 5)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, preds, labels=range(c)))
    assert cm[:, 3].sum() == 0 and cm[4].sum() == 0  # the gaps are really there
    out = metrics.classification_metrics(cm)
    kw = dict(labels=list(range(c)), zero_division=0)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-12)
    assert out["uar"] == pytest.approx(skm.recall_score(labels, preds, average="macro", **kw), abs=1e-12)
    assert out["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro", **kw), abs=1e-12)
    np.testing.assert_allclose(out["recall"], skm.recall_score(labels, preds, average=None, **kw), atol=1e-12)
    np.testing.assert_allclose(out["precision"], skm.precision_score(labels, preds, average=None, **kw),
                               atol=1e-12)
    np.testing.assert_allclose(out["f1"], skm.f1_score(labels, preds, average=None, **kw), atol=1e-12)
    np.testing.assert_array_equal(out["support"], np.bincount(labels, minlength=c))
    assert out["absent"] == [4]
    # The absent class counts as recall 0 in `uar`; `uar_present` drops it like sklearn's
    # balanced accuracy, so the two differ by exactly the factor 4/5 here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the class absent from y_true
        bal = skm.balanced_accuracy_score(labels, preds)
    assert out["uar_present"] == pytest.approx(bal, abs=1e-12)
    assert out["uar"] == pytest.approx(bal * 4 / 5, abs=1e-12)


def test_uar_equals_balanced_accuracy_when_all_classes_present():
    rng = np.random.default_rng(1)
    labels, preds = rng.integers(0, 4, 150), rng.integers(0, 4, 150)
    out = metrics.classification_metrics(metrics.confusion_matrix(labels, preds, 4))
    assert out["absent"] == []
    assert out["uar"] == pytest.approx(skm.balanced_accuracy_score(labels, preds), abs=1e-12)


def test_merged_batches_equal_whole_set():
    labels, preds = _labels_with_gaps(2, n=301)
    whole = metrics.confusion_matrix(labels, preds, 5)
    parts = [metrics.confusion_matrix(labels[i:i + 37], preds[i:i + 37], 5) for i in range(0, 301, 37)]
    merged = sum(parts[1:], parts[0])
    np.testing.assert_array_equal(merged, whole)
    a, b = metrics.classification_metrics(merged), metrics.classification_metrics(whole)
    for key in ("accuracy", "uar", "uar_present", "macro_f1"):
        assert a[key] == b[key]


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match=r"confusion_matrix: preds\[2\] = 4 is outside \[0, 4\)"):
        metrics.confusion_matrix([0, 1, 2], [0, 1, 4], 4)
    with pytest.raises(ValueError, match=r"labels\[0\] = -1 is outside"):
        metrics.confusion_matrix([-1, 1], [0, 1], 4)
    with pytest.raises(ValueError, match="differ in length"):
        metrics.confusion_matrix([0, 1], [0], 4)
    with pytest.raises(ValueError, match="confusion matrix is empty"):
        metrics.classification_metrics(np.zeros((3, 3), np.int64))


def _np_ccc(x, y):
    return 2 * np.mean((x - x.mean()) * (y - y.mean())) / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_ccc_stats_merged_equal_direct():
    rng = np.random.default_rng(3)
    target = rng.uniform(1, 7, size=(257, 3))  # ratings on a 1–7 scale, as in MSP-Podcast
    pred = 0.7 * target + rng.normal(size=(257, 3)) + 0.5
    direct = np.array([_np_ccc(pred[:, i], target[:, i]) for i in range(3)])
    parts = [metrics.CCCStats(3).update(pred[i:i + 50], target[i:i + 50]) for i in range(0, 257, 50)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    np.testing.assert_allclose(merged.value(), direct, rtol=0, atol=1e-12)
    assert merged.count == 257
    # Via arrays, as an all-reduce across hosts would carry them.
    summed = metrics.CCCStats.from_array(sum(p.to_array() for p in parts))
    np.testing.assert_allclose(summed.value(), direct, rtol=0, atol=1e-12)
    # Same definition as the training loss (losses.ccc, population form).
    np.testing.assert_allclose(
        merged.value()[0], float(losses.ccc(np.float32(pred[:, 0]), np.float32(target[:, 0]))), atol=1e-5)
    # Masked rows (NaN padding) are dropped.
    keep = rng.random(257) > 0.2
    padded = np.where(keep[:, None], pred, np.nan)
    masked = metrics.CCCStats(3).update(padded, target, weights=keep.astype(np.float32))
    ref = [_np_ccc(pred[keep, i], target[keep, i]) for i in range(3)]
    np.testing.assert_allclose(masked.value(), ref, atol=1e-12)
    with pytest.raises(ValueError, match=r"CCCStats.update: pred and target must both be \[B, 3\]"):
        metrics.CCCStats(3).update(pred[:, :2], target[:, :2])
    with pytest.raises(ValueError, match="no examples"):
        metrics.CCCStats(2).value()


def _eer_reference(scores, labels):
    """The usual recipe: the ROC curve from sklearn, EER where it crosses tpr = 1 − fpr."""
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0, xtol=1e-14)


def _far_frr(scores, labels, t):
    accept = scores >= t
    return np.mean(accept[labels == 0]), np.mean(~accept[labels == 1])


@pytest.mark.parametrize("seed,tied", [(4, False), (5, True), (6, False)])
def test_eer_equals_roc_reference(seed, tied):
    rng = np.random.default_rng(seed)
    labels = (rng.random(400) < 0.3).astype(int)
    scores = rng.normal(size=400) + 1.5 * labels
    if tied:
        scores = np.round(scores * 2) / 2  # heavy ties: only whole groups can be accepted
    rate, thr = metrics.eer(scores, labels)
    np.testing.assert_allclose(rate, _eer_reference(scores, labels), atol=1e-10)
    # The threshold sits at the crossing: accepting from it and from the next lower score gives
    # the two operating points whose FAR and FRR bracket the EER.
    below = scores[scores < thr].max()
    far_hi, frr_hi = _far_frr(scores, labels, thr)
    far_lo, frr_lo = _far_frr(scores, labels, below)
    eps = 1e-12
    assert far_hi - eps <= rate <= far_lo + eps and frr_lo - eps <= rate <= frr_hi + eps
    if not tied:  # neighbouring points differ by exactly one trial
        steps = {(far_lo - far_hi) * (1 - labels).sum(), (frr_hi - frr_lo) * labels.sum()}
        assert sorted(round(x, 9) for x in steps) == [0.0, 1.0]
    assert 0.1 < rate < 0.4


def test_eer_edge_cases():
    assert metrics.eer([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0])[0] == 0.0  # perfectly separated
    assert metrics.eer([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0])[0] == 1.0  # perfectly inverted
    with pytest.raises(ValueError, match="need both target and non-target trials, got 2 target"):
        metrics.eer([0.1, 0.2], [1, 1])


def test_plot_confusion_matrix_writes_png(tmp_path):
    labels, preds = _labels_with_gaps(7, n=60, c=5)
    cm = metrics.confusion_matrix(labels, preds, 5)
    path = tmp_path / "cm.png"
    out = metrics.plot_confusion_matrix(cm, ["neu", "hap", "sad", "ang", "fru"], path, "fold 1")
    assert out == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.05  # not a blank canvas
    with pytest.raises(ValueError, match="4 class names for a 5-class matrix"):
        metrics.plot_confusion_matrix(cm, ["a", "b", "c", "d"], tmp_path / "x.png", "")
