"""evaluate.py: test metrics with CIs, plot data, figures; byte-identical on rerun; MLflow by fingerprint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import prepared_and_split
from melanoma.config import BaselineParams, EvaluateParams, Params, PrepareParams, SplitParams
from melanoma.evaluate import age_band, evaluate_model, plot_data, score_metrics, subgroup_metrics
from melanoma.tracking import Tracking
from melanoma.train import train_model

PARAMS = Params(
    prepare=PrepareParams(image_size=24, workers=1),
    split=SplitParams(test_fraction=0.3, val_fraction=0.3),
    baseline=BaselineParams(candidates=("logistic_regression",)),
    evaluate=EvaluateParams(bootstrap=30),
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Tracking]:
    root = tmp_path_factory.mktemp("evaluate")
    prepared_and_split(root, PARAMS, n=60, pos_every=3)
    tracking = Tracking(
        uri=f"sqlite:///{root / 'mlflow.db'}", experiment="unit-eval", artifact_location=(root / "a").as_uri()
    )
    train_model("baseline", root / "prepared", root / "splits", root / "model", PARAMS, tracking)
    return root / "prepared", root / "splits", root / "model", tracking


def _evaluate(trained, out: Path, tracking: Tracking | None) -> dict:
    prepared, splits, model, _ = trained
    return evaluate_model(
        "baseline", model, prepared, splits, out / "m.json", out / "plots", PARAMS.evaluate, 7, tracking
    )


def test_rerun_gives_byte_identical_outputs_and_logs_to_the_training_run(
    trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import mlflow.tracking.fluent

    # A caller that set another experiment globally (a notebook, an earlier test) must not matter.
    client = mlflow.MlflowClient(trained[3].uri)
    other = client.create_experiment("someone-else")
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", other)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", other)
    first = _evaluate(trained, tmp_path / "a", trained[3])
    _evaluate(trained, tmp_path / "b", None)
    names = sorted(p.name for p in (tmp_path / "a" / "plots").iterdir())
    assert {"roc.json", "prc.json", "confusion.json", "calibration.json", "roc.png", "subgroups.json"} <= set(
        names
    )
    assert names == sorted(p.name for p in (tmp_path / "b" / "plots").iterdir())
    for name in names:
        assert (tmp_path / "a/plots" / name).read_bytes() == (tmp_path / "b/plots" / name).read_bytes(), name
    assert (tmp_path / "a/m.json").read_bytes() == (tmp_path / "b/m.json").read_bytes()

    test = first["test"]
    assert test["roc_auc_ci_low"] <= test["roc_auc"] <= test["roc_auc_ci_high"]
    assert test["tp"] + test["fn"] == test["n_melanoma"]
    client = mlflow.MlflowClient(trained[3].uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("unit-eval").experiment_id],
        filter_string="tags.stage = 'train@baseline'",
    )
    assert run.data.metrics["test_roc_auc"] == pytest.approx(test["roc_auc"], abs=1e-6)


def test_a_model_with_no_run_is_scored_and_says_so(trained, tmp_path: Path, caplog) -> None:
    other = Tracking(uri=f"sqlite:///{tmp_path / 'other.db'}", experiment="none")
    with caplog.at_level(logging.WARNING, logger="melanoma.evaluate"):
        result = _evaluate(trained, tmp_path, other)
    assert "test metrics were not logged to MLflow" in caplog.text
    assert json.loads((tmp_path / "m.json").read_text())["test"]["roc_auc"] == pytest.approx(
        result["test"]["roc_auc"], abs=1e-6
    )


def test_metrics_of_a_perfect_and_a_useless_score() -> None:
    y = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    groups = np.arange(len(y)).astype(str)
    perfect = score_metrics(y, y.astype(float), groups, 0.5, EvaluateParams(bootstrap=50), 0)
    assert perfect["roc_auc"] == 1.0 and perfect["sensitivity"] == 1.0 and perfect["specificity"] == 1.0
    assert perfect["brier"] == 0.0
    flat = score_metrics(y, np.full(len(y), 0.5), groups, 0.5, EvaluateParams(bootstrap=50), 0)
    assert flat["roc_auc"] == 0.5 and flat["sensitivity"] == 1.0 and flat["specificity"] == 0.0


def test_plot_data_and_subgroups() -> None:
    y = np.array([0, 1, 0, 1, 1, 0])
    prob = np.array([0.1, 0.9, 0.4, 0.6, 0.3, 0.2])
    series = plot_data(y, prob, 0.5, 5)
    assert series["roc"][0]["fpr"] == 0.0 and series["roc"][-1]["tpr"] == 1.0
    assert len(series["confusion"]) == len(y)
    frame = pd.DataFrame(
        {"sex": ["male", "", "female", "male", "male", "female"], "age_approx": [35, 50, "", 70, 20, 45]}
    )
    rows = subgroup_metrics(frame, y, prob, 0.5)
    sex = {r["value"]: r["n"] for r in rows if r["attribute"] == "sex"}
    assert sex == {"female": 2, "male": 3, "unknown": 1}
    assert [age_band(v) for v in (39, 40, 60, 61, "", None, "x")] == [
        "<40", "40-60", "40-60", ">60", "unknown", "unknown", "unknown",
    ]  # fmt: skip
