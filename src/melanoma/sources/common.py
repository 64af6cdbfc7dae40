"""What the local sources share: the vocabularies, id rules, CSV reading, file scanning and the
import pipeline that turns found files into the raw layout of ``melanoma.contracts``.

Vocabularies live here once: class folder names (``CLASS_FOLDERS``), anatomic sites
(``SITE_MAP``, ``ANATOM_SITES_1``), licences (``CC_LICENSES``), the split words of ISIC dataset
file names (``DATASET_SPLITS``). Image suffixes are a raw-layout rule: ``contracts.IMAGE_SUFFIXES``.

The import pipeline (folder and challenge): a source builds ``ImportItem``s, then
``hash_items`` (readability check + SHA-1) -> ``assign_ids`` (real ISIC ids kept, the others from
the reserved range) -> ``write_items`` (link or copy into ``images/``, one metadata record each).
Problems never raise: they become ``failures`` entries (with the CSV row where there is one).

Longer than ~400 lines on purpose: it is the one shared home of the sources (issue 7), made of
independent sections of short functions plus ~100 lines of vocabulary tables; splitting it would
spread the vocabularies again.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melanoma import atomic
from melanoma.contracts import IMAGE_SUFFIXES, IMAGES_DIR
from melanoma.errors import DataError
from melanoma.labels import derive_label
from melanoma.progress import Progress

# ---------------------------------------------------------------------------------- vocabularies

# Class folder / class column names (normalised, see ``normalise_class``) ->
# (benign_malignant or None, legacy ISIC diagnosis or None).
CLASS_FOLDERS: dict[str, tuple[str | None, str | None]] = {
    "benign": ("benign", None),
    "0": ("benign", None),
    "malignant": ("malignant", None),
    "1": ("malignant", None),
    "melanoma": ("malignant", "melanoma"),
    "mel": ("malignant", "melanoma"),
    "nevus": ("benign", "nevus"),
    "nevi": ("benign", "nevus"),
    "nv": ("benign", "nevus"),
    "bcc": ("malignant", "basal cell carcinoma"),
    "basal cell carcinoma": ("malignant", "basal cell carcinoma"),
    "scc": ("malignant", "squamous cell carcinoma"),
    "squamous cell carcinoma": ("malignant", "squamous cell carcinoma"),
    "bkl": ("benign", "pigmented benign keratosis"),
    "pigmented benign keratosis": ("benign", "pigmented benign keratosis"),
    "sk": ("benign", "seborrheic keratosis"),
    "seborrheic keratosis": ("benign", "seborrheic keratosis"),
    "df": ("benign", "dermatofibroma"),
    "dermatofibroma": ("benign", "dermatofibroma"),
    "vasc": ("benign", "vascular lesion"),
    "vascular lesion": ("benign", "vascular lesion"),
    # Actinic keratosis (AKIEC includes Bowen's disease) is neither clearly benign nor malignant in
    # ISIC's legacy data; the diagnosis alone already makes it "not melanoma".
    "akiec": (None, "actinic keratosis"),
    "ak": (None, "actinic keratosis"),
    "actinic keratosis": (None, "actinic keratosis"),
}
# The 2019 challenge's UNK class: "unknown" decides nothing in labels.py, so such a row stays
# unlabeled. Not a class folder name: a folder called "unk" is more likely a mistake.
UNKNOWN_CLASS: tuple[str | None, str | None] = (None, "unknown")

# ISIC ``anatom_site_1`` values (current era), in the order the synthetic sample draws them.
ANATOM_SITES_1 = ("Trunk", "Lower extremity", "Upper extremity", "Head and neck")
# HAM10000 localization / 2020 challenge sites -> ISIC ``anatom_site_general``.
SITE_MAP = {
    "scalp": "head/neck",
    "ear": "head/neck",
    "face": "head/neck",
    "neck": "head/neck",
    "back": "posterior torso",
    "chest": "anterior torso",
    "abdomen": "anterior torso",
    "trunk": "torso",
    "hand": "upper extremity",
    "foot": "lower extremity",
    "acral": "palms/soles",
    "genital": "oral/genital",
    "unknown": "",
}

# The licences of ISIC images: id -> (name, deed URL).
CC_LICENSES: dict[str, tuple[str, str]] = {
    "CC-0": ("CC0 1.0 Universal (CC0 1.0) Public Domain Dedication", "https://creativecommons.org/publicdomain/zero/1.0/"),
    "CC-BY": ("Creative Commons Attribution 4.0 International (CC BY 4.0)", "https://creativecommons.org/licenses/by/4.0/"),
    "CC-BY-NC": ("Creative Commons Attribution-NonCommercial 4.0 International (CC BY-NC 4.0)",
                 "https://creativecommons.org/licenses/by-nc/4.0/"),
}  # fmt: skip
UNKNOWN_LICENSE = "unknown"
CUSTOM_LICENSE = "custom"

# The split words in ISIC dataset file names (challenge archives on the bucket).
DATASET_SPLITS = ("training", "validation", "test")

# ------------------------------------------------------------------------------------- ids, names

# An ISIC id in a file name; the 2019 challenge names some files ISIC_xxxxxxx_downsampled.
ID_IN_NAME_RE = re.compile(r"^isic_(\d{7})(?:_downsampled)?$", re.IGNORECASE)
# Ids given to images that have none: a range no real ISIC image uses (yet).
ASSIGNED_ID_START = 9_000_000
ASSIGNED_ID_END = 9_999_999


def isic_id_from_name(name: str) -> str | None:
    """``ISIC_1234567`` from a stem like ``isic_1234567`` or ``ISIC_1234567_downsampled``, else None."""
    m = ID_IN_NAME_RE.match(name.strip())
    return f"ISIC_{m.group(1)}" if m else None


def normalise_class(name: str) -> str:
    """Case-folded name with ``_``/``-`` as spaces, for the class vocabulary."""
    return " ".join(re.split(r"[\s_\-]+", name.strip().casefold())).strip()


def label_fields(label: tuple[str | None, str | None]) -> dict[str, str]:
    """The ``benign_malignant`` / ``diagnosis`` fields of a class vocabulary entry."""
    bm, dx = label
    return {**({"benign_malignant": bm} if bm else {}), **({"diagnosis": dx} if dx else {})}


def site_general(value: str) -> str:
    """ISIC ``anatom_site_general`` for a HAM10000/2020 site name (unchanged if already ISIC's)."""
    low = value.strip().casefold()
    return SITE_MAP.get(low, low)


# ------------------------------------------------------------------------------------- licences


def license_text(lic: str, source: str = "") -> str:
    """A short licenses/<lic>.txt for a Creative Commons licence or the ``unknown`` licence."""
    if lic in CC_LICENSES:
        name, url = CC_LICENSES[lic]
        where = f" ({source})" if source else ""
        return f"{lic}: {name}\n{url}\n\nThe images{where} are released under the licence named above.\n"
    if lic == UNKNOWN_LICENSE:
        return (
            "unknown: the distributor of these images did not state a licence.\n\n"
            "Images that come from the ISIC Archive are licensed per image (CC-0, CC-BY or CC-BY-NC); "
            "find out the licence of the original source before any use beyond research and testing.\n"
        )
    return f"{lic}: a licence named by the source's metadata; its text was not supplied with the images.\n"


def safe_license_id(value: str) -> str:
    """A licence id usable as ``licenses/<id>.txt`` (the value comes from untrusted metadata)."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", value.strip()).strip(".-")
    return cleaned or CUSTOM_LICENSE


def license_texts_for(
    records: Iterable[Mapping[str, Any]],
    known: Mapping[str, str],
    source: str = "",
    search: Path | None = None,
) -> dict[str, str]:
    """A text for every licence the records use: ``known``, then ``search/licenses/<lic>.txt``, then built in."""
    out: dict[str, str] = {}
    for lic in sorted({str(r["copyright_license"]) for r in records if r.get("copyright_license")}):
        if lic in known:
            out[lic] = known[lic]
            continue
        candidate = search / "licenses" / f"{lic}.txt" if search else None
        try:
            if candidate is not None and candidate.is_file():
                out[lic] = candidate.read_text(encoding="utf-8", errors="replace")
                continue
        except OSError:
            pass
        out[lic] = license_text(lic, source)
    return out


# ------------------------------------------------------------------------------------ CSV reading

Failure = dict[str, Any]  # one entry of report["failures"]: where (file, row, path, ...) and reason


def read_csv_table(path: Path, has_header: bool = True) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, cells)]) of a CSV; cells stripped, blank lines skipped.

    Line numbers count from 1 with the header as line 1, so they match what an editor shows.
    Raises DataError if the file is missing or cannot be read as CSV text.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    rows: list[tuple[int, list[str]]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            for cells in reader:
                if any(c.strip() for c in cells):
                    rows.append((reader.line_num, [c.strip() for c in cells]))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV file: {exc}") from exc
    if not has_header:
        return [], rows
    if not rows:
        raise DataError(f"{path}: the CSV file is empty (no header)")
    return rows[0][1], rows[1:]


def csv_rows(
    name: str, n_columns: int, rows: Iterable[tuple[int, list[str]]], failures: list[Failure]
) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """The CSV row loop: (where, cells) of each row with ``n_columns`` cells; others become failures.

    ``where`` ({"file", "row"}) is what every failure of that row starts with.
    """
    for line, cells in rows:
        where = {"file": name, "row": line}
        if len(cells) != n_columns:
            failures.append({**where, "reason": f"has {len(cells)} fields, the header has {n_columns}"})
            continue
        yield where, cells


def first_column(lower: Sequence[str], candidates: Sequence[str]) -> int | None:
    """Index of the first of ``candidates`` among the (case-folded) column names, or None."""
    return next((lower.index(c) for c in candidates if c in lower), None)


def parse_flag(value: str) -> int:
    """0 or 1 from ``0``, ``1``, ``0.0``, ``1.0``, ``true``, ``false``; ValueError otherwise."""
    text = value.strip().casefold()
    if text in ("true", "yes"):
        return 1
    if text in ("false", "no"):
        return 0
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not 0 or 1") from None
    if number not in (0.0, 1.0):
        raise ValueError(f"{value!r} is not 0 or 1")
    return int(number)


def parse_age(value: str, round_to: int = 0) -> int | float | None:
    """Age in years (None if blank), optionally rounded to a multiple of ``round_to``; ValueError if bad."""
    if not value.strip():
        return None
    try:
        age = float(value)
    except ValueError:
        raise ValueError(f"age {value!r} is not a number") from None
    if not math.isfinite(age) or not 0 <= age <= 120:
        raise ValueError(f"age {value!r} is not a number of years between 0 and 120")
    if round_to:
        age = round_to * round(age / round_to)
    return int(age) if float(age).is_integer() else age


# ---------------------------------------------------------------------------------------- scanning


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


# ----------------------------------------------------------------------------- the import pipeline


@dataclass
class ImportItem:
    """One image on its way into the raw layout."""

    rel: str  # relative path below the source folder (posix)
    path: Path
    fields: dict[str, Any]  # metadata fields, labels included
    source_split: str | None = None  # folder imports only: the split folders above the class folder
    real_id: str | None = None  # an ISIC id the source gave, else one is assigned
    where: dict[str, Any] = field(default_factory=dict)  # row number etc. for failure messages


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


def assign_ids(
    items: list[ImportItem], hashes: Mapping[str, str], failures: list[Failure]
) -> tuple[list[tuple[str, ImportItem]], list[dict[str, str]]]:
    """([(isic_id, item)], skipped copies): real ids first, then assigned ones in sorted path order.

    A real id given twice keeps the first file (sorted path); a later one is a failure if its
    content differs, and is skipped (listed as a copy, nothing is lost) if it is the same file.
    Assigned ids depend only on the sorted paths, so a re-import gives the same ids.
    """
    taken: dict[str, ImportItem] = {}
    out: list[tuple[str, ImportItem]] = []
    pending: list[ImportItem] = []
    copies: list[dict[str, str]] = []
    for item in sorted(items, key=lambda it: it.rel):
        if item.real_id is None:
            pending.append(item)
            continue
        first = taken.get(item.real_id)
        if first is None:
            taken[item.real_id] = item
            out.append((item.real_id, item))
        elif hashes.get(first.rel) == hashes.get(item.rel):
            copies.append({"path": item.rel, "isic_id": item.real_id, "same_file_as": first.rel})
        else:
            failures.append(
                {**item.where, "path": item.rel, "isic_id": item.real_id,
                 "reason": f"id {item.real_id} is already used by {first.rel} (different content)"}
            )  # fmt: skip
    next_id = ASSIGNED_ID_START
    for item in pending:
        while f"ISIC_{next_id:07d}" in taken:
            next_id += 1
        if next_id > ASSIGNED_ID_END:
            raise DataError("more images than the assigned id range ISIC_9000000..ISIC_9999999 holds")
        new_id = f"ISIC_{next_id:07d}"
        taken[new_id] = item
        item.fields["id_assigned"] = True
        out.append((new_id, item))
    return out, copies


def place_file(src: Path, dest: Path) -> str:
    """Hardlink ``src`` as ``dest`` (no copy on one filesystem), else copy it atomically; 'link'/'copy'."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    try:
        os.link(src, dest)
        return "link"
    except OSError:
        # Another filesystem, no hardlink support, or a link-count limit: fall back to a copy.
        with atomic.atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        return "copy"


def _record(isic_id: str, item: ImportItem, defaults: Mapping[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {**defaults, **item.fields, "isic_id": isic_id}
    record["copyright_license"] = safe_license_id(str(record.get("copyright_license") or UNKNOWN_LICENSE))
    record["source_path"] = item.rel
    if item.source_split is not None:  # folder imports: say which ids are made up, and the split
        record["id_assigned"] = bool(item.fields.get("id_assigned", False))
        record["source_split"] = item.source_split
    return record


def duplicate_groups(by_hash: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Groups of records with identical files, sorted by their first id; flags conflicting labels."""
    duplicates = []
    for sha1, group in by_hash.items():
        if len(group) < 2:
            continue
        labels = {derive_label(r)[0] for r in group}
        duplicates.append(
            {
                "sha1": sha1,
                "isic_ids": [r["isic_id"] for r in group],
                "source_paths": [r["source_path"] for r in group],
                # Same pixels, different labels: prepare keeps the first, so say so here.
                "conflicting_labels": len(labels) > 1,
            }
        )
    return sorted(duplicates, key=lambda d: d["isic_ids"][0])


def write_items(
    raw_dir: Path,
    assigned: list[tuple[str, ImportItem]],
    hashes: Mapping[str, str],
    failures: list[Failure],
    defaults: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Link or copy each image to ``images/<isic_id><ext>``; returns (metadata records, report stats)."""
    images_dir = Path(raw_dir) / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    methods: Counter[str] = Counter()
    by_hash: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for isic_id, item in Progress(assigned, desc="writing images", unit="img"):
        dest = images_dir / f"{isic_id}{item.path.suffix.lower()}"
        try:
            methods[place_file(item.path, dest)] += 1
        except OSError as exc:
            failures.append(
                {**item.where, "path": item.rel, "reason": f"cannot copy into {dest.parent}: {exc}"}
            )
            continue
        record = _record(isic_id, item, defaults)
        records.append(record)
        by_hash[hashes[item.rel]].append(record)
    duplicates = duplicate_groups(by_hash)
    stats = {
        "n_images": len(records),
        "n_linked": methods["link"],
        "n_copied": methods["copy"],
        "n_synthetic_ids": sum(1 for r in records if r.get("id_assigned")),
        "n_duplicate_files": sum(len(d["isic_ids"]) - 1 for d in duplicates),
        "duplicates": duplicates,
    }
    return records, stats


# ------------------------------------------------------------------------------------ report counts


def label_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How prepare will label the records: melanoma / not_melanoma / unlabeled counts."""
    counts: Counter[str] = Counter()
    for r in records:
        label, _ = derive_label(r)
        counts["unlabeled" if label is None else ("melanoma" if label == 1 else "not_melanoma")] += 1
    return {k: counts.get(k, 0) for k in ("melanoma", "not_melanoma", "unlabeled")}


def value_counts(records: Iterable[Mapping[str, Any]], key: str) -> dict[str, int]:
    """{value: count} of one field, most common first (missing = "")."""
    return dict(Counter(str(r.get(key, "")) for r in records).most_common())


def report_counts(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """The ``counts`` section of a local import's report: prepare's labels, then each field's values."""
    return {"labels": label_summary(records), **{k: value_counts(records, k) for k in keys}}
