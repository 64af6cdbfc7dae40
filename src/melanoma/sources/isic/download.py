"""The concurrent, resumable image downloader behind ``ingest.source: isic``.

Resume rule (isic-cli's): a file of exactly ``files.full.size`` bytes is complete and skipped; any
other file under that name is fetched again. Files only ever land complete (``http.download_to``
renames a finished temp file). Every job gets exactly one result back; nothing is dropped.

Workers are daemon threads on purpose: after Ctrl-C, a fatal answer or a full disk the caller sets
``cancel`` and returns at once, while a worker may still sit in a socket read for up to the read
timeout. ``concurrent.futures`` would join such threads (at ``shutdown`` and at interpreter exit),
which is what made Ctrl-C take the read timeout times the retries. Workers stop at the next chunk or
retry wait; their temp files are removed then, or by the next run.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melanoma import atomic
from melanoma.errors import DataError
from melanoma.progress import DEFAULT_INTERVAL, Progress
from melanoma.sources import http
from melanoma.sources.isic.client import IsicApi, fallback_license_text
from melanoma.sources.isic.plan import Job
from melanoma.sources.isic.threads import Workers, run_parallel

log = logging.getLogger(__name__)

SNAPSHOT_URL = "https://isic-archive.s3.us-east-1.amazonaws.com/snapshots/ISIC_images.zip"
SET_ASIDE_SUFFIX = ".set-aside"  # <raw>.set-aside/images/: files no longer in the listing


# ------------------------------------------------------------------------------------------------ disk


def visible_files(folder: Path) -> list[Path]:
    """Regular, non-hidden files in ``folder`` (what ``prepare`` would look at)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def gib(n: int) -> str:
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
            f"not enough disk space for the ISIC download: {n_images} images need {gib(needed)} "
            f"but only {gib(free + reclaim)} is available at {probe}. Free some space, or narrow "
            f"ingest.isic.query / collections / limit{hint}"
        )
    return free


class SetAside:
    """``<raw>.set-aside/images/``: images no longer in the listing, kept instead of deleted.

    A sibling of the raw folder, not inside it, so the raw folder is exactly what a fresh download
    of the listing would give (and hashes the same for DVC). A later listing that includes an
    image again moves it back without downloading it. To reclaim the space, delete the folder.
    """

    def __init__(self, raw_dir: Path) -> None:
        raw = Path(raw_dir).absolute()
        self.root = raw.with_name(raw.name + SET_ASIDE_SUFFIX)
        self.images = self.root / "images"

    def put(self, files: Iterable[Path]) -> int:
        """Move ``files`` here (same file system: a rename); return how many."""
        n = 0
        for p in files:
            if n == 0:
                self.images.mkdir(parents=True, exist_ok=True)
                # A sibling of data/raw would show up in `git status`; it ignores itself.
                atomic.write_text(self.root / ".gitignore", "# images set aside by melanoma ingest\n*\n")
            os.replace(p, self.images / p.name)
            n += 1
        return n

    def restorable(self, job: Job) -> bool:
        """True if a complete copy of ``job`` was set aside."""
        try:
            return (self.images / job.dest.name).stat().st_size == job.size
        except OSError:
            return False

    def take(self, job: Job) -> None:
        """Move the set-aside copy of ``job`` back into place."""
        job.dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.images / job.dest.name, job.dest)

    def size(self) -> int:
        return sum(p.stat().st_size for p in visible_files(self.images))


# ------------------------------------------------------------------------------------------ downloader


@dataclass
class Downloader:
    """Takes jobs page by page while the listing runs; downloads what is not complete yet.

    ``before_change`` runs once, before the first file in the folder changes (the caller drops the
    old metadata there, so a killed run leaves a folder that is visibly incomplete).
    """

    api: IsicApi
    concurrency: int
    images_dir: Path
    set_aside: SetAside
    before_change: Callable[[], None]
    total: int | None = None
    interval: float = DEFAULT_INTERVAL
    results: list[tuple[Job, http.DownloadResult]] = field(default_factory=list)
    n_skipped: int = 0
    n_restored: int = 0
    replaced: list[Job] = field(default_factory=list)
    todo_bytes: int = 0
    n_todo: int = 0
    disk_full: http.DiskFull | None = None
    unsubmitted: list[Job] = field(default_factory=list)  # left when the disk filled up
    first_submit: float | None = None  # perf_counter() of the first download (for the log)

    def __post_init__(self) -> None:
        self._changed = False
        self._pending: dict[Future[http.DownloadResult], Job] = {}
        self._workers = Workers(self.concurrency, "isic-dl")
        self._window = self.concurrency * 4  # bounded: the full archive has ~10^5-10^6 images
        self._free: int | None = None
        self._reclaim = 0
        self.images_bar: Progress[Any] = Progress(total=self.total, desc="ISIC images", unit="img",
                                                  interval=self.interval)  # fmt: skip
        self.bytes_bar: Progress[Any] = Progress(desc="ISIC bytes", unit="B", unit_scale=True,
                                                 interval=self.interval)  # fmt: skip

    def before_change_once(self) -> None:
        """Run ``before_change`` if no file has changed yet."""
        if not self._changed:
            self._changed = True
            self.before_change()

    def add(self, jobs: Sequence[Job]) -> None:
        """Skip complete jobs, restore set-aside ones, check the disk, download the rest."""
        todo = []
        for job in jobs:
            if job.complete():
                self.n_skipped += 1
                self.images_bar.update()
            elif self.set_aside.restorable(job):
                self.before_change_once()  # restoring changes the folder: the old metadata must go first
                self.set_aside.take(job)
                self.n_restored += 1
                self.images_bar.update()
            else:
                todo.append(job)
        if not todo:
            return
        replaced = [j for j in todo if j.dest.exists()]
        self._check_disk(todo, replaced)
        self.replaced += replaced
        self.before_change_once()
        if self.first_submit is None:
            self.first_submit = time.perf_counter()
        for i, job in enumerate(todo):
            while len(self._pending) >= self._window:
                self.collect(block=True)
            if self.disk_full is not None:
                self.unsubmitted += todo[i:]
                return
            self._pending[self._workers.submit(self._one, job)] = job

    def _check_disk(self, todo: Sequence[Job], replaced: Sequence[Job]) -> None:
        if self._free is None:
            self._free = check_disk_space(self.images_dir, 0, 0)
        self.n_todo += len(todo)
        self.todo_bytes += sum(j.size for j in todo)
        self._reclaim += sum(j.dest.stat().st_size for j in replaced)
        if self.todo_bytes > self._free + self._reclaim:
            check_disk_space(self.images_dir, self.todo_bytes, self.n_todo, self._reclaim)

    def _one(self, job: Job) -> http.DownloadResult:
        a = self.api
        return http.download_to(a.file_session, job.url, job.dest, job.size, a.policy, a.file_guard,
                                stats=a.stats, cancel=a.cancel, on_bytes=self.bytes_bar.update)  # fmt: skip

    def collect(self, block: bool) -> None:
        """Record finished downloads (waiting for at least one if ``block``)."""
        if not self._pending:
            return
        done, _ = wait(self._pending, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for fut in done:
            job = self._pending.pop(fut)
            try:
                result = fut.result()
            except http.DiskFull as exc:
                self._stop(exc)
                result = http.DownloadResult(job.url, job.dest, ok=False, reason=str(exc))
            except Exception as exc:  # a bug, not the network: still recorded, never dropped
                log.error("unexpected error downloading %s", job.url, exc_info=exc)
                result = http.DownloadResult(job.url, job.dest, ok=False, reason=f"unexpected error: {exc!r}")
            self.results.append((job, result))
            self.images_bar.update()

    def _stop(self, exc: http.DiskFull) -> None:
        if self.disk_full is None:
            self.disk_full = exc
            self.api.cancel.set()  # the other downloads stop at their next chunk

    def finish(self) -> list[tuple[Job, http.DownloadResult]]:
        """Wait for every submitted download; every job has its result afterwards."""
        while self._pending:
            self.collect(block=True)
        return self.results

    def close(self) -> None:
        self._workers.close()
        self.images_bar.close()
        self.bytes_bar.close()

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.api.cancel.set()  # abandon the rest; workers stop at their next chunk or wait
        self.close()


def license_texts(api: IsicApi, licenses: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Fetch each licence text side by side; on failure use a built-in text and say why (2nd dict)."""

    def fetch(lic: str) -> tuple[str | None, str | None]:
        try:
            return api.license_text(lic), None
        except DataError as exc:
            return None, str(exc)

    texts: dict[str, str] = {}
    fallbacks: dict[str, str] = {}
    fetched = run_parallel([lambda lic=lic: fetch(lic) for lic in licenses], "isic-lic", api.cancel)
    for lic, (text, error) in zip(licenses, fetched, strict=True):
        if text is None:
            log.warning("licence %s: using a built-in text, the archive's file failed: %s", lic, error)
            fallbacks[lic] = error or "unknown error"
            texts[lic] = fallback_license_text(lic, fallbacks[lic])
        else:
            texts[lic] = text
    return texts, fallbacks
