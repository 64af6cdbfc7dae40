"""``melanoma.sources.http``: urllib3 retries on the session, ``get``, the URL guard, ``download_to``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import urllib3.exceptions as u3
from isic_helpers import visible_ids

from fakes.isic_server import LICENSES, FakeIsicServer
from melanoma.sources import http as mhttp

pytestmark = pytest.mark.usefixtures("foreign_hosts")  # loopback only, see conftest.py


def session_for(policy: mhttp.RetryPolicy, stats: mhttp.RetryStats | None = None) -> object:
    return mhttp.make_session("melanoma/test", retry=policy.retry(stats))


def test_bad_cursor_is_an_http_error_with_the_message(server: FakeIsicServer) -> None:
    session = mhttp.make_session("melanoma/test")
    with pytest.raises(mhttp.HttpError, match="Invalid cursor") as info:
        mhttp.get(session, server.base_url + "images/search/", {"cursor": "not-a-cursor"})
    assert info.value.status == 422


def test_get_decodes_json_or_text(server: FakeIsicServer) -> None:
    session = mhttp.make_session("melanoma/test")
    page = mhttp.get(session, server.base_url + "images/search/", {"limit": 2})
    assert len(page["results"]) == 2
    text = mhttp.get(session, server.base_url + "zip-download/license-file/CC-0/", decode="text")
    assert text == LICENSES["CC-0"]
    with pytest.raises(mhttp.HttpError, match="not JSON"):
        mhttp.get(session, server.base_url + "zip-download/license-file/CC-0/")


def test_retry_policy_is_urllib3_retry() -> None:
    retry = mhttp.RetryPolicy(retries=4, backoff_seconds=1, max_backoff_seconds=5).retry()
    assert retry.total == 4 and retry.allowed_methods == frozenset({"GET"})
    assert set(retry.status_forcelist) == {429, 500, 502, 503, 504}
    assert retry.respect_retry_after_header and retry.retry_after_max == 5
    assert retry.backoff_max == 5 and retry.backoff_jitter == 1 and not retry.raise_on_status
    # Waits: the first retry at once, then doubling from backoff_seconds plus jitter, capped.
    delays = []
    for _ in range(4):
        retry = retry.increment("GET", "/u", error=u3.ProtocolError("dropped"))
        delays.append(retry.get_backoff_time())
    assert delays[0] == 0 and 1 <= delays[1] <= 2 and 2 <= delays[2] <= 3 and 4 <= delays[3] <= 5
    with pytest.raises(u3.MaxRetryError):
        retry.increment("GET", "/u", error=u3.ProtocolError("dropped"))


def test_retry_after_http_date_and_cap() -> None:
    retry = mhttp.RetryPolicy(max_backoff_seconds=60).retry()
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 7))
    assert 5 <= retry.parse_retry_after(date) <= 7
    assert retry.parse_retry_after("3") == 3
    assert mhttp.RetryPolicy(max_backoff_seconds=2).retry().parse_retry_after("3600") == 2
    with pytest.raises(u3.InvalidHeader):
        retry.parse_retry_after("soon")


def test_json_retries_honour_retry_after_and_are_tallied(server: FakeIsicServer) -> None:
    stats = mhttp.RetryStats()
    session = session_for(mhttp.RetryPolicy(retries=3, backoff_seconds=0.01, max_backoff_seconds=2), stats)
    server.inject("search", "429", retry_after="1")
    server.inject("search", "503")
    start = time.monotonic()
    page = mhttp.get(session, server.base_url + "images/search/")  # type: ignore[arg-type]
    assert time.monotonic() - start >= 0.9 and len(page["results"]) == 30
    assert stats.as_dict() == {"http_429": 1, "http_503": 1} and server.requests["search"] == 3


def test_unparsable_retry_after_falls_back_to_the_backoff(server: FakeIsicServer) -> None:
    session = session_for(mhttp.RetryPolicy(retries=1, backoff_seconds=0.01, max_backoff_seconds=0.05))
    server.inject("search", "503", retry_after="soon")
    assert len(mhttp.get(session, server.base_url + "images/search/")["results"]) == 30  # type: ignore[arg-type]


def test_retries_exhausted_say_how_often(server: FakeIsicServer) -> None:
    session = session_for(mhttp.RetryPolicy(retries=2, backoff_seconds=0.01, max_backoff_seconds=0.05))
    server.inject("size", "status", times=None, status=502)
    with pytest.raises(mhttp.HttpError, match=r"after 3 attempts: HTTP 502: fake 502") as info:
        mhttp.get(session, server.base_url + "images/search/size/")  # type: ignore[arg-type]
    assert info.value.status == 502 and info.value.attempts == 3 and server.requests["size"] == 3


def test_url_guard() -> None:
    guard = mhttp.UrlGuard(frozenset({"isic-archive.s3.amazonaws.com"}))
    assert guard("https://isic-archive.s3.amazonaws.com/images/ISIC_0000000.jpg") is None
    assert guard("https://ISIC-ARCHIVE.s3.amazonaws.com/images/a.jpg") is None
    assert "https only" in (guard("http://isic-archive.s3.amazonaws.com/a.jpg") or "")
    assert "not in the allowed hosts" in (guard("https://isic-archive.s3.amazonaws.com.evil.com/a") or "")
    assert guard("https://isic-archive.s3.amazonaws.com@evil.com/a.jpg") is not None
    assert guard("http://127.0.0.1:8000/a.jpg") is not None
    assert mhttp.UrlGuard(frozenset(), allow_loopback_http=True)("http://127.0.0.1:8000/a.jpg") is None


def test_download_to_retries_a_broken_body_atomically(server: FakeIsicServer, tmp_path: Path) -> None:
    isic_id = visible_ids(server)[0]
    body = server.by_id[isic_id].full
    server.inject(isic_id, "truncate")
    stats = mhttp.RetryStats()
    seen: list[int] = []
    dest = tmp_path / "x" / f"{isic_id}.jpg"
    result = mhttp.download_to(
        mhttp.make_session("t", accept="*/*"),
        f"{server.origin}/files/images/{isic_id}.jpg",
        dest,
        len(body),
        mhttp.RetryPolicy(retries=2, backoff_seconds=0.01),
        mhttp.UrlGuard(frozenset(), allow_loopback_http=True),
        stats=stats,
        on_bytes=seen.append,
    )
    assert result.ok and result.attempts == 2 and result.nbytes == len(body)
    assert dest.read_bytes() == body and list(mhttp.partial_files(dest.parent)) == []
    assert sum(seen) == len(body)  # bytes of a broken attempt (if any arrived) were taken back
    assert sum(stats.as_dict().values()) == 1
