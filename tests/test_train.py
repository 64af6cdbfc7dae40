"""train.py: one model trained on prepared data and splits, a byte-reproducible model folder, one MLflow run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from helpers import local_tracking, prepared_and_split, tiny_params
from melanoma.contracts import (
    MODEL_JSON,
    data_hashes,
    model_fingerprint,
)
from melanoma.errors import DataError
from melanoma.tracking import FINGERPRINT_TAG, Tracking, find_model_run
from melanoma.train import logged_params, train_model

PARAMS = tiny_params(test_fraction=0.25, val_fraction=0.25, bootstrap=20)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return prepared_and_split(tmp_path_factory.mktemp("train"), PARAMS, n=48, pos_every=3)


def sweep_tracking(root: Path) -> Tracking:
    """A local store, as inside a DVC experiment (``dvc exp run`` sets the name and baseline)."""
    return dataclasses.replace(
        local_tracking(root, "unit"), dvc_exp_name="sweep-1", dvc_exp_baseline_rev="0" * 40
    )


def test_model_folder_is_byte_reproducible_and_run_found_by_content(data, tmp_path: Path) -> None:
    prepared, splits = data
    tracking = sweep_tracking(tmp_path)
    first = train_model("baseline", prepared, splits, tmp_path / "a", PARAMS, tracking)
    second = train_model("baseline", prepared, splits, tmp_path / "b", PARAMS, tracking)

    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and Path(MODEL_JSON) in files_a
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel

    # No timings or run ids in the tracked file; they live in MLflow.
    info = json.loads((tmp_path / "a" / MODEL_JSON).read_text())
    assert "mlflow" not in info and not any("seconds" in k for k in info)
    assert info["data"] == data_hashes(prepared, splits)
    assert first["mlflow"]["run_id"] != second["mlflow"]["run_id"]

    fingerprint = model_fingerprint(tmp_path / "a")
    assert fingerprint == model_fingerprint(tmp_path / "b")
    # The newest run that wrote this content is the one evaluation logs to.
    assert find_model_run(tracking, fingerprint) == second["mlflow"]["run_id"]
    run = mlflow.MlflowClient(tracking.uri).get_run(first["mlflow"]["run_id"])
    assert run.data.tags[FINGERPRINT_TAG] == fingerprint
    assert run.data.tags["dvc_exp_name"] == "sweep-1"
    assert run.data.tags["dvc_exp_baseline_rev"] == "0" * 40
    assert run.data.metrics["train_seconds"] > 0
    # The MLflow UI's Dataset column: each split with its DVC path and content hash.
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    assert inputs["test"].dataset.digest == info["data"]["test_csv_sha256"][:12]
    assert json.loads(inputs["train"].dataset.source)["uri"].endswith("splits/train.csv")


def test_an_unknown_fingerprint_finds_no_run(tmp_path: Path) -> None:
    tracking = sweep_tracking(tmp_path)
    assert find_model_run(tracking, "f" * 64) is None  # no experiment yet


def test_a_one_class_split_is_a_clear_error(data, tmp_path: Path) -> None:
    prepared, splits = data
    one_class = tmp_path / "splits"
    one_class.mkdir()
    for name in ("train", "val", "test"):
        frame = pd.read_csv(splits / f"{name}.csv", dtype={"isic_id": str})
        (frame[frame["label"] == 0] if name == "val" else frame).to_csv(
            one_class / f"{name}.csv", index=False
        )
    with pytest.raises(DataError, match="val split has only one class"):
        train_model("baseline", prepared, one_class, tmp_path / "m", PARAMS, sweep_tracking(tmp_path))
    assert not (tmp_path / "m").exists()


def test_logged_params_hold_what_the_model_depends_on() -> None:
    base = logged_params("baseline", PARAMS)
    assert base["baseline.candidates"] == "logistic_regression"
    assert "train.epochs" not in base and "train.target_sensitivity" in base
    assert "cnn.filters" not in base
    cnn = logged_params("cnn", PARAMS)
    assert {"train.epochs", "cnn.filters", "prepare.image_size", "base.seed"} <= set(cnn)
    assert not any(k.startswith("baseline.") for k in cnn)


def test_tta_and_calibration_are_recorded_and_loaded_back(data, tmp_path: Path) -> None:
    from dataclasses import replace

    import numpy as np

    from melanoma.config import CalibrationParams
    from melanoma.contracts import load_prepared, load_splits, split_arrays
    from melanoma.metadata import metadata_rows
    from melanoma.metrics import choose_threshold, safe_auc
    from melanoma.models import load_model
    from melanoma.models.calibration import CalibratedClassifier, Calibrator
    from melanoma.models.tta import TTAClassifier

    prepared, splits = data
    params = replace(
        PARAMS, baseline=replace(PARAMS.baseline, tta=True), calibration=CalibrationParams(method="platt")
    )
    result = train_model("baseline", prepared, splits, tmp_path / "m", params, sweep_tracking(tmp_path))
    info = json.loads((tmp_path / "m" / MODEL_JSON).read_text())
    assert info["tta"] is True and info["calibration"]["method"] == "platt"
    assert set(info["calibration"]) == {"method", "slope", "intercept"}
    val = info["val"]
    for key in ("val_ece", "val_brier", "val_ece_uncalibrated", "val_brier_uncalibrated"):
        assert 0 <= val[key] <= 1, key

    model = load_model(tmp_path / "m")
    assert isinstance(model, CalibratedClassifier) and isinstance(model.inner, TTAClassifier)
    assert model.calibrator == Calibrator.from_dict(info["calibration"])
    images, _ = load_prepared(prepared)
    val_rows = load_splits(splits)["val"]
    x_val, y_val = split_arrays(images, val_rows)
    meta = metadata_rows(val_rows)  # as train passes them (the baseline uses age, sex and site)
    p_cal = model.predict_proba(x_val, meta)
    p_raw = load_model(tmp_path / "m", calibrated=False).predict_proba(x_val, meta)
    assert not np.allclose(p_cal, p_raw)  # the calibrator does something here
    assert np.array_equal(p_cal, model.calibrator.apply(p_raw))
    # The threshold and the metrics in model.json are those of the calibrated probabilities (for
    # this metadata-reading model: with metadata and without, whichever threshold is lower).
    p_alone = model.predict_proba(x_val, None)
    target = params.train.target_sensitivity
    assert info["threshold"] == min(
        choose_threshold(y_val, p_cal, target), choose_threshold(y_val, p_alone, target)
    )
    assert val["val_roc_auc"] == pytest.approx(safe_auc(y_val, p_cal), abs=1e-12)
    assert val["val_brier"] == pytest.approx(float(np.mean((p_cal - y_val) ** 2)), abs=1e-12)
    assert val["val_brier_uncalibrated"] == pytest.approx(float(np.mean((p_raw - y_val) ** 2)), abs=1e-6)
    # What the registry and the app load: the logged pyfunc gives the calibrated, TTA'd probabilities.
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=result["mlflow"]["model_uri"],
        tracking_uri=result["mlflow"]["tracking_uri"],
        dst_path=str(tmp_path / "logged"),
    )
    served = mlflow.pyfunc.load_model(local).predict(np.asarray(x_val))  # images alone: no metadata
    assert np.allclose(served, model.predict_proba(x_val), atol=1e-6)
    run = mlflow.MlflowClient(result["mlflow"]["tracking_uri"]).get_run(result["mlflow"]["run_id"])
    assert run.data.params["calibration.method"] == "platt" and run.data.params["baseline.tta"] == "True"
    assert run.data.metrics["val_ece"] == pytest.approx(val["val_ece"], abs=1e-9)


def test_a_metadata_model_keeps_the_target_sensitivity_without_metadata(data, tmp_path: Path) -> None:
    """The threshold holds sensitivity >= target on validation with and without age/sex/site."""
    import numpy as np

    from melanoma.contracts import load_prepared, load_splits, split_arrays
    from melanoma.metadata import metadata_rows
    from melanoma.metrics import confusion_at, rates
    from melanoma.models import load_model

    prepared, splits = data
    info = train_model("baseline", prepared, splits, tmp_path / "m", PARAMS, local_tracking(tmp_path, "u"))
    target = PARAMS.train.target_sensitivity
    assert (
        info["metadata_columns"]
        and info["threshold_rule"] == f"sensitivity>={target} with and without metadata"
    )
    images, _ = load_prepared(prepared)
    val = load_splits(splits)["val"]
    x, y = split_arrays(images, val)
    model = load_model(tmp_path / "m")
    with_meta = rates(confusion_at(y, model.predict_proba(x, metadata_rows(val)), info["threshold"]))
    alone = rates(confusion_at(y, model.predict_proba(x, None), info["threshold"]))
    assert with_meta["sensitivity"] >= target and alone["sensitivity"] >= target
    assert info["val"]["val_images_only_sensitivity"] == pytest.approx(alone["sensitivity"])
    assert info["val"]["val_sensitivity"] == pytest.approx(with_meta["sensitivity"])
    assert np.isfinite(info["val"]["val_images_only_roc_auc"])


def test_the_operating_point_is_the_lower_of_the_two_thresholds() -> None:
    """A model whose scores drop without metadata gets the threshold that still reaches the target."""
    import numpy as np

    from melanoma.metrics import choose_threshold
    from melanoma.train import operating_point

    y = np.array([0] * 10 + [1] * 10)
    with_meta = np.linspace(0.05, 0.95, 20)
    alone = with_meta * 0.5  # the same ranking, half the score: its own threshold is half as high

    class Scores:  # a model that answers from a table: the rule, not a model, is under test
        metadata_columns = ("age_approx",)

        def predict_proba(self, images: np.ndarray, metadata: object = None) -> np.ndarray:
            return with_meta if metadata is not None else alone

    x = np.zeros((20, 4, 4, 3), np.uint8)
    threshold, rule, extra = operating_point(Scores(), x, y, with_meta, 0.9)
    assert threshold == choose_threshold(y, alone, 0.9) < choose_threshold(y, with_meta, 0.9)
    assert rule == "sensitivity>=0.9 with and without metadata"
    assert extra["val_images_only_sensitivity"] >= 0.9
    Scores.metadata_columns = ()  # an image-only model: its own threshold, no images-only block
    assert operating_point(Scores(), x, y, with_meta, 0.9) == (
        choose_threshold(y, with_meta, 0.9),
        "sensitivity>=0.9",
        {},
    )


def test_model_json_says_what_the_model_was_trained_on(data, tmp_path: Path) -> None:
    """trained_on: from prepare's copy of the ingest report, with the split sizes."""
    from melanoma.raw_layout import describe_source

    prepared, splits = data
    info = train_model("baseline", prepared, splits, tmp_path / "m", PARAMS, local_tracking(tmp_path, "u"))
    report = json.loads((prepared / "provenance" / "ingest_report.json").read_text())
    assert info["trained_on"] == {
        **describe_source(report),
        "n_train": info["n_train"],
        "n_val": info["n_val"],
    }
    synthetic = describe_source({"source": "synthetic", "seed": 42, "n_images": 2000})
    assert (
        synthetic["synthetic"]
        and synthetic["name"] == "built-in synthetic sample (seed 42, 2000 generated images)"
    )
    isic = describe_source({"source": "isic", "query": "diagnosis_3:Melanoma", "n_images": 12})
    assert not isic["synthetic"] and isic["name"] == "ISIC Archive (diagnosis_3:Melanoma; 12 images)"
    folder = describe_source({"source": "folder", "path": "/home/me/ham10000", "mode": "metadata_csv"})
    assert folder["name"] == "image folder ham10000 (metadata_csv)"  # no host path in model.json
