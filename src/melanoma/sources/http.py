"""HTTP for bulk downloads of public files: urllib3 retries, guarded redirects, atomic files.

Nothing here knows about ISIC. What a library does, the library does: when to retry (429 and 5xx,
connection and read errors, idempotent GETs only), how long to wait (exponential backoff with
jitter, capped; a server's ``Retry-After`` honoured, also capped) and when to give up are urllib3's
``Retry`` (``RetryPolicy.retry``). ``get`` mounts it on the session's ``HTTPAdapter``. Kept here is
only what no library does:

* redirects are followed by hand and each target is checked by a ``UrlGuard`` (https on an exact
  host list) *before* anything connects to it: a redirect to a foreign host costs not even a DNS
  lookup;
* ``download_to``: a body that breaks mid-way, ends short or has the wrong size is fetched again
  (urllib3 cannot see a body it has already handed over), driven by the same ``Retry`` object so the
  budget and the waits are one; the body goes to a hidden temp file renamed into place only when
  complete (``melanoma.atomic``), and failures come back as a ``DownloadResult``, never raised.

All functions are thread-safe; one session may be shared by many threads (``make_session`` sizes
the pool). ``RetryStats`` tallies every retry by reason, for reports and logs.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions as u3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from melanoma import atomic
from melanoma.errors import DataError

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PARTIAL_SUFFIX = atomic.PARTIAL_SUFFIX
# Errors that mean "our disk", not "their network": retrying cannot help, every other file would fail too.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

UrlCheck = Callable[[str], "str | None"]
# The network let us down: worth another attempt (requests.ConnectionError covers ConnectTimeout and
# a read timeout in the middle of a streamed body). Other request errors (a bad URL) are final.
RETRYABLE_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class Cancelled(Exception):
    """Raised inside a retry wait when the caller's cancel event is set."""


class DiskFull(DataError):
    """No space left where a download is written: fatal for the whole run, not one file."""


# ---------------------------------------------------------------------------------------------- policy


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


# ----------------------------------------------------------------------------------------------- guard


@dataclass(frozen=True)
class UrlGuard:
    """Decides whether a URL may be fetched: https on an exact host match, nothing else.

    ``allow_loopback_http`` additionally admits http(s) to 127.0.0.1 / localhost / ::1 - meant for
    local test servers only (callers enable it when their own API base URL is loopback http).
    """

    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    allow_loopback_http: bool = False

    def __post_init__(self) -> None:
        # Host names are case-insensitive; urlsplit().hostname is already lower-case.
        object.__setattr__(self, "allowed_hosts", frozenset(h.lower() for h in self.allowed_hosts))

    def check(self, url: str) -> str | None:
        """Return None if ``url`` may be fetched, else a short reason why not."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            return f"malformed URL {url!r}"
        if not host:
            return f"URL without a host: {url!r}"
        if self.allow_loopback_http and host in LOOPBACK_HOSTS and parts.scheme in ("http", "https"):
            return None
        if parts.scheme != "https":
            return f"scheme {parts.scheme!r} not allowed (https only): {url}"
        if host not in self.allowed_hosts:
            return f"host {host} not in the allowed hosts: {url}"
        return None

    def __call__(self, url: str) -> str | None:
        return self.check(url)


def is_loopback_http(url: str) -> bool:
    """True for http(s) URLs on this machine (the only place plain http is acceptable)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.hostname in LOOPBACK_HOSTS


# --------------------------------------------------------------------------------------------- session


def make_session(
    user_agent: str,
    pool_size: int = 16,
    accept: str = "application/json",
    proxies: Mapping[str, str] | None = None,
    retry: Retry | None = None,
) -> requests.Session:
    """An anonymous session: fixed headers, ``pool_size`` pooled connections, ``retry`` on every request.

    ``retry=None`` mounts no retries at all: for ``download_to``, which drives its own ``Retry`` so
    that broken bodies and bad statuses share one budget. ``trust_env`` is off so that no
    ``~/.netrc`` credentials or proxy variables are picked up implicitly; pass ``proxies`` explicitly.
    """
    session = requests.Session()
    session.trust_env = False
    session.headers.update({"User-Agent": user_agent, "Accept": accept})
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=retry or 0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    if proxies:
        session.proxies.update(proxies)
    return session


# ------------------------------------------------------------------------------------------------- get


class HttpError(DataError):
    """A request that failed for good: a non-retryable status, or retries exhausted."""

    def __init__(self, url: str, message: str, status: int | None = None, attempts: int = 1) -> None:
        self.url = url
        self.status = status
        self.message = message  # already says "HTTP <status>: <server message>" when there was one
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"GET {url} failed{tries}: {message}")


class _Refused(Exception):
    """A URL or redirect the guard refuses, or too many redirects: never retried."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail, self.status = detail, status


def server_message(resp: requests.Response) -> str:
    """The server's own error text: JSON ``message`` / ``detail`` (ninja/DRF style), else the body."""
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        return text[:300] if text else (resp.reason or "no message")
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            return body["message"]
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):
            return "; ".join(_detail_item(item) for item in detail)
    return json.dumps(body)[:300]


def _detail_item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = ".".join(str(x) for x in item.get("loc", []))
    return f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg", item))


def _open(session: requests.Session, url: str, params: Mapping[str, Any] | None, policy: RetryPolicy,
          url_guard: UrlCheck | None, stream: bool, headers: Mapping[str, str] | None = None,
          ) -> requests.Response:  # fmt: skip
    """GET ``url``, following at most ``policy.max_redirects`` redirects by hand.

    Every redirect target is checked by ``url_guard`` before anything connects to it, so a
    redirect to a foreign host fails without a single packet (or DNS lookup) sent there.
    """
    if url_guard is not None and (why := url_guard(url)):
        raise _Refused(f"URL not allowed: {why}")
    for _hop in range(policy.max_redirects + 1):
        resp = session.get(url, params=params, timeout=policy.timeout, allow_redirects=False,
                           stream=stream, headers=headers)  # fmt: skip
        if not resp.is_redirect:
            return resp
        target = urljoin(resp.url, resp.headers["Location"])
        resp.close()
        if url_guard is not None and (why := url_guard(target)):
            host = urlsplit(target).hostname or "?"
            raise _Refused(f"redirect to disallowed host {host} ({target}): {why}", resp.status_code)
        log.debug("following redirect %s -> %s", url, target)
        url, params = target, None  # the Location already carries its own query string
    raise _Refused(f"too many redirects (more than {policy.max_redirects})")


def _display_url(url: str, params: Mapping[str, Any] | None) -> str:
    if not params:
        return url
    try:
        return requests.Request("GET", url, params=params).prepare().url or url
    except requests.RequestException:
        return url


def _attempts_of(resp_or_exc: Any) -> int:
    """How many attempts urllib3 made: from a response's ``Retry`` history, or an exhausted error."""
    retries = getattr(getattr(resp_or_exc, "raw", None), "retries", None)
    if retries is not None:
        return len(retries.history) + 1
    inner = resp_or_exc.args[0] if getattr(resp_or_exc, "args", None) else None
    return int(getattr(inner, "attempts", 1))


def get(
    session: requests.Session,
    url: str,
    params: Mapping[str, Any] | None = None,
    policy: RetryPolicy | None = None,
    *,
    decode: Literal["json", "text"] = "json",
    url_guard: UrlCheck | None = None,
) -> Any:
    """GET ``url`` (``params`` encoded by requests, never spliced by hand) and decode the body.

    ``decode="json"`` returns the parsed JSON, ``"text"`` the text (UTF-8 unless the server says
    otherwise). Retries are those mounted on ``session`` (``make_session(retry=policy.retry())``);
    ``policy`` gives the timeouts and the redirect limit. Raises ``HttpError`` with the status and
    the server's message on any other error or when retries run out; ``Cancelled`` when cancelled.
    """
    policy = policy or RetryPolicy()
    shown = _display_url(url, params)
    try:
        resp = _open(session, url, params, policy, url_guard, stream=False)
    except _Refused as exc:
        raise HttpError(shown, exc.detail, exc.status) from None
    except requests.RequestException as exc:
        raise HttpError(shown, f"{type(exc).__name__}: {exc}", attempts=_attempts_of(exc)) from None
    if not 200 <= resp.status_code < 300:
        message = f"HTTP {resp.status_code}: {server_message(resp)}"
        raise HttpError(shown, message, resp.status_code, _attempts_of(resp))
    if decode == "text":
        if resp.encoding is None or resp.encoding.lower() == "iso-8859-1":
            # requests falls back to latin-1 for text/* without a charset; our payloads are UTF-8.
            resp.encoding = "utf-8"
        return resp.text
    try:
        return resp.json()
    except ValueError:
        raise HttpError(shown, f"response is not JSON: {resp.text[:200]!r}", resp.status_code) from None


# -------------------------------------------------------------------------------------------- download


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
            resp = _open(self.session, self.url, None, self.policy, self.url_guard, True,
                         {"Accept-Encoding": "identity"})  # fmt: skip
        except RETRYABLE_ERRORS as exc:
            raise _Again(f"{type(exc).__name__}: {exc}", error=exc) from exc
        with resp:
            status = resp.status_code
            if not 200 <= status < 300:
                message = f"HTTP {status}: {server_message(resp)}"
                if status in self.policy.retry_statuses:
                    raise _Again(message, response=resp.raw, status=status)
                raise _Refused(message, status)
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
        except _Refused as exc:
            return DownloadResult(url, dest, False, 0, attempts, exc.detail, exc.status)
        except Cancelled:
            return DownloadResult(url, dest, False, 0, attempts, "cancelled")
        except requests.RequestException as exc:  # before OSError: requests' errors subclass it
            return DownloadResult(url, dest, False, 0, attempts, f"{type(exc).__name__}: {exc}")
        except OSError as exc:  # our side: disk full, permissions
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFull(f"no space left on the device to write {dest}: {exc}") from exc
            return DownloadResult(url, dest, False, 0, attempts, f"cannot write {dest}: {exc}")
