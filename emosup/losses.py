"""Losses. Pure jnp, per-example weights so that skipped (unreadable) examples count as zero.

Shapes: B examples, S speakers (classes), D embedding size.
"""
import math

import jax
import jax.numpy as jnp


def cosine_logits(embeddings, weight):
    """Cosine similarity between L2-normalised embeddings [B, D] and class weights [S, D] → [B, S].

    This is SpeechBrain's ECAPA `Classifier` (F.linear of normalised input and weights).
    """
    e = embeddings * jax.lax.rsqrt(jnp.maximum(jnp.sum(embeddings**2, -1, keepdims=True), 1e-24))
    w = weight * jax.lax.rsqrt(jnp.maximum(jnp.sum(weight**2, -1, keepdims=True), 1e-24))
    return e @ w.T


def aam_logits(cosine, labels, margin=0.2, scale=30.0):
    """Additive angular margin: the target class logit becomes s·cos(θ + m), others s·cos θ.

    Follows SpeechBrain `AdditiveAngularMargin(margin, scale, easy_margin=False)` (nnet/losses.py):
    cosines clamped to ±(1 − 1e-7); where θ + m would pass π (cos θ ≤ cos(π − m)) the logit
    falls back to the monotonic cos θ − m·sin(π − m) (ArcFace's "hard margin" branch).
    cosine: [B, S]; labels: [B] int → [B, S].
    """
    cosine = jnp.clip(cosine.astype(jnp.float32), -1 + 1e-7, 1 - 1e-7)
    sine = jnp.sqrt(1.0 - cosine**2)
    phi = cosine * math.cos(margin) - sine * math.sin(margin)
    th = math.cos(math.pi - margin)
    mm = math.sin(math.pi - margin) * margin
    phi = jnp.where(cosine > th, phi, cosine - mm)
    onehot = jax.nn.one_hot(labels, cosine.shape[-1], dtype=cosine.dtype)
    return scale * (onehot * phi + (1.0 - onehot) * cosine)


def weighted_mean(values, weights=None):
    """Mean of values [B] with example weights [B] (None = all ones); 0 when all weights are 0."""
    if weights is None:
        return jnp.mean(values)
    weights = weights.astype(values.dtype)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def aam_softmax(embeddings, weight, labels, margin=0.2, scale=30.0, weights=None):
    """AAM-softmax speaker loss (SpeechBrain `LogSoftmaxWrapper(AdditiveAngularMargin(m, s))`).

    SpeechBrain sums KL(onehot ‖ softmax) over the batch and divides by B; with one-hot
    targets that is the mean cross-entropy computed here. Returns (loss, logits [B, S]).
    """
    logits = aam_logits(cosine_logits(embeddings, weight), labels, margin, scale)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], -1)[:, 0]
    return weighted_mean(ce, weights), logits


# ----------------------------------------------------------------------------------------------
# Contrastive, adversarial and SER losses.
#
# Conventions shared by everything below:
# * `weights` [B] are per-example weights (None = all ones). A weight of 0 removes the row
#   exactly: its value is replaced by 0 before summing (so even a NaN in a padded row cannot
#   leak into the loss) and it contributes nothing to the gradient of the other rows.
# * Weighted means are Σ w·v / Σ w, and 0 when Σ w = 0 (a fully masked batch gives loss 0,
#   not NaN). For 0/1 masks this is exactly `weighted_mean`.
# * Computation is in float32 at least (float64 inputs stay float64, so the gradient checks can
#   run in double precision).
# ----------------------------------------------------------------------------------------------

_NORM_EPS = 1e-24  # squared-norm floor: a zero (padding) vector normalises to 0, not NaN
_CCC_EPS = 1e-12   # CCC denominator floor: two identical constants give CCC 0, not NaN
_NEG = -1e30       # logit of an excluded softmax entry: exp underflows to exactly 0, yet finite


def _compute_dtype(*xs):
    return jnp.result_type(jnp.float32, *[x.dtype for x in xs])


def _l2_normalise(x):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), _NORM_EPS))


def _row_weights(weights, n, dtype, where):
    """Per-example weights [n] as `dtype` (None → ones); raises on a wrong shape (static check)."""
    if weights is None:
        return jnp.ones((n,), dtype)
    weights = jnp.asarray(weights)
    if weights.shape != (n,):
        raise ValueError(f"{where}: weights must have shape ({n},), got {weights.shape}")
    return weights.astype(dtype)


def _masked_mean(values, weights):
    """Σ w·v / Σ w over rows with w ≠ 0 (values there replaced by 0 first); 0 if Σ w = 0."""
    active = weights != 0
    total = jnp.sum(jnp.where(active, values * weights, 0.0))
    denom = jnp.sum(weights)
    return total / jnp.where(denom != 0, denom, 1.0)


def info_nce(anchor, positive, negatives, temperature=0.1, symmetric=True, weights=None,
             negative_mask=None):
    """Intra-speaker InfoNCE / NT-Xent over cosine similarities.

    anchor: [B, D]; positive: [B, D]; negatives: [B, K, D] (K negatives per anchor, typically the
    same speaker's utterances from other clusters); weights: [B] or None; negative_mask: [B, K]
    bool/0-1 or None (0 drops that negative, e.g. a speaker with fewer than K candidates).
    All vectors are L2-normalised here. For each row the logits are
        [cos(a, p), cos(a, n_1), …, cos(a, n_K)] / τ
    and the loss is the cross-entropy with the positive at index 0. With `symmetric=True` the
    positive also serves as anchor against the same negatives ([cos(p, a), cos(p, n_k)] / τ) and
    the two per-row losses are averaged. The loss is the weighted mean over rows.

    Returns (loss scalar, metrics) with metrics (weighted over rows, averaged over directions
    when symmetric): `pos_cos` mean cos(a, p); `neg_cos` mean cosine to the (unmasked)
    negatives; `top1` fraction of rows whose positive strictly beats every negative.
    """
    if anchor.ndim != 2 or positive.shape != anchor.shape:
        raise ValueError(f"info_nce: anchor and positive must both be [B, D], got "
                         f"{anchor.shape} and {positive.shape}")
    b, d = anchor.shape
    if negatives.ndim != 3 or negatives.shape[0] != b or negatives.shape[2] != d:
        raise ValueError(f"info_nce: negatives must be [B={b}, K, D={d}], got {negatives.shape}")
    dtype = _compute_dtype(anchor, positive, negatives)
    w = _row_weights(weights, b, dtype, "info_nce")
    # Masked rows are zeroed before any arithmetic so that garbage there (even NaN) cannot
    # reach the loss or its gradient.
    act = w != 0
    a = _l2_normalise(jnp.where(act[:, None], anchor.astype(dtype), 0.0))
    p = _l2_normalise(jnp.where(act[:, None], positive.astype(dtype), 0.0))
    n = _l2_normalise(jnp.where(act[:, None, None], negatives.astype(dtype), 0.0))
    k = negatives.shape[1]
    if negative_mask is None:
        nmask = jnp.ones((b, k), bool)
    else:
        if negative_mask.shape != (b, k):
            raise ValueError(f"info_nce: negative_mask must be [{b}, {k}], got {negative_mask.shape}")
        nmask = jnp.asarray(negative_mask).astype(bool)
    pos = jnp.sum(a * p, -1)  # [B]; cos(a, p) = cos(p, a)

    def direction(q):
        neg = jnp.einsum("bd,bkd->bk", q, n)  # [B, K]
        logits = jnp.concatenate([pos[:, None], neg], -1) / temperature  # [B, 1 + K]
        keep = jnp.concatenate([jnp.ones((b, 1), bool), nmask], -1)
        # A masked negative is removed from the softmax by an (exactly) zero probability.
        masked = jnp.where(keep, logits, _NEG)
        ce = jax.nn.logsumexp(masked, -1) - logits[:, 0]
        n_valid = jnp.maximum(jnp.sum(nmask, -1), 1)
        neg_mean = jnp.sum(jnp.where(nmask, neg, 0.0), -1) / n_valid
        top1 = (pos > jnp.max(jnp.where(nmask, neg, -jnp.inf), -1)).astype(dtype)
        return ce, neg_mean, top1

    ce, neg_mean, top1 = direction(a)
    if symmetric:
        ce_p, neg_mean_p, top1_p = direction(p)
        ce = 0.5 * (ce + ce_p)
        neg_mean = 0.5 * (neg_mean + neg_mean_p)
        top1 = 0.5 * (top1 + top1_p)
    loss = _masked_mean(ce, w)
    sg = jax.lax.stop_gradient
    metrics = {"pos_cos": _masked_mean(sg(pos), w), "neg_cos": _masked_mean(sg(neg_mean), w),
               "top1": _masked_mean(top1, w)}
    return loss, metrics


def supcon(embeddings, groups, temperature=0.1, weights=None):
    """Supervised contrastive loss, the L_out form (Khosla et al. 2020, eq. 2).

    embeddings: [N, D] (L2-normalised here); groups: [N] int, rows with the same group are
    positives of each other, -1 marks padding; weights: [N] or None.
    For anchor i with positives P(i) (same group, ≠ i) and candidates A(i) (every valid row ≠ i):
        ℓ_i = −1/|P(i)| · Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) )
    i.e. the mean over positives sits *outside* the log (L_out, the form the paper found best).
    The loss is Σ w_i ℓ_i / Σ w_i over anchors that have at least one positive; anchors without
    one contribute 0 and are excluded from the mean (0 if no anchor has a positive).
    Rows with group −1 or weight 0 are removed entirely: not anchors, not positives, and not in
    any denominator — identical to deleting them from the batch.
    """
    if embeddings.ndim != 2 or groups.shape != embeddings.shape[:1]:
        raise ValueError(f"supcon: embeddings must be [N, D] and groups [N], got "
                         f"{embeddings.shape} and {groups.shape}")
    n = embeddings.shape[0]
    dtype = _compute_dtype(embeddings)
    w = _row_weights(weights, n, dtype, "supcon")
    valid = (groups >= 0) & (w != 0)  # [N]
    z = _l2_normalise(jnp.where(valid[:, None], embeddings.astype(dtype), 0.0))
    not_self = ~jnp.eye(n, dtype=bool)
    cand = valid[:, None] & valid[None, :] & not_self  # A(i), [N, N]
    pos = cand & (groups[:, None] == groups[None, :])  # P(i), [N, N]
    logits = (z @ z.T) / temperature
    # Excluded entries get a huge negative (finite) logit: exactly zero probability, and a row
    # with an empty A(i) (it has no positive either) still has a finite, unused log-sum-exp.
    lse = jax.nn.logsumexp(jnp.where(cand, logits, _NEG), -1, keepdims=True)
    log_prob = jnp.where(pos, logits - lse, 0.0)
    n_pos = jnp.sum(pos, -1)
    per_anchor = -jnp.sum(log_prob, -1) / jnp.maximum(n_pos, 1)
    anchor_w = jnp.where(valid & (n_pos > 0), w, 0.0)
    return _masked_mean(per_anchor, anchor_w)


def gradient_reversal(x, scale):
    """Identity forward; backward multiplies the incoming gradient by −scale (Ganin & Lempitsky
    2015). x: float array, any shape; scale: a float (may be a traced scalar, e.g. a λ schedule;
    it gets a zero gradient)."""
    # scale travels as an array of x's dtype so its (zero) cotangent has a valid type even when
    # a Python int is passed.
    return _grl(x, jnp.asarray(scale, x.dtype))


@jax.custom_vjp
def _grl(x, scale):
    return x


def _grl_fwd(x, scale):
    return x, scale


def _grl_bwd(scale, g):
    return ((-scale * g).astype(g.dtype), jnp.zeros_like(scale))


_grl.defvjp(_grl_fwd, _grl_bwd)


def weighted_cross_entropy(logits, labels, class_weights=None, weights=None):
    """Class-weighted mean cross-entropy, the same value as
    `torch.nn.functional.cross_entropy(logits, labels, weight=class_weights, reduction="mean")`:
        Σ_i m_i w_{y_i} CE_i / Σ_i m_i w_{y_i}
    logits: [B, C]; labels: [B] int in [0, C) (not checked under jit); class_weights: [C] or None
    (= ones); weights: [B] per-example weights m_i or None. 0 when the denominator is 0.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"weighted_cross_entropy: logits must be [B, C] and labels [B], got "
                         f"{logits.shape} and {labels.shape}")
    b, c = logits.shape
    dtype = _compute_dtype(logits)
    m = _row_weights(weights, b, dtype, "weighted_cross_entropy")
    logits = jnp.where((m != 0)[:, None], logits.astype(dtype), 0.0)
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]
    if class_weights is not None:
        if class_weights.shape != (c,):
            raise ValueError(f"weighted_cross_entropy: class_weights must be [{c}], got "
                             f"{class_weights.shape}")
        m = m * jnp.asarray(class_weights, dtype)[labels]
    return _masked_mean(ce, m)


def class_weights_from_counts(counts, kind="inverse"):
    """Class weights [C] (numpy float32) from per-class training counts [C]; host-side.

    kind="inverse": w_c = N / (C⁺ · n_c), with N = Σ n_c and C⁺ the number of classes with
      n_c > 0 — scikit-learn's `compute_class_weight("balanced")` formula; Σ_c n_c w_c = N, so
      the weighted loss keeps the unweighted loss's scale.
    kind="inverse_sqrt": w_c ∝ 1/√n_c, scaled the same way (Σ_c n_c w_c = N).
    Classes with n_c = 0 get weight 0. Raises ValueError for negative counts or all-zero counts.
    """
    import numpy as np

    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_weights_from_counts: counts must be a non-empty [C] vector, got "
                         f"shape {counts.shape}")
    if np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError(f"class_weights_from_counts: counts must be finite and ≥ 0, got {counts}")
    present = counts > 0
    if not present.any():
        raise ValueError("class_weights_from_counts: every class count is 0 (no labelled "
                         "examples), cannot weight classes")
    if kind == "inverse":
        raw = np.where(present, 1.0 / np.where(present, counts, 1.0), 0.0)
    elif kind == "inverse_sqrt":
        raw = np.where(present, 1.0 / np.sqrt(np.where(present, counts, 1.0)), 0.0)
    else:
        raise ValueError(f"class_weights_from_counts: kind must be 'inverse' or 'inverse_sqrt', "
                         f"got {kind!r}")
    w = raw * counts.sum() / np.sum(raw * counts)
    return w.astype(np.float32)


def _ccc_columns(pred, target, w):
    """CCC per column of pred/target [B, A] with row weights w [B] (population moments)."""
    active = (w != 0)[:, None]
    x = jnp.where(active, pred, 0.0)
    y = jnp.where(active, target, 0.0)
    wc = w[:, None]
    n = jnp.sum(w)
    n = jnp.where(n != 0, n, 1.0)
    mx = jnp.sum(wc * x, 0) / n
    my = jnp.sum(wc * y, 0) / n
    dx, dy = x - mx, y - my
    vx = jnp.sum(wc * dx * dx, 0) / n
    vy = jnp.sum(wc * dy * dy, 0) / n
    cov = jnp.sum(wc * dx * dy, 0) / n
    return 2.0 * cov / jnp.maximum(vx + vy + (mx - my) ** 2, _CCC_EPS)


def ccc(pred, target, weights=None):
    """Concordance correlation coefficient (Lin 1989) of pred [B] and target [B]:
        2·cov(x, y) / (var x + var y + (mean x − mean y)²)
    with population moments (ddof = 0, divide by Σ w), weighted by weights [B] (None = ones).
    The denominator is floored at 1e-12, so two identical constants give 0 rather than NaN.
    """
    if pred.ndim != 1 or target.shape != pred.shape:
        raise ValueError(f"ccc: pred and target must both be [B], got {pred.shape} and "
                         f"{target.shape}")
    dtype = _compute_dtype(pred, target)
    w = _row_weights(weights, pred.shape[0], dtype, "ccc")
    return _ccc_columns(pred.astype(dtype)[:, None], target.astype(dtype)[:, None], w)[0]


def ccc_loss(pred, target, weights=None):
    """Mean over attributes of (1 − CCC): pred, target [B, A] (e.g. A = 3 for arousal, valence,
    dominance; [B] is treated as A = 1); weights [B] or None. CCC is the population form of
    `ccc`; the loss is in [0, 2], 0 for perfect agreement."""
    if pred.shape != target.shape or pred.ndim not in (1, 2):
        raise ValueError(f"ccc_loss: pred and target must both be [B, A] (or [B]), got "
                         f"{pred.shape} and {target.shape}")
    if pred.ndim == 1:
        pred, target = pred[:, None], target[:, None]
    dtype = _compute_dtype(pred, target)
    w = _row_weights(weights, pred.shape[0], dtype, "ccc_loss")
    return jnp.mean(1.0 - _ccc_columns(pred.astype(dtype), target.astype(dtype), w))
