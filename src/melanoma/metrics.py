"""Pure metric functions: operating points, calibration and grouped bootstrap intervals."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve


def choose_threshold(y_true: np.ndarray, prob: np.ndarray, target_sensitivity: float | None = None) -> float:
    """Operating point fixed on validation data.

    ``target_sensitivity`` None: the threshold maximising Youden's J (sensitivity + specificity - 1);
    otherwise the highest threshold whose sensitivity reaches the target (best specificity there).
    """
    # Every distinct score is a candidate threshold: the default drop_intermediate=True drops the
    # collinear points of a run of positives, and with them the highest threshold reaching the target.
    fpr, tpr, thr = roc_curve(y_true, prob, drop_intermediate=False)
    thr = np.clip(thr, 0.0, 1.0)  # roc_curve's first threshold is +inf
    if target_sensitivity is None:
        best = int(np.argmax(tpr - fpr))
    else:
        reach = np.flatnonzero(tpr >= target_sensitivity)
        best = int(reach[0])
    return float(thr[best])


def confusion_at(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, int]:
    """tp/fp/tn/fn with positives predicted at prob >= threshold."""
    pred = prob >= threshold
    y = y_true.astype(bool)
    return {
        "tp": int(np.sum(pred & y)),
        "fp": int(np.sum(pred & ~y)),
        "tn": int(np.sum(~pred & ~y)),
        "fn": int(np.sum(~pred & y)),
    }


def rates(cm: dict[str, int]) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV, balanced accuracy and accuracy from a confusion dict."""

    def div(a: int, b: int) -> float:
        return float(a / b) if b else float("nan")

    sens = div(cm["tp"], cm["tp"] + cm["fn"])
    spec = div(cm["tn"], cm["tn"] + cm["fp"])
    return {
        "sensitivity": sens,
        "specificity": spec,
        "ppv": div(cm["tp"], cm["tp"] + cm["fp"]),
        "npv": div(cm["tn"], cm["tn"] + cm["fn"]),
        "balanced_accuracy": (sens + spec) / 2,
        "accuracy": div(cm["tp"] + cm["tn"], sum(cm.values())),
    }


def spec_at_sens(y_true: np.ndarray, prob: np.ndarray, sensitivity: float) -> float:
    """Best specificity among thresholds reaching at least ``sensitivity``."""
    fpr, tpr, _ = roc_curve(y_true, prob)
    ok = tpr >= sensitivity
    return float(1 - fpr[ok].min()) if ok.any() else float("nan")


def sens_at_spec(y_true: np.ndarray, prob: np.ndarray, specificity: float) -> float:
    """Best sensitivity among thresholds keeping at least ``specificity``."""
    fpr, tpr, _ = roc_curve(y_true, prob)
    ok = (1 - fpr) >= specificity
    return float(tpr[ok].max()) if ok.any() else float("nan")


def reliability(y_true: np.ndarray, prob: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per non-empty bin: mean predicted probability vs observed melanoma rate (a reliability diagram).

    ``bins`` equal-width bins of scikit-learn's ``calibration_curve`` (strategy "uniform"): a
    probability exactly on an inner edge falls in the lower bin. ``n`` is the bin's image count.
    """
    observed, predicted = calibration_curve(y_true, prob, n_bins=bins, strategy="uniform")
    # calibration_curve drops empty bins and returns no counts: count with its own edge rule
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], prob), minlength=bins)
    return [
        {"bin": int(b), "predicted": float(p), "observed": float(o), "n": int(counts[b])}
        for b, p, o in zip(np.flatnonzero(counts), predicted, observed, strict=True)
    ]


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between predicted and observed over ``reliability``'s bins."""
    rows = reliability(y_true, prob, bins)
    total = sum(r["n"] for r in rows)
    return float(sum(r["n"] / total * abs(r["predicted"] - r["observed"]) for r in rows))


def brier(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Brier score: the mean squared error of the probabilities (0 is perfect)."""
    # float64: scikit-learn computes in the probabilities' dtype
    return float(brier_score_loss(y_true, np.asarray(prob, dtype=np.float64)))


def safe_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present."""
    return float(roc_auc_score(y_true, prob)) if len(np.unique(y_true)) == 2 else float("nan")


def partial_auc_above_tpr(y_true: np.ndarray, prob: np.ndarray, min_tpr: float = 0.8) -> float:
    """Area of the ROC curve above ``min_tpr`` sensitivity (the ISIC 2024 challenge metric).

    The integral over FPR of max(TPR - min_tpr, 0) along the piecewise-linear ROC curve, so its
    range is [0, 1 - min_tpr]: 0.2 for a perfect classifier and 0.02 for a random one at 0.8.
    NaN when only one class is present. Usable as ``grouped_bootstrap_ci``'s metric.
    """
    if len(np.unique(y_true)) != 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y_true, prob)
    area = 0.0
    for x0, x1, y0, y1 in zip(fpr[:-1], fpr[1:], tpr[:-1], tpr[1:], strict=True):
        if x1 == x0 or max(y0, y1) <= min_tpr:
            continue  # vertical steps add no area; segments wholly below the floor neither
        if min(y0, y1) >= min_tpr:
            area += (x1 - x0) * ((y0 + y1) / 2 - min_tpr)
        else:
            # The segment crosses the floor (ties between classes): only the triangle above counts.
            lo, hi = (y0, y1) if y0 < y1 else (y1, y0)
            width = (x1 - x0) * (hi - min_tpr) / (hi - lo)
            area += width * (hi - min_tpr) / 2
    return float(area)


def pauc_80(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Partial ROC AUC above 80% sensitivity (range 0-0.2), for ``grouped_bootstrap_ci``."""
    return partial_auc_above_tpr(y_true, prob, 0.8)


def safe_ap(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Average precision (PR AUC), or NaN without positives."""
    return float(average_precision_score(y_true, prob)) if y_true.any() else float("nan")


def grouped_bootstrap_ci(
    y_true: np.ndarray,
    prob: np.ndarray,
    groups: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int,
    ci: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile CI of ``metric`` resampling whole groups (patients), so correlated images of
    one patient do not make the interval look narrower than it is."""
    if n_boot <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([members[g] for g in pick])
        value = metric(y_true[idx], prob[idx])
        if not np.isnan(value):
            values.append(value)
    if not values:
        return (float("nan"), float("nan"))
    alpha = (1 - ci) / 2
    return (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)))
