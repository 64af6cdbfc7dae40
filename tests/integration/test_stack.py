"""`melanoma stack up|status|down`: real SeaweedFS and MLflow on loopback, a taken port, and a stop
that never signals a process the stack did not start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from melanoma import stack

pytestmark = pytest.mark.integration
MELANOMA = str(Path(sys.executable).parent / "melanoma")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(
        [MELANOMA, "stack", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def listening(pid: int) -> list[tuple[str, int]]:
    """Every listening TCP address of a process and its children."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return [
        (c.laddr.ip, c.laddr.port)
        for p in procs
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def test_up_status_down(tmp_path: Path) -> None:
    s3_port, mlflow_port = stack.free_port(), stack.free_port()
    ports = ["--dir", str(tmp_path / "st"), "--s3-port", str(s3_port), "--mlflow-port", str(mlflow_port)]
    up = cli("up", *ports, cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}" in up.stdout
        assert f"endpointurl http://127.0.0.1:{s3_port}" in up.stdout

        status = cli("status", *ports, cwd=tmp_path)
        assert status.returncode == 0 and status.stdout.count("ready") == 2, status.stdout
        assert requests.get(f"http://127.0.0.1:{mlflow_port}/health", timeout=5).text.strip() == "OK"

        # every port of both servers (SeaweedFS has a dozen) on loopback, none on 0.0.0.0 or another address
        pids = {s: json.loads((tmp_path / "st" / f"{s}.pid").read_text())["pid"] for s in stack.SERVICES}
        for service, pid in pids.items():
            addrs = listening(pid)
            assert addrs, f"{service} listens nowhere"
            assert {ip for ip, _ in addrs} == {"127.0.0.1"}, f"{service} listens beyond loopback: {addrs}"
        assert ("127.0.0.1", s3_port) in listening(pids["s3"])
        assert (tmp_path / "st" / "logs" / "s3.log").stat().st_size > 0
        assert oct((tmp_path / "st" / "s3.json").stat().st_mode)[-3:] == "600"
    finally:
        down = cli("down", *ports, cwd=tmp_path)
    assert down.returncode == 0 and "stopped: mlflow, s3" in down.stdout, down.stdout + down.stderr
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids.values())
    assert cli("status", *ports, cwd=tmp_path).returncode == 2


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = cli("up", "--dir", str(tmp_path / "st"), "--s3-port", str(port), cwd=tmp_path)
    assert res.returncode == 2
    assert f"S3 port {port} on 127.0.0.1 already in use" in res.stderr, res.stderr
    assert not list((tmp_path / "st").glob("*.pid")), "a failed start left PID files behind"


def test_down_stops_only_what_it_started(tmp_path: Path) -> None:
    cfg = stack.StackConfig(root=tmp_path / "st", s3_port=stack.free_port(), mlflow_port=stack.free_port())
    stack.start_s3(cfg, {**os.environ}, Path(sys.executable).parent)
    # A PID file whose process is not the one the stack started (the PID was reused): same PID as a
    # live bystander, another start time.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        fake = {
            "pid": bystander.pid,
            "start_time": 1,
            "argv0": "mlflow",
            "ports": {"mlflow": cfg.mlflow_port},
        }
        (cfg.root / "mlflow.pid").write_text(json.dumps(fake))
        s3_pid = json.loads((cfg.root / "s3.pid").read_text())["pid"]
        assert stack.down(cfg) == ["s3"]
        assert bystander.poll() is None, "down signalled a process it did not start"
        assert not psutil.pid_exists(s3_pid) or psutil.Process(s3_pid).status() == "zombie"
        assert not list(cfg.root.glob("*.pid"))
    finally:
        bystander.kill()
        bystander.wait()
