"""`melanoma stack up|status|down`: real SeaweedFS and MLflow on loopback, a taken port, and a stop
that never signals a process the stack did not start. Also the retry on a taken port, in the stack and
in the tests' own server helper (integration/conftest.py): another process binds the port free_ports()
picks first, before the server does."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from integration.conftest import http_server
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


@contextlib.contextmanager
def impostor() -> Iterator[int]:
    """Another server on a free loopback port (another job's MLflow): 200 and "impostor" to every GET."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"impostor")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def listener() -> Iterator[int]:
    """A socket listening on a free loopback port, which answers nothing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def first_pick_taken(monkeypatch: pytest.MonkeyPatch, taken: dict[int, int]) -> list[int]:
    """``stack.free_ports`` whose first pick of ``n`` ports starts with ``taken[n]``, a port another
    process holds, as if it had bound it right after the pick. Returns the ``n`` of every pick."""
    real, picks = stack.free_ports, []

    def pick(n: int) -> list[int]:
        ports = real(n)
        if n in taken and n not in picks:
            ports = [taken[n], *(p for p in ports if p != taken[n])][:n]
        picks.append(n)
        return ports

    monkeypatch.setattr(stack.ports, "free_ports", pick)  # where retry_on_taken_port looks it up
    return picks


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_up_status_down(tmp_path: Path) -> None:
    ports = ["--dir", str(tmp_path / "st"), "--s3-port", "0", "--mlflow-port", "0"]  # the stack picks them
    up = cli("up", *ports, cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        mlflow_port = int(
            re.search(r"export MLFLOW_TRACKING_URI=http://127\.0\.0\.1:(\d+)$", up.stdout, re.M)[1]
        )
        s3_port = int(re.search(r"endpointurl http://127\.0\.0\.1:(\d+)$", up.stdout, re.M)[1])
        assert 0 not in (s3_port, mlflow_port)
        kept = json.loads((tmp_path / "st" / "ports.json").read_text())
        assert kept == {"s3": s3_port, "mlflow": mlflow_port}

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
    with listener() as port:
        res = cli("up", "--dir", str(tmp_path / "st"), "--s3-port", str(port), cwd=tmp_path)
    assert res.returncode == 2
    assert f"S3 port {port} on 127.0.0.1 already in use" in res.stderr, res.stderr
    assert not list((tmp_path / "st").glob("*.pid")), "a failed start left PID files behind"


def test_an_asked_port_taken_as_the_server_starts_is_a_clear_error_not_another_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check before the start saw the port free; another process bound it before SeaweedFS did.
    monkeypatch.setattr(stack.ports, "check_ports", lambda ports: None)
    picks = first_pick_taken(monkeypatch, {})
    with listener() as port:
        cfg = stack.StackConfig(root=tmp_path / "st", s3_port=port, mlflow_port=0, timeout=60)
        with pytest.raises(stack.StackError, match=f"s3 port {port} on 127.0.0.1 was taken") as err:
            stack.start_s3(cfg, {**os.environ}, Path(sys.executable).parent)
    assert "--s3-port" in str(err.value) and "is not available" in str(err.value), err.value
    assert picks == [11], "started again (on other ports) instead of failing"
    assert not list(cfg.root.glob("*.pid")) and not (cfg.root / "ports.json").exists()


def test_ports_the_stack_picks_are_picked_again_when_another_process_takes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3's pick starts with a port a silent socket holds (SeaweedFS exits: "not available"); MLflow's
    with one another HTTP server answers on (its /health says 200 before our server even binds)."""
    cfg = stack.StackConfig(root=tmp_path / "st", s3_port=0, mlflow_port=0, timeout=180)
    with listener() as s3_taken, impostor() as mlflow_taken:
        picks = first_pick_taken(monkeypatch, {12: s3_taken, 1: mlflow_taken})
        try:
            info = stack.up(cfg, {**os.environ}, Path(sys.executable).parent)
            assert picks == [12, 12, 1, 1]
            assert port_of(info.s3_endpoint) != s3_taken and port_of(info.tracking_uri) != mlflow_taken
            assert requests.get(f"{info.tracking_uri}/health", timeout=5).text.strip() == "OK"
            assert stack._buckets_ready(info)
            assert (
                f"port {s3_taken} for S3 (specified by flag s3.port) is not available"
                in (cfg.root / "logs" / "s3.log").read_text()
            )
        finally:
            stack.down(cfg)


def test_every_attempt_on_taken_ports_gives_a_clear_error_listing_them() -> None:
    def start(ports: list[int]) -> None:
        raise stack.PortTaken(f"server: port {ports[0]} taken")

    with pytest.raises(stack.StackError, match="3 starts, each on ports another process took first") as err:
        stack.retry_on_taken_port(start, 2, attempts=3)
    assert len(re.findall(r"ports \d+, \d+: server: port \d+ taken", str(err.value))) == 3, err.value


@pytest.mark.parametrize("taken", [listener, impostor], ids=["silent-socket", "another-http-server"])
def test_the_tests_server_helper_starts_again_on_another_port(
    taken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with taken() as port:
        picks = first_pick_taken(monkeypatch, {1: port})

        def argv(p: int) -> list[str]:
            return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(p)]

        with http_server(argv, "/", tmp_path / "http", 60, 5, cwd=tmp_path) as url:
            assert port_of(url) != port and picks == [1, 1]
            assert "impostor" not in requests.get(url, timeout=5).text
    first = (tmp_path / f"http-{port}.log").read_text()
    assert "Address already in use" in first or taken is impostor, first


def test_down_stops_only_what_it_started(tmp_path: Path) -> None:
    cfg = stack.StackConfig(root=tmp_path / "st", s3_port=0, mlflow_port=0)
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
