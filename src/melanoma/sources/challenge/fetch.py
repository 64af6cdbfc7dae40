"""Fetch an ISIC challenge dataset from the public ISIC bucket (``ingest.challenge.download: true``).

1. List the bucket under ``prefix`` (``melanoma.sources.s3``: anonymous ListObjectsV2, every page).
2. Choose three objects by name (each overridable with the *file name* of the matching
   ``ingest.challenge`` setting; with a download those settings select, they do not place):

   * ground truth (``ground_truth``): a ``*GroundTruth*.csv|zip``, not a segmentation task
     (Part1/Part2, Task1/Task2), not duplicates/groupings; training before validation/test, CSV
     before zip, newest ``_vN``;
   * image archive (``images``, a ``.zip`` name or its stem): a zip of the same split
     (Training/Validation/Test) that is not ground truth, metadata or DICOM, sharing the longest
     name prefix with the ground truth (``ISIC2018_Task3_Training_Input.zip`` for
     ``ISIC2018_Task3_Training_GroundTruth.zip``);
   * metadata (``metadata_csv``): a ``*Metadata*.csv`` of the same split, if the bucket has one.

   A tie is a DataError listing the candidates, so nothing is guessed silently.
3. Download each (exact size, MD5 of single-part ETags, resumed if the body breaks); extract zips
   safely (absolute paths, ``..`` and links are rejected and reported; only ``ISIC_xxxxxxx``
   images and CSVs are kept) and delete the archive.

The cache is ``<raw_dir>/../challenge_cache/<bucket host>[/<bucket>]/<key>`` (``data/challenge_cache/``
for the pipeline, outside the DVC-tracked ``data/raw``): a zip extracts to the key without ``.zip``.
``.manifest.json`` there records each completed object's ETag and size, so a rerun downloads and
extracts nothing that is already complete, and fetches again what changed on the bucket. The
cache writes its own ``.gitignore`` (``*``) so that git never sees the downloads. The report says
what was fetched, never how (downloaded or cached) or how long it took: those go to the log, so
a rerun writes the same ingest report.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import stat
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from melanoma import atomic
from melanoma.config import ChallengeParams
from melanoma.errors import DataError
from melanoma.progress import Progress
from melanoma.raw_layout import IMAGE_SUFFIXES
from melanoma.sources.common.ids import isic_id_from_name
from melanoma.sources.common.items import Failure
from melanoma.sources.common.vocabulary import DATASET_SPLITS
from melanoma.sources.s3 import (
    BucketAddress,
    S3Object,
    download_object,
    file_md5,
    is_md5_etag,
    list_objects,
    make_client,
    parse_bucket_url,
)

log = logging.getLogger(__name__)

CACHE_DIR = "challenge_cache"
MANIFEST = ".manifest.json"
_SEGMENTATION = re.compile(r"part[12]|task[12]", re.IGNORECASE)


@dataclass
class Fetched:
    """Where the fetched challenge files are, plus the download report and its failures."""

    ground_truth: Path
    images: Path
    metadata_csv: Path | None
    report: dict[str, Any]
    failures: list[Failure] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- choosing


def _split_of(name: str) -> str | None:
    low = name.casefold()
    return next((s for s in DATASET_SPLITS if s in low), None)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.casefold(), b.casefold(), strict=False):
        if x != y:
            break
        n += 1
    return n


def _by_name(objects: list[S3Object], wanted: str, what: str, setting: str) -> S3Object:
    name = PurePosixPath(wanted.replace("\\", "/")).name
    for obj in objects:
        if obj.name == name or (obj.name.endswith(".zip") and obj.name[:-4] == name):
            return obj
    raise DataError(
        f"ingest.challenge.{setting} names {name!r} but the bucket has no such {what}; "
        f"objects there: {', '.join(sorted(o.name for o in objects)) or '(none)'}"
    )


def _best(candidates: list[S3Object], score: Any, what: str, setting: str) -> S3Object:
    if not candidates:
        raise DataError(f"the bucket prefix has no {what}; set ingest.challenge.{setting} to its file name")
    ranked = sorted(candidates, key=score, reverse=True)
    top = [o for o in ranked if score(o) == score(ranked[0])]
    if len(top) > 1:
        raise DataError(
            f"several {what}s fit equally well ({', '.join(o.name for o in top)}); "
            f"set ingest.challenge.{setting} to the file name of the one to use"
        )
    return ranked[0]


def _choose_ground_truth(files: list[S3Object], params: ChallengeParams) -> S3Object:
    if params.ground_truth:
        return _by_name(files, params.ground_truth, "ground-truth file", "ground_truth")
    gts = [
        o
        for o in files
        if "groundtruth" in o.name.casefold()
        and o.name.casefold().endswith((".csv", ".zip"))
        and not _SEGMENTATION.search(o.name)
        and not re.search(r"duplicate|grouping", o.name, re.IGNORECASE)
    ]

    def score(o: S3Object) -> tuple:
        version = re.search(r"_v(\d+)", o.name, re.IGNORECASE)
        split = _split_of(o.name)
        return (split == "training", split is not None, o.name.casefold().endswith(".csv"),
                int(version.group(1)) if version else 1)  # fmt: skip

    return _best(gts, score, "ground-truth file (*GroundTruth*.csv)", "ground_truth")


def choose_objects(
    objects: list[S3Object], params: ChallengeParams
) -> tuple[S3Object, S3Object, S3Object | None]:
    """(ground truth, image archive, metadata CSV or None) among the listed objects; see module doc."""
    files = [o for o in objects if not o.key.endswith("/")]
    gt = _choose_ground_truth(files, params)
    split = _split_of(gt.name)

    def pair_score(o: S3Object) -> int:
        return _common_prefix(o.name, gt.name)

    if params.images:
        archive = _by_name(files, params.images, "image archive", "images")
    else:
        zips = [
            o
            for o in files
            if o.name.casefold().endswith(".zip")
            and _split_of(o.name) == split
            and not re.search(r"groundtruth|metadata|dicom|superpixel", o.name, re.IGNORECASE)
        ]
        archive = _best(zips, pair_score, f"image archive (*{split or ''}*.zip)", "images")
    if not archive.name.casefold().endswith(".zip"):
        raise DataError(f"the image archive {archive.name} is not a .zip file")
    if params.metadata_csv:
        meta: S3Object | None = _by_name(files, params.metadata_csv, "metadata file", "metadata_csv")
    else:
        metas = [
            o
            for o in files
            if "metadata" in o.name.casefold()
            and o.name.casefold().endswith(".csv")
            and _split_of(o.name) == split
        ]
        meta = _best(metas, pair_score, "metadata CSV", "metadata_csv") if metas else None
    return gt, archive, meta


# ------------------------------------------------------------------------------------- zip handling


def unsafe_member_reason(name: str, info: zipfile.ZipInfo | None = None) -> str | None:
    """Why a zip member must not be extracted (absolute path, ``..``, a link), or None if it is safe."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute path"
    if any(part == ".." for part in norm.split("/")):
        return "path with '..'"
    if info is not None and stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def _wanted(rel: PurePosixPath, info: zipfile.ZipInfo, keep_csv: bool) -> bool:
    """Image files named by an ISIC id (and CSVs if asked), outside hidden and macOS folders."""
    suffix = rel.suffix.lower()
    wanted = (suffix in IMAGE_SUFFIXES and isic_id_from_name(rel.stem) is not None) or (
        keep_csv and suffix == ".csv"
    )
    return wanted and not info.is_dir() and not any(p.startswith(".") or p == "__MACOSX" for p in rel.parts)


def extract_zip(archive: Path, dest: Path, keep_csv: bool = False) -> tuple[int, list[Failure], int]:
    """Extract the wanted members of ``archive`` into ``dest``: (n extracted, rejected, n skipped).

    Each file is written atomically; members that could escape ``dest`` are rejected and never written.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    rejected: list[Failure] = []
    extracted = skipped = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in Progress(members, desc=f"extracting {archive.name}", unit="file"):
                why = unsafe_member_reason(info.filename, info)
                rel = PurePosixPath(info.filename.replace("\\", "/"))
                target = dest.joinpath(*rel.parts)
                if not why and not target.resolve().is_relative_to(
                    root
                ):  # belt and braces after the name check
                    why = "escapes"
                if why:
                    reason = f"unsafe zip member: {why}"
                    rejected.append({"file": archive.name, "member": info.filename, "reason": reason})
                    continue
                if not _wanted(rel, info, keep_csv):
                    skipped += 1
                    continue
                with atomic.atomic_path(target) as tmp, zf.open(info) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                extracted += 1
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{archive}: cannot extract: {exc}") from exc
    return extracted, rejected, skipped


# ------------------------------------------------------------------------------------------ the cache


def cache_root(raw_dir: Path, address: BucketAddress) -> Path:
    """``<raw_dir>/../challenge_cache/<bucket>``: beside raw, so replacing raw keeps the downloads."""
    return Path(raw_dir).resolve().parent / CACHE_DIR / address.cache_name


class Cache:
    """The cache folder and its manifest of completed objects (key -> ETag, size, what was made)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / MANIFEST
        # Downloads are not source: keep git (and tools that copy untracked files) away from them.
        top = _cache_top(root)
        if not (top / ".gitignore").exists():
            atomic.write_text(top / ".gitignore", "# downloaded ISIC challenge files (melanoma.sources)\n*\n")
        try:
            self.entries: dict[str, dict[str, Any]] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}

    def local_path(self, obj: S3Object) -> Path:
        why = unsafe_member_reason(obj.key)
        if why or not obj.key.strip("/"):
            raise DataError(f"refusing bucket key {obj.key!r}: {why or 'empty'}")
        return self.root.joinpath(*PurePosixPath(obj.key).parts)

    def complete(self, obj: S3Object) -> dict[str, Any] | None:
        entry = self.entries.get(obj.key)
        if entry and entry.get("etag") == obj.etag and entry.get("size") == obj.size:
            return entry
        return None

    def record(self, obj: S3Object, **extra: Any) -> None:
        self.entries[obj.key] = {"etag": obj.etag, "size": obj.size, **extra}
        atomic.write_json(self.path, self.entries)


def _cache_top(root: Path) -> Path:
    """The ``challenge_cache`` folder above a cache root."""
    return next(p for p in root.parents if p.name == CACHE_DIR)


def reusable(local: Path, obj: S3Object, known: bool) -> bool:
    """Whether a file already at ``local`` (left by a killed run, or put there by hand) is ``obj``.

    Not if the manifest knew another version of the key (same size is then no proof); else the
    size must match (isic-cli's resume rule) and, for a single-part ETag, the MD5 too.
    """
    if known or not local.is_file() or local.stat().st_size != obj.size:
        return False
    return not is_md5_etag(obj.etag) or file_md5(local) == obj.etag


# ------------------------------------------------------------------------------------------ fetching


@dataclass
class _Fetcher:
    """Fetches objects of one bucket into one cache; collects what the report says about them."""

    client: Any
    address: BucketAddress
    cache: Cache
    objects: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def fetch(self, obj: S3Object, extract: bool, keep_csv: bool = False) -> Path:
        """The local path of ``obj`` (the extracted folder for a zip), downloading only if needed."""
        local = self.cache.local_path(obj)
        out = local.with_suffix("") if extract else local
        entry = self.cache.complete(obj)
        if entry is not None and out.exists():
            self.failures.extend(entry.get("rejected", []))  # still true of the cached extraction
            self.objects.append({"key": obj.key, "size": obj.size, **_extraction(entry)})
            log.info("challenge bucket: %s is cached", obj.key)
            return out
        t0 = time.perf_counter()
        if reusable(local, obj, known=obj.key in self.cache.entries):
            action = "found complete"
        else:
            with Progress(total=obj.size, desc=obj.name, unit="B", unit_scale=True) as bar:
                download_object(self.client, self.address.bucket, obj, local, on_bytes=bar.update)
            action = "downloaded"
        extra: dict[str, Any] = {}
        if extract:
            extra = self._extract(local, out, keep_csv)
        self.cache.record(obj, **extra)
        self.objects.append({"key": obj.key, "size": obj.size, **_extraction(extra)})
        log.info("challenge bucket: %s %s in %.1f s", obj.key, action, time.perf_counter() - t0)
        return out

    def _extract(self, local: Path, out: Path, keep_csv: bool) -> dict[str, Any]:
        if out.exists():  # an older version of the archive: start clean
            shutil.rmtree(out)
        try:
            n, rejected, skipped = extract_zip(local, out, keep_csv)
        except DataError:
            local.unlink(missing_ok=True)  # a broken archive must be fetched again next time
            raise
        self.failures.extend(rejected)
        local.unlink()  # the extracted files are what the import links to; save the disk
        return {"extracted": n, "skipped_members": skipped, "rejected": rejected}


def _extraction(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("extracted", "skipped_members", "rejected") if k in entry}


def fetch_challenge(raw_dir: Path, params: ChallengeParams, page_size: int = 1000) -> Fetched:
    """List the bucket, download and extract what is missing from the cache; see the module doc."""
    if not params.prefix.strip("/"):
        raise DataError("ingest.challenge.prefix is empty: name the challenge folder, e.g. challenges/2020/")
    address = parse_bucket_url(params.bucket_url)
    root = cache_root(raw_dir, address)
    client = make_client(address)
    try:
        objects, pages = list_objects(client, address.bucket, params.prefix, page_size)
        log.info("challenge bucket: %d objects under %s (%d pages)", len(objects), params.prefix, pages)
        gt, archive, meta = choose_objects(objects, params)
        fetcher = _Fetcher(client, address, Cache(root))
        gt_local = fetcher.fetch(gt, extract=gt.name.casefold().endswith(".zip"), keep_csv=True)
        if gt_local.is_dir():
            csvs = sorted(gt_local.rglob("*.csv"))
            if len(csvs) != 1:
                raise DataError(f"{gt.name}: expected one ground-truth CSV inside, found {len(csvs)}")
            gt_local = csvs[0]
        images = fetcher.fetch(archive, extract=True)
        meta_local = None
        if meta is not None:
            try:
                meta_local = fetcher.fetch(meta, extract=False)
            except DataError as exc:  # the labels do not need it: report and go on
                fetcher.failures.append({"file": meta.name, "reason": f"metadata not downloaded: {exc}"})
    finally:
        client.close()
    report = {
        "bucket": address.bucket,
        "endpoint_url": address.endpoint_url,
        "prefix": params.prefix,
        "cache_dir": f"{CACHE_DIR}/{address.cache_name}",  # relative to the folder above raw_dir
        "n_listed": len(objects),
        "n_pages": pages,
        "ground_truth_key": gt.key,
        "image_archive_key": archive.key,
        "metadata_key": meta.key if meta else None,
        "objects": fetcher.objects,
    }
    return Fetched(gt_local, images, meta_local, report, fetcher.failures)
