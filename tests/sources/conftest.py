"""Fixtures of the ISIC source tests: the fake ISIC server (tests/fakes) and a guard on foreign hosts.

Nothing reaches beyond 127.0.0.1: ``foreign_hosts`` refuses (and records) any name lookup of
another host, which also proves that a redirect to a foreign host is rejected before anything
connects to it (the ISIC test modules use it for every test, through ``pytestmark``). ``fakes`` is importable because pytest puts tests/ (home of the top conftest) on
sys.path; the helpers are in isic_helpers.py (this folder is on sys.path too).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from fakes.isic_server import FakeIsicServer

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture
def foreign_hosts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse and record every lookup of a non-loopback host (tests must stay on 127.0.0.1)."""
    attempts: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in LOOPBACK:
            attempts.append(name)
            raise OSError(f"test guard: refusing to resolve {name}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return attempts


@pytest.fixture
def server() -> Iterator[FakeIsicServer]:
    with FakeIsicServer(30) as srv:
        yield srv


@pytest.fixture(scope="module")
def big_server() -> Iterator[FakeIsicServer]:
    """250 images: three pages of the default size (read-only tests only)."""
    with FakeIsicServer(250, seed=1) as srv:
        yield srv
