"""Helpers for the app tests: tiny trained models in a registry, `melanoma serve` in a subprocess, uploads.

A uniquely named module (not a conftest: tests/sources/conftest.py already shadows that name).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import yaml
from PIL import Image

from helpers import jpeg_bytes, lesion_image, prepared_and_split
from integration.conftest import free_port, stop_process, wait_http

REPO = Path(__file__).resolve().parents[2]
MODEL = "melanoma-app-test"


@dataclass
class Registry:
    """A sqlite MLflow store holding v1 = baseline and v2 = tiny CNN of ``MODEL``."""

    uri: str
    versions: dict[str, str]  # model name -> registry version


def tiny_params():  # noqa: ANN201 - melanoma.config.Params
    from melanoma.config import (
        BaselineParams,
        CnnParams,
        EvaluateParams,
        Params,
        PrepareParams,
        SplitParams,
        TrainParams,
    )

    return Params(
        prepare=PrepareParams(image_size=32, workers=1),
        split=SplitParams(test_fraction=0.25, val_fraction=0.25),
        baseline=BaselineParams(candidates=("logistic_regression",)),
        cnn=CnnParams(filters=(8, 16), convs_per_block=1, dense=16),
        train=TrainParams(epochs=2, batch_size=16, early_stopping_start=10),
        evaluate=EvaluateParams(bootstrap=0),
    )


def build_registry(root: Path) -> Registry:
    """Train the baseline and a tiny CNN on tiny data; register both; champion = the CNN."""
    import mlflow
    from mlflow import MlflowClient

    from melanoma.tracking import Tracking
    from melanoma.train import train_model

    params = tiny_params()
    prepared_and_split(root, params, n=48, pos_every=3)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = Tracking(uri=uri, experiment="app-test", artifact_location=(root / "mlartifacts").as_uri())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    versions = {}
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        for i, name in enumerate(("baseline", "cnn")):
            info = train_model(
                name, root / "prepared", root / "splits", root / "models" / name, params, tracking
            )
            tags = {
                "model_name": name,
                "model_family": info["family"],
                "threshold": json.dumps(info["threshold"]),
                "test_roc_auc": json.dumps(0.8 + 0.05 * i),  # made-up scores: the app shows, never judges
                "test_sensitivity": json.dumps(0.9),
                **{f"data.{k}": v for k, v in info["data"].items()},
            }
            mv = mlflow.register_model(f"runs:/{info['mlflow']['run_id']}/model", MODEL, tags=tags)
            versions[name] = str(mv.version)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    client.set_registered_model_alias(MODEL, "champion", versions["cnn"])
    return Registry(uri, versions)


def move_champion(registry: Registry, name: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri).set_registered_model_alias(
        MODEL, "champion", registry.versions[name]
    )


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path


@contextlib.contextmanager
def serve(root: Path, registry: Registry, serve_params: dict, timeout: float = 240) -> Iterator[Server]:
    """`melanoma serve` on a free loopback port over ``registry``, with ``serve_params`` overriding params.yaml."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mlflow"]["registered_model"] = MODEL
    params["serve"].update(serve_params)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry.uri,
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("DVC_ROOT", None)
    log = root / f"serve-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "melanoma",
        "--params",
        str(root / "params.yaml"),
        "serve",
        "--port",
        str(port),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, timeout, log)
        yield Server(url, proc, log)
    finally:
        stop_process(proc, 20)


def sample_jpeg(seed: int = 0, melanoma: bool = True, w: int = 160, h: int = 120) -> bytes:
    return jpeg_bytes(lesion_image(np.random.default_rng(seed), melanoma, w, h))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def post_image(
    url: str, data: bytes, content_type: str = "image/jpeg", timeout: float = 60, **params
) -> requests.Response:
    """Multipart upload in field ``file``."""
    return requests.post(
        f"{url}/predict", files={"file": ("x.jpg", data, content_type)}, params=params, timeout=timeout
    )


def percentile_ms(latencies: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies) * 1000, q)) if latencies else float("nan")


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
