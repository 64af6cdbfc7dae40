"""``ingest.source: isic``: download images and metadata from the ISIC Archive API v2.

Writes the raw layout of ``melanoma.raw_layout`` (as ``isic image download`` does): ``images/``,
``metadata.csv``, ``attribution.txt``, ``licenses/``, ``ingest_report.json``. The package:

* ``client``  - the API: search and pagination, collections, licence files (isic_api.md §2-§4);
* ``plan``    - the listing is untrusted: ids, licences, URLs and sizes are checked before use;
* ``download``- the concurrent, resumable downloader; images no longer listed are set aside;
* ``threads`` - daemon workers, so Ctrl-C and fatal answers stop a run at once;
* this module - ``download_isic``: preflight, list while downloading, write the layout and report.

Compared with isic-cli (isic_api.md §4, §7) it checks free disk space first, collects every
download's result (an image that still fails after the retries is listed in
``report["failures"]``, never dropped), resumes (complete files are skipped; files only ever land
complete; leftovers of a killed run are removed), and never deletes an image that a narrower query
or limit no longer lists: it is moved to ``<raw>.set-aside/images/`` (delete that folder to reclaim
the space; a later listing that includes the image moves it back without a download).

``metadata.csv`` holds a row only for images complete on disk, so ``prepare`` never sees a row
without its file. ``ingest_report.json`` is a tracked output, so it holds only what the listing and
the folder determine; what this particular run did (downloaded, skipped, retried, how long) is
logged and returned, never written (``RUN_KEYS``), so a resumed run and a fresh one give the same bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from melanoma import atomic
from melanoma.config import IsicParams
from melanoma.errors import DataError
from melanoma.progress import DEFAULT_INTERVAL, Progress
from melanoma.raw_layout import IMAGES_DIR, INGEST_REPORT, LICENSES_DIR, METADATA_CSV, write_raw_metadata
from melanoma.sources import http
from melanoma.sources.isic.client import IsicApi, Preflight, collections_param, validate_query
from melanoma.sources.isic.download import (
    Downloader,
    SetAside,
    check_disk_space,
    gib,
    license_texts,
    visible_files,
)
from melanoma.sources.isic.plan import Job, Plan, failure, file_suffix, flatten_image

__all__ = ["RUN_KEYS", "IsicApi", "download_isic", "file_suffix", "validate_query"]

log = logging.getLogger(__name__)

# Returned by download_isic but not written to ingest_report.json: they describe this run, not the data.
RUN_KEYS = (
    "n_downloaded", "n_skipped_complete", "n_restored", "n_replaced_incomplete", "bytes_downloaded",
    "n_set_aside", "n_removed_partial", "retries", "concurrency", "seconds_listing", "seconds_download",
    "seconds",
)  # fmt: skip


def _policy(params: IsicParams) -> http.RetryPolicy:
    return http.RetryPolicy(
        retries=params.retries,
        backoff_seconds=params.backoff_seconds,
        max_backoff_seconds=params.max_backoff_seconds,
        connect_timeout=params.connect_timeout,
        read_timeout=params.read_timeout,
    )


def _remove_partials(raw_dir: Path) -> int:
    """Temp files of a killed run (images and atomic metadata writes) are never valid: drop them."""
    leftovers = [
        *http.partial_files(raw_dir / IMAGES_DIR),
        *http.partial_files(raw_dir),
        *http.partial_files(raw_dir / LICENSES_DIR),
    ]
    for p in leftovers:
        p.unlink(missing_ok=True)
    if leftovers:
        log.info("removed %d temporary file(s) left by an interrupted run", len(leftovers))
    return len(leftovers)


def _preflight(api: IsicApi, raw_dir: Path, params: IsicParams) -> Preflight:
    query, collections, limit = params.query, tuple(params.collections), params.limit
    pre = api.preflight(query, collections, limit)
    log.info("ISIC search %r collections=%s: server count %s", query, list(collections), pre.count)
    if limit == 0 and pre.size_bytes is not None:
        present = sum(p.stat().st_size for p in visible_files(raw_dir / IMAGES_DIR))
        whole = not query and not collections
        check_disk_space(raw_dir / IMAGES_DIR, pre.size_bytes - present, pre.count or 0, whole=whole)
    return pre


def _list_and_download(
    api: IsicApi, raw_dir: Path, params: IsicParams, pre: Preflight, dl: Downloader
) -> Plan:
    """Page through the listing, handing each page's jobs to the downloader as it arrives."""
    plan = Plan(raw_dir / IMAGES_DIR, api.file_guard)
    with Progress(total=dl.total, desc="ISIC listing", unit="img", interval=dl.interval) as listed:
        for page in api.iter_pages(params.query, tuple(params.collections), params.limit):
            listed.update(len(page))
            dl.add(plan.add(page))
            dl.collect(block=False)
            if dl.disk_full is not None:
                return plan  # no point listing on: nothing more can be written
    if plan.n_listed == 0:
        raise DataError(
            f"the ISIC search matched no images (query {params.query!r}, collections "
            f"{list(params.collections)}, server count {pre.count}); nothing was downloaded or changed "
            f"in {raw_dir}. Check ingest.isic.query (values are case-sensitive) and ingest.isic.collections"
        )
    if params.limit == 0 and pre.count is not None and pre.count != plan.n_listed:
        # Expected now and then: the count comes from the search index, the rows from the DB.
        log.warning("the server counted %d images but listed %d", pre.count, plan.n_listed)
    return plan


def _set_aside_stale(plan: Plan, dl: Downloader, set_aside: SetAside) -> int:
    """Move images the listing no longer has out of the raw folder (never delete them)."""
    wanted = {job.dest.name for job in plan.jobs.values()}
    stale = [p for p in visible_files(plan.images_dir) if p.name not in wanted]
    if not stale:
        return 0
    dl.before_change_once()
    n = set_aside.put(stale)
    log.warning(
        "%d image(s) in %s are not in the current listing: moved to %s (%s there in all), not deleted. "
        "They are out of metadata.csv; a later listing that includes them moves them back without a "
        "download. Delete that folder to reclaim the space.",
        n, plan.images_dir, set_aside.images, gib(set_aside.size()),
    )  # fmt: skip
    return n


def _outcome(
    plan: Plan, results: Sequence[tuple[Job, http.DownloadResult]], dl: Downloader
) -> tuple[list[dict], int, int]:
    """Add download failures to the plan's; return (failures, images downloaded, bytes downloaded)."""
    failures = list(plan.failures)
    n, nbytes = 0, 0
    for job, result in results:
        if result.ok:
            n, nbytes = n + 1, nbytes + result.nbytes
            continue
        failures.append(failure(job.isic_id, job.url, result.reason or "failed", result.attempts))
        if job.dest.exists() and not job.complete():
            job.dest.unlink()  # never leave a wrong-size file under a final name (e.g. from an older run)
    if dl.disk_full is not None:  # every job not tried is missing, and says why
        done = {job.isic_id for job, _ in results}
        stopped = f"not downloaded: stopped after the disk filled up ({dl.disk_full})"
        failures += [failure(j.isic_id, j.url, stopped) for j in dl.unsubmitted if j.isic_id not in done]
    failures.sort(key=lambda f: (str(f["isic_id"]), str(f["url"])))
    return failures, n, nbytes


def _data_report(base_url: str, params: IsicParams, pre: Preflight, plan: Plan, n_images: int,
                 failures: list[dict], fallbacks: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """What ingest_report.json holds: determined by the params, the listing and the folder alone."""
    return {
        "source": "isic",
        "base_url": base_url,
        "query": params.query,
        "collections": list(params.collections),
        "limit": params.limit,
        "count": pre.count,
        "size_bytes": pre.size_bytes,
        "n_listed": plan.n_listed,
        "n_duplicates_listed": plan.duplicates,
        "n_images": n_images,
        "n_failed": len(failures),
        "failures": failures,
        "license_fallbacks": fallbacks,
    }


def _write(raw_dir: Path, records: list[dict], texts: dict[str, str], report: dict[str, Any]) -> None:
    """Write metadata and the report; a full disk is a DataError that says what did land."""
    used = {str(r["copyright_license"]) for r in records if r.get("copyright_license")}
    try:
        write_raw_metadata(raw_dir, records, texts, {k: v for k, v in report.items() if k not in RUN_KEYS})
    except OSError as exc:
        # metadata.csv did not land, so prepare will refuse the folder; the report alone may still
        # fit (it is small) and says what did land.
        try:
            atomic.write_json(raw_dir / INGEST_REPORT, {k: v for k, v in report.items() if k not in RUN_KEYS})
            kept = f"; {INGEST_REPORT} lists the failures"
        except OSError:
            kept = ""
        raise DataError(
            f"cannot write the metadata of the ISIC download in {raw_dir}: {exc}. {len(records)} complete "
            f"images are on disk and kept{kept}; free some space (or fix the folder) and rerun to finish"
        ) from exc
    # Licence files of licences no longer present would make the folder disagree with the listing.
    for p in (raw_dir / LICENSES_DIR).glob("*.txt"):
        if p.stem not in used:
            p.unlink()


def download_isic(
    raw_dir: Path, params: IsicParams, *, progress_interval: float = DEFAULT_INTERVAL
) -> dict[str, Any]:
    """Download the images matching ``params`` into ``raw_dir``; return the report (+ ``RUN_KEYS``).

    Safe to rerun after a crash or kill: complete files are kept, everything else is re-fetched.
    Raises ConfigError/DataError for problems found before downloading (bad query, unknown
    collection, no match, listing errors after retries, not enough disk) and DataError for a full
    disk (after writing the report for what landed); per-image problems end up in
    ``report["failures"]`` (the caller decides whether that is fatal). ``progress_interval``:
    seconds between plain progress lines when stderr is not a terminal.
    """
    started = time.perf_counter()
    raw_dir = Path(raw_dir)
    validate_query(params.query)
    collections_param(tuple(params.collections))
    n_partial = _remove_partials(raw_dir)
    set_aside = SetAside(raw_dir)

    def drop_old_metadata() -> None:
        # From here on the folder changes: a killed run must leave it visibly incomplete,
        # not with a metadata.csv that lies.
        for name in (METADATA_CSV, INGEST_REPORT):
            (raw_dir / name).unlink(missing_ok=True)

    pool_size = max(params.concurrency, 4 + len(params.collections))
    with IsicApi(params.base_url, _policy(params), params.allowed_hosts, pool_size=pool_size) as api:
        pre = _preflight(api, raw_dir, params)
        total = pre.count if not params.limit else min(params.limit, pre.count or params.limit)
        with Downloader(api, params.concurrency, raw_dir / IMAGES_DIR, set_aside, drop_old_metadata,
                        total=total, interval=progress_interval) as dl:  # fmt: skip
            plan = _list_and_download(api, raw_dir, params, pre, dl)
            listed_at = time.perf_counter()
            n_aside = _set_aside_stale(plan, dl, set_aside) if dl.disk_full is None else 0
            results = dl.finish()
        download_seconds = time.perf_counter() - (dl.first_submit or listed_at)
        failures, n_downloaded, bytes_downloaded = _outcome(plan, results, dl)
        complete = [job for job in plan.sorted_jobs() if job.complete()]
        records = [flatten_image(plan.listed[job.isic_id]) for job in complete]
        used = sorted({str(r["copyright_license"]) for r in records if r.get("copyright_license")})
        texts, fallbacks = license_texts(api, used)

    report = _data_report(api.base_url, params, pre, plan, len(records), failures, fallbacks)
    report |= {  # RUN_KEYS: returned and logged, never written
        "n_downloaded": n_downloaded,
        "n_skipped_complete": dl.n_skipped,
        "n_restored": dl.n_restored,
        "n_replaced_incomplete": len(dl.replaced),
        "bytes_downloaded": bytes_downloaded,
        "n_set_aside": n_aside,
        "n_removed_partial": n_partial,
        "retries": api.stats.as_dict(),
        "concurrency": params.concurrency,
        "seconds_listing": round(listed_at - started, 3),
        "seconds_download": round(download_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }
    _write(raw_dir, records, texts, report)
    _log_summary(report)
    if dl.disk_full is not None:
        raise DataError(
            f"the disk filled up during the ISIC download into {raw_dir} ({dl.disk_full}). "
            f"{len(records)} complete images are kept and listed in {raw_dir / INGEST_REPORT} with "
            f"{len(failures)} failures; free some space and rerun to download the rest"
        )
    return report


def _log_summary(report: dict[str, Any]) -> None:
    seconds = report["seconds_download"]
    rate = f", {report['n_downloaded'] / seconds:.1f} img/s" if seconds > 0 and report["n_downloaded"] else ""
    log.info(
        "ISIC: %d images complete (%d downloaded, %d skipped, %d restored, %s), %d failed, retries %s; "
        "listing %.1fs, download %.1fs%s, total %.1fs",
        report["n_images"], report["n_downloaded"], report["n_skipped_complete"], report["n_restored"],
        gib(report["bytes_downloaded"]), report["n_failed"], report["retries"] or "none",
        report["seconds_listing"], seconds, rate, report["seconds"],
    )  # fmt: skip
