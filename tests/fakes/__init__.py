"""Local fakes of services that cannot exist here (ISIC, a public S3 bucket), speaking their real protocol.

Every fake is a real HTTP server on 127.0.0.1 built on :class:`LoopbackHTTPServer`: start, stop,
context manager, port and origin live here once.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    owner: LoopbackHTTPServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or get reset on purpose make writes fail; that is the point of a fault.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real services
    timeout = 30  # idle keep-alive connections do not hold a thread forever
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms ACK stalls
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.owner.handle(self)

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.owner.handle(self)

    def do_PUT(self) -> None:  # noqa: N802
        self.server.owner.handle(self)

    def do_POST(self) -> None:  # noqa: N802
        self.server.owner.handle(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet tests
        pass


class LoopbackHTTPServer:
    """A threaded HTTP server bound to 127.0.0.1 (port 0 = a free one); subclasses implement ``handle``."""

    thread_name = "fake-http"

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        """Answer one request (any method; ``h.command`` says which)."""
        raise NotImplementedError

    def start(self) -> Self:
        httpd = _Server(("127.0.0.1", self._port), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() the server first"
        return self._httpd.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"
