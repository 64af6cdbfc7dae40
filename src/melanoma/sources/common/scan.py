"""Finding a source folder's image files, and reading each once (hash + readability check)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from melanoma.progress import Progress
from melanoma.raw_layout import IMAGE_SUFFIXES
from melanoma.sources.common.items import Failure, ImportItem


@dataclass
class Scan:
    """The files below a source folder."""

    images: list[tuple[str, Path]]  # (relative posix path, path), sorted
    sidecars: dict[str, Path]  # relative path without suffix -> a .json next to an image
    failures: list[Failure]  # folders that could not be listed
    n_ignored: int  # other files (not hidden)


def scan_images(root: Path) -> Scan:
    """All image files below ``root``, sidecar JSONs, listing failures and the count of other files.

    Symlinked folders are followed (once each). Hidden files and folders (``.x``, ``__MACOSX``)
    are skipped; other non-image files are counted as ignored.
    """
    scan = Scan([], {}, [], 0)
    seen_dirs: set[str] = set()

    def on_error(exc: OSError) -> None:
        rel = os.path.relpath(exc.filename, root) if exc.filename else "?"
        scan.failures.append(
            {"path": Path(rel).as_posix(), "reason": f"cannot list folder: {exc.strerror or exc}"}
        )

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(n for n in filenames if not n.startswith(".")):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                scan.images.append((rel, path))
            elif suffix == ".json":
                scan.sidecars[rel[: -len(path.suffix)]] = path
            else:
                scan.n_ignored += 1
    scan.images.sort()
    return scan


def hash_file(path: Path) -> tuple[str, int]:
    """(sha1, size) of a file; reading it all is also the readability check."""
    digest = hashlib.sha1()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _try_hash(path: Path) -> tuple[str, int] | OSError:
    try:
        return hash_file(path)
    except OSError as exc:
        return exc


def hash_items(
    items: list[ImportItem], failures: list[Failure], desc: str
) -> tuple[list[ImportItem], dict[str, str]]:
    """Read every file once (readability check + sha1); unreadable or empty files become failures.

    Threads, because the work is file I/O and hashlib releases the GIL on large buffers.
    """
    good: list[ImportItem] = []
    hashes: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(_try_hash, [it.path for it in items])
        bar = Progress(results, total=len(items), desc=desc, unit="img")
        for item, res in zip(items, bar, strict=True):
            if isinstance(res, OSError):
                reason = f"unreadable file: {res.strerror or res}"
                failures.append({**item.where, "path": item.rel, "reason": reason})
            elif res[1] == 0:
                failures.append({**item.where, "path": item.rel, "reason": "empty file (0 bytes)"})
            else:
                hashes[item.rel] = res[0]
                good.append(item)
    return good, hashes
