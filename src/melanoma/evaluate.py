"""Evaluate one trained model on the test split: metrics JSON, DVC plot data, figures, MLflow."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from melanoma import atomic
from melanoma.config import EvaluateParams
from melanoma.contracts import (
    ExternalSet,
    load_external,
    load_prepared,
    load_splits,
    model_fingerprint,
    read_model_json,
    split_arrays,
    write_metrics,
)
from melanoma.errors import DataError
from melanoma.image_rows import ImageRows
from melanoma.metadata import metadata_rows
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
from melanoma.models import load_model
from melanoma.models.calibration import raw_and_calibrated
from melanoma.tracking import Tracking, find_model_run

log = logging.getLogger(__name__)
CLASS_NAMES = {0: "not_melanoma", 1: "melanoma"}
OPERATING_POINTS = (0.80, 0.90, 0.95)


def _clean(obj: Any) -> Any:
    """NaN/inf -> None so the JSON stays valid for DVC and browsers."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
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


def save_figures(
    plots_dir: Path, name: str, series: dict[str, list[dict[str, Any]]], metrics: dict[str, Any]
) -> None:
    """ROC, PR and confusion-matrix PNGs (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roc = pd.DataFrame(series["roc"])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(roc["fpr"], roc["tpr"], label=f"AUC {metrics['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=f"ROC: {name}")
    ax.legend(loc="lower right")
    _save(fig, plots_dir / "roc.png")

    prc = pd.DataFrame(series["prc"])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(prc["recall"], prc["precision"], label=f"AP {metrics['pr_auc']:.3f}")
    ax.axhline(
        metrics["prevalence"], ls="--", color="grey", lw=1, label=f"prevalence {metrics['prevalence']:.3f}"
    )
    ax.set(xlabel="Recall", ylabel="Precision", title=f"Precision-recall: {name}", ylim=(0, 1.02))
    ax.legend(loc="upper right")
    _save(fig, plots_dir / "prc.png")

    cm = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set_xticks([0, 1], ["not melanoma", "melanoma"])
    ax.set_yticks([0, 1], ["not melanoma", "melanoma"])
    ax.set(xlabel="Predicted", ylabel="Actual", title=f"Confusion @ {metrics['threshold']:.3f}")
    _save(fig, plots_dir / "confusion.png")


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def evaluate_model(
    name: str,
    model_dir: Path,
    prepared_dir: Path,
    splits_dir: Path,
    metrics_path: Path,
    plots_dir: Path,
    params: EvaluateParams,
    seed: int,
    tracking: Tracking | None = None,
    external_dir: Path | None = None,
) -> dict[str, Any]:
    """Score the test split; write metrics JSON and plot data; log to the training run in MLflow.

    The training run is found by the model folder's content fingerprint (``tracking`` None: no logging).
    With ``external_dir`` (the external stage's output) the external set, when there is one, is
    scored the same way: an ``external`` block in the metrics and ``external_*`` plot data.
    """
    info = read_model_json(model_dir)
    model = load_model(model_dir)
    images, _ = load_prepared(prepared_dir)
    test = load_splits(splits_dir)["test"]
    x, y = split_arrays(images, test)
    # one prediction gives both scales: the calibrator runs on the inner model's raw output
    raw, prob = raw_and_calibrated(model, x, metadata_rows(test))
    groups = test["group"].astype(str).to_numpy() if "group" in test else test["isic_id"].to_numpy()
    threshold = float(info["threshold"])
    metrics = score_metrics(y, prob, groups, threshold, params, seed, raw=raw)
    series = plot_data(y, prob, threshold, params.calibration_bins, raw=raw)
    subgroups = subgroup_metrics(test, y, prob, threshold)
    result = _clean({"model": name, "test": metrics, "val": info.get("val", {})})
    ext = load_external(external_dir) if external_dir is not None else None
    external = score_external(model, ext, info, threshold, params, seed) if ext is not None else None
    if external is not None:
        result["external"] = _clean(external.metrics)

    with atomic.atomic_dir(plots_dir) as tmp:
        for key, rows in series.items():
            atomic.write_json(tmp / f"{key}.json", _clean(rows))
        atomic.write_json(tmp / "subgroups.json", _clean(subgroups))
        pd.DataFrame({"isic_id": test["isic_id"], "label": y, "prob": prob}).to_csv(
            tmp / "predictions.csv", index=False
        )
        save_figures(tmp, name, series, metrics)
        if external is not None:
            external.write(tmp)
    write_metrics(metrics_path, result)
    log.info(
        "evaluate@%s: test ROC AUC %.4f [%.4f, %.4f], sensitivity %.3f, specificity %.3f",
        name,
        metrics["roc_auc"],
        metrics["roc_auc_ci_low"],
        metrics["roc_auc_ci_high"],
        metrics["sensitivity"],
        metrics["specificity"],
    )
    if external is not None:
        e = external.metrics
        log.info("evaluate@%s: external %r ROC AUC %.4f [%.4f, %.4f] on %d images", name, e["name"],
                 e["roc_auc"], e["roc_auc_ci_low"], e["roc_auc_ci_high"], e["n"])  # fmt: skip
    if tracking is not None:
        extra = {} if external is None else external.mlflow_metrics()
        _log_to_mlflow(tracking, model_fingerprint(model_dir), metrics, plots_dir, extra)
    return result


@dataclass(frozen=True)
class ExternalScore:
    """The external set's metrics (with its name and leakage count), plot series and predictions."""

    metrics: dict[str, Any]
    series: dict[str, list[dict[str, Any]]]  # contracts.EXTERNAL_PLOT_SERIES
    predictions: pd.DataFrame

    def write(self, plots_dir: Path) -> None:
        """external_roc.json, external_prc.json and external_predictions.csv beside the test's."""
        for key, rows in self.series.items():
            atomic.write_json(plots_dir / f"{key}.json", _clean(rows))
        self.predictions.to_csv(plots_dir / "external_predictions.csv", index=False)

    def mlflow_metrics(self) -> dict[str, Any]:
        """The numeric metrics as ``external_<key>`` (the test's are logged as ``test_<key>``)."""
        return {f"external_{k}": v for k, v in self.metrics.items() if _finite(v)}


def external_groups(index: pd.DataFrame) -> np.ndarray:
    """Bootstrap groups of the external set: the patient, else the lesion, else the image itself."""
    groups = "image:" + index["isic_id"].astype(str)
    for col in ("lesion_id", "patient_id"):  # patient last: it wins where both are known
        if col in index:
            ids = index[col].fillna("").astype(str)
            groups = groups.where(ids == "", col + ":" + ids)
    return groups.to_numpy()


def score_external(
    model: Any, ext: ExternalSet, info: dict[str, Any], threshold: float, params: EvaluateParams, seed: int
) -> ExternalScore:
    """Score a model on the external set with the test's metrics, threshold and grouped bootstrap."""
    size = ext.images.shape[1] if ext.images.ndim == 4 else None
    if "image_size" in info and size != int(info["image_size"]):
        raise DataError(
            f"the external set {ext.name!r} holds {size} px images but the model expects "
            f"{info['image_size']} px: rerun the external stage with the model's prepare params"
        )
    y = ext.index["label"].to_numpy().astype(np.int64)
    raw, prob = raw_and_calibrated(model, ImageRows(ext.images), metadata_rows(ext.index))
    scores = score_metrics(y, prob, external_groups(ext.index), threshold, params, seed, raw=raw)
    metrics = {
        "name": ext.name,
        "source": ext.report.get("source"),
        "n_dropped_in_training": ext.report.get("n_dropped_in_training"),
        **scores,
    }
    full = plot_data(y, prob, threshold, params.calibration_bins)
    predictions = pd.DataFrame({"isic_id": ext.index["isic_id"], "label": y, "prob": prob})
    return ExternalScore(metrics, {"external_roc": full["roc"], "external_prc": full["prc"]}, predictions)


def _log_to_mlflow(
    tracking: Tracking,
    fingerprint: str,
    metrics: dict[str, Any],
    plots_dir: Path,
    extra: dict[str, Any] | None = None,
) -> None:
    """Add test metrics (as ``test_<key>``), ``extra`` metrics (named as given) and plots to the training run."""
    import mlflow

    run_id = find_model_run(tracking, fingerprint)
    if run_id is None:
        log.warning(
            "no MLflow run in %s (experiment %r) wrote this model (fingerprint %s); "
            "test metrics were not logged to MLflow",
            tracking.uri,
            tracking.experiment,
            fingerprint[:12],
        )
        return
    # The client API, not the fluent start_run: it ignores any active experiment or run that the
    # calling process (a notebook, a test session) has set globally.
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(tracking.uri)
    stamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), stamp, 0)
            for k, v in [*((f"test_{k}", v) for k, v in metrics.items()), *(extra or {}).items()]
            if _finite(v)
        ],
    )
    client.log_artifacts(run_id, str(plots_dir), artifact_path="evaluation")


def _finite(v: Any) -> bool:
    return isinstance(v, int | float | np.number) and math.isfinite(float(v))
