"""The ISIC Archive API v2 client and the ``ingest.source: isic`` downloader.

Writes the same raw layout as ``isic image download`` (and the synthetic source): ``images/``,
``metadata.csv``, ``attribution.txt``, ``licenses/``, plus ``ingest_report.json``. Compared with
isic-cli (shared/reference/isic_api.md §4, §7) it:

* passes ``query``/``collections`` as request params (never spliced into the URL) and follows
  ``next`` verbatim; rejects legacy ``diagnosis:`` queries and pre-checks collections like isic-cli;
* checks free disk space against the archive's own size figure before downloading anything;
* collects every download's result: an image that still fails after the retries of
  ``melanoma.sources.http`` is listed (with its reason) in ``report["failures"]``, never dropped;
* resumes: complete files (``st_size == files.full.size``) are skipped, others re-fetched; files
  are only ever renamed into place when complete; leftovers of a killed run are cleaned up, and
  images no longer in the listing are removed so ``images/`` mirrors the query;
* treats the listing as untrusted: ``isic_id`` must look like ``ISIC_1234567`` before it becomes a
  file name, file URLs must be https on ``allowed_hosts``, redirects are checked before following.

``metadata.csv`` holds a row only for images that are complete on disk, so ``prepare`` never sees a
row without its file; labels are derived later (``melanoma.labels``), every field is kept as given.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests
from tqdm import tqdm

from melanoma import __version__
from melanoma.config import IsicParams
from melanoma.contracts import (
    IMAGE_SUFFIXES,
    IMAGES_DIR,
    INGEST_REPORT,
    ISIC_ID_RE,
    LICENSES_DIR,
    METADATA_CSV,
    write_raw_metadata,
)
from melanoma.errors import ConfigError, DataError
from melanoma.sources.http import (
    DownloadResult,
    HttpError,
    RetryPolicy,
    RetryStats,
    UrlGuard,
    download_to,
    get_json,
    get_text,
    is_loopback_http,
    make_session,
    partial_files,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # the server's maximum page size
DEFAULT_SUFFIX = ".jpg"  # isic-cli's default when a file URL has no suffix
LICENSE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # becomes licenses/<lic>.txt
SNAPSHOT_URL = "https://isic-archive.s3.us-east-1.amazonaws.com/snapshots/ISIC_images.zip"
LICENSE_URLS = {
    "CC-0": "https://creativecommons.org/publicdomain/zero/1.0/legalcode",
    "CC-BY": "https://creativecommons.org/licenses/by/4.0/legalcode",
    "CC-BY-NC": "https://creativecommons.org/licenses/by-nc/4.0/legalcode",
}
# 'diagnosis:' as a field name (not diagnosis_1: ...), as isic-cli rejects it since 2025-04.
_LEGACY_DX_RE = re.compile(r"(?<![A-Za-z0-9_])diagnosis\s*:")


# ------------------------------------------------------------------------------------------ validation


def validate_query(query: str) -> None:
    """Reject queries the server would answer with a parse error we can explain better here."""
    if _LEGACY_DX_RE.search(query):
        raise ConfigError(
            f"ingest.isic.query {query!r} uses the retired field 'diagnosis:'; the archive now uses the "
            "hierarchical diagnosis_1 .. diagnosis_5, e.g. diagnosis_3:Melanoma* or "
            'diagnosis_2:"Malignant melanocytic proliferations (Melanoma)"'
        )


def collections_param(collections: Sequence[int]) -> str:
    """The comma-separated ``collections`` parameter (empty string for none)."""
    for cid in collections:
        if isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
            raise ConfigError(f"ingest.isic.collections must be non-negative integers, got {cid!r}")
    return ",".join(str(c) for c in collections)


def normalise_base_url(base_url: str) -> str:
    """``base_url`` with a trailing slash; https only, except http on loopback (local test servers)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"ingest.isic.base_url must be an http(s) URL, got {base_url!r}")
    if parts.scheme == "http" and not is_loopback_http(base_url):
        raise ConfigError(f"ingest.isic.base_url must use https (http only on 127.0.0.1), got {base_url!r}")
    return base_url if base_url.endswith("/") else base_url + "/"


def file_suffix(url: str) -> str | None:
    """The file extension from the URL path, lower-cased; ``.jpg`` if none; None if not an image type."""
    suffix = PurePosixPath(unquote(urlsplit(url).path)).suffix.lower()
    if not suffix:
        return DEFAULT_SUFFIX
    return suffix if suffix in IMAGE_SUFFIXES else None


def flatten_image(image: Mapping[str, Any]) -> dict[str, Any]:
    """One metadata.csv row as isic-cli builds it: acquisition + clinical keys, then the first three."""
    row: dict[str, Any] = {}
    metadata = image.get("metadata") or {}
    if isinstance(metadata, Mapping):
        for section in ("acquisition", "clinical"):
            values = metadata.get(section) or {}
            if isinstance(values, Mapping):
                row.update(values)
    row["isic_id"] = image.get("isic_id")
    row["attribution"] = image.get("attribution")
    row["copyright_license"] = image.get("copyright_license")
    return row


# ---------------------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Preflight:
    """What the server says before anything is downloaded."""

    count: int | None  # first page's count (Elasticsearch; may differ slightly from the rows)
    size_bytes: int | None  # sum of full-file sizes of the whole matching set (only when limit == 0)


class IsicApi:
    """A client for the anonymous parts of the ISIC Archive API v2 (search, collections, licences).

    All calls go through ``melanoma.sources.http`` (retries, guarded redirects); ``stats`` tallies the
    retries. Use as a context manager, or call ``close``.
    """

    def __init__(
        self,
        base_url: str,
        policy: RetryPolicy | None = None,
        allowed_hosts: Sequence[str] = (),
        *,
        pool_size: int = 16,
        session: requests.Session | None = None,
        stats: RetryStats | None = None,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.policy = policy or RetryPolicy()
        self.stats = stats or RetryStats()
        loopback = is_loopback_http(self.base_url)
        api_host = urlsplit(self.base_url).hostname or ""
        # API links (``next``) may point at the API host itself; files only at the allowed hosts.
        self.api_guard = UrlGuard(frozenset(allowed_hosts) | {api_host}, allow_loopback_http=loopback)
        self.file_guard = UrlGuard(frozenset(allowed_hosts), allow_loopback_http=loopback)
        self._own_session = session is None
        self.session = session or make_session(f"melanoma/{__version__}", pool_size=pool_size)

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> IsicApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        """An absolute API URL for ``path`` (relative to ``/api/v2/``)."""
        return urljoin(self.base_url, path)

    def get_json(self, url: str, params: Mapping[str, Any] | None = None) -> Any:
        return get_json(self.session, url, params, self.policy, url_guard=self.api_guard, stats=self.stats)

    @staticmethod
    def search_params(query: str, collections: Sequence[int], limit: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if query:
            params["query"] = query
        if collections:
            params["collections"] = collections_param(collections)
        if limit:
            params["limit"] = min(limit, PAGE_SIZE)
        return params

    def _search(self, url: str, params: Mapping[str, Any] | None, query: str) -> Any:
        try:
            return self.get_json(url, params)
        except HttpError as exc:
            hint = ""
            if exc.status == 400:
                hint = (
                    " - check ingest.isic.query: field:value terms on current fields (diagnosis_1..5, "
                    'anatom_site_1..5, age_approx, ...), "double quotes" around values with spaces, '
                    "uppercase AND/OR, values are case-sensitive"
                )
            raise DataError(f"ISIC image search (query {query!r}) failed: {exc}{hint}") from None

    def collection(self, collection_id: int) -> dict[str, Any]:
        """``collections/{id}/``; a clear DataError when it does not exist or is private (404)."""
        url = self.url(f"collections/{int(collection_id)}/")
        try:
            return self.get_json(url)
        except HttpError as exc:
            if exc.status == 404:
                raise DataError(
                    f"ISIC collection {collection_id} does not exist or is not public (GET {url} -> 404); "
                    f"check ingest.isic.collections (the public ones are listed at {self.url('collections/')})"
                ) from None
            raise

    def count(self, query: str = "", collections: Sequence[int] = ()) -> int | None:
        """The server's count of matching images (first page of a ``limit=1`` search)."""
        params = self.search_params(query, collections)
        params["limit"] = 1
        page = self._search(self.url("images/search/"), params, query)
        count = page.get("count") if isinstance(page, dict) else None
        return count if isinstance(count, int) and not isinstance(count, bool) else None

    def total_size(self, query: str = "", collections: Sequence[int] = ()) -> int | None:
        """Sum of the full files' sizes of the matching images (``images/search/size/``)."""
        body = self._search(self.url("images/search/size/"), self.search_params(query, collections), query)
        size = body.get("size") if isinstance(body, dict) else None
        return size if isinstance(size, int) and not isinstance(size, bool) else None

    def preflight(self, query: str = "", collections: Sequence[int] = (), limit: int = 0) -> Preflight:
        """Validate the query, pre-check collections, get count and (for limit 0) the total size."""
        validate_query(query)
        collections_param(collections)
        # Independent requests: run them side by side (each costs a round trip).
        with ThreadPoolExecutor(max_workers=2 + len(collections), thread_name_prefix="isic-pre") as pool:
            checks = [pool.submit(self.collection, cid) for cid in collections]
            count = pool.submit(self.count, query, collections)
            size = pool.submit(self.total_size, query, collections) if limit == 0 else None
            for check in checks:
                check.result()
            return Preflight(count=count.result(), size_bytes=size.result() if size else None)

    def iter_images(self, query: str = "", collections: Sequence[int] = (), limit: int = 0) -> Iterator[dict]:
        """Yield ``ImageOut`` dicts of the search, following ``next`` verbatim; ``limit`` 0 = all.

        ``count`` is only present on the first page; it is not used to decide when to stop.
        """
        validate_query(query)
        params: Mapping[str, Any] | None = self.search_params(query, collections, limit)
        url: str | None = self.url("images/search/")
        seen: set[str] = set()
        n = 0
        while url is not None:
            page = self._search(url, params, query)
            params = None  # ``next`` carries every parameter already
            results = page.get("results") if isinstance(page, dict) else None
            if not isinstance(results, list):
                raise DataError(f"ISIC image search: unexpected response from {url}: no 'results' list")
            for item in results:
                if not isinstance(item, dict):
                    raise DataError(f"ISIC image search: unexpected result item {item!r:.100}")
                yield item
                n += 1
                if limit and n >= limit:
                    return
            nxt = page.get("next")
            if nxt is not None and (not isinstance(nxt, str) or nxt in seen):
                raise DataError(f"ISIC image search: bad or repeated 'next' link {nxt!r}")
            if nxt is not None:
                seen.add(nxt)
            url = nxt

    def license_text(self, license_name: str) -> str:
        """The licence text served at ``zip-download/license-file/<lic>/``."""
        url = self.url(f"zip-download/license-file/{quote(license_name, safe='')}/")
        return get_text(self.session, url, None, self.policy, url_guard=self.api_guard, stats=self.stats)


# -------------------------------------------------------------------------------------------- download


@dataclass(frozen=True)
class _Job:
    isic_id: str
    url: str
    size: int
    dest: Path

    def complete(self) -> bool:
        try:
            return self.dest.stat().st_size == self.size
        except OSError:
            return False


def _failure(isic_id: Any, url: Any, reason: str, attempts: int = 0) -> dict[str, Any]:
    return {"isic_id": isic_id, "url": url, "reason": reason, "attempts": attempts}


def _plan(
    listed: list[dict], images_dir: Path, file_guard: UrlGuard
) -> tuple[list[_Job], dict[str, dict], list[dict], int]:
    """Validate each listed image; return (jobs, raw image by id, failures, duplicates)."""
    jobs: list[_Job] = []
    by_id: dict[str, dict] = {}
    failures: list[dict] = []
    duplicates = 0
    for image in listed:
        isic_id = image.get("isic_id")
        full = (image.get("files") or {}).get("full") or {}
        url = full.get("url") if isinstance(full, Mapping) else None
        size = full.get("size") if isinstance(full, Mapping) else None
        if not isinstance(isic_id, str) or not ISIC_ID_RE.match(isic_id):
            failures.append(_failure(isic_id, url, f"invalid isic_id {isic_id!r} (not ISIC_ + 7 digits)"))
            continue
        if isic_id in by_id:
            duplicates += 1  # cursor pages can overlap when rows are added mid-listing
            continue
        lic = image.get("copyright_license")
        if lic is not None and (not isinstance(lic, str) or not LICENSE_RE.match(lic)):
            failures.append(_failure(isic_id, url, f"invalid copyright_license {lic!r}"))
            continue
        if not isinstance(url, str):
            failures.append(_failure(isic_id, url, "no files.full.url in the listing"))
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            failures.append(_failure(isic_id, url, f"no valid files.full.size in the listing ({size!r})"))
            continue
        suffix = file_suffix(url)
        if suffix is None:
            failures.append(_failure(isic_id, url, "unsupported file type in URL (not an image suffix)"))
            continue
        why = file_guard(url)
        if why:
            failures.append(_failure(isic_id, url, f"file URL not allowed: {why}"))
            continue
        by_id[isic_id] = image
        jobs.append(_Job(isic_id, url, size, images_dir / f"{isic_id}{suffix}"))
    jobs.sort(key=lambda j: j.isic_id)
    return jobs, by_id, failures, duplicates


def _visible_files(folder: Path) -> list[Path]:
    """Regular, non-hidden files in ``folder`` (what ``prepare`` would look at)."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_disk_space(folder: Path, needed: int, n_images: int, reclaim: int = 0, whole: bool = False) -> int:
    """Raise DataError if ``needed`` bytes will not fit (free + ``reclaim``); return the free bytes."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free + reclaim:
        hint = f"; the whole archive is also published as one zip: {SNAPSHOT_URL}" if whole else ""
        raise DataError(
            f"not enough disk space for the ISIC download: {n_images} images need {_gib(needed)} "
            f"but only {_gib(free + reclaim)} is available at {probe}. Free some space, or narrow "
            f"ingest.isic.query / collections / limit{hint}"
        )
    return free


def fallback_license_text(license_name: str, reason: str) -> str:
    """A short stand-in when the archive's licence file cannot be fetched (the report says so)."""
    url = LICENSE_URLS.get(license_name, "https://creativecommons.org/licenses/")
    return (
        f"{license_name}\n\nThe images listed with copyright_license {license_name} in metadata.csv are "
        f"licensed under {license_name}: {url}\n(The ISIC Archive's licence file could not be fetched: "
        f"{reason})\n"
    )


def _download_all(
    api: IsicApi,
    jobs: list[_Job],
    concurrency: int,
    images_bar: tqdm,
    bytes_bar: tqdm,
) -> list[tuple[_Job, DownloadResult]]:
    """Download ``jobs`` with ``concurrency`` threads; every job gets exactly one result back."""
    cancel = threading.Event()
    bar_lock = threading.Lock()

    def on_bytes(n: int) -> None:
        with bar_lock:
            bytes_bar.update(n)

    def one(job: _Job) -> DownloadResult:
        return download_to(
            api.session,
            job.url,
            job.dest,
            job.size,
            api.policy,
            api.file_guard,
            stats=api.stats,
            cancel=cancel,
            on_bytes=on_bytes,
        )

    results: list[tuple[_Job, DownloadResult]] = []
    pending: dict[Future[DownloadResult], _Job] = {}
    queue = iter(jobs)
    # A bounded window of submitted futures: the full archive has ~10^5-10^6 images.
    window = concurrency * 4
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="isic-dl")
    try:
        while True:
            while len(pending) < window and (job := next(queue, None)) is not None:
                pending[pool.submit(one, job)] = job
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job = pending.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:  # a bug, not the network: still recorded, never dropped
                    log.exception("unexpected error downloading %s", job.url)
                    result = DownloadResult(job.url, job.dest, ok=False, reason=f"unexpected error: {exc!r}")
                results.append((job, result))
                images_bar.update()
    except BaseException:
        cancel.set()  # workers stop between chunks and during backoff; their temp files are removed
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def download_isic(raw_dir: Path, params: IsicParams) -> dict[str, Any]:
    """Download the images matching ``params`` into ``raw_dir``; return the report.

    Safe to rerun after a crash or kill: complete files are kept, everything else is re-fetched.
    Raises ConfigError/DataError for problems found before downloading (bad query, unknown
    collection, listing errors after retries, not enough disk); per-image problems end up in
    ``report["failures"]`` (the caller decides whether that is fatal).
    """
    started = time.perf_counter()
    raw_dir = Path(raw_dir)
    images_dir = raw_dir / IMAGES_DIR
    query, collections, limit = params.query, tuple(params.collections), params.limit
    validate_query(query)
    collections_param(collections)
    policy = RetryPolicy(
        retries=params.retries,
        backoff_seconds=params.backoff_seconds,
        max_backoff_seconds=params.max_backoff_seconds,
        connect_timeout=params.connect_timeout,
        read_timeout=params.read_timeout,
    )
    images_dir.mkdir(parents=True, exist_ok=True)
    # Temp files of a killed run (images and atomic metadata writes) are never valid: drop them.
    leftovers = [*partial_files(images_dir), *partial_files(raw_dir), *partial_files(raw_dir / LICENSES_DIR)]
    for p in leftovers:
        p.unlink(missing_ok=True)
    if leftovers:
        log.info("removed %d temporary file(s) left by an interrupted run", len(leftovers))

    # The pool also serves the preflight and licence requests, which run a few at a time.
    pool_size = max(params.concurrency, 4 + len(collections))
    with IsicApi(params.base_url, policy, params.allowed_hosts, pool_size=pool_size) as api:
        pre = api.preflight(query, collections, limit)
        log.info("ISIC search %r collections=%s: server count %s", query, list(collections), pre.count)
        if limit == 0 and pre.size_bytes is not None:
            present = sum(p.stat().st_size for p in _visible_files(images_dir))
            n = pre.count or 0
            check_disk_space(images_dir, pre.size_bytes - present, n, whole=not query and not collections)

        listed = list(api.iter_images(query, collections, limit))
        listing_seconds = time.perf_counter() - started
        if limit == 0 and pre.count is not None and pre.count != len(listed):
            # Expected now and then: the count comes from the search index, the rows from the DB.
            log.warning("the server counted %d images but listed %d", pre.count, len(listed))
        jobs, by_id, failures, duplicates = _plan(listed, images_dir, api.file_guard)

        wanted = {job.dest.name for job in jobs}
        stale = [p for p in _visible_files(images_dir) if p.name not in wanted]
        todo = [job for job in jobs if not job.complete()]
        replaced = [job for job in todo if job.dest.exists()]
        reclaim = sum(p.stat().st_size for p in stale) + sum(j.dest.stat().st_size for j in replaced)
        check_disk_space(images_dir, sum(j.size for j in todo), len(todo), reclaim)

        # From here on the folder changes: drop the old metadata/report first, so a killed run
        # leaves a folder that is visibly incomplete rather than a metadata.csv that lies.
        for name in (METADATA_CSV, INGEST_REPORT):
            (raw_dir / name).unlink(missing_ok=True)
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            log.info("removed %d image file(s) not in the listing", len(stale))

        n_skipped = len(jobs) - len(todo)
        log.info(
            "%d images listed: %d already complete, %d to download (%s), %d rejected",
            len(listed),
            n_skipped,
            len(todo),
            _gib(sum(j.size for j in todo)),
            len(failures),
        )
        download_started = time.perf_counter()
        images_bar = tqdm(total=len(jobs), initial=n_skipped, desc="ISIC images", unit="img", leave=False)
        bytes_bar = tqdm(
            total=sum(j.size for j in todo),
            desc="ISIC bytes",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            leave=False,
        )
        try:
            results = _download_all(api, todo, params.concurrency, images_bar, bytes_bar)
        finally:
            images_bar.close()
            bytes_bar.close()
        download_seconds = time.perf_counter() - download_started

        n_downloaded = 0
        bytes_downloaded = 0
        for job, result in results:
            if result.ok:
                n_downloaded += 1
                bytes_downloaded += result.nbytes
            else:
                failures.append(_failure(job.isic_id, job.url, result.reason or "failed", result.attempts))
                # Never leave a wrong-size file under a final name (e.g. from an older run).
                if job.dest.exists() and not job.complete():
                    job.dest.unlink()

        complete = [job for job in jobs if job.complete()]
        records = [flatten_image(by_id[job.isic_id]) for job in complete]
        used = sorted({str(r["copyright_license"]) for r in records if r.get("copyright_license")})
        texts, fallbacks = _license_texts(api, used)

    failures.sort(key=lambda f: (str(f["isic_id"]), str(f["url"])))
    report: dict[str, Any] = {
        "source": "isic",
        "base_url": api.base_url,
        "query": query,
        "collections": list(collections),
        "limit": limit,
        "count": pre.count,
        "size_bytes": pre.size_bytes,
        "n_listed": len(listed),
        "n_duplicates_listed": duplicates,
        "n_images": len(records),
        "n_downloaded": n_downloaded,
        "n_skipped_complete": n_skipped,
        "n_replaced_incomplete": len(replaced),
        "bytes_downloaded": bytes_downloaded,
        "n_removed_stale": len(stale),
        "n_removed_partial": len(leftovers),
        "n_failed": len(failures),
        "failures": failures,
        "retries": api.stats.as_dict(),
        "license_fallbacks": fallbacks,
        "concurrency": params.concurrency,
        "seconds_listing": round(listing_seconds, 3),
        "seconds_download": round(download_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_raw_metadata(raw_dir, records, texts, report)
    # Licence files of licences no longer present would make the folder disagree with the listing.
    for p in (raw_dir / LICENSES_DIR).glob("*.txt"):
        if p.stem not in used:
            p.unlink()
    log.info(
        "ISIC: %d images complete (%d downloaded, %d skipped, %s), %d failed, retries %s",
        len(records),
        n_downloaded,
        n_skipped,
        _gib(bytes_downloaded),
        len(failures),
        report["retries"] or "none",
    )
    return report


def _license_texts(api: IsicApi, licenses: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Fetch each licence text; on failure use a short built-in text and say why (second dict)."""
    texts: dict[str, str] = {}
    fallbacks: dict[str, str] = {}

    def fetch(lic: str) -> tuple[str, str | None, str | None]:
        try:
            return lic, api.license_text(lic), None
        except DataError as exc:
            return lic, None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, min(4, len(licenses))), thread_name_prefix="isic-lic") as pool:
        for lic, text, error in pool.map(fetch, licenses):
            if text is None:
                log.warning("licence %s: using a built-in text, the archive's file failed: %s", lic, error)
                fallbacks[lic] = error or "unknown error"
                texts[lic] = fallback_license_text(lic, error or "unknown error")
            else:
                texts[lic] = text
    return texts, fallbacks
