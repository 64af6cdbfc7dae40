"""The ``evaluate`` stage: score one trained model on the test split (and the external set, when there
is one); write the metrics JSON, DVC plot data and figures; add them to the model's MLflow run.

``scoring`` computes the numbers, ``external_set`` scores the external set, ``to_mlflow`` logs;
the figures are ``melanoma.plotting``'s, the same drawing the report uses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from melanoma import atomic, plotting
from melanoma.config import EvaluateParams
from melanoma.contracts import (
    load_external,
    load_prepared,
    load_splits,
    model_fingerprint,
    read_model_json,
    split_arrays,
    write_metrics,
)
from melanoma.evaluate.external_set import ExternalScore, external_groups, score_external
from melanoma.evaluate.scoring import age_band, clean, plot_data, score_metrics, subgroup_metrics
from melanoma.evaluate.to_mlflow import log_to_training_run
from melanoma.metadata import metadata_rows
from melanoma.models import load_model, metadata_columns
from melanoma.models.calibration import raw_and_calibrated
from melanoma.tracking import EXTERNAL_NAME_TAG, Tracking

__all__ = [
    "ExternalScore",
    "age_band",
    "evaluate_model",
    "external_groups",
    "plot_data",
    "save_figures",
    "score_external",
    "score_metrics",
    "subgroup_metrics",
]

log = logging.getLogger(__name__)


def save_figures(
    plots_dir: Path, name: str, series: dict[str, list[dict[str, Any]]], metrics: dict[str, Any]
) -> None:
    """roc.png, prc.png and confusion.png of one model on the test split."""
    scored = plotting.Scored(name, clean(metrics), series["roc"], series["prc"], series["calibration"])
    plotting.roc(plots_dir / "roc.png", [scored], f"ROC on the test split: {name}")
    plotting.precision_recall(plots_dir / "prc.png", [scored], f"Precision-recall on the test split: {name}")
    plotting.confusion(plots_dir / "confusion.png", [scored], "Confusion matrix (test split)")


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
    result = clean({"model": name, "test": metrics, "val": info.get("val", {})})
    images_only = bool(metadata_columns(model))
    if images_only:
        # the same test images with no patient metadata given: most uploads to the app
        _, prob_img = raw_and_calibrated(model, x, None)
        result["test_images_only"] = clean(score_metrics(y, prob_img, groups, threshold, params, seed))
    ext = load_external(external_dir) if external_dir is not None else None
    external = (
        score_external(model, ext, info, threshold, params, seed, images_only) if ext is not None else None
    )
    if external is not None:
        result["external"] = clean(external.metrics)
        if external.images_only is not None:
            result["external_images_only"] = clean(external.images_only)

    for key in ("test_images_only", "external", "external_images_only"):
        block, internal = result.get(key), metrics.get("roc_auc")
        if block and block.get("roc_auc") is not None and internal is not None:
            # the generalisation gap (or the cost of no metadata), kept beside the figures it joins
            block["roc_auc_change_from_internal"] = clean(block["roc_auc"] - internal)
    with atomic.atomic_dir(plots_dir) as tmp:
        for key, rows in series.items():
            atomic.write_json(tmp / f"{key}.json", clean(rows))
        atomic.write_json(tmp / "subgroups.json", clean(subgroups))
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
    if "test_images_only" in result:
        m = result["test_images_only"]
        log.info("evaluate@%s: without metadata, test ROC AUC %.4f, sensitivity %.3f, specificity %.3f",
                 name, m["roc_auc"], m["sensitivity"], m["specificity"])  # fmt: skip
    if tracking is not None:
        extra = {} if external is None else external.mlflow_metrics()
        extra.update({f"test_images_only_{k}": v for k, v in result.get("test_images_only", {}).items()})
        tags = {} if external is None else {EXTERNAL_NAME_TAG: str(external.metrics["name"])}
        log_to_training_run(tracking, model_fingerprint(model_dir), metrics, plots_dir, extra, tags)
    return result
