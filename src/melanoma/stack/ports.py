"""Loopback ports: whether one is free, picking free ones, starting again when another process takes
a picked one first, and which ports a process group really listens on.

A port picked here is free when picked, but another process may bind it before the server does: start
servers through :func:`retry_on_taken_port`, which picks new ones when the server says one was taken.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from melanoma.stack.config import HOST, PortTaken, StackError

log = logging.getLogger(__name__)

# what a server prints when it cannot bind a port: Go and uvicorn ("address already in use"),
# `weed mini`'s own check of its flags ("port 8333 for S3 (specified by flag s3.port) is not available")
PORT_TAKEN = re.compile(r".*(address already in use|port \d+ for .* is not available).*", re.IGNORECASE)
T = TypeVar("T")


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


def listening(pgid: int) -> set[int]:
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


def check_ports(ports: Mapping[str, int]) -> None:
    """A clear error when a port the user asked for (not 0) is taken."""
    taken = [f"{name} port {port}" for name, port in ports.items() if port and not port_free(port)]
    if taken:
        raise StackError(
            f"{', '.join(taken)} on {HOST} already in use: stop what listens there "
            "(`ss -ltnp`) or choose other ports (--s3-port, --mlflow-port)"
        )
