"""``download_to``: one file, whole or not at all, with the retries no library does.

urllib3 cannot retry a body it has already handed over, so this loop drives the same ``Retry``
object itself: statuses, connection errors, bodies that break mid-way or end short and size
mismatches share one budget and one backoff. The body goes to a hidden temp file
(``melanoma.atomic``) renamed into place only when complete; failures come back as a
``DownloadResult``, never raised, except a full disk (``DiskFull``), which every other file would
hit as well.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import urllib3.exceptions as u3

from melanoma import atomic
from melanoma.errors import DataError
from melanoma.sources.http.request import Refused, UrlCheck, open_checked, server_message
from melanoma.sources.http.retry import Cancelled, RetryPolicy, RetryStats

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = (
    atomic.PARTIAL_SUFFIX
)  # Errors that mean "our disk", not "their network": retrying cannot help, every other file would fail too.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# The network let us down: worth another attempt (requests.ConnectionError covers ConnectTimeout and
# a read timeout in the middle of a streamed body). Other request errors (a bad URL) are final.
RETRYABLE_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class DiskFull(DataError):
    """No space left where a download is written: fatal for the whole run, not one file."""


@dataclass(frozen=True)
class DownloadResult:
    """What ``download_to`` did: ``ok`` with the bytes written, or why it failed after ``attempts``."""

    url: str
    dest: Path
    ok: bool
    nbytes: int = 0
    attempts: int = 0
    reason: str | None = None
    status: int | None = None


class _Again(Exception):
    """One attempt failed in a way ``Retry`` may retry: a status (``response``) or an ``error``."""

    def __init__(self, detail: str, response: Any = None, error: BaseException | None = None,
                 status: int | None = None) -> None:  # fmt: skip
        super().__init__(detail)
        self.detail, self.response, self.error, self.status = detail, response, error, status


class SizeMismatch(Exception):
    """The body's length is not the one promised; ``consistent``: it matched its own Content-Length."""

    reason_key = "size_mismatch"

    def __init__(self, detail: str, consistent: bool) -> None:
        super().__init__(detail)
        self.consistent = consistent


class ShortBody(Exception):
    """The connection ended before the announced Content-Length."""

    reason_key = "short_body"


def partial_files(folder: Path) -> Iterable[Path]:
    """The hidden ``.*.partial`` temp files ``download_to`` (or a killed run of it) left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f".*{PARTIAL_SUFFIX}") if p.is_file())


@dataclass
class _Fetch:
    """The fixed arguments of one ``download_to`` call, shared by its attempts."""

    session: requests.Session
    url: str
    dest: Path
    expected_size: int | None
    policy: RetryPolicy
    url_guard: UrlCheck | None
    cancel: threading.Event | None
    on_bytes: Callable[[int], None] | None

    def once(self) -> int:
        """One attempt: stream the body into a temp file and rename it into place; bytes written."""
        try:
            # identity: the size to check is the stored blob's, not a re-encoded transfer.
            resp = open_checked(self.session, self.url, None, self.policy, self.url_guard, True,
                         {"Accept-Encoding": "identity"})  # fmt: skip
        except RETRYABLE_ERRORS as exc:
            raise _Again(f"{type(exc).__name__}: {exc}", error=exc) from exc
        with resp:
            status = resp.status_code
            if not 200 <= status < 300:
                message = f"HTTP {status}: {server_message(resp)}"
                if status in self.policy.retry_statuses:
                    raise _Again(message, response=resp.raw, status=status)
                raise Refused(message, status)
            declared = _content_length(resp)
            if self.expected_size is not None and declared is not None and declared != self.expected_size:
                # Known from the headers alone: no need to download a body that cannot be kept.
                detail = f"got Content-Length {declared}, expected {self.expected_size} (files.full.size)"
                raise _Again(detail, error=SizeMismatch(detail, consistent=True))
            try:
                return self._stream(resp, declared)
            except RETRYABLE_ERRORS as exc:  # the body broke off mid-way
                raise _Again(f"{type(exc).__name__}: {exc}", error=exc) from exc

    def _stream(self, resp: requests.Response, declared: int | None) -> int:
        written = 0
        try:
            with atomic.atomic_path(self.dest) as tmp, open(tmp, "wb") as fh:
                for chunk in resp.iter_content(self.policy.chunk_size):
                    if self.cancel is not None and self.cancel.is_set():
                        raise Cancelled("cancelled")
                    fh.write(chunk)
                    written += len(chunk)
                    if self.on_bytes is not None:
                        self.on_bytes(len(chunk))
                    if self.expected_size is not None and written > self.expected_size:
                        # Stop reading: a body longer than announced is wrong whatever follows.
                        detail = f"body exceeds the expected {self.expected_size} bytes"
                        raise _Again(detail, error=SizeMismatch(detail, consistent=False))
                if declared is not None and written < declared:
                    detail = f"body ended after {written} of {declared} bytes"
                    raise _Again(detail, error=ShortBody(detail))
                if self.expected_size is not None and written != self.expected_size:
                    detail = f"got {written} bytes, expected {self.expected_size} (files.full.size)"
                    raise _Again(detail, error=SizeMismatch(detail, consistent=declared == written))
                fh.flush()
            return written
        except BaseException:
            if written and self.on_bytes is not None:
                self.on_bytes(-written)  # the attempt's bytes were thrown away
            raise


def _content_length(resp: requests.Response) -> int | None:
    try:
        return int(resp.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def download_to(
    session: requests.Session,
    url: str,
    dest: Path,
    expected_size: int | None,
    policy: RetryPolicy | None = None,
    url_guard: UrlCheck | None = None,
    *,
    stats: RetryStats | None = None,
    cancel: threading.Event | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Stream ``url`` to ``dest`` atomically; never raises for network or server trouble.

    The body goes to a hidden ``.<dest.name>.<random>.partial`` file in ``dest``'s folder and is
    renamed over ``dest`` only if it is complete: as long as its ``Content-Length`` and, when
    ``expected_size`` is given, exactly that long. ``session`` should mount no retries
    (``make_session(retry=None)``): this loop drives ``policy.retry`` itself, so that statuses
    (429/5xx, ``Retry-After``), connect/read errors, bodies that break mid-way or end short and
    size mismatches share one budget and one backoff. Redirects are followed by hand (at most
    ``policy.max_redirects``) and only to URLs ``url_guard`` admits; other non-2xx statuses fail at
    once. A size mismatch where the body matched its own Content-Length is permanent once a second
    attempt confirms it (the listing is wrong, not the network). ``on_bytes(n)`` is called for each
    chunk written (negative when an attempt's bytes are thrown away). ``cancel``, when set, stops the download between chunks and during waits.
    Raises ``DiskFull`` when the disk is full (every other file would fail the same way).
    """
    policy = policy or RetryPolicy()
    dest = Path(dest)
    fetch = _Fetch(session, url, dest, expected_size, policy, url_guard, cancel, on_bytes)
    retry = policy.retry(stats, cancel)
    attempts = 0
    confirmed: str | None = None  # a consistent size mismatch seen on the previous attempt
    while True:
        attempts += 1
        try:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            nbytes = fetch.once()
            return DownloadResult(url, dest, ok=True, nbytes=nbytes, attempts=attempts)
        except _Again as again:
            mismatch = (
                again.error if isinstance(again.error, SizeMismatch) and again.error.consistent else None
            )
            if mismatch is not None and str(mismatch) == confirmed:
                # The same whole, self-consistent body twice: the expected size is wrong, not the
                # transfer. Retrying would download it again and again (on every rerun, too).
                why = f"{again.detail}, twice (a permanent mismatch: the listed size is not the file's)"
                return DownloadResult(url, dest, False, 0, attempts, why, again.status)
            confirmed = str(mismatch) if mismatch is not None else None
            try:
                retry = retry.increment("GET", url, response=again.response, error=again.error)
            except u3.MaxRetryError:
                return DownloadResult(url, dest, False, 0, attempts, f"{again.detail} (retries exhausted)",
                                      again.status)  # fmt: skip
            log.info("download %s: %s; retry %d/%d", url, again.detail, attempts, policy.retries)
            try:
                retry.sleep(again.response)
            except Cancelled:
                return DownloadResult(url, dest, False, 0, attempts, "cancelled")
        except Refused as exc:
            return DownloadResult(url, dest, False, 0, attempts, exc.detail, exc.status)
        except Cancelled:
            return DownloadResult(url, dest, False, 0, attempts, "cancelled")
        except requests.RequestException as exc:  # before OSError: requests' errors subclass it
            return DownloadResult(url, dest, False, 0, attempts, f"{type(exc).__name__}: {exc}")
        except OSError as exc:  # our side: disk full, permissions
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFull(f"no space left on the device to write {dest}: {exc}") from exc
            return DownloadResult(url, dest, False, 0, attempts, f"cannot write {dest}: {exc}")
