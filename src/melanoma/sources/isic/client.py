"""The ISIC Archive API v2 client: search, pagination, collections, licence files (isic_api.md §2-§4).

Query and collections go as request params (never spliced into a URL) and ``next`` is followed
verbatim; the retired ``diagnosis:`` field is refused before any request, as isic-cli does. Every
call goes through ``melanoma.sources.http``: urllib3 retries on the API session, guarded redirects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from melanoma import __version__
from melanoma.config.ingest import query_problem
from melanoma.errors import ConfigError, DataError
from melanoma.sources import http
from melanoma.sources.isic.threads import run_parallel
from melanoma.urls import url_problem

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # the server's maximum page size
LICENSE_URLS = {
    "CC-0": "https://creativecommons.org/publicdomain/zero/1.0/legalcode",
    "CC-BY": "https://creativecommons.org/licenses/by/4.0/legalcode",
    "CC-BY-NC": "https://creativecommons.org/licenses/by-nc/4.0/legalcode",
}
QUERY_HINT = (
    " - check ingest.isic.query: field:value terms on current fields (diagnosis_1..5, "
    'anatom_site_1..5, age_approx, ...), "double quotes" around values with spaces, '
    "uppercase AND/OR, values are case-sensitive"
)


def validate_query(query: str) -> None:
    """Reject queries the server would answer with a parse error we can explain better here."""
    if why := query_problem(query):
        raise ConfigError(f"ingest.isic.query {query!r} {why}")


def collections_param(collections: Sequence[int]) -> str:
    """The comma-separated ``collections`` parameter (empty string for none)."""
    for cid in collections:
        if isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
            raise ConfigError(f"ingest.isic.collections must be non-negative integers, got {cid!r}")
    return ",".join(str(c) for c in collections)


def normalise_base_url(base_url: str) -> str:
    """``base_url`` with a trailing slash; https only, except http on loopback (local test servers)."""
    if why := url_problem(base_url):
        raise ConfigError(f"ingest.isic.base_url {base_url!r}: {why}")
    return base_url if base_url.endswith("/") else base_url + "/"


def search_params(query: str, collections: Sequence[int], limit: int = 0) -> dict[str, Any]:
    """The ``images/search/`` params of a query (``limit`` is the page size, at most 100)."""
    params: dict[str, Any] = {}
    if query:
        params["query"] = query
    if collections:
        params["collections"] = collections_param(collections)
    if limit:
        params["limit"] = min(limit, PAGE_SIZE)
    return params


def fallback_license_text(license_name: str, reason: str) -> str:
    """A short stand-in when the archive's licence file cannot be fetched (the report says so)."""
    url = LICENSE_URLS.get(license_name, "https://creativecommons.org/licenses/")
    return (
        f"{license_name}\n\nThe images listed with copyright_license {license_name} in metadata.csv are "
        f"licensed under {license_name}: {url}\n(The ISIC Archive's licence file could not be fetched: "
        f"{reason})\n"
    )


@dataclass(frozen=True)
class Preflight:
    """What the server says before anything is downloaded."""

    count: int | None  # first page's count (Elasticsearch; may differ slightly from the rows)
    size_bytes: int | None  # sum of full-file sizes of the whole matching set (only when limit == 0)


def _int_field(body: Any, key: str) -> int | None:
    value = body.get(key) if isinstance(body, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class IsicApi:
    """A client for the anonymous parts of the ISIC Archive API v2 (search, collections, licences).

    Two sessions: ``session`` for API calls, with urllib3 retries mounted; ``file_session`` for
    image files, without, because ``http.download_to`` drives its own retries (a body can break
    mid-way). ``stats`` tallies the retries of both; ``cancel``, once set, cuts every retry wait
    short. Use as a context manager, or call ``close``.
    """

    def __init__(
        self,
        base_url: str,
        policy: http.RetryPolicy | None = None,
        allowed_hosts: Sequence[str] = (),
        *,
        pool_size: int = 16,
        stats: http.RetryStats | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.policy = policy or http.RetryPolicy()
        self.stats = stats or http.RetryStats()
        self.cancel = cancel or threading.Event()
        loopback = http.is_loopback_http(self.base_url)
        api_host = urlsplit(self.base_url).hostname or ""
        # API links (``next``) may point at the API host itself; files only at the allowed hosts.
        self.api_guard = http.UrlGuard(frozenset(allowed_hosts) | {api_host}, allow_loopback_http=loopback)
        self.file_guard = http.UrlGuard(frozenset(allowed_hosts), allow_loopback_http=loopback)
        agent = f"melanoma/{__version__}"
        retry = self.policy.retry(self.stats, self.cancel)
        self.session = http.make_session(agent, pool_size=min(pool_size, 8), retry=retry)
        self.file_session = http.make_session(agent, pool_size=pool_size, accept="*/*")

    def close(self) -> None:
        self.session.close()
        self.file_session.close()

    def __enter__(self) -> IsicApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        """An absolute API URL for ``path`` (relative to ``/api/v2/``)."""
        return urljoin(self.base_url, path)

    def get(self, url: str, params: Mapping[str, Any] | None = None, decode: str = "json") -> Any:
        """One API GET with retries (``http.get``), only to the API host and the allowed hosts."""
        return http.get(self.session, url, params, self.policy, decode=decode, url_guard=self.api_guard)  # type: ignore[arg-type]

    def _search(self, url: str, params: Mapping[str, Any] | None, query: str) -> Any:
        try:
            return self.get(url, params)
        except http.HttpError as exc:
            hint = QUERY_HINT if exc.status == 400 else ""
            raise DataError(f"ISIC image search (query {query!r}) failed: {exc}{hint}") from None

    def collection(self, collection_id: int) -> dict[str, Any]:
        """``collections/{id}/``; a clear DataError when it does not exist or is private (404)."""
        url = self.url(f"collections/{int(collection_id)}/")
        try:
            return self.get(url)
        except http.HttpError as exc:
            if exc.status == 404:
                raise DataError(
                    f"ISIC collection {collection_id} does not exist or is not public (GET {url} -> 404); "
                    f"check ingest.isic.collections (the public ones are listed at {self.url('collections/')})"
                ) from None
            raise

    def count(self, query: str = "", collections: Sequence[int] = ()) -> int | None:
        """The server's count of matching images (first page of a ``limit=1`` search)."""
        params = {**search_params(query, collections), "limit": 1}
        return _int_field(self._search(self.url("images/search/"), params, query), "count")

    def total_size(self, query: str = "", collections: Sequence[int] = ()) -> int | None:
        """Sum of the full files' sizes of the matching images (``images/search/size/``)."""
        body = self._search(self.url("images/search/size/"), search_params(query, collections), query)
        return _int_field(body, "size")

    def preflight(self, query: str = "", collections: Sequence[int] = (), limit: int = 0) -> Preflight:
        """Validate, pre-check collections, get count and (for limit 0) total size, side by side.

        The first fatal answer (a 400, an unknown collection) is raised at once; the other requests
        are abandoned, not waited for (``cancel`` cuts their retries short).
        """
        validate_query(query)
        collections_param(collections)
        calls: list[Callable[[], Any]] = [lambda: self.count(query, collections)]
        if limit == 0:
            calls.append(lambda: self.total_size(query, collections))
        calls += [lambda cid=cid: self.collection(cid) for cid in collections]
        count, *rest = run_parallel(calls, "isic-pre", self.cancel)
        return Preflight(count=count, size_bytes=rest[0] if limit == 0 else None)

    def iter_pages(
        self, query: str = "", collections: Sequence[int] = (), limit: int = 0
    ) -> Iterator[list[dict]]:
        """Yield each page of ``ImageOut`` dicts, following ``next`` verbatim; ``limit`` 0 = all.

        ``count`` is only present on the first page; it is not used to decide when to stop.
        """
        validate_query(query)
        params: Mapping[str, Any] | None = search_params(query, collections, limit)
        url: str | None = self.url("images/search/")
        seen: set[str] = set()
        left = limit or None
        while url is not None and left != 0:
            page = self._search(url, params, query)
            params = None  # ``next`` carries every parameter already
            results = page.get("results") if isinstance(page, dict) else None
            if not isinstance(results, list):
                raise DataError(f"ISIC image search: unexpected response from {url}: no 'results' list")
            bad = next((item for item in results if not isinstance(item, dict)), None)
            if bad is not None:
                raise DataError(f"ISIC image search: unexpected result item {bad!r:.100}")
            if left is not None:
                results, left = results[:left], max(0, left - len(results))
            yield results
            nxt = page.get("next")
            if nxt is not None and (not isinstance(nxt, str) or nxt in seen):
                raise DataError(f"ISIC image search: bad or repeated 'next' link {nxt!r}")
            if nxt is not None:
                seen.add(nxt)
            url = nxt

    def iter_images(self, query: str = "", collections: Sequence[int] = (), limit: int = 0) -> Iterator[dict]:
        """Yield the ``ImageOut`` dicts of the search, one by one (see ``iter_pages``)."""
        for page in self.iter_pages(query, collections, limit):
            yield from page

    def license_text(self, license_name: str) -> str:
        """The licence text served at ``zip-download/license-file/<lic>/``."""
        return self.get(self.url(f"zip-download/license-file/{quote(license_name, safe='')}/"), decode="text")
