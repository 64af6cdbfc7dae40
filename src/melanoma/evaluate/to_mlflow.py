"""Adding the evaluation to the MLflow run that trained the model (found by the model's fingerprint)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from melanoma.tracking import Tracking, find_model_run

log = logging.getLogger(__name__)


def log_to_training_run(
    tracking: Tracking,
    fingerprint: str,
    metrics: dict[str, Any],
    plots_dir: Path,
    extra: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Add test metrics (as ``test_<key>``), ``extra`` metrics (named as given), ``tags`` and plots to
    the training run.

    Only finite numbers are logged as metrics (names and sources go in ``tags``: e.g. the external
    set's name, which the app shows beside its figures).
    """
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
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.log_artifacts(run_id, str(plots_dir), artifact_path="evaluation")


def _finite(v: Any) -> bool:
    return isinstance(v, int | float | np.number) and math.isfinite(float(v))
