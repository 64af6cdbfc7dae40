"""Reliable HTTP for bulk downloads of public files: retries, backoff, guarded redirects, atomic files.

Generic on purpose (nothing here knows about ISIC) so that every downloader in the project shares
one tested retry layer:

* ``make_session``  - an anonymous ``requests.Session`` with a connection pool sized for the threads
  that share it, no urllib3-level retries (the retries live here, where a broken body is visible too)
  and ``trust_env = False`` (no ``~/.netrc`` credentials or proxy variables leak in implicitly).
* ``RetryPolicy``   - how many retries, exponential backoff with jitter and a cap, timeouts.
* ``UrlGuard``      - which URLs may be fetched at all (https + exact host list; loopback http only
  when explicitly allowed, for local test servers). Redirects are never followed automatically;
  each target is checked by the guard *before* any connection is made to it.
* ``get_json`` / ``get_text`` - one GET with retries on 429/5xx (honouring ``Retry-After``) and on
  dropped connections; other errors raise ``HttpError`` (a ``DataError``) carrying the HTTP status
  and the server's own message.
* ``download_to``   - one file streamed into a hidden ``.<name>.<random>.partial`` file next to the
  destination and renamed into place only when complete (and, if given, of the expected size), so a
  killed process never leaves a partial file under a final name. It never raises for network
  trouble: it returns a ``DownloadResult`` saying why it failed, so callers can record it.

All functions are thread-safe as long as each thread passes its own arguments; one session may be
shared by many threads (the pool is sized by ``make_session``).
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from melanoma.errors import DataError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PARTIAL_SUFFIX = ".partial"

# Exceptions that mean "the network let us down, try again" (requests.ConnectionError covers
# ConnectTimeout and a read timeout in the middle of a streamed body).
_RETRYABLE_EXC = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


# ---------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``retries`` extra attempts after the first, with capped exponential backoff.

    The delay before retry ``n`` (1-based) is ``backoff_seconds * 2**(n-1)``, capped at
    ``max_backoff_seconds``, times a jitter factor in [0.5, 1) so that many threads hit by the same
    429 do not come back in lock-step. A server's ``Retry-After`` replaces the computed delay (also
    capped, so a hostile or confused server cannot stall a run for hours).
    """

    retries: int = 8
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    connect_timeout: float = 3.05
    read_timeout: float = 60.0
    retry_statuses: frozenset[int] = RETRY_STATUSES
    max_redirects: int = 3
    chunk_size: int = 256 * 1024
    jitter_seed: int = 0  # jitter is drawn from a local RNG seeded with (jitter_seed, url)

    @property
    def timeout(self) -> tuple[float, float]:
        """The (connect, read) timeout tuple requests expects; read = the longest gap between bytes."""
        return (self.connect_timeout, self.read_timeout)

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based), jittered and capped."""
        if self.backoff_seconds <= 0:
            return 0.0
        delay = min(self.max_backoff_seconds, self.backoff_seconds * 2.0 ** min(retry - 1, 60))
        return delay * rng.uniform(0.5, 1.0)

    def rng(self, url: str) -> random.Random:
        """A local RNG per request: reproducible, and different URLs get different jitter."""
        return random.Random(f"{self.jitter_seed}:{url}")


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


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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
) -> requests.Session:
    """An anonymous session: fixed headers, a pool of ``pool_size`` connections, no hidden retries.

    ``trust_env`` is off so that no ``~/.netrc`` credentials or proxy variables are picked up
    implicitly; pass ``proxies`` explicitly if the network needs one.
    """
    session = requests.Session()
    session.trust_env = False
    session.headers.update({"User-Agent": user_agent, "Accept": accept})
    # max_retries=0: urllib3 must not retry behind our back (it cannot see broken bodies anyway,
    # and would double the attempt count); pool_maxsize: one connection per worker thread.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    if proxies:
        session.proxies.update(proxies)
    return session


# ---------------------------------------------------------------------------------------- retry engine


class HttpError(DataError):
    """A request that failed for good: a non-retryable status, or retries exhausted."""

    def __init__(self, url: str, message: str, status: int | None = None, attempts: int = 1) -> None:
        self.url = url
        self.status = status
        self.message = message  # already says "HTTP <status>: <server message>" when there was one
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"GET {url} failed{tries}: {message}")


class _Retry(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, reason: str, detail: str, wait: float | None = None, status: int | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.wait = wait
        self.status = status


class _Fail(Exception):
    """Give up now (or retries are exhausted); ``attempts`` is filled in by ``_run``."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.attempts = 0


def _classify(exc: BaseException) -> str:
    """A short, stable retry reason for a network exception (used as a report key)."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connect_timeout"
    if isinstance(exc, requests.ReadTimeout):
        return "read_timeout"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "broken_body"
    if isinstance(exc, requests.exceptions.ContentDecodingError):
        return "decode_error"
    if isinstance(exc, requests.ConnectionError):
        # requests reports a read timeout in the middle of a streamed body as a ConnectionError.
        inner = exc.args[0] if exc.args else None
        if isinstance(inner, urllib3.exceptions.ReadTimeoutError):
            return "read_timeout"
        return "connection_error"
    return type(exc).__name__


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
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    loc = ".".join(str(x) for x in item.get("loc", []))
                    parts.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg", item)))
                else:
                    parts.append(str(item))
            return "; ".join(parts)
    return json.dumps(body)[:300]


def _run(
    attempt_fn: Callable[[], T],
    policy: RetryPolicy,
    what: str,
    rng: random.Random,
    stats: RetryStats | None,
    cancel: threading.Event | None,
) -> tuple[T, int]:
    """Call ``attempt_fn`` until it returns, raises ``_Fail``, or retries run out (-> ``_Fail``)."""
    attempt = 0
    while True:
        attempt += 1
        if cancel is not None and cancel.is_set():
            fail = _Fail("cancelled")
            fail.attempts = attempt - 1
            raise fail
        try:
            return attempt_fn(), attempt
        except _Fail as fail:
            fail.attempts = attempt
            raise
        except _Retry as retry:
            if attempt > policy.retries:
                fail = _Fail(f"{retry.detail} (retries exhausted)", status=retry.status)
                fail.attempts = attempt
                raise fail from None
            delay = policy.backoff(attempt, rng) if retry.wait is None else retry.wait
            delay = min(max(0.0, delay), policy.max_backoff_seconds)
            if stats is not None:
                stats.add(retry.reason)
            log.info("%s: %s; retry %d/%d in %.2fs", what, retry.detail, attempt, policy.retries, delay)
            if cancel is not None:
                if cancel.wait(delay):
                    fail = _Fail("cancelled")
                    fail.attempts = attempt
                    raise fail from None
            elif delay > 0:
                time.sleep(delay)


def _open(
    session: requests.Session,
    url: str,
    params: Mapping[str, Any] | None,
    policy: RetryPolicy,
    url_guard: Callable[[str], str | None] | None,
    stream: bool,
    headers: Mapping[str, str] | None = None,
) -> requests.Response:
    """GET ``url``, following at most ``policy.max_redirects`` redirects by hand.

    Every redirect target is checked by ``url_guard`` before anything connects to it, so a
    redirect to a foreign host fails without a single packet sent there.
    """
    if url_guard is not None:
        why = url_guard(url)
        if why:
            raise _Fail(f"URL not allowed: {why}")
    for _hop in range(policy.max_redirects + 1):
        resp = session.get(
            url,
            params=params,
            timeout=policy.timeout,
            allow_redirects=False,
            stream=stream,
            headers=headers,
        )
        if not resp.is_redirect:
            return resp
        target = urljoin(resp.url, resp.headers["Location"])
        resp.close()
        why = url_guard(target) if url_guard is not None else None
        if why:
            host = urlsplit(target).hostname or "?"
            raise _Fail(f"redirect to disallowed host {host} ({target}): {why}", status=resp.status_code)
        log.debug("following redirect %s -> %s", url, target)
        url, params = target, None  # the Location already carries its own query string
    raise _Fail(f"too many redirects (more than {policy.max_redirects})")


def _check_status(resp: requests.Response, policy: RetryPolicy) -> None:
    """Raise ``_Retry`` for retryable statuses and ``_Fail`` for any other non-2xx answer."""
    status = resp.status_code
    if 200 <= status < 300:
        return
    message = f"HTTP {status}: {server_message(resp)}"
    resp.close()
    if status in policy.retry_statuses:
        wait = parse_retry_after(resp.headers.get("Retry-After"))
        raise _Retry(f"http_{status}", message, wait=wait, status=status)
    raise _Fail(message, status=status)


def _display_url(url: str, params: Mapping[str, Any] | None) -> str:
    if not params:
        return url
    try:
        return requests.Request("GET", url, params=params).prepare().url or url
    except requests.RequestException:
        return url


def _get(
    session: requests.Session,
    url: str,
    params: Mapping[str, Any] | None,
    policy: RetryPolicy,
    url_guard: Callable[[str], str | None] | None,
    stats: RetryStats | None,
    cancel: threading.Event | None,
) -> requests.Response:
    shown = _display_url(url, params)

    def attempt() -> requests.Response:
        try:
            resp = _open(session, url, params, policy, url_guard, stream=False)
        except _RETRYABLE_EXC as exc:
            raise _Retry(_classify(exc), f"{type(exc).__name__}: {exc}") from exc
        except requests.RequestException as exc:
            raise _Fail(f"{type(exc).__name__}: {exc}") from exc
        _check_status(resp, policy)
        return resp

    try:
        resp, _ = _run(attempt, policy, f"GET {shown}", policy.rng(shown), stats, cancel)
    except _Fail as fail:
        raise HttpError(shown, fail.detail, fail.status, fail.attempts) from None
    return resp


def get_json(
    session: requests.Session,
    url: str,
    params: Mapping[str, Any] | None = None,
    policy: RetryPolicy | None = None,
    *,
    url_guard: Callable[[str], str | None] | None = None,
    stats: RetryStats | None = None,
    cancel: threading.Event | None = None,
) -> Any:
    """GET ``url`` (``params`` encoded by requests, never spliced by hand) and decode the JSON body.

    Retries 429/5xx (``Retry-After`` honoured) and dropped connections per ``policy``; raises
    ``HttpError`` with the status and the server's message on any other error or when retries run out.
    """
    policy = policy or RetryPolicy()
    resp = _get(session, url, params, policy, url_guard, stats, cancel)
    try:
        return resp.json()
    except ValueError:
        raise HttpError(resp.url, f"response is not JSON: {resp.text[:200]!r}", resp.status_code) from None


def get_text(
    session: requests.Session,
    url: str,
    params: Mapping[str, Any] | None = None,
    policy: RetryPolicy | None = None,
    *,
    url_guard: Callable[[str], str | None] | None = None,
    stats: RetryStats | None = None,
    cancel: threading.Event | None = None,
) -> str:
    """Like ``get_json`` but returns the body as text (decoded as the server says, else UTF-8)."""
    policy = policy or RetryPolicy()
    resp = _get(session, url, params, policy, url_guard, stats, cancel)
    if resp.encoding is None or resp.encoding.lower() == "iso-8859-1":
        # requests falls back to latin-1 for text/* without a charset; our payloads are UTF-8.
        resp.encoding = "utf-8"
    return resp.text


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


def partial_files(folder: Path) -> Iterable[Path]:
    """The hidden ``.*.partial`` temp files ``download_to`` (or a killed run of it) left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f".*{PARTIAL_SUFFIX}") if p.is_file())


def download_to(
    session: requests.Session,
    url: str,
    dest: Path,
    expected_size: int | None,
    policy: RetryPolicy | None = None,
    url_guard: Callable[[str], str | None] | None = None,
    *,
    stats: RetryStats | None = None,
    cancel: threading.Event | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Stream ``url`` to ``dest`` atomically; never raises for network or server trouble.

    The body goes to a hidden ``.<dest.name>.<random>.partial`` file in ``dest``'s folder and is
    renamed over ``dest`` only if it is complete: as long as its ``Content-Length`` and, when
    ``expected_size`` is given, exactly that long. Retried per ``policy``: 429/5xx (with
    ``Retry-After``), connect/read timeouts, connections dropped mid-body, short bodies and size
    mismatches. Redirects are followed by hand (at most ``policy.max_redirects``) and only to URLs
    ``url_guard`` admits; other non-2xx statuses fail at once. ``on_bytes(n)`` is called for each
    chunk written (and with a negative count when an attempt's bytes are thrown away), e.g. for a
    progress bar. ``cancel``, when set, stops the download between chunks and during backoff.
    """
    policy = policy or RetryPolicy()
    dest = Path(dest)

    def attempt() -> int:
        written = 0
        tmp: Path | None = None
        try:
            try:
                # identity: the size to check is the stored blob's, not a re-encoded transfer.
                resp = _open(session, url, None, policy, url_guard, True, {"Accept-Encoding": "identity"})
            except _RETRYABLE_EXC as exc:
                raise _Retry(_classify(exc), f"{type(exc).__name__}: {exc}") from exc
            except requests.RequestException as exc:
                raise _Fail(f"{type(exc).__name__}: {exc}") from exc
            with resp:
                _check_status(resp, policy)
                try:
                    declared: int | None = int(resp.headers["Content-Length"])
                except (KeyError, ValueError):
                    declared = None
                dest.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PARTIAL_SUFFIX, dir=dest.parent)
                tmp = Path(name)
                with os.fdopen(fd, "wb") as fh:
                    for chunk in resp.iter_content(policy.chunk_size):
                        if cancel is not None and cancel.is_set():
                            raise _Fail("cancelled")
                        fh.write(chunk)
                        written += len(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk))
                        if expected_size is not None and written > expected_size:
                            # Stop reading: a body longer than announced is wrong whatever follows.
                            raise _Retry(
                                "size_mismatch",
                                f"body exceeds the expected {expected_size} bytes",
                            )
            if declared is not None and written < declared:
                raise _Retry("short_body", f"body ended after {written} of {declared} bytes")
            if expected_size is not None and written != expected_size:
                raise _Retry(
                    "size_mismatch", f"got {written} bytes, expected {expected_size} (files.full.size)"
                )
            os.replace(tmp, dest)
            tmp = None
            return written
        except _RETRYABLE_EXC as exc:  # raised while streaming the body
            raise _Retry(_classify(exc), f"{type(exc).__name__}: {exc}") from exc
        except requests.RequestException as exc:  # before OSError: requests' errors subclass it
            raise _Fail(f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:  # our side: disk full, permissions (requests errors are caught above)
            raise _Fail(f"cannot write {dest}: {exc}") from exc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
                if on_bytes is not None and written:
                    on_bytes(-written)

    try:
        nbytes, attempts = _run(attempt, policy, f"download {url}", policy.rng(url), stats, cancel)
    except _Fail as fail:
        return DownloadResult(
            url=url, dest=dest, ok=False, attempts=fail.attempts, reason=fail.detail, status=fail.status
        )
    return DownloadResult(url=url, dest=dest, ok=True, nbytes=nbytes, attempts=attempts)
