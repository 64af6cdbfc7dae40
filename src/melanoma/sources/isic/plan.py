"""From listed images to download jobs: the listing is untrusted, each entry is checked first.

``isic_id`` must look like ``ISIC_1234567`` before it becomes a file name, the licence a plain
token before it becomes ``licenses/<lic>.txt``, the file URL https on the allowed hosts with an
image suffix, the size a non-negative integer. A rejected entry becomes a failure with its reason,
never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from melanoma.raw_layout import IMAGE_SUFFIXES, ISIC_ID_RE

DEFAULT_SUFFIX = ".jpg"  # isic-cli's default when a file URL has no suffix
LICENSE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # becomes licenses/<lic>.txt


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


@dataclass(frozen=True)
class Job:
    """One image to have on disk: where from, where to, and the size that makes it complete."""

    isic_id: str
    url: str
    size: int
    dest: Path

    def complete(self) -> bool:
        """The resume rule of isic-cli: a file of exactly ``files.full.size`` bytes is complete."""
        try:
            return self.dest.stat().st_size == self.size
        except OSError:
            return False


def failure(isic_id: Any, url: Any, reason: str, attempts: int = 0) -> dict[str, Any]:
    """One entry of the report's ``failures`` list."""
    return {"isic_id": isic_id, "url": url, "reason": reason, "attempts": attempts}


def _check(
    image: Mapping[str, Any], file_guard: Callable[[str], str | None]
) -> tuple[str | None, int, str | None]:
    """(url, size, why not) for one listed image; ``why`` is None when it may be downloaded."""
    isic_id = image.get("isic_id")
    full = (image.get("files") or {}).get("full") or {}
    url = full.get("url") if isinstance(full, Mapping) else None
    size = full.get("size") if isinstance(full, Mapping) else None
    lic = image.get("copyright_license")
    if not isinstance(isic_id, str) or not ISIC_ID_RE.match(isic_id):
        return url, 0, f"invalid isic_id {isic_id!r} (not ISIC_ + 7 digits)"
    if lic is not None and (not isinstance(lic, str) or not LICENSE_RE.match(lic)):
        return url, 0, f"invalid copyright_license {lic!r}"
    if not isinstance(url, str):
        return url, 0, "no files.full.url in the listing"
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return url, 0, f"no valid files.full.size in the listing ({size!r})"
    if file_suffix(url) is None:
        return url, 0, "unsupported file type in URL (not an image suffix)"
    why = file_guard(url)
    return url, size, (f"file URL not allowed: {why}" if why else None)


@dataclass
class Plan:
    """The checked listing so far: jobs by id, the raw entries, rejected entries and duplicates."""

    images_dir: Path
    file_guard: Callable[[str], str | None]
    jobs: dict[str, Job] = field(default_factory=dict)
    listed: dict[str, dict] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    n_listed: int = 0
    duplicates: int = 0

    def add(self, images: Iterable[dict]) -> list[Job]:
        """Check a page of listed images; return the new jobs (duplicates and rejects excluded)."""
        new: list[Job] = []
        for image in images:
            self.n_listed += 1
            isic_id = image.get("isic_id")
            if isinstance(isic_id, str) and isic_id in self.jobs:
                self.duplicates += 1  # cursor pages can overlap when rows are added mid-listing
                continue
            url, size, why = _check(image, self.file_guard)
            if why is not None:
                self.failures.append(failure(isic_id, url, why))
                continue
            assert isinstance(isic_id, str) and url is not None
            job = Job(isic_id, url, size, self.images_dir / f"{isic_id}{file_suffix(url)}")
            self.jobs[isic_id] = job
            self.listed[isic_id] = image
            new.append(job)
        return new

    def sorted_jobs(self) -> list[Job]:
        return [self.jobs[k] for k in sorted(self.jobs)]
