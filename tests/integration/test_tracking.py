"""Training and evaluation against a real MLflow server: params, metrics, tags, and the logged
pyfunc round trip (load via models:/, identical predictions, odd-sized input resized)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from helpers import prepared_and_split
from melanoma.config import BaselineParams, EvaluateParams, Params, PrepareParams, SplitParams
from melanoma.contracts import load_prepared
from melanoma.evaluate import evaluate_model
from melanoma.models import load_model
from melanoma.tracking import Tracking, default_tracking_uri
from melanoma.train import train_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Params]:
    params = Params(
        prepare=PrepareParams(image_size=32, workers=2),
        split=SplitParams(test_fraction=0.25, val_fraction=0.25),
        baseline=BaselineParams(candidates=("logistic_regression", "random_forest"), n_estimators=20),
        evaluate=EvaluateParams(bootstrap=50),
    )
    prepared_dir, splits_dir = prepared_and_split(tmp_path_factory.mktemp("data"), params, n=90, pos_every=3)
    return prepared_dir, splits_dir, params


def test_train_and_evaluate_log_one_run_with_a_loadable_model(
    prepared, mlflow_server: str, tmp_path: Path
) -> None:
    prep, splits, params = prepared
    tracking = Tracking(uri=mlflow_server, experiment="it-tracking", git_commit="abc123", dvc_exp_name=None)
    info = train_model("baseline", prep, splits, tmp_path / "model", params, tracking)
    run_id = info["mlflow"]["run_id"]
    assert info["threshold"] >= 0 and info["val"]["val_roc_auc"] > 0.8

    result = evaluate_model(
        "baseline",
        tmp_path / "model",
        prep,
        splits,
        tmp_path / "m.json",
        tmp_path / "plots",
        params.evaluate,
        0,
        tracking,
    )
    assert result["test"]["roc_auc"] > 0.8
    assert (tmp_path / "plots" / "roc.png").stat().st_size > 1000

    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.data.params["prepare.image_size"] == "32"
    assert run.data.params["baseline.candidates"] == "logistic_regression,random_forest"
    assert run.data.tags["stage"] == "train@baseline"
    assert run.data.tags["git_commit"] == "abc123"
    assert len(run.data.tags["data.images_sha256"]) == 64
    assert run.data.metrics["test_roc_auc"] == pytest.approx(result["test"]["roc_auc"], abs=1e-6)
    assert "val_roc_auc.random_forest" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/roc.json" in artifacts

    # The logged pyfunc, loaded through the server, predicts exactly what the local model does.
    mlflow.set_tracking_uri(mlflow_server)
    pyfunc = mlflow.pyfunc.load_model(info["mlflow"]["model_uri"])
    images, _ = load_prepared(prep)
    batch = np.asarray(images[:8])
    local = load_model(tmp_path / "model").predict_proba(batch)
    assert np.array_equal(pyfunc.predict(batch), local.astype(np.float32))  # the pyfunc answers float32
    # Raw images of another size are resized by the same code as prepare.
    odd = np.random.default_rng(0).integers(0, 255, (2, 75, 61, 3), dtype=np.uint8)
    out = pyfunc.predict(odd)
    assert out.shape == (2,) and np.isfinite(out).all()


def test_default_tracking_is_an_absolute_sqlite_file(prepared, tmp_path: Path, monkeypatch) -> None:
    prep, splits, params = prepared
    monkeypatch.chdir(tmp_path)
    uri = default_tracking_uri(Path("."))
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    tracking = Tracking(uri=uri, experiment="local", artifact_location=(tmp_path / "mlartifacts").as_uri())
    info = train_model("baseline", prep, splits, tmp_path / "model", params, tracking)
    assert (tmp_path / "mlflow.db").is_file()
    run = mlflow.MlflowClient(uri).get_run(info["mlflow"]["run_id"])
    assert run.data.metrics["val_roc_auc"] == pytest.approx(info["val"]["val_roc_auc"])


def test_cnn_run_logs_epochs_and_both_flavors(prepared, mlflow_server: str, tmp_path: Path) -> None:
    from dataclasses import replace

    from melanoma.config import CnnParams, TrainParams

    prep, splits, params = prepared
    params = replace(
        params, train=TrainParams(epochs=2, batch_size=16), cnn=CnnParams(filters=(4, 8), dense=8)
    )
    tracking = Tracking(uri=mlflow_server, experiment="it-cnn")
    info = train_model("cnn", prep, splits, tmp_path / "cnn", params, tracking)
    client = mlflow.MlflowClient(mlflow_server)
    history = client.get_metric_history(info["mlflow"]["run_id"], "val_auc")
    assert [m.step for m in history] == list(range(info["epochs_run"]))
    assert (tmp_path / "cnn" / "history.json").is_file()
    assert client.get_run(info["mlflow"]["run_id"]).data.params["train.epochs"] == "2"

    mlflow.set_tracking_uri(mlflow_server)
    pyfunc = mlflow.pyfunc.load_model(info["mlflow"]["model_uri"])
    images, _ = load_prepared(prep)
    batch = np.asarray(images[:6])
    local = load_model(tmp_path / "cnn").predict_proba(batch)
    assert np.allclose(pyfunc.predict(batch), local, atol=1e-6)
    models = client.search_logged_models(experiment_ids=[info["mlflow"]["experiment_id"]])
    assert {m.name for m in models} >= {"model", "keras_model"}


def test_mlflow_models_serve_scores_raw_images(prepared, mlflow_server: str, tmp_path: Path) -> None:
    """`mlflow models serve --env-manager local` on the logged pyfunc: raw uint8 images of any size in."""
    import json
    import os
    import sys

    import requests

    from integration.conftest import http_server

    prep, splits, params = prepared
    info = train_model(
        "baseline",
        prep,
        splits,
        tmp_path / "model",
        params,
        Tracking(uri=mlflow_server, experiment="it-serve"),
    )
    bin_dir = str(Path(sys.executable).parent)  # mlflow execs uvicorn from PATH, as in an activated venv
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": mlflow_server,
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }

    def argv(port: int) -> list[str]:
        return [
            str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", info["mlflow"]["model_uri"],
            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip

    with http_server(argv, "/ping", tmp_path / "serve", 120, 20, env=env) as url:
        image = np.random.default_rng(0).integers(0, 255, (2, 41, 57, 3), dtype=np.uint8)
        resp = requests.post(f"{url}/invocations", json={"inputs": image.tolist()}, timeout=60)
        assert resp.status_code == 200, resp.text
        served = np.asarray(json.loads(resp.text)["predictions"], dtype=np.float32)
        mlflow.set_tracking_uri(mlflow_server)
        local = mlflow.pyfunc.load_model(info["mlflow"]["model_uri"]).predict(image)
        assert served.shape == (2,) and np.allclose(served, local, atol=1e-6)
