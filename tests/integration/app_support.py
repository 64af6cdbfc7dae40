"""Helpers for the app tests: the tiny pipeline's registry, `melanoma serve` in a subprocess, uploads.

A uniquely named module (not a conftest: tests/sources/conftest.py already shadows that name).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import yaml
from PIL import Image

from helpers import jpeg_bytes, lesion_image
from integration.conftest import stop_process, wait_http
from integration.tiny_pipeline import REGISTERED_MODEL, TinyPipeline

REPO = Path(__file__).resolve().parents[2]
MODEL = REGISTERED_MODEL


@dataclass
class Registry:
    """The registry that the project's own ``register`` stage wrote in the shared tiny pipeline run
    (integration/tiny_pipeline.py): two versions, each a model register chose and tagged."""

    uri: str
    versions: dict[str, str]  # model name -> registry version, as register's decisions recorded them
    champion: str  # the model name behind the champion alias register left
    other: str  # the other registered model (the load test moves the alias to it and back)
    pipeline: TinyPipeline


def registry_of(pipeline: TinyPipeline) -> Registry:
    """The app tests' view of the tiny pipeline's registry."""
    versions = pipeline.versions()
    (other,) = set(versions) - {pipeline.champion}
    return Registry(pipeline.tracking_uri, versions, pipeline.champion, other, pipeline)


def move_champion(registry: Registry, name: str) -> None:
    """Point the champion alias at ``name``'s version, as a promotion does, under the running app."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri).set_registered_model_alias(
        MODEL, "champion", registry.versions[name]
    )


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path


# the line `melanoma serve` logs once its socket is bound, with the port it got
BOUND = re.compile(r"serve: .* on http://\S+:(\d+)\s*$", re.MULTILINE)
TOKEN_ENV = "MELANOMA_SERVE_TOKEN"


def bound_port(proc: subprocess.Popen, log: Path, timeout: float) -> int:
    """The port ``melanoma serve --port 0`` says it bound, from its ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = BOUND.search(log.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"serve logged no bound port in {timeout}s:\n{log.read_text()[-3000:]}")


def serve_params_file(root: Path, serve_params: dict | None = None) -> Path:
    """``root``/params.yaml: the repository's, naming the test registry's model, ``serve`` overridden."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mlflow"]["registered_model"] = MODEL
    params["serve"].update(serve_params or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root / "params.yaml"


def serve_env(registry_uri: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A test server's environment: no telemetry, none of the test run's own DVC root or serve token."""
    env = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", TOKEN_ENV)}
    env.update({"DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"})
    if registry_uri is not None:
        env["MLFLOW_TRACKING_URI"] = registry_uri
    return {**env, **(extra or {})}


@contextlib.contextmanager
def started(cmd: list[str], env: dict[str, str], root: Path, timeout: float = 240) -> Iterator[Server]:
    """Run a `melanoma serve --port 0 ...` command from ``root`` until /health answers through
    127.0.0.1 (whatever interface it bound); stopped afterwards."""
    fd, name = tempfile.mkstemp(prefix="serve-", suffix=".log", dir=root)
    log = Path(name)
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        begun = time.monotonic()
        url = f"http://127.0.0.1:{bound_port(proc, log, timeout)}"
        wait_http(f"{url}/health", proc, timeout - (time.monotonic() - begun), log)
        yield Server(url, proc, log)
    finally:
        stop_process(proc, 20)


def serve_cmd(params_file: Path, *args: str) -> list[str]:
    """`melanoma --params FILE serve --port 0 ARGS`."""
    return [sys.executable, "-m", "melanoma", "--params", str(params_file), "serve", "--port", "0", *args]


@contextlib.contextmanager
def serve(root: Path, registry: Registry, serve_params: dict, timeout: float = 240) -> Iterator[Server]:
    """`melanoma serve --port 0` over ``registry`` (it binds a free loopback port and logs which), with
    ``serve_params`` overriding params.yaml."""
    cmd = serve_cmd(serve_params_file(root, serve_params))
    with started(cmd, serve_env(registry.uri), root, timeout) as server:
        yield server


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
