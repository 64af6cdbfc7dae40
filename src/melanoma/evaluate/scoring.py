"""Test-set scoring: the metrics JSON block, subgroup metrics and DVC plot series of one model."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from melanoma.config import EvaluateParams
from melanoma.metrics import (
    brier,
    confusion_at,
    expected_calibration_error,
    grouped_bootstrap_ci,
    pauc_80,
    rates,
    reliability,
    safe_ap,
    safe_auc,
    sens_at_spec,
    spec_at_sens,
)

CLASS_NAMES = {0: "not_melanoma", 1: "melanoma"}
OPERATING_POINTS = (0.80, 0.90, 0.95)


def clean(obj: Any) -> Any:
    """NaN/inf -> None and floats rounded to 6 digits, so the JSON stays valid and stable for DVC."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return None if not math.isfinite(float(obj)) else round(float(obj), 6)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def score_metrics(
    y: np.ndarray,
    prob: np.ndarray,
    groups: np.ndarray,
    threshold: float,
    params: EvaluateParams,
    seed: int,
    raw: np.ndarray | None = None,
) -> dict[str, Any]:
    """All scalar test metrics, with patient-grouped bootstrap CIs for ROC AUC and PR AUC.

    ``raw``: the model's probabilities before calibration (``prob`` when None), for
    ``ece_uncalibrated`` and ``brier_uncalibrated`` beside ``ece`` and ``brier``.
    """
    raw = prob if raw is None else raw
    cm = confusion_at(y, prob, threshold)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "n_melanoma": int(y.sum()),
        "prevalence": float(y.mean()),
        "roc_auc": safe_auc(y, prob),
        "pr_auc": safe_ap(y, prob),
        # partial ROC AUC above 80% sensitivity (the ISIC 2024 challenge metric, 0-0.2)
        "pauc_80": pauc_80(y, prob),
        "threshold": threshold,
        **rates(cm),
        **cm,
        "brier": brier(y, prob),
        "ece": expected_calibration_error(y, prob, params.calibration_bins),
        "brier_uncalibrated": brier(y, raw),
        "ece_uncalibrated": expected_calibration_error(y, raw, params.calibration_bins),
    }
    for name, fn in (("roc_auc", safe_auc), ("pr_auc", safe_ap), ("pauc_80", pauc_80)):
        lo, hi = grouped_bootstrap_ci(y, prob, groups, fn, params.bootstrap, params.ci, seed)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = lo, hi
    for p in OPERATING_POINTS:
        out[f"spec_at_sens_{round(p * 100)}"] = spec_at_sens(y, prob, p)
        out[f"sens_at_spec_{round(p * 100)}"] = sens_at_spec(y, prob, p)
    return out


def age_band(value: Any) -> str:
    """<40, 40-60, >60 or unknown, from age_approx."""
    try:
        age = float(value)
    except (TypeError, ValueError):
        return "unknown"
    if math.isnan(age):
        return "unknown"
    return "<40" if age < 40 else ("40-60" if age <= 60 else ">60")


def subgroup_metrics(
    frame: pd.DataFrame, y: np.ndarray, prob: np.ndarray, threshold: float
) -> list[dict[str, Any]]:
    """AUC, sensitivity and specificity by sex, age band and site."""
    cols = {
        "sex": frame.get("sex", pd.Series("", index=frame.index)).replace("", "unknown"),
        "age_band": frame.get("age_approx", pd.Series("", index=frame.index)).map(age_band),
        "site": frame.get("site", pd.Series("", index=frame.index)).replace("", "unknown"),
    }
    rows = []
    for attr, values in cols.items():
        values = values.fillna("unknown").astype(str).to_numpy()
        for v in sorted(set(values)):
            sel = values == v
            cm = confusion_at(y[sel], prob[sel], threshold)
            r = rates(cm)
            rows.append(
                {
                    "attribute": attr,
                    "value": v,
                    "n": int(sel.sum()),
                    "n_melanoma": int(y[sel].sum()),
                    "roc_auc": safe_auc(y[sel], prob[sel]),
                    "sensitivity": r["sensitivity"],
                    "specificity": r["specificity"],
                }
            )
    return rows


def plot_data(
    y: np.ndarray, prob: np.ndarray, threshold: float, bins: int, raw: np.ndarray | None = None
) -> dict[str, list[dict[str, Any]]]:
    """DVC plot series: ROC, PR, confusion rows, calibration (and before calibration, given ``raw``)."""
    fpr, tpr, thr = roc_curve(y, prob)
    precision, recall, pthr = precision_recall_curve(y, prob)
    pred = (prob >= threshold).astype(int)
    return {
        "roc": [
            {"fpr": float(a), "tpr": float(b), "threshold": float(min(c, 1.0))}
            for a, b, c in zip(fpr, tpr, thr, strict=True)
        ],
        "prc": [
            {"recall": float(r), "precision": float(p), "threshold": float(t)}
            for r, p, t in zip(recall[:-1], precision[:-1], pthr, strict=True)
        ],
        "confusion": [
            {"actual": CLASS_NAMES[int(a)], "predicted": CLASS_NAMES[int(b)]}
            for a, b in zip(y, pred, strict=True)
        ],
        "calibration": reliability(y, prob, bins),
        **({} if raw is None else {"calibration_uncalibrated": reliability(y, raw, bins)}),
    }
