"""Retries through urllib3: ``RetryPolicy.retry()`` builds the ``Retry`` every request uses.

urllib3 decides when to retry (429 and 5xx, connection and read errors, idempotent GETs only), how
long to wait (exponential backoff with jitter, capped; ``Retry-After`` honoured, capped too) and when
to give up. ``TallyRetry`` adds two things it lacks: a tally of retries by reason (for reports and
logs) and waits that a cancel event cuts short (Ctrl-C, a fatal answer elsewhere, a full disk).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Self

import requests
import urllib3.exceptions as u3
from urllib3.util.retry import Retry

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class Cancelled(Exception):
    """Raised inside a retry wait when the caller's cancel event is set."""


class RetryStats:
    """A thread-safe tally of retries by reason (``http_429``, ``read_timeout``, ...) for reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


def retry_reason(response: Any = None, error: BaseException | None = None) -> str:
    """A short, stable name for why a request is retried (a report key)."""
    if error is None:
        return f"http_{getattr(response, 'status', None) or getattr(response, 'status_code', None)}"
    for kind, name in _REQUESTS_REASONS:
        if isinstance(error, kind):
            return name
    # Look through requests' wrapper and urllib3's MaxRetryError at what really happened.
    inner: Any = error
    if isinstance(inner, requests.RequestException) and inner.args:
        inner = inner.args[0]
    if isinstance(inner, u3.MaxRetryError) and inner.reason is not None:
        inner = inner.reason
    for kind, name in _URLLIB3_REASONS:
        if isinstance(inner, kind):
            return name
    if isinstance(error, requests.ConnectionError | ConnectionError):
        return "connection_error"
    return getattr(error, "reason_key", None) or type(error).__name__


_REQUESTS_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (requests.ConnectTimeout, "connect_timeout"),
    (requests.ReadTimeout, "read_timeout"),
    (requests.exceptions.ChunkedEncodingError, "broken_body"),
    (requests.exceptions.ContentDecodingError, "decode_error"),
)
_URLLIB3_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (u3.NewConnectionError, "connection_error"),  # a subclass of ConnectTimeoutError in urllib3 2
    (u3.ConnectTimeoutError, "connect_timeout"),
    (u3.ReadTimeoutError, "read_timeout"),
    (u3.ProtocolError, "connection_error"),
)


class TallyRetry(Retry):
    """urllib3's ``Retry``, plus: a tally of each retry by reason, and a wait a cancel event cuts short.

    urllib3 copies the object on every increment (``new``); the tally and the event travel along.
    A ``Retry-After`` header urllib3 cannot parse falls back to the backoff instead of raising.
    """

    tally: RetryStats | None = None
    cancel: threading.Event | None = None

    def new(self, **kw: Any) -> Self:
        copy = super().new(**kw)
        copy.tally, copy.cancel = self.tally, self.cancel
        return copy

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> Self:  # fmt: skip
        try:
            new = super().increment(method, url, response, error, _pool, _stacktrace)
        except u3.MaxRetryError as exc:
            exc.attempts = len(self.history) + 1  # type: ignore[attr-defined]  # read by get()
            raise
        if self.tally is not None:
            self.tally.add(retry_reason(response, error))
        return new

    def sleep(self, response: Any = None) -> None:
        delay = None
        if self.respect_retry_after_header and response is not None:
            try:
                delay = self.get_retry_after(response)
            except u3.InvalidHeader:
                delay = None
        if not delay:
            delay = self.get_backoff_time()
        if self.cancel is None:
            if delay > 0:
                threading.Event().wait(delay)
        elif self.cancel.wait(delay):
            raise Cancelled("cancelled while waiting to retry")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``retries`` extra attempts after the first, timeouts, redirects, chunk size.

    The waits are urllib3's: the first retry at once, then ``backoff_seconds * 2**(n-2)`` plus a
    jitter of up to ``backoff_seconds`` (so threads hit by the same 429 do not return in lock-step),
    capped at ``max_backoff_seconds``; a ``Retry-After`` replaces it, capped the same way (a hostile
    or confused server cannot stall a run for hours).
    """

    retries: int = 8
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    connect_timeout: float = 3.05
    read_timeout: float = 60.0
    retry_statuses: frozenset[int] = RETRY_STATUSES
    max_redirects: int = 3
    chunk_size: int = 256 * 1024

    @property
    def timeout(self) -> tuple[float, float]:
        """The (connect, read) timeout tuple requests expects; read = the longest gap between bytes."""
        return (self.connect_timeout, self.read_timeout)

    def retry(self, stats: RetryStats | None = None, cancel: threading.Event | None = None) -> TallyRetry:
        """A fresh urllib3 ``Retry`` for this policy (``stats`` tallies, ``cancel`` cuts waits short)."""
        cap = max(0.0, self.max_backoff_seconds)
        retry = TallyRetry(
            total=self.retries,
            redirect=0,  # never followed by urllib3: redirects are checked by hand (``_open``)
            raise_on_redirect=False,
            allowed_methods=frozenset({"GET"}),
            status_forcelist=self.retry_statuses,
            backoff_factor=max(0.0, self.backoff_seconds) / 2,
            backoff_jitter=max(0.0, self.backoff_seconds),
            backoff_max=cap,
            respect_retry_after_header=True,
            retry_after_max=cap,  # type: ignore[arg-type]  # urllib3 compares, a float works
            raise_on_status=False,  # the last answer comes back, so its status and message are seen
        )
        retry.tally, retry.cancel = stats, cancel
        return retry
