"""Fetch an ISIC challenge dataset from the public ISIC bucket (``ingest.challenge.download: true``).

1. List ``{bucket_url}/?list-type=2&prefix=<prefix>`` (S3 ListObjectsV2; XML in the namespace
   ``http://s3.amazonaws.com/doc/2006-03-01/``, paged with ``continuation-token``), parsed with lxml.
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
3. Download each with ``melanoma.ingest.http.download_to`` (retries, atomic files, exact size) and
   check the MD5 of single-part ETags; extract zips safely (absolute paths, ``..`` and links are
   rejected and reported; only ``ISIC_xxxxxxx`` images and CSVs are kept) and delete the archive.

The cache is ``<raw_dir>/../challenge_cache/<bucket host>/<key>`` (``data/challenge_cache/`` for
the pipeline, outside the DVC-tracked ``data/raw``): a zip extracts to the key without ``.zip``.
``.manifest.json`` there records each completed object's ETag and size, so a rerun downloads and
extracts nothing that is already complete, and fetches again what changed on the bucket. The
cache writes its own ``.gitignore`` (``*``) so that git never sees the downloads.
"""

from __future__ import annotations

import hashlib
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
from urllib.parse import quote, urlsplit

from lxml import etree
from tqdm import tqdm

from melanoma import atomic
from melanoma.config import ChallengeParams
from melanoma.contracts import IMAGE_SUFFIXES
from melanoma.errors import DataError
from melanoma.ingest import http
from melanoma.ingest.folder import isic_id_from_name

log = logging.getLogger(__name__)

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
CACHE_DIR = "challenge_cache"
MANIFEST = ".manifest.json"
USER_AGENT = "melanoma-pipeline (challenge importer)"
_SPLITS = ("training", "validation", "test")
_SEGMENTATION = re.compile(r"part[12]|task[12]", re.IGNORECASE)
# Secure XML: no entities, no network (the listing comes from the network).
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


@dataclass(frozen=True)
class S3Object:
    """One ``Contents`` entry of a listing."""

    key: str
    size: int
    etag: str  # without quotes; a plain MD5 hex for single-part uploads, "<md5>-<parts>" otherwise

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name


@dataclass
class Fetched:
    """Where the fetched challenge files are, plus the download report and its failures."""

    ground_truth: Path
    images: Path
    metadata_csv: Path | None
    report: dict[str, Any]
    failures: list[dict] = field(default_factory=list)


# -------------------------------------------------------------------------------------------- listing


def parse_list_page(xml: bytes | str) -> tuple[list[S3Object], bool, str | None]:
    """(objects, is_truncated, next continuation token) of one ListObjectsV2 XML page."""
    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise DataError(f"bucket listing is not valid XML: {exc}") from exc
    ns = etree.QName(root).namespace
    # Real S3 uses the 2006-03-01 namespace; some S3-compatible servers send none.
    nsmap = {"s3": ns} if ns else {}
    p = "s3:" if ns else ""
    if etree.QName(root).localname != "ListBucketResult":
        code = root.findtext(f"{p}Code", namespaces=nsmap) or etree.QName(root).localname
        raise DataError(
            f"bucket listing failed: {code}: {root.findtext(f'{p}Message', namespaces=nsmap) or ''}"
        )
    if ns and ns != S3_NS:
        log.warning("bucket listing uses namespace %s, expected %s", ns, S3_NS)
    objects = []
    for node in root.iterfind(f"{p}Contents", namespaces=nsmap):
        key = node.findtext(f"{p}Key", namespaces=nsmap)
        size = node.findtext(f"{p}Size", namespaces=nsmap)
        if not key or size is None:
            raise DataError("bucket listing has a Contents entry without Key or Size")
        etag = (node.findtext(f"{p}ETag", namespaces=nsmap) or "").strip().strip('"')
        objects.append(S3Object(key=key, size=int(size), etag=etag))
    truncated = (root.findtext(f"{p}IsTruncated", namespaces=nsmap) or "false").strip().lower() == "true"
    token = root.findtext(f"{p}NextContinuationToken", namespaces=nsmap)
    return objects, truncated, token


def list_bucket(
    session: Any,
    bucket_url: str,
    prefix: str,
    policy: http.RetryPolicy,
    guard: http.UrlGuard,
    max_keys: int = 1000,
) -> tuple[list[S3Object], int]:
    """All objects under ``prefix`` (following continuation tokens) and the number of pages read."""
    objects: list[S3Object] = []
    token: str | None = None
    seen_tokens: set[str] = set()
    pages = 0
    while True:
        params = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys)}
        if token:
            params["continuation-token"] = token
        try:
            text = http.get_text(session, bucket_url.rstrip("/") + "/", params, policy, url_guard=guard)
        except http.HttpError as exc:
            raise DataError(
                f"cannot list {bucket_url} (prefix {prefix!r}): {exc.message}. If the bucket does not allow "
                "listing, download the files by hand and import them with download: false"
            ) from exc
        page, truncated, token = parse_list_page(text)
        objects.extend(page)
        pages += 1
        if not truncated:
            return objects, pages
        if not token or token in seen_tokens:  # a server bug must not make us loop forever
            raise DataError(
                f"bucket listing of {bucket_url} is truncated but gives no new continuation token"
            )
        seen_tokens.add(token)


# ---------------------------------------------------------------------------------------- choosing


def _split_of(name: str) -> str | None:
    low = name.casefold()
    return next((s for s in _SPLITS if s in low), None)


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


def choose_objects(
    objects: list[S3Object], params: ChallengeParams
) -> tuple[S3Object, S3Object, S3Object | None]:
    """(ground truth, image archive, metadata CSV or None) among the listed objects; see module doc."""
    files = [o for o in objects if not o.key.endswith("/")]
    if params.ground_truth:
        gt = _by_name(files, params.ground_truth, "ground-truth file", "ground_truth")
    else:
        gts = [
            o
            for o in files
            if "groundtruth" in o.name.casefold()
            and o.name.casefold().endswith((".csv", ".zip"))
            and not _SEGMENTATION.search(o.name)
            and not re.search(r"duplicate|grouping", o.name, re.IGNORECASE)
        ]

        def gt_score(o: S3Object) -> tuple:
            version = re.search(r"_v(\d+)", o.name, re.IGNORECASE)
            split = _split_of(o.name)
            return (split == "training", split is not None, o.name.casefold().endswith(".csv"),
                    int(version.group(1)) if version else 1)  # fmt: skip

        gt = _best(gts, gt_score, "ground-truth file (*GroundTruth*.csv)", "ground_truth")
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


def extract_zip(archive: Path, dest: Path, keep_csv: bool = False) -> tuple[int, list[dict], int]:
    """Extract the wanted members of ``archive`` into ``dest``: (n extracted, rejected, n skipped).

    Wanted: image files whose stem carries an ISIC id (plus CSV files when ``keep_csv``). Each file
    is written atomically; members that could escape ``dest`` are rejected and never written.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    rejected: list[dict] = []
    extracted = skipped = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in tqdm(
                members, desc=f"extracting {archive.name}", unit="file", leave=False, mininterval=1.0
            ):
                why = unsafe_member_reason(info.filename, info)
                if why:
                    rejected.append(
                        {"file": archive.name, "member": info.filename, "reason": f"unsafe zip member: {why}"}
                    )
                    continue
                rel = PurePosixPath(info.filename.replace("\\", "/"))
                suffix = rel.suffix.lower()
                wanted = (suffix in IMAGE_SUFFIXES and isic_id_from_name(rel.stem) is not None) or (
                    keep_csv and suffix == ".csv"
                )
                if (
                    info.is_dir()
                    or not wanted
                    or any(p.startswith(".") or p == "__MACOSX" for p in rel.parts)
                ):
                    skipped += 1
                    continue
                target = dest.joinpath(*rel.parts)
                if not target.resolve().is_relative_to(root):  # belt and braces after the name check
                    rejected.append(
                        {
                            "file": archive.name,
                            "member": info.filename,
                            "reason": "unsafe zip member: escapes",
                        }
                    )
                    continue
                with atomic.atomic_path(target) as tmp, zf.open(info) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                extracted += 1
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{archive}: cannot extract: {exc}") from exc
    return extracted, rejected, skipped


# ------------------------------------------------------------------------------------------ fetching


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _reusable(local: Path, obj: S3Object, known: bool) -> bool:
    """Whether a file already at ``local`` (left by a killed run, or put there by hand) is ``obj``.

    Not if the manifest knew another version of the key (same size is then no proof); else the
    size must match (isic-cli's resume rule) and, for a single-part ETag, the MD5 too.
    """
    if known or not local.is_file() or local.stat().st_size != obj.size:
        return False
    return not re.fullmatch(r"[0-9a-f]{32}", obj.etag) or _md5(local) == obj.etag


def cache_root(raw_dir: Path, bucket_url: str) -> Path:
    """``<raw_dir>/../challenge_cache/<bucket host>``: beside raw, so replacing raw keeps the downloads."""
    host = (urlsplit(bucket_url).netloc or "bucket").replace(":", "_")
    return Path(raw_dir).resolve().parent / CACHE_DIR / host


class _Cache:
    """The cache folder and its manifest of completed objects (key -> ETag, size, what was made)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / MANIFEST
        # Downloads are not source: keep git (and tools that copy untracked files) away from them.
        ignore = root.parent / ".gitignore"
        if not ignore.exists():
            atomic.write_text(ignore, "# downloaded ISIC challenge files (melanoma.ingest.s3list)\n*\n")
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


def _download(session: Any, url: str, obj: S3Object, dest: Path, policy: http.RetryPolicy,
              guard: http.UrlGuard, stats: http.RetryStats) -> None:  # fmt: skip
    """Download one object to ``dest`` (exact size, MD5 when the ETag is one); DataError if it fails."""
    with tqdm(total=obj.size, desc=obj.name, unit="B", unit_scale=True, leave=False, mininterval=1.0) as bar:
        result = http.download_to(
            session, url, dest, obj.size, policy, guard, stats=stats, on_bytes=bar.update
        )
    if not result.ok:
        raise DataError(f"download of {url} failed after {result.attempts} attempt(s): {result.reason}")
    # A single-part S3 ETag is the MD5 of the body: a free end-to-end check.
    if re.fullmatch(r"[0-9a-f]{32}", obj.etag) and _md5(dest) != obj.etag:
        dest.unlink(missing_ok=True)
        raise DataError(
            f"download of {url}: MD5 differs from the bucket's ETag {obj.etag}; rerun to fetch it again"
        )


def fetch_challenge(raw_dir: Path, params: ChallengeParams, max_keys: int = 1000) -> Fetched:
    """List the bucket, download and extract what is missing from the cache; see the module doc."""
    start = time.perf_counter()
    if not params.prefix.strip("/"):
        raise DataError("ingest.challenge.prefix is empty: name the challenge folder, e.g. challenges/2020/")
    bucket_url = params.bucket_url.rstrip("/")
    host = urlsplit(bucket_url).hostname or ""
    guard = http.UrlGuard(frozenset({host}), allow_loopback_http=http.is_loopback_http(bucket_url))
    if why := guard.check(bucket_url + "/"):
        raise DataError(f"ingest.challenge.bucket_url: {why}")
    policy = http.RetryPolicy()
    stats = http.RetryStats()
    session = http.make_session(USER_AGENT, pool_size=2, accept="*/*")
    cache = _Cache(cache_root(raw_dir, bucket_url))
    try:
        objects, pages = list_bucket(session, bucket_url, params.prefix, policy, guard, max_keys)
        log.info("challenge bucket: %d objects under %s (%d pages)", len(objects), params.prefix, pages)
        gt, archive, meta = choose_objects(objects, params)
        done: list[dict[str, Any]] = []
        failures: list[dict] = []

        def fetch(obj: S3Object, extract: bool, keep_csv: bool = False) -> Path:
            local = cache.local_path(obj)
            url = f"{bucket_url}/{quote(obj.key, safe='/')}"
            out = local.with_suffix("") if extract else local
            entry = cache.complete(obj)
            if entry is not None and out.exists():
                failures.extend(entry.get("rejected", []))  # still true of the cached extraction
                done.append({"key": obj.key, "size": obj.size, "action": "cached"})
                return out
            t0 = time.perf_counter()
            if _reusable(local, obj, known=obj.key in cache.entries):
                action = "found"
            else:
                _download(session, url, obj, local, policy, guard, stats)
                action = "downloaded"
            extra: dict[str, Any] = {}
            if extract:
                if out.exists():  # an older version of the archive: start clean
                    shutil.rmtree(out)
                try:
                    n, rejected, skipped = extract_zip(local, out, keep_csv)
                except DataError:
                    local.unlink(missing_ok=True)  # a broken archive must be fetched again next time
                    raise
                failures.extend(rejected)
                extra = {"extracted": n, "skipped_members": skipped, "rejected": rejected}
                local.unlink()  # the extracted files are what the import links to; save the disk
            cache.record(obj, **extra)
            done.append({"key": obj.key, "size": obj.size, "action": action,
                         "seconds": round(time.perf_counter() - t0, 3), **extra})  # fmt: skip
            return out

        gt_local = fetch(gt, extract=gt.name.casefold().endswith(".zip"), keep_csv=True)
        if gt_local.is_dir():
            csvs = sorted(gt_local.rglob("*.csv"))
            if len(csvs) != 1:
                raise DataError(f"{gt.name}: expected one ground-truth CSV inside, found {len(csvs)}")
            gt_local = csvs[0]
        images = fetch(archive, extract=True)
        meta_local = None
        if meta is not None:
            try:
                meta_local = fetch(meta, extract=False)
            except DataError as exc:  # the labels do not need it: report and go on
                failures.append({"file": meta.name, "reason": f"metadata not downloaded: {exc}"})
    finally:
        session.close()
    report = {
        "bucket_url": bucket_url,
        "prefix": params.prefix,
        "cache_dir": str(cache.root),
        "n_listed": len(objects),
        "n_pages": pages,
        "ground_truth_key": gt.key,
        "image_archive_key": archive.key,
        "metadata_key": meta.key if meta else None,
        "objects": done,
        "retries": stats.as_dict(),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return Fetched(
        ground_truth=gt_local, images=images, metadata_csv=meta_local, report=report, failures=failures
    )
