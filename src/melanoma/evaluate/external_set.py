"""Scoring a model on the external set (the external stage's output) the way the test split is scored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma import atomic
from melanoma.config import EvaluateParams
from melanoma.contracts import ExternalSet
from melanoma.errors import DataError
from melanoma.evaluate.scoring import clean, plot_data, score_metrics
from melanoma.image_rows import ImageRows
from melanoma.metadata import metadata_rows
from melanoma.models.calibration import raw_and_calibrated


@dataclass(frozen=True)
class ExternalScore:
    """The external set's metrics (with its name and leakage count), plot series and predictions."""

    metrics: dict[str, Any]
    series: dict[str, list[dict[str, Any]]]  # contracts.EXTERNAL_PLOT_SERIES
    predictions: pd.DataFrame
    images_only: dict[str, Any] | None = None  # the same metrics with no metadata given

    def write(self, plots_dir: Path) -> None:
        """external_roc.json, external_prc.json and external_predictions.csv beside the test's."""
        for key, rows in self.series.items():
            atomic.write_json(plots_dir / f"{key}.json", clean(rows))
        self.predictions.to_csv(plots_dir / "external_predictions.csv", index=False)

    def mlflow_metrics(self) -> dict[str, Any]:
        """The metrics as ``external_<key>`` (the test's are ``test_<key>``); the logger drops non-numbers."""
        out = {f"external_{k}": v for k, v in self.metrics.items()}
        return out | {f"external_images_only_{k}": v for k, v in (self.images_only or {}).items()}


def external_groups(index: pd.DataFrame) -> np.ndarray:
    """Bootstrap groups of the external set: the patient, else the lesion, else the image itself."""
    groups = "image:" + index["isic_id"].astype(str)
    for col in ("lesion_id", "patient_id"):  # patient last: it wins where both are known
        if col in index:
            ids = index[col].fillna("").astype(str)
            groups = groups.where(ids == "", col + ":" + ids)
    return groups.to_numpy()


def score_external(
    model: Any,
    ext: ExternalSet,
    info: dict[str, Any],
    threshold: float,
    params: EvaluateParams,
    seed: int,
    images_only: bool = False,
) -> ExternalScore:
    """Score a model on the external set with the test's metrics, threshold and grouped bootstrap.

    ``images_only``: also score it with no patient metadata given (for a model that reads some).
    """
    size = ext.images.shape[1] if ext.images.ndim == 4 else None
    if "image_size" in info and size != int(info["image_size"]):
        raise DataError(
            f"the external set {ext.name!r} holds {size} px images but the model expects "
            f"{info['image_size']} px: rerun the external stage with the model's prepare params"
        )
    y = ext.index["label"].to_numpy().astype(np.int64)
    raw, prob = raw_and_calibrated(model, ImageRows(ext.images), metadata_rows(ext.index))
    groups = external_groups(ext.index)
    scores = score_metrics(y, prob, groups, threshold, params, seed, raw=raw)
    no_meta = None
    if images_only:
        _, prob_img = raw_and_calibrated(model, ImageRows(ext.images), None)
        no_meta = score_metrics(y, prob_img, groups, threshold, params, seed)
    metrics = {
        "name": ext.name,
        "source": ext.report.get("source"),
        "n_dropped_in_training": ext.report.get("n_dropped_in_training"),
        **scores,
    }
    full = plot_data(y, prob, threshold, params.calibration_bins)
    predictions = pd.DataFrame({"isic_id": ext.index["isic_id"], "label": y, "prob": prob})
    series = {"external_roc": full["roc"], "external_prc": full["prc"]}
    return ExternalScore(metrics, series, predictions, no_meta)
