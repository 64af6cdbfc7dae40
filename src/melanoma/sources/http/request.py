"""One GET with urllib3's retries and redirects checked by hand; the URL guard; the session.

Redirects are never followed by requests or urllib3: each target is checked by a ``UrlGuard``
(https on an exact host list) *before* anything connects to it, so a redirect to a foreign host
costs not even a DNS lookup.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from melanoma.errors import DataError
from melanoma.sources.http.retry import RetryPolicy
from melanoma.urls import is_loopback_http

log = logging.getLogger(__name__)

UrlCheck = Callable[[str], "str | None"]


@dataclass(frozen=True)
class UrlGuard:
    """Decides whether a URL may be fetched: https on an exact host match, nothing else.

    ``allow_loopback_http`` additionally admits http(s) on loopback (``melanoma.urls``) - meant for
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
        if self.allow_loopback_http and is_loopback_http(url):
            return None
        if parts.scheme != "https":
            return f"scheme {parts.scheme!r} not allowed (https only): {url}"
        if host not in self.allowed_hosts:
            return f"host {host} not in the allowed hosts: {url}"
        return None

    def __call__(self, url: str) -> str | None:
        return self.check(url)


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


class HttpError(DataError):
    """A request that failed for good: a non-retryable status, or retries exhausted."""

    def __init__(self, url: str, message: str, status: int | None = None, attempts: int = 1) -> None:
        self.url = url
        self.status = status
        self.message = message  # already says "HTTP <status>: <server message>" when there was one
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"GET {url} failed{tries}: {message}")


class Refused(Exception):
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


def open_checked(session: requests.Session, url: str, params: Mapping[str, Any] | None, policy: RetryPolicy,
          url_guard: UrlCheck | None, stream: bool, headers: Mapping[str, str] | None = None,
          ) -> requests.Response:  # fmt: skip
    """GET ``url``, following at most ``policy.max_redirects`` redirects by hand.

    Every redirect target is checked by ``url_guard`` before anything connects to it, so a
    redirect to a foreign host fails without a single packet (or DNS lookup) sent there.
    """
    if url_guard is not None and (why := url_guard(url)):
        raise Refused(f"URL not allowed: {why}")
    for _hop in range(policy.max_redirects + 1):
        resp = session.get(url, params=params, timeout=policy.timeout, allow_redirects=False,
                           stream=stream, headers=headers)  # fmt: skip
        if not resp.is_redirect:
            return resp
        target = urljoin(resp.url, resp.headers["Location"])
        resp.close()
        if url_guard is not None and (why := url_guard(target)):
            host = urlsplit(target).hostname or "?"
            raise Refused(f"redirect to disallowed host {host} ({target}): {why}", resp.status_code)
        log.debug("following redirect %s -> %s", url, target)
        url, params = target, None  # the Location already carries its own query string
    raise Refused(f"too many redirects (more than {policy.max_redirects})")


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
        resp = open_checked(session, url, params, policy, url_guard, stream=False)
    except Refused as exc:
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
