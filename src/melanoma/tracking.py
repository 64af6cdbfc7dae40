"""MLflow setup: tracking URI, experiment, run tags, and data hashes for lineage."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
# Tag on a training run: the content hash of the model folder it wrote (contracts.model_fingerprint).
FINGERPRINT_TAG = "model_fingerprint"
# The external set's name on the training run (evaluate sets it; a metric cannot hold text): the app
# names the set beside its figures.
EXTERNAL_NAME_TAG = "external_name"


@dataclass(frozen=True)
class Tracking:
    """Where and how to log: resolved by the CLI from params and the environment."""

    uri: str
    experiment: str
    artifact_location: str | None = None  # only used when the experiment is created
    git_commit: str | None = None
    dvc_exp_name: str | None = None
    dvc_exp_baseline_rev: str | None = None


def default_tracking_uri(repo_root: Path) -> str:
    """A sqlite file at the repository root, as an absolute path (the CLI passes the user's
    repository, not an experiment's temporary copy of it)."""
    return f"sqlite:///{(Path(repo_root) / 'mlflow.db').resolve()}"


def default_artifact_location(repo_root: Path) -> str:
    """Absolute artifact folder next to the default sqlite store."""
    return (Path(repo_root) / "mlartifacts").resolve().as_uri()


def git_commit(repo_root: Path) -> str | None:
    """The current commit of ``repo_root``, or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo_root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def set_experiment(tracking: Tracking) -> str:
    """Point MLflow at the tracking URI and return the experiment id (created if needed).

    Queued DVC experiments start at the same moment: when another process creates the experiment
    between our lookup and our create, use the one it made.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking.uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        exp_id = client.create_experiment(tracking.experiment, artifact_location=tracking.artifact_location)
    except MlflowException:
        exp = client.get_experiment_by_name(tracking.experiment)
        if exp is None:
            raise
        return exp.experiment_id
    log.info("created MLflow experiment %r (%s) at %s", tracking.experiment, exp_id, tracking.uri)
    return exp_id


def run_tags(tracking: Tracking, stage: str, data_hashes: dict[str, str]) -> dict[str, str]:
    """Tags every run carries: stage, git commit, DVC experiment, data hashes."""
    tags = {"stage": stage, "pipeline": "melanoma"}
    if tracking.git_commit:
        tags["mlflow.source.git.commit"] = tracking.git_commit
        tags["git_commit"] = tracking.git_commit
    if tracking.dvc_exp_name:
        tags["dvc_exp_name"] = tracking.dvc_exp_name  # groups the runs of one sweep in the MLflow UI
    if tracking.dvc_exp_baseline_rev:
        tags["dvc_exp_baseline_rev"] = tracking.dvc_exp_baseline_rev
    tags.update({f"data.{k}": v for k, v in data_hashes.items()})
    return tags


def find_model_run(tracking: Tracking, fingerprint: str) -> str | None:
    """Id of the newest training run in the experiment that wrote a model with this fingerprint."""
    import mlflow

    mlflow.set_tracking_uri(tracking.uri)
    exp = mlflow.MlflowClient().get_experiment_by_name(tracking.experiment)
    if exp is None:
        return None
    runs = mlflow.MlflowClient().search_runs(
        [exp.experiment_id],
        filter_string=f"tags.{FINGERPRINT_TAG} = '{fingerprint}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def log_split_inputs(
    frames: Mapping[str, pd.DataFrame], sources: Mapping[str, str], hashes: Mapping[str, str]
) -> None:
    """Log each split as an MLflow dataset input (the UI's Dataset column): DVC path, content hash.

    ``sources`` maps a split name to where the data lives (its DVC path, or the remote URL when
    the data is pushed); ``hashes`` holds ``<split>_csv_sha256`` from ``contracts.data_hashes``.
    """
    import mlflow

    contexts = {"train": "training", "val": "validation", "test": "testing"}
    for split, frame in frames.items():
        digest = hashes.get(f"{split}_csv_sha256", "")[:12] or None
        dataset = mlflow.data.from_pandas(
            frame[[c for c in ("isic_id", "label") if c in frame]],
            source=sources[split],
            targets="label" if "label" in frame else None,
            name=split,
            digest=digest,
        )
        mlflow.log_input(
            dataset,
            context=contexts.get(split, split),
            tags={"images_sha256": hashes.get("images_sha256", "")},
        )
