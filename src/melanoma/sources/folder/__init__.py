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

The package: ``tree`` (class folders, sidecars, the root licence and attribution files),
``metadata_csv`` (the CSV mode: columns, labels, matching rows to files) and this module
(``import_folder``: scan, label, hash, assign ids, write the layout and report); the shared
machinery is in ``sources/common/``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from melanoma.config import FolderParams
from melanoma.errors import DataError
from melanoma.raw_layout import IMAGE_SUFFIXES, write_raw_metadata
from melanoma.sources.common.ids import assign_ids
from melanoma.sources.common.licenses import license_texts_for
from melanoma.sources.common.scan import hash_items, scan_images
from melanoma.sources.common.write import report_counts, write_items
from melanoma.sources.folder.metadata_csv import items_from_csv, resolve_csv
from melanoma.sources.folder.tree import detect_attribution, detect_license, items_from_folders

__all__ = ["import_folder"]

log = logging.getLogger(__name__)


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
    csv_path = resolve_csv(folder, params.metadata_csv) if params.metadata_csv else None
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
