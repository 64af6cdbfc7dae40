"""A loopback TCP proxy that stops forwarding uploads after a byte budget: the ``hold`` fault for a real
server that has none (SeaweedFS), so a test can crash the server while a push is surely in flight.

Every connection is relayed both ways to ``upstream``. Client-to-server bytes are counted over all
connections; once ``budget`` bytes have passed, the rest is held (not read, not forwarded) and
``holding`` is set. ``release()`` then closes every connection, as a crashed server would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

CHUNK = 64 * 1024


class HoldingProxy:
    """``with HoldingProxy(upstream_port, budget) as proxy:`` listens on ``proxy.port`` (127.0.0.1)."""

    def __init__(self, upstream_port: int, budget: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.budget = budget
        self.sent = 0  # client-to-server bytes forwarded so far, all connections together
        self.holding = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> HoldingProxy:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.release()

    def release(self) -> None:
        """Close the listener and every relayed connection (the held bytes are never delivered)."""
        self._released.set()
        with self._lock:
            socks, self._socks = [self._listener, *self._socks], []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self) -> None:
        while not self._released.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # released
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _allowance(self, want: int) -> int:
        """How many of ``want`` upload bytes may pass now; 0 (and ``holding`` set) once the budget is spent."""
        with self._lock:
            n = max(0, min(want, self.budget - self.sent))
            self.sent += n
        if n == 0:
            self.holding.set()
        return n

    def _pump(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        try:
            while not self._released.is_set():
                want = self._allowance(CHUNK) if upload else CHUNK
                if want == 0:
                    self._released.wait()  # hold: stop reading, so the client's sends block
                    return
                data = src.recv(want)
                if upload and len(data) < want:  # give back what was allowed but not read
                    with self._lock:
                        self.sent -= want - len(data)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            return  # a side closed: release(), or the server went away
