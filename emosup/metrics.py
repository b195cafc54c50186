"""Evaluation metrics from mergeable sufficient statistics (numpy, host side).

Every metric here is a function of statistics that add up: a confusion matrix for the
categorical task, six running sums per attribute for CCC. Per-batch or per-host partial results
are summed (`cm_a + cm_b`, `stats_a.merge(stats_b)`) and give exactly the whole-set value, so
evaluation never needs to gather predictions in one place.

Shapes: N examples, C classes, A dimensional attributes (e.g. arousal, valence, dominance).
"""
import numpy as np


def confusion_matrix(labels, preds, num_classes):
    """Counts [C, C] int64, rows = true class, columns = predicted class.

    labels, preds: [N] ints in [0, C). Equal to `sklearn.metrics.confusion_matrix(labels, preds,
    labels=range(C))`. Merge partial matrices with `+`.
    """
    labels = np.asarray(labels).reshape(-1)
    preds = np.asarray(preds).reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(f"confusion_matrix: labels and preds differ in length "
                         f"({labels.shape[0]} vs {preds.shape[0]})")
    if int(num_classes) < 1:
        raise ValueError(f"confusion_matrix: num_classes must be ≥ 1, got {num_classes}")
    for name, v in (("labels", labels), ("preds", preds)):
        if v.size and not np.issubdtype(v.dtype, np.integer):
            raise ValueError(f"confusion_matrix: {name} must be integers, got dtype {v.dtype}")
        bad = (v < 0) | (v >= num_classes)
        if np.any(bad):
            raise ValueError(f"confusion_matrix: {name}[{int(np.argmax(bad))}] = "
                             f"{v[np.argmax(bad)]} is outside [0, {num_classes})")
    c = int(num_classes)
    flat = labels.astype(np.int64) * c + preds.astype(np.int64)
    return np.bincount(flat, minlength=c * c).reshape(c, c).astype(np.int64)


def classification_metrics(cm):
    """Metrics of a confusion matrix [C, C] (rows true, columns predicted).

    Returns a dict:
      accuracy      trace / total.
      uar           unweighted average recall: the mean of per-class recall over **all C
                    classes**, a class absent from the truth counting as recall 0. This is
                    `recall_score(average="macro", labels=range(C), zero_division=0)`; when every
                    class occurs in the truth it equals `balanced_accuracy_score`.
      uar_present   mean recall over the classes present in the truth only (always equal to
                    `balanced_accuracy_score`, which drops absent classes with a warning).
      macro_f1      mean per-class F1 over all C classes, F1 = 2·tp / (2·tp + fp + fn) and 0
                    where that is 0/0 (`f1_score(average="macro", labels=range(C),
                    zero_division=0)`).
      recall, precision, f1   per class [C] (0 where undefined, i.e. zero_division=0).
      support       true examples per class [C] int64.
      absent        the class indices with support 0 (a list, so callers can warn).
    An empty matrix (no examples) raises ValueError.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"classification_metrics: cm must be square [C, C], got {cm.shape}")
    total = cm.sum()
    if total <= 0:
        raise ValueError("classification_metrics: the confusion matrix is empty (no examples)")
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(1)
    predicted = cm.sum(0)

    def safe_div(a, b):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), 0.0)

    recall = safe_div(tp, support)
    precision = safe_div(tp, predicted)
    f1 = safe_div(2 * tp, 2 * tp + (predicted - tp) + (support - tp))
    present = support > 0
    return {
        "accuracy": float(tp.sum() / total),
        "uar": float(recall.mean()),
        "uar_present": float(recall[present].mean()),
        "macro_f1": float(f1.mean()),
        "recall": recall,
        "precision": precision,
        "f1": f1,
        "support": support.astype(np.int64),
        "absent": [int(i) for i in np.flatnonzero(~present)],
    }


class CCCStats:
    """Running sums for the concordance correlation coefficient, per attribute.

    Holds n, Σx, Σy, Σx², Σy², Σxy (float64, one each per attribute; x = prediction,
    y = target). `value()` gives CCC in the population form (ddof = 0), the same as computing
    it on all the data at once. Sums are used (not running means) so that merging is plain
    addition; in float64 the cancellation in Σx²/n − mean² costs ~2 of 16 digits for ratings on
    a 1–7 scale, far below anything reported.
    """

    _FIELDS = ("n", "sx", "sy", "sxx", "syy", "sxy")

    def __init__(self, num_attributes):
        self.num_attributes = int(num_attributes)
        if self.num_attributes < 1:
            raise ValueError(f"CCCStats: num_attributes must be ≥ 1, got {num_attributes}")
        self.sums = np.zeros((6, self.num_attributes), np.float64)

    def update(self, pred, target, weights=None):
        """Add a batch. pred, target: [B, A] (or [B] when A = 1); weights: [B] 0/1 mask or
        frequency weights, None = ones. Returns self."""
        pred = np.asarray(pred, np.float64)
        target = np.asarray(target, np.float64)
        if pred.ndim == 1:
            pred, target = pred[:, None], target.reshape(-1, 1)
        if pred.shape != target.shape or pred.ndim != 2 or pred.shape[1] != self.num_attributes:
            raise ValueError(f"CCCStats.update: pred and target must both be [B, "
                             f"{self.num_attributes}], got {pred.shape} and {target.shape}")
        w = np.ones(pred.shape[0]) if weights is None else np.asarray(weights, np.float64)
        if w.shape != pred.shape[:1]:
            raise ValueError(f"CCCStats.update: weights must be [{pred.shape[0]}], got {w.shape}")
        keep = w != 0  # drop masked rows before multiplying so NaN padding cannot leak in
        pred, target, w = pred[keep], target[keep], w[keep][:, None]
        if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(target))):
            raise ValueError("CCCStats.update: non-finite prediction or target in an unmasked row")
        self.sums += np.stack([
            np.broadcast_to(w, pred.shape).sum(0), (w * pred).sum(0), (w * target).sum(0),
            (w * pred * pred).sum(0), (w * target * target).sum(0), (w * pred * target).sum(0)])
        return self

    def merge(self, other):
        """A new CCCStats holding the sums of both (self and other unchanged)."""
        if not isinstance(other, CCCStats) or other.num_attributes != self.num_attributes:
            raise ValueError("CCCStats.merge: other must be a CCCStats with the same "
                             "num_attributes")
        out = CCCStats(self.num_attributes)
        out.sums = self.sums + other.sums
        return out

    __add__ = merge

    def to_array(self):
        """The sums as [6, A] float64 (for an all-reduce across hosts); `from_array` inverts."""
        return self.sums.copy()

    @classmethod
    def from_array(cls, sums):
        sums = np.asarray(sums, np.float64)
        if sums.ndim != 2 or sums.shape[0] != 6:
            raise ValueError(f"CCCStats.from_array: expected [6, A], got {sums.shape}")
        out = cls(sums.shape[1])
        out.sums = sums.copy()
        return out

    @property
    def count(self):
        return float(self.sums[0, 0])

    def value(self):
        """CCC per attribute [A] (population form): 2·cov / (var x + var y + (x̄ − ȳ)²).
        Raises ValueError with no examples; an attribute whose denominator is 0 (both constant
        and equal) gives 0, like `emosup.losses.ccc`."""
        n, sx, sy, sxx, syy, sxy = self.sums
        if np.any(n <= 0):
            raise ValueError("CCCStats.value: no examples")
        mx, my = sx / n, sy / n
        vx = np.maximum(sxx / n - mx * mx, 0.0)
        vy = np.maximum(syy / n - my * my, 0.0)
        cov = sxy / n - mx * my
        denom = vx + vy + (mx - my) ** 2
        return np.where(denom > 0, 2.0 * cov / np.where(denom > 0, denom, 1.0), 0.0)


def eer(scores, labels):
    """Equal error rate for verification trials → (eer, threshold).

    scores: [N] floats (higher = more likely the same speaker); labels: [N] with 1 = target
    trial, 0 = non-target. A trial is accepted when score ≥ t. Over the thresholds at the
    distinct scores (plus +∞, accept nothing) the false-acceptance rate FAR and false-rejection
    rate FRR trace a polyline; the EER is where that polyline crosses FAR = FRR, linearly
    interpolated between the two neighbouring operating points (so it does not depend on score
    ties or on the grid). `threshold` is interpolated between those two points' scores by the
    same fraction. Both classes must be present.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"eer: scores and labels differ in length ({scores.size} vs {labels.size})")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError("eer: labels must be 0 (non-target) or 1 (target)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("eer: scores must be finite")
    n_tar, n_non = int(np.sum(labels == 1)), int(np.sum(labels == 0))
    if n_tar == 0 or n_non == 0:
        raise ValueError(f"eer: need both target and non-target trials, got {n_tar} target and "
                         f"{n_non} non-target")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    # Operating point j accepts the top-j-distinct-scores group; a group of tied scores is
    # accepted or rejected as a whole, hence only the last index of each tie group counts.
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.r_[0, np.cumsum(y == 1)[last]]
    fp = np.r_[0, np.cumsum(y == 0)[last]]
    thresholds = np.r_[np.inf, s[last]]
    far = fp / n_non   # increasing
    frr = 1.0 - tp / n_tar  # decreasing
    diff = far - frr  # from −1 (accept nothing) to +1 (accept everything): crosses 0 once
    j = int(np.argmax(diff >= 0))  # first point at or past the crossing; j ≥ 1 since diff[0] = −1
    d0, d1 = diff[j - 1], diff[j]
    frac = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    rate = far[j - 1] + frac * (far[j] - far[j - 1])
    lo_t = thresholds[j - 1] if np.isfinite(thresholds[j - 1]) else thresholds[j]
    threshold = lo_t + frac * (thresholds[j] - lo_t)
    return float(rate), float(threshold)


def plot_confusion_matrix(cm, class_names, path, title=""):
    """Write a PNG of a confusion matrix [C, C]: cell colour = row-normalised share (recall
    per true class), cell text = count and share. Returns the path."""
    # A bare Figure renders with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"plot_confusion_matrix: cm must be square [C, C], got {cm.shape}")
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"plot_confusion_matrix: {len(class_names)} class names for a "
                         f"{cm.shape[0]}-class matrix")
    rows = cm.sum(1, keepdims=True).astype(np.float64)
    share = np.where(rows > 0, cm / np.where(rows > 0, rows, 1.0), 0.0)
    c = cm.shape[0]
    size = 1.2 + 0.7 * c
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    for i in range(c):
        for j in range(c):
            ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center",
                    fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(c), class_names, rotation=45, ha="right")
    ax.set_yticks(range(c), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    return path


# ------------------------------------------------------------------ calibration
ECE_BINS = 15
TEMPERATURE_BOUNDS = (1e-2, 1e2)


def softmax(logits, temperature=1.0):
    """softmax(logits / temperature) over the last axis, in float64 (numpy)."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"softmax: temperature must be a finite number > 0, got {temperature}")
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _check_logits_labels(where, logits, labels, name="logits"):
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{where}: {name} must be [N, C] with one label per row, got {name} "
                         f"{logits.shape} and {labels.shape[0]} labels")
    if labels.size == 0:
        raise ValueError(f"{where}: no examples")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    bad = (labels < 0) | (labels >= logits.shape[1])
    if np.any(bad):
        raise ValueError(f"{where}: labels[{int(np.argmax(bad))}] = {labels[np.argmax(bad)]} is "
                         f"outside [0, {logits.shape[1]})")
    if not np.all(np.isfinite(logits)):
        raise ValueError(f"{where}: {name} must be finite")
    return logits, labels


def expected_calibration_error(probabilities, labels, num_bins=ECE_BINS):
    """Expected calibration error (ECE) of the top-label confidence, in [0, 1].

    probabilities: [N, C] class probabilities per example (rows summing to 1, e.g. a softmax);
    labels: [N] true classes in [0, C). Each example's prediction is its most probable class
    (the first on ties) and its confidence that probability. The confidences fall in
    `num_bins` (M, 15 by default) equal-width bins B_m = ((m − 1)/M, m/M], m = 1 … M (a
    confidence of exactly 0 counts in B_1), and

        ECE = Σ_m |B_m| / N · |acc(B_m) − conf(B_m)|

    with acc(B_m) the share of correct predictions in bin m and conf(B_m) their mean
    confidence; empty bins add nothing. 0 = confidence matches accuracy in every bin; a model
    that always says 1.0 and is right half the time has ECE 0.5. The value depends on the
    binning (this is the usual equal-width, top-label form of Guo et al., 2017), so compare ECEs
    computed with the same `num_bins` only.
    """
    probs, labels = _check_logits_labels("expected_calibration_error", probabilities, labels,
                                         "probabilities")
    if int(num_bins) < 1:
        raise ValueError(f"expected_calibration_error: num_bins must be ≥ 1, got {num_bins}")
    m = int(num_bins)
    conf = probs.max(-1)
    correct = (probs.argmax(-1) == labels).astype(np.float64)
    # Bin m (0-based) holds (edges[m], edges[m + 1]]; comparing with the edges (not ceil(conf·M))
    # keeps a confidence of exactly k/M in bin k whatever the rounding of the product.
    edges = np.linspace(0.0, 1.0, m + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, m - 1)
    count = np.bincount(bins, minlength=m)
    gap = np.bincount(bins, weights=correct, minlength=m) - np.bincount(bins, weights=conf, minlength=m)
    return float(np.abs(gap).sum() / count.sum())


def negative_log_likelihood(logits, labels, temperature=1.0):
    """Mean −log softmax(logits / temperature)[label] over the examples (natural log).

    logits: [N, C]; labels: [N] ints in [0, C)."""
    logits, labels = _check_logits_labels("negative_log_likelihood", logits, labels)
    z = logits / float(temperature)
    z = z - z.max(-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(-1))
    return float(np.mean(log_norm - z[np.arange(labels.size), labels]))


def fit_temperature(logits, labels, bounds=TEMPERATURE_BOUNDS):
    """Temperature scaling: the T > 0 minimising `negative_log_likelihood(logits, labels, T)`.

    logits: [N, C] of held-out examples (dev, never test); labels: [N]. One scalar divides
    every logit, so the predicted classes (and accuracy, F1, …) do not change, only the
    confidence: T > 1 softens an overconfident model, T < 1 sharpens an underconfident one.
    The NLL is convex in 1/T, hence has a single minimum along log T, which a bounded Brent
    search over log T in `bounds` finds (deterministic, to ~1e-6 relative). Without an
    interior minimum (e.g. dev classified perfectly with a margin, where the NLL keeps falling
    as T → 0) the result is the bound it runs into. Logits equal within every row give 1.0.
    """
    from scipy.optimize import minimize_scalar

    logits, labels = _check_logits_labels("fit_temperature", logits, labels)
    lo, hi = (float(b) for b in bounds)
    if not (0 < lo < hi and np.isfinite(hi)):
        raise ValueError(f"fit_temperature: bounds must be 0 < low < high < inf, got {bounds}")
    if np.all(logits == logits[:, :1]):
        return 1.0  # every row uniform: the temperature changes nothing
    res = minimize_scalar(lambda u: negative_log_likelihood(logits, labels, np.exp(u)),
                          bounds=(np.log(lo), np.log(hi)), method="bounded",
                          options={"xatol": 1e-6})
    return float(np.exp(res.x))
