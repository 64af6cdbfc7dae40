"""Import a local folder of lesion images into the raw layout (``ingest.source: folder``).

Where each image's label comes from
-----------------------------------
* ``metadata_csv`` set: one CSV row per image. The image column is the first of
  ``IMAGE_COLUMNS`` present (a stem, a file name or a relative path); label columns of any ISIC
  era are kept as they are (``diagnosis_1..5``, ``benign_malignant``, ``diagnosis``), and
  ``target`` / ``melanoma`` (0/1; ``seborrheic_keratosis`` as in 2017) and ``label`` / ``class`` /
  ``dx`` (the class vocabulary ``common.vocabulary.CLASS_FOLDERS``) are translated into them. Other columns
  are copied.
* otherwise a class folder: the nearest folder above the image whose name is in
  ``CLASS_FOLDERS`` (case-insensitive; ``_``, ``-`` and spaces are the same) gives the label;
  any folders above it are split folders (``train/``, ``part1/test/``) kept as ``source_split``.
* or an ISIC JSON sidecar ``<stem>.json`` next to the image (API v1 ``{"name", "meta":
  {"clinical", "acquisition"}}`` or v2 ``{"isic_id", "metadata": {...}}``); a class folder wins
  for the label fields when both exist.

``melanoma.labels`` then makes ``malignant`` without a diagnosis a melanoma (as the benign vs
malignant study did) and any named non-melanoma diagnosis the negative class.

Ids: a file (or CSV value, or sidecar name) called ``ISIC_\\d{7}`` (any case, optional
``_downsampled``) keeps that id; every other image gets one from the reserved range
``ISIC_9000000..`` in sorted path order (``common.ids.assign_ids``), ``id_assigned`` True, and
``source_path`` names the original file.

Licence: a ``LICENSE``/``LICENCE`` file at the folder root naming CC0, CC BY or CC BY-NC gives
that licence; another licence file is kept as ``custom``; with none the licence is ``unknown``
(a CSV or sidecar ``copyright_license`` wins). The attribution is the first line of a root
``ATTRIBUTION.txt``, else ``Unknown (local folder <name>)``. Files are hardlinked into ``images/``
when the filesystem allows it, else copied. Exact duplicate files are kept (prepare drops them)
and listed in the report.

A little over ~400 lines: three ways to label an image (metadata CSV, class folders, ISIC
sidecars), each with its own short parser; the shared machinery is in ``sources/common/``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any

from melanoma.config import FolderParams
from melanoma.errors import DataError
from melanoma.labels import LABEL_COLUMNS
from melanoma.raw_layout import IMAGE_SUFFIXES, write_raw_metadata
from melanoma.sources.common.ids import assign_ids, isic_id_from_name
from melanoma.sources.common.items import Failure, ImportItem
from melanoma.sources.common.licenses import CUSTOM_LICENSE, UNKNOWN_LICENSE, license_texts_for
from melanoma.sources.common.scan import hash_items, scan_images
from melanoma.sources.common.table import age_cell, csv_rows, first_column, parse_flag, read_csv_table
from melanoma.sources.common.vocabulary import CLASS_FOLDERS, label_fields, normalise_class, site_general
from melanoma.sources.common.write import report_counts, write_items

log = logging.getLogger(__name__)

IMAGE_COLUMNS = (
    "isic_id",
    "image_id",
    "image_name",
    "image",
    "filename",
    "file_name",
    "file",
    "path",
    "name",
)
CLASS_COLUMNS = ("label", "class", "dx")
# Columns that the derived labels replace or that prepare computes itself: never copied through.
RESERVED_COLUMNS = frozenset({"label", "label_source", "source_path", "source_split", "id_assigned"})
_SITE_COLUMNS = ("localization", "anatom_site_general_challenge", "anatom_site_general")

# ----------------------------------------------------------------------------- folder-level facts


def detect_license(root: Path) -> tuple[str, str | None]:
    """(licence id, text) from a LICENSE/LICENCE file at ``root``: CC ids when recognised, else custom."""
    try:
        candidates = sorted(
            p for p in root.iterdir() if p.is_file() and p.stem.upper() in ("LICENSE", "LICENCE")
        )
    except OSError:
        return UNKNOWN_LICENSE, None
    for path in candidates:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        low = text.casefold()
        if "cc0" in low or "publicdomain/zero" in low:
            return "CC-0", text
        if "noncommercial" in low or "by-nc" in low:
            return "CC-BY-NC", text
        if "creative commons attribution" in low or "licenses/by/" in low:
            return "CC-BY", text
        return CUSTOM_LICENSE, text
    return UNKNOWN_LICENSE, None


def detect_attribution(root: Path) -> str | None:
    """First non-blank line of an ATTRIBUTION(.txt) file at ``root`` (as ISIC zip downloads have)."""
    for name in ("ATTRIBUTION.txt", "ATTRIBUTION", "attribution.txt"):
        try:
            text = (root / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        if line:
            return line[:300]
    return None


def sidecar_fields(path: Path) -> tuple[dict[str, Any], str | None]:
    """Metadata fields and ISIC id from an ISIC API JSON (v1 or v2 shape); ValueError if unusable."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    fields: dict[str, Any] = {}
    if isinstance(data.get("metadata"), dict):  # API v2: ImageOut
        groups = data["metadata"]
        for key in ("attribution", "copyright_license"):
            if data.get(key):
                fields[key] = data[key]
        name = data.get("isic_id")
    elif isinstance(data.get("meta"), dict):  # API v1 (Girder)
        groups = data["meta"]
        name = data.get("name")
    else:
        raise ValueError("neither an ISIC API v1 ('meta') nor v2 ('metadata') image record")
    renames = {"pixelsX": "pixels_x", "pixelsY": "pixels_y"}
    for group in groups.values():
        if not isinstance(group, dict):
            continue
        for key, value in group.items():
            if value is None or isinstance(value, dict | list) or key in RESERVED_COLUMNS:
                continue
            fields[renames.get(key, key)] = value
    return fields, isic_id_from_name(str(name)) if name else None


def class_of(rel: str) -> tuple[tuple[str | None, str | None] | None, str, str]:
    """(label from the nearest class folder or None, split folders above it, immediate parent)."""
    parts = rel.split("/")[:-1]
    for i in range(len(parts) - 1, -1, -1):
        label = CLASS_FOLDERS.get(normalise_class(parts[i]))
        if label is not None:
            return label, "/".join(parts[:i]), parts[i]
    return None, "/".join(parts), parts[-1] if parts else ""


# -------------------------------------------------------------------------------- class folders


def items_from_folders(
    images: list[tuple[str, Path]], sidecars: Mapping[str, Path], failures: list[Failure]
) -> list[ImportItem]:
    """One item per image with a class folder or a sidecar; the others are reported per folder."""
    items: list[ImportItem] = []
    unknown: dict[str, list[str]] = defaultdict(list)  # parent folder -> images there
    for rel, path in images:
        label, split, _ = class_of(rel)
        fields: dict[str, Any] = {}
        real_id = isic_id_from_name(path.stem)
        sidecar = sidecars.get(rel[: -len(path.suffix)])
        if sidecar is not None:
            try:
                fields, side_id = sidecar_fields(sidecar)
            except (OSError, ValueError) as exc:
                failures.append({"path": rel, "reason": f"unreadable sidecar {sidecar.name}: {exc}"})
                continue
            real_id = side_id or real_id
        if label is not None:
            fields.update(label_fields(label))  # the class folder wins over the sidecar
        elif sidecar is None:
            unknown[rel.rpartition("/")[0]].append(rel)
            continue
        items.append(ImportItem(rel=rel, path=path, fields=fields, source_split=split, real_id=real_id))
    known = ", ".join(CLASS_FOLDERS)
    for parent, rels in sorted(unknown.items()):
        if parent:
            reason = (
                f"unknown class folder {parent.rpartition('/')[2]!r}: {len(rels)} image(s) skipped, "
                f"e.g. {rels[0]}; known class folder names (case-insensitive): {known}"
            )
        else:
            reason = f"{len(rels)} image(s) at the top level are in no class folder, e.g. {rels[0]}"
        failures.append({"path": parent or ".", "reason": reason})
    return items


# --------------------------------------------------------------------------------- metadata CSV


def _derived_labels(row: Mapping[str, str]) -> dict[str, str]:
    """Label fields from the class and 0/1 columns of one row; ValueError names a bad cell."""
    derived: dict[str, str] = {}
    for col in CLASS_COLUMNS:
        if row.get(col):
            label = CLASS_FOLDERS.get(normalise_class(row[col]))
            if label is None:
                raise ValueError(f"{col} {row[col]!r} is not a known class ({', '.join(CLASS_FOLDERS)})")
            derived = {**label_fields(label), **derived}
    if row.get("target"):
        derived.setdefault("benign_malignant", "malignant" if parse_flag(row["target"]) else "benign")
    if row.get("melanoma"):
        mel = parse_flag(row["melanoma"])
        sk = parse_flag(row["seborrheic_keratosis"]) if row.get("seborrheic_keratosis") else 0
        if mel and sk:
            raise ValueError("melanoma and seborrheic_keratosis are both 1")
        if mel:
            derived.setdefault("diagnosis", "melanoma")
            derived.setdefault("benign_malignant", "malignant")
        elif sk:
            derived.setdefault("diagnosis", "seborrheic keratosis")
            derived.setdefault("benign_malignant", "benign")
        else:
            # "not melanoma" is the only thing such a column says; benign is what labels.py needs.
            derived.setdefault("benign_malignant", "benign")
    return derived


def csv_row_fields(header: list[str], cells: list[str], image_col: int) -> dict[str, Any]:
    """Metadata fields of one generic CSV row (labels translated); ValueError names a bad cell."""
    lower = [h.strip().casefold() for h in header]
    row = {lower[i]: cells[i] for i in range(len(header)) if i != image_col and lower[i]}
    out: dict[str, Any] = {}
    for key, raw in zip(header, cells, strict=True):
        name = key.strip()
        low = name.casefold()
        if not name or low == lower[image_col] or low in RESERVED_COLUMNS or not raw:
            continue
        if low in LABEL_COLUMNS:
            out[low] = raw
        elif low in ("patient", "patient_id"):
            out["patient_id"] = raw
        elif low in ("age", "age_approx"):
            # ISIC publishes ages rounded to 5 years; a raw "age" column is rounded the same way.
            out["age_approx"] = age_cell(raw, 5 if low == "age" else 0)
        elif low in _SITE_COLUMNS:
            if site := site_general(raw):
                out["anatom_site_general"] = site
        elif low not in CLASS_COLUMNS and low not in ("target", "melanoma", "seborrheic_keratosis"):
            out[name] = raw
    # Derived label fields only fill what the explicit ISIC label columns left empty.
    for key, value in _derived_labels(row).items():
        out.setdefault(key, value)
    return out


class FileIndex:
    """Finds the image file a CSV value names: relative path, any-case path, file name, stem or id."""

    def __init__(self, images: list[tuple[str, Path]]) -> None:
        self.by_rel = {rel: (rel, p) for rel, p in images}
        self.by_rel_ci: dict[str, list] = defaultdict(list)
        self.by_name: dict[str, list] = defaultdict(list)
        self.by_stem: dict[str, list] = defaultdict(list)
        self.by_id: dict[str, list] = defaultdict(list)
        for rel, p in images:
            self.by_rel_ci[rel.casefold()].append((rel, p))
            self.by_name[p.name].append((rel, p))
            self.by_stem[p.stem].append((rel, p))
            if (found := isic_id_from_name(p.stem)) is not None:
                self.by_id[found].append((rel, p))

    def find(self, value: str, value_id: str | None) -> list[tuple[str, Path]]:
        """Every file the value could mean, by the first rule that matches anything."""
        return (
            ([self.by_rel[value]] if value in self.by_rel else [])
            or self.by_rel_ci.get(value.casefold())
            or self.by_name.get(value)
            or self.by_stem.get(value)
            or (self.by_id.get(value_id) if value_id else None)
            or []
        )


def _csv_image_column(csv_path: Path, header: list[str]) -> int:
    """The image column of a metadata CSV; DataError if it has no image or no label column."""
    lower = [h.strip().casefold() for h in header]
    image_col = first_column(lower, IMAGE_COLUMNS)
    if image_col is None:
        raise DataError(
            f"{csv_path}: no image column; expected one of {', '.join(IMAGE_COLUMNS)}; "
            f"found columns {', '.join(header)}"
        )
    label_like = set(LABEL_COLUMNS) | set(CLASS_COLUMNS) | {"target", "melanoma"}
    if not label_like & set(lower):
        raise DataError(
            f"{csv_path}: no label column; expected at least one of {', '.join(sorted(label_like))}; "
            f"found columns {', '.join(header)}"
        )
    return image_col


def items_from_csv(
    csv_path: Path, images: list[tuple[str, Path]], failures: list[Failure]
) -> list[ImportItem]:
    """One item per CSV row that names exactly one image file; bad rows and unnamed images fail."""
    header, rows = read_csv_table(csv_path)
    image_col = _csv_image_column(csv_path, header)
    index = FileIndex(images)
    items: list[ImportItem] = []
    used: dict[str, int] = {}
    for where, cells in csv_rows(csv_path.name, len(header), rows, failures):
        value = cells[image_col].replace("\\", "/").removeprefix("./")
        if not value:
            failures.append({**where, "reason": f"empty {header[image_col]}"})
            continue
        as_path = PurePosixPath(value)
        value_id = isic_id_from_name(
            as_path.stem if as_path.suffix.lower() in IMAGE_SUFFIXES else as_path.name
        )
        found = index.find(value, value_id)
        if len(found) != 1:
            paths = ", ".join(rel for rel, _ in found[:3])
            reason = (
                f"ambiguous: matches several files ({paths})" if found else "no image file matches this row"
            )
            failures.append({**where, "image": value, "reason": reason})
            continue
        rel, path = found[0]
        if rel in used:
            reason = f"second row for {rel} (first at row {used[rel]})"
            failures.append({**where, "image": value, "reason": reason})
            continue
        try:
            fields = csv_row_fields(header, cells, image_col)
        except ValueError as exc:
            failures.append({**where, "image": value, "reason": f"bad value: {exc}"})
            continue
        used[rel] = where["row"]
        label, split, _ = class_of(rel)
        if label is not None:  # a class folder only fills label fields the row left empty
            for key, val in label_fields(label).items():
                fields.setdefault(key, val)
        else:
            split = rel.rpartition("/")[0]
        real_id = value_id or isic_id_from_name(path.stem)
        items.append(
            ImportItem(rel=rel, path=path, fields=fields, source_split=split, real_id=real_id, where=where)
        )
    for rel, _ in images:
        if rel not in used:
            failures.append({"path": rel, "reason": f"no row in {csv_path.name} (image without a label row)"})
    return items


def _resolve_csv(folder: Path, metadata_csv: str) -> Path:
    """A relative ``metadata_csv`` is looked up inside the folder first, then from the working directory."""
    path = Path(metadata_csv)
    if not path.is_absolute() and (folder / path).is_file():
        return folder / path
    return path


# ------------------------------------------------------------------------------------ the importer


def import_folder(raw_dir: Path, params: FolderParams, seed: int) -> dict:
    """Import ``params.path`` into ``raw_dir`` (the shared raw layout); returns the ingest report.

    ``seed`` is accepted for the common ingest signature but not needed: ids depend only on the
    sorted relative paths. Raises DataError if the folder is missing, holds no images, or nothing
    could be imported; individual problems are listed in ``report["failures"]``.
    """
    start = time.perf_counter()
    raw_dir = Path(raw_dir)
    if not params.path:
        raise DataError("ingest.folder.path is empty: set it to the folder of images to import")
    folder = Path(params.path)
    if not folder.is_dir():
        raise DataError(f"ingest.folder.path {folder}: folder not found")
    scan = scan_images(folder)
    failures = scan.failures
    if not scan.images:
        raise DataError(
            f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder or below it"
        )
    csv_path = _resolve_csv(folder, params.metadata_csv) if params.metadata_csv else None
    if csv_path is not None:
        items = items_from_csv(csv_path, scan.images, failures)
    else:
        items = items_from_folders(scan.images, scan.sidecars, failures)
    lic, lic_text = detect_license(folder)
    attribution = detect_attribution(folder) or f"Unknown (local folder {folder.resolve().name})"
    items, hashes = hash_items(items, failures, "folder: reading")
    assigned, copies = assign_ids(items, hashes, failures)
    defaults = {"attribution": attribution, "copyright_license": lic}
    records, stats = write_items(raw_dir, assigned, hashes, failures, defaults)
    if not records:
        raise DataError(
            f"{folder}: none of {len(scan.images)} image(s) could be imported; first problems: "
            + "; ".join(f"{f.get('path', f.get('row'))}: {f['reason']}" for f in failures[:3])
        )
    texts = license_texts_for(records, {lic: lic_text} if lic_text else {}, str(folder), search=folder)
    report = {
        "source": "folder",
        "path": str(folder),
        "mode": "metadata_csv" if csv_path else "class_folders",
        "metadata_csv": str(csv_path) if csv_path else None,
        "params": asdict(params),
        "seed_used": False,
        "n_image_files": len(scan.images),
        "n_ignored_files": scan.n_ignored,
        **stats,
        "same_id_copies_skipped": copies,
        "counts": report_counts(
            records, ("benign_malignant", "diagnosis", "source_split", "copyright_license")
        ),
        "n_failures": len(failures),
        "failures": failures,
    }
    write_raw_metadata(raw_dir, records, texts, report)
    log.info(
        "folder import: %d images from %s (%d failures, %d duplicate files) in %.1f s",
        len(records), folder, len(failures), stats["n_duplicate_files"], time.perf_counter() - start,
    )  # fmt: skip
    return report
