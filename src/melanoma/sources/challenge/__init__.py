"""Import an ISIC challenge dataset (2016-2020, HAM10000) into the raw layout (``ingest.source: challenge``).

Ground-truth formats (see shared reference isic_api.md §8), detected from the header with
``format: auto`` or validated when named explicitly:

=========  ==========================================================================================
2016       Part 3, no header: ``ISIC_0000000,benign|malignant`` (test files: ``0.0``/``1.0``)
2017       ``image_id,melanoma,seborrheic_keratosis`` (0.0/1.0; both 0 = nevus)
2018       Task 3 one-hot ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``
2019       Task 1 one-hot ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC[,UNK]`` (extra weight columns ignored)
2020       ``image_name,patient_id,[lesion_id,]sex,age_approx,anatom_site_general_challenge,diagnosis,
           benign_malignant,target``
ham10000   ``lesion_id,image_id,dx,dx_type,age,sex,localization[,dataset]``
=========  ==========================================================================================

Each row becomes one raw metadata record: ``isic_id``, the legacy lower-case ``diagnosis`` and/or
``benign_malignant`` that ``melanoma.labels`` understands (class codes from the shared vocabulary
``common.vocabulary.CLASS_FOLDERS``), and ``patient_id`` / ``lesion_id`` / ``age_approx`` / ``sex`` /
``anatom_site_general`` where the format has them (HAM10000: age rounded to 5 years, ``dx_type``
as ``diagnosis_confirm_type``, localization mapped to ISIC's general sites). An optional
``metadata_csv`` (2019/2020 style ``image,age_approx,anatom_site_general,lesion_id,sex``) fills
fields the ground truth lacks.

Bad rows (an id that is not ``ISIC_\\d{7}``, an unknown label, a one-hot row with no or several 1s, an
unparsable number, a repeated id, no image file) go to ``report["failures"]`` with the CSV line
number (the header is line 1); every good row is imported. Image files are found anywhere below
``images`` by their stem (``ISIC_xxxxxxx`` or ``ISIC_xxxxxxx_downsampled``); other files there
(superpixel masks, licence files) are ignored.

With ``download: true`` the files are first fetched from the public ISIC bucket into a cache
folder, see ``melanoma.sources.challenge.fetch``.

The formats and their row parsers are in ``formats.py``; this module reads the extra metadata,
finds the image files and writes the raw layout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from melanoma.config import ChallengeParams
from melanoma.errors import DataError
from melanoma.raw_layout import write_raw_metadata
from melanoma.sources.challenge.formats import FORMATS, read_ground_truth
from melanoma.sources.common.ids import isic_id_from_name
from melanoma.sources.common.items import Failure, ImportItem
from melanoma.sources.common.licenses import license_texts_for
from melanoma.sources.common.scan import hash_items, scan_images
from melanoma.sources.common.table import age_cell, csv_rows, first_column, read_csv_table
from melanoma.sources.common.vocabulary import site_general
from melanoma.sources.common.write import report_counts, write_items

log = logging.getLogger(__name__)

_META_IMAGE_COLUMNS = ("image", "image_name", "image_id", "isic_id")
# Label fields come from the ground truth only; metadata never changes a label.
_META_SKIP = frozenset({"diagnosis", "benign_malignant", "target", "label", "dx", "label_source"})


def _meta_fields(lower: list[str], cells: list[str], image_col: int) -> dict[str, Any]:
    """Fields of one extra-metadata row (labels skipped); ValueError names a bad cell."""
    fields: dict[str, Any] = {}
    for key, value in zip(lower, cells, strict=True):
        if (
            not value
            or key == lower[image_col]
            or not key
            or key.startswith("diagnosis_")
            or key in _META_SKIP
        ):
            continue
        if key in ("patient", "patient_id"):
            fields["patient_id"] = value
        elif key in ("age_approx", "age"):
            fields["age_approx"] = age_cell(value, 5 if key == "age" else 0)
        elif key in ("anatom_site_general", "anatom_site_general_challenge", "localization"):
            if site := site_general(value):
                fields["anatom_site_general"] = site
        else:
            fields[key] = value
    return fields


def read_extra_metadata(path: Path) -> tuple[dict[str, dict[str, Any]], list[Failure]]:
    """{isic_id: fields} from a 2019/2020-style metadata CSV, and the failures of bad rows."""
    header, rows = read_csv_table(path)
    lower = [h.strip().casefold() for h in header]
    col = first_column(lower, _META_IMAGE_COLUMNS)
    if col is None:
        raise DataError(
            f"{path}: no image column; expected one of {', '.join(_META_IMAGE_COLUMNS)}; found {', '.join(header)}"
        )
    out: dict[str, dict[str, Any]] = {}
    failures: list[Failure] = []
    first_line: dict[str, int] = {}
    for where, cells in csv_rows(path.name, len(header), rows, failures):
        isic_id = isic_id_from_name(cells[col])
        if isic_id is None:
            reason = "image id is not an ISIC id (ISIC_ + 7 digits)"
            failures.append({**where, "image": cells[col], "reason": reason})
            continue
        if isic_id in first_line:
            reason = f"repeated (first at row {first_line[isic_id]})"
            failures.append({**where, "isic_id": isic_id, "reason": reason})
            continue
        try:
            fields = _meta_fields(lower, cells, col)
        except ValueError as exc:
            failures.append({**where, "isic_id": isic_id, "reason": f"bad value: {exc}"})
            continue
        first_line[isic_id] = where["row"]
        out[isic_id] = fields
    return out, failures


def index_challenge_images(images_dir: Path) -> tuple[dict[str, tuple[str, Path]], list[Failure], int]:
    """{isic_id: (relative path, path)} of the image files below ``images_dir``; (failures, n_ignored).

    An exact ``ISIC_xxxxxxx`` file wins over a ``_downsampled`` one; files without an ISIC id in
    their name (superpixel masks, licence files) are ignored.
    """
    scan = scan_images(images_dir)
    ignored = scan.n_ignored
    out: dict[str, tuple[str, Path]] = {}
    for rel, path in scan.images:  # sorted: deterministic choice among several files of one id
        isic_id = isic_id_from_name(path.stem)
        if isic_id is None:
            ignored += 1
            continue
        current = out.get(isic_id)
        if current is None or (current[1].stem != isic_id and path.stem == isic_id):
            out[isic_id] = (rel, path)
    return out, scan.failures, ignored


# ------------------------------------------------------------------------------------ the importer


@dataclass
class _Inputs:
    """The three input files, wherever they came from, and the download's part of the report."""

    ground_truth: Path
    images: Path
    metadata_csv: Path | None
    download: dict[str, Any] | None
    failures: list[Failure]
    shown: Callable[[Path], str]  # how a path appears in the report


def _inputs(raw_dir: Path, params: ChallengeParams) -> _Inputs:
    """Local paths from ``params``, or the files fetched into the download cache."""
    if params.download:
        from melanoma.sources.challenge.fetch import fetch_challenge  # botocore only when downloading

        got = fetch_challenge(raw_dir, params)
        base = Path(raw_dir).resolve().parent  # cache paths relative to it: the same on every machine
        return _Inputs(got.ground_truth, got.images, got.metadata_csv, got.report, list(got.failures),
                       lambda p: p.resolve().relative_to(base).as_posix())  # fmt: skip
    if not params.ground_truth:
        raise DataError("ingest.challenge.ground_truth is empty: set it to the ground-truth CSV")
    if not params.images:
        raise DataError("ingest.challenge.images is empty: set it to the folder of challenge images")
    meta = Path(params.metadata_csv) if params.metadata_csv else None
    return _Inputs(Path(params.ground_truth), Path(params.images), meta, None, [], str)


def import_challenge(raw_dir: Path, params: ChallengeParams) -> dict:
    """Import an ISIC challenge ground truth plus its images into ``raw_dir``; returns the ingest report.

    With ``params.download`` the files are fetched first (cached next to ``raw_dir``, see
    ``melanoma.sources.challenge.fetch``). Raises DataError for a missing or unrecognisable
    ground truth, a missing image folder, or when no row could be imported.
    """
    start = time.perf_counter()
    raw_dir = Path(raw_dir)
    inp = _inputs(raw_dir, params)
    failures = inp.failures
    if not inp.images.is_dir():
        raise DataError(f"ingest.challenge.images {inp.images}: folder not found")
    fmt, rows, gt_failures = read_ground_truth(inp.ground_truth, params.format)
    failures.extend(gt_failures)
    extra: dict[str, dict[str, Any]] = {}
    if inp.metadata_csv is not None:
        extra, meta_failures = read_extra_metadata(inp.metadata_csv)
        failures.extend(meta_failures)
    files, scan_failures, n_ignored = index_challenge_images(inp.images)
    failures.extend(scan_failures)

    items: list[ImportItem] = []
    for line, isic_id, fields in rows:
        where = {"file": inp.ground_truth.name, "row": line, "isic_id": isic_id}
        if isic_id not in files:
            failures.append({**where, "reason": f"no image file for {isic_id} in {inp.images}"})
            continue
        for key, value in extra.get(isic_id, {}).items():
            fields.setdefault(key, value)  # the ground truth wins where both have a value
        fields["challenge"] = fmt
        rel, path = files[isic_id]
        items.append(ImportItem(rel=rel, path=path, fields=fields, real_id=isic_id, where=where))
    items, hashes = hash_items(items, failures, f"challenge {fmt}: reading")
    spec = FORMATS[fmt]
    defaults = {"attribution": spec.attribution, "copyright_license": spec.license}
    records, stats = write_items(
        raw_dir, [(it.real_id or "", it) for it in items], hashes, failures, defaults
    )
    if not records:
        raise DataError(
            f"{inp.ground_truth}: none of {len(rows) + len(gt_failures)} row(s) could be imported; first problems: "
            + "; ".join(f"row {f.get('row', '?')}: {f['reason']}" for f in failures[:3])
        )
    gt_ids = {isic_id for _, isic_id, _ in rows}
    report = {
        "source": "challenge",
        "format": fmt,
        "format_detected": params.format == "auto",
        "ground_truth": inp.shown(inp.ground_truth),
        "images": inp.shown(inp.images),
        "metadata_csv": inp.shown(inp.metadata_csv) if inp.metadata_csv else None,
        "params": asdict(params),
        "download": inp.download,
        "n_ground_truth_rows": len(rows) + len(gt_failures),
        "n_metadata_rows_merged": len(gt_ids & set(extra)),
        "n_metadata_rows_unmatched": len(set(extra) - gt_ids),
        "n_image_files_without_row": len(set(files) - gt_ids),
        "n_ignored_files": n_ignored,
        **stats,
        "counts": report_counts(records, ("diagnosis", "benign_malignant")),
        "n_failures": len(failures),
        "failures": failures,
    }
    write_raw_metadata(
        raw_dir, records, license_texts_for(records, {}, source=f"ISIC challenge {fmt}"), report
    )
    log.info(
        "challenge import (%s%s): %d images, %d failures in %.1f s",
        fmt, ", detected" if params.format == "auto" else "", len(records), len(failures),
        time.perf_counter() - start,
    )  # fmt: skip
    return report
