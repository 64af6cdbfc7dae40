"""evaluate.py: test metrics with CIs, plot data, figures; byte-identical on rerun; MLflow by fingerprint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import LICENSES, local_tracking, make_raw, prepared_and_split, tiny_params
from melanoma.config import EvaluateParams
from melanoma.contracts import write_external
from melanoma.errors import DataError
from melanoma.evaluate import (
    age_band,
    evaluate_model,
    external_groups,
    plot_data,
    score_metrics,
    subgroup_metrics,
)
from melanoma.external import finish_external
from melanoma.prepare import prepare
from melanoma.raw_layout import write_raw_metadata
from melanoma.tracking import Tracking
from melanoma.train import train_model

PARAMS = tiny_params(test_fraction=0.3, val_fraction=0.3, bootstrap=30)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Tracking]:
    root = tmp_path_factory.mktemp("evaluate")
    prepared_and_split(root, PARAMS, n=60, pos_every=3)
    tracking = local_tracking(root, "unit-eval")
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


@pytest.fixture(scope="module")
def external(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An external set made by the external stage's code: other images, patients of 2 images each."""
    root = tmp_path_factory.mktemp("external")
    records = make_raw(root / "raw", n=30, seed=3, pos_every=3)
    for r in records:  # make_raw numbers from ISIC_0000000, as the training set: move to other ids
        old, r["isic_id"] = r["isic_id"], r["isic_id"].replace("ISIC_0", "ISIC_1")
        (root / "raw/images" / f"{old}.jpg").rename(root / "raw/images" / f"{r['isic_id']}.jpg")
    write_raw_metadata(root / "raw", records, LICENSES, {"source": "test"})
    prepare(root / "raw", root / "prepared", PARAMS.prepare)
    finish_external(root / "raw", root / "prepared", trained[0], root / "external", source="folder",
                    name="other clinic", ingest_report={"source": "folder"})  # fmt: skip
    return root / "external"


def test_the_external_set_is_scored_beside_the_test_split(trained, external: Path, tmp_path: Path) -> None:
    import mlflow

    prepared, splits, model, tracking = trained
    run = lambda out, track: evaluate_model(  # noqa: E731
        "baseline",
        model,
        prepared,
        splits,
        out / "m.json",
        out / "plots",
        PARAMS.evaluate,
        7,
        track,
        external,
    )
    result = run(tmp_path / "a", tracking)
    run(tmp_path / "b", None)
    ext = json.loads((tmp_path / "a/m.json").read_text())["external"]
    assert ext == result["external"]
    report = json.loads((external / "external_report.json").read_text())
    assert (ext["name"], ext["source"], ext["n"], ext["n_melanoma"]) == (
        "other clinic", "folder", report["n"], report["n_melanoma"]
    )  # fmt: skip
    assert ext["n_dropped_in_training"] == report["n_dropped_in_training"]
    for key in ("roc_auc", "pr_auc", "pauc_80"):  # the test's metrics, each with its bootstrap CI
        assert ext[f"{key}_ci_low"] <= ext[key] <= ext[f"{key}_ci_high"], key
    assert ext["threshold"] == result["test"]["threshold"]  # the validation threshold, unchanged
    assert (
        ext["tp"] + ext["fn"] == ext["n_melanoma"] and ext["tn"] + ext["fp"] == ext["n"] - ext["n_melanoma"]
    )
    assert set(ext) >= set(result["test"])

    plots = tmp_path / "a/plots"
    roc = json.loads((plots / "external_roc.json").read_text())
    assert roc[0]["fpr"] == 0.0 and roc[-1]["tpr"] == 1.0
    preds = pd.read_csv(plots / "external_predictions.csv")
    assert len(preds) == ext["n"] and preds["label"].sum() == ext["n_melanoma"]
    for name in ("external_roc.json", "external_prc.json", "external_predictions.csv"):
        assert (plots / name).read_bytes() == (tmp_path / "b/plots" / name).read_bytes(), name

    client = mlflow.MlflowClient(tracking.uri)
    (logged,) = client.search_runs(
        [client.get_experiment_by_name("unit-eval").experiment_id],
        filter_string="tags.stage = 'train@baseline'",
    )
    assert logged.data.metrics["external_roc_auc"] == pytest.approx(ext["roc_auc"], abs=1e-6)
    assert logged.data.tags["external_name"] == ext["name"]  # the app names the set beside its figures
    assert logged.data.metrics["external_roc_auc_ci_low"] == pytest.approx(ext["roc_auc_ci_low"], abs=1e-6)
    assert logged.data.metrics["test_roc_auc"] == pytest.approx(result["test"]["roc_auc"], abs=1e-6)


def test_no_external_set_means_no_external_block(trained, tmp_path: Path) -> None:
    write_external(tmp_path / "none", {"source": "none"})
    prepared, splits, model, _ = trained
    result = evaluate_model("baseline", model, prepared, splits, tmp_path / "m.json", tmp_path / "plots",
                            PARAMS.evaluate, 7, None, tmp_path / "none")  # fmt: skip
    assert "external" not in result and "external" not in json.loads((tmp_path / "m.json").read_text())
    assert not list((tmp_path / "plots").glob("external_*"))


def test_external_groups_patient_else_lesion_else_image() -> None:
    index = pd.DataFrame({"isic_id": ["a", "b", "c", "d"], "patient_id": ["p1", "", "", "p1"],
                          "lesion_id": ["l1", "l2", "", "l9"]})  # fmt: skip
    assert external_groups(index).tolist() == ["patient_id:p1", "lesion_id:l2", "image:c", "patient_id:p1"]
    assert external_groups(index[["isic_id"]]).tolist() == ["image:a", "image:b", "image:c", "image:d"]


def test_an_external_set_of_another_image_size_is_refused(trained, external: Path, tmp_path: Path) -> None:
    from melanoma.contracts import load_external

    ext = load_external(external)
    small = np.asarray(ext.images)[:, ::2, ::2]
    write_external(tmp_path / "small", ext.report, (small, ext.index, {}))
    prepared, splits, model, _ = trained
    with pytest.raises(DataError, match=r"holds 12 px images but the model expects 24 px"):
        evaluate_model("baseline", model, prepared, splits, tmp_path / "m.json", tmp_path / "plots",
                       PARAMS.evaluate, 7, None, tmp_path / "small")  # fmt: skip
    assert not (tmp_path / "m.json").exists()


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


def test_ece_and_brier_before_and_after_calibration(trained, tmp_path: Path) -> None:
    from melanoma.contracts import load_prepared, load_splits, read_model_json, split_arrays
    from melanoma.metadata import metadata_rows
    from melanoma.metrics import expected_calibration_error, reliability
    from melanoma.models import load_model

    prepared, splits, model_dir, _ = trained
    assert read_model_json(model_dir)["calibration"]["method"] == "platt"  # the default
    test = _evaluate(trained, tmp_path, None)["test"]
    images, _ = load_prepared(prepared)
    test_rows = load_splits(splits)["test"]
    x, y = split_arrays(images, test_rows)
    meta = metadata_rows(test_rows)  # as evaluate passes them (the baseline uses age, sex and site)
    raw = load_model(model_dir, calibrated=False).predict_proba(x, meta).astype(np.float64)
    cal = load_model(model_dir).predict_proba(x, meta)
    bins = PARAMS.evaluate.calibration_bins
    assert test["ece"] == pytest.approx(expected_calibration_error(y, cal, bins), abs=1e-6)
    assert test["ece_uncalibrated"] == pytest.approx(expected_calibration_error(y, raw, bins), abs=1e-6)
    assert test["brier"] == pytest.approx(np.mean((cal - y) ** 2), abs=1e-6)
    assert test["brier_uncalibrated"] == pytest.approx(np.mean((raw - y) ** 2), abs=1e-6)
    assert test["brier"] != test["brier_uncalibrated"]  # the calibrator changed the probabilities
    plots = tmp_path / "plots"
    before = json.loads((plots / "calibration_uncalibrated.json").read_text())
    assert [r["n"] for r in before] == [r["n"] for r in reliability(y, raw, bins)]
    assert json.loads((plots / "calibration.json").read_text()) != before


def test_a_folder_without_a_calibrator_reports_the_same_before_and_after() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    prob = np.array([0.2, 0.4, 0.7, 0.9, 0.1, 0.3])
    out = score_metrics(y, prob, y.astype(str), 0.5, EvaluateParams(bootstrap=0), 0)
    assert out["ece_uncalibrated"] == out["ece"] and out["brier_uncalibrated"] == out["brier"]
    assert "calibration_uncalibrated" not in plot_data(y, prob, 0.5, 5)


def test_a_metadata_model_is_also_scored_without_metadata(trained, external: Path, tmp_path: Path) -> None:
    """test_images_only / external_images_only: the same images, no age/sex/site, same metrics and CIs."""
    import mlflow

    from melanoma.contracts import load_prepared, load_splits, read_model_json, split_arrays
    from melanoma.metrics import confusion_at, safe_auc
    from melanoma.models import load_model

    prepared, splits, model, tracking = trained
    info = read_model_json(model)
    assert info["metadata_columns"], "the tiny baseline should read age, sex and site"
    result = evaluate_model(
        "baseline", model, prepared, splits, tmp_path / "m.json", tmp_path / "plots", PARAMS.evaluate, 7,
        tracking, external,
    )  # fmt: skip
    alone = result["test_images_only"]
    assert set(alone) == set(result["test"]) | {"roc_auc_change_from_internal"}
    assert alone["roc_auc_change_from_internal"] == pytest.approx(
        alone["roc_auc"] - result["test"]["roc_auc"], abs=2e-6
    )
    assert alone["threshold"] == result["test"]["threshold"]
    # recomputed here from the model itself, given images only
    images, _ = load_prepared(prepared)
    x, y = split_arrays(images, load_splits(splits)["test"])
    prob = load_model(model).predict_proba(x, None)
    assert alone["roc_auc"] == pytest.approx(safe_auc(y, prob), abs=1e-6)
    assert alone["tp"] == confusion_at(y, prob, info["threshold"])["tp"]
    assert alone["roc_auc_ci_low"] <= alone["roc_auc"] <= alone["roc_auc_ci_high"]
    ext_alone = result["external_images_only"]
    assert ext_alone["n"] == result["external"]["n"] and "roc_auc_ci_low" in ext_alone
    client = mlflow.MlflowClient(tracking.uri)
    (logged,) = client.search_runs(
        [client.get_experiment_by_name("unit-eval").experiment_id],
        filter_string="tags.stage = 'train@baseline'",
    )
    assert logged.data.metrics["test_images_only_roc_auc"] == pytest.approx(alone["roc_auc"], abs=1e-6)
    assert logged.data.metrics["external_images_only_roc_auc"] == pytest.approx(
        ext_alone["roc_auc"], abs=1e-6
    )
