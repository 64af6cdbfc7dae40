"""The stack's processes: started in their own session with a PID file each, recognised later by PID
*and* start time, and stopped only while that still matches, so a PID reused by the system is never
signalled."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from melanoma.stack.config import SERVICES, StackConfig, StackError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessRecord:
    """A PID file: enough to recognise the process we started, even after the PID is reused."""

    pid: int
    start_time: int  # /proc/<pid>/stat field 22, clock ticks since boot
    argv0: str
    ports: dict[str, int]


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_ours(rec: ProcessRecord) -> bool:
    """True while the process ``rec`` names is still the one the stack started."""
    return start_time(rec.pid) == rec.start_time


def pid_file(cfg: StackConfig, service: str) -> Path:
    return cfg.root / f"{service}.pid"


def read_record(cfg: StackConfig, service: str) -> ProcessRecord | None:
    """The PID file of ``service``, or None when there is none."""
    path = pid_file(cfg, service)
    try:
        return ProcessRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise StackError(f"{path}: unreadable PID file ({exc}); remove it if no stack process runs") from exc


def spawn(
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
    start = start_time(proc.pid)
    rec = ProcessRecord(pid=proc.pid, start_time=start or 0, argv0=argv[0], ports=ports)
    pid_file(cfg, service).write_text(json.dumps(asdict(rec)))
    return offset


def log_tail(cfg: StackConfig, service: str, offset: int = 0, n: int = 3000) -> str:
    """The last ``n`` characters written to the service's log after ``offset``."""
    with contextlib.suppress(OSError), open(cfg.root / "logs" / f"{service}.log", "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")[-n:]
    return ""


def reap(pid: int) -> None:
    """Wait for ``pid`` if it is an exited child of this process."""
    # a child of this very process (tests, `stack up` then `down` in one run) stays a zombie until waited
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def terminate(rec: ProcessRecord, timeout: float = 20.0) -> None:
    """SIGTERM the process group of ``rec``; SIGKILL it when it outlives ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_ours(rec):
            return
        reap(rec.pid)
        time.sleep(0.2)
    log.warning("pid %d did not stop in %.0fs: killing its process group", rec.pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(rec.pid, signal.SIGKILL)


def refuse_if_running(cfg: StackConfig, name: str, what: str) -> None:
    """A clear error when this stack folder's ``name`` process (one we started) is still alive."""
    rec = read_record(cfg, name)
    if rec and is_ours(rec):
        raise StackError(f"the {what} of {cfg.root} already runs (pid {rec.pid}); `stack down` first")


def stop(cfg: StackConfig, service: str) -> bool:
    """Stop one service if this stack started it and it still runs; True when something was stopped."""
    rec = read_record(cfg, service)
    if rec is None:
        return False
    stopped = False
    if is_ours(rec):
        terminate(rec)
        stopped = True
    else:
        log.info("%s: pid %d is gone or belongs to another process now: not signalled", service, rec.pid)
    pid_file(cfg, service).unlink(missing_ok=True)
    return stopped


def down(cfg: StackConfig) -> list[str]:
    """Stop every service this stack started (MLflow first); returns the names stopped."""
    return [s for s in reversed(SERVICES) if stop(cfg, s)]
