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
``benign_malignant`` that ``melanoma.labels`` understands, and ``patient_id`` / ``lesion_id`` /
``age_approx`` / ``sex`` / ``anatom_site_general`` where the format has them (HAM10000: age rounded
to 5 years, ``dx_type`` as ``diagnosis_confirm_type``, localization mapped to ISIC's general sites).
An optional ``metadata_csv`` (2019/2020 style ``image,age_approx,anatom_site_general,lesion_id,sex``)
fills fields the ground truth lacks.

Bad rows (an id that is not ``ISIC_\\d{7}``, an unknown label, a one-hot row with no or several 1s, an
unparsable number, a repeated id, no image file) go to ``report["failures"]`` with the CSV line
number (the header is line 1); every good row is imported. Image files are found anywhere below
``images`` by their stem (``ISIC_xxxxxxx`` or ``ISIC_xxxxxxx_downsampled``); other files there
(superpixel masks, licence files) are ignored.

With ``download: true`` the files are first fetched from the public ISIC bucket into a cache
folder, see ``melanoma.ingest.s3list``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from melanoma.config import ChallengeParams
from melanoma.contracts import write_raw_metadata
from melanoma.errors import DataError
from melanoma.ingest.folder import (
    ImportItem,
    hash_items,
    isic_id_from_name,
    label_summary,
    license_texts_for,
    parse_age,
    parse_flag,
    read_csv_table,
    scan_images,
    site_general,
    write_items,
)

log = logging.getLogger(__name__)

# One-hot / HAM10000 class code -> (legacy ISIC diagnosis, benign_malignant or None).
CLASS_CODES: dict[str, tuple[str, str | None]] = {
    "mel": ("melanoma", "malignant"),
    "nv": ("nevus", "benign"),
    "bcc": ("basal cell carcinoma", "malignant"),
    "scc": ("squamous cell carcinoma", "malignant"),
    # AKIEC also holds intraepithelial carcinoma: no benign/malignant claim, "not melanoma" is enough.
    "akiec": ("actinic keratosis", None),
    "ak": ("actinic keratosis", None),
    "bkl": ("pigmented benign keratosis", "benign"),
    "df": ("dermatofibroma", "benign"),
    "vasc": ("vascular lesion", "benign"),
    # "unknown" is vague for labels.py: such a row stays unlabeled and prepare drops it.
    "unk": ("unknown", None),
}
HAM_DX_TYPE = {
    "histo": "histopathology",
    "follow_up": "serial imaging showing no change",
    "consensus": "single image expert consensus",
    "confocal": "confocal microscopy with consensus dermoscopy",
}
_BM_VALUES = ("benign", "malignant", "indeterminate", "indeterminate/benign", "indeterminate/malignant")
_CITE_2020 = "cite doi:10.34970/2020-ds01 (Rotemberg et al., Sci Data 8:34, 2021)"


@dataclass(frozen=True)
class ChallengeFormat:
    """What identifies one ground-truth format and how its images are licensed."""

    name: str
    required: tuple[str, ...]  # column names, compared case-insensitively; () = no header
    shape: str  # for error messages
    license: str
    attribution: str


FORMATS: dict[str, ChallengeFormat] = {
    f.name: f
    for f in (
        ChallengeFormat("2016", (), "no header; 2 columns: ISIC id, benign|malignant (or 0/1)", "CC-0",
                        "ISIC 2016 challenge (ISBI 2016, Part 3), International Skin Imaging Collaboration"),
        ChallengeFormat("2017", ("image_id", "melanoma", "seborrheic_keratosis"),
                        "image_id, melanoma, seborrheic_keratosis", "CC-0",
                        "ISIC 2017 challenge (Part 3), International Skin Imaging Collaboration"),
        ChallengeFormat("2018", ("image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"),
                        "image, MEL, NV, BCC, AKIEC, BKL, DF, VASC", "CC-BY-NC",
                        "ISIC 2018 challenge (Task 3): HAM10000 (ViDIR Group, Medical University of Vienna) "
                        "and MSK"),
        ChallengeFormat("2019", ("image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"),
                        "image, MEL, NV, BCC, AK, BKL, DF, VASC, SCC[, UNK]", "CC-BY-NC",
                        "ISIC 2019 challenge: BCN_20000 (Hospital Clinic de Barcelona), HAM10000 (ViDIR "
                        "Group, Medical University of Vienna) and MSK"),
        ChallengeFormat("2020", ("image_name", "target"),
                        "image_name, patient_id, [lesion_id,] sex, age_approx, anatom_site_general_challenge, "
                        "diagnosis, benign_malignant, target", "CC-BY-NC",
                        f"ISIC 2020 challenge (SIIM-ISIC Melanoma Classification); {_CITE_2020}"),
        ChallengeFormat("ham10000", ("lesion_id", "image_id", "dx"),
                        "lesion_id, image_id, dx, dx_type, age, sex, localization[, dataset]", "CC-BY-NC",
                        "HAM10000 (ViDIR Group, Medical University of Vienna; Tschandl et al., Sci Data 5:180161, "
                        "2018)"),
    )
}  # fmt: skip
# Detection order: the most specific column sets first.
_DETECT_ORDER = ("ham10000", "2017", "2019", "2018", "2020")


def _is_headerless_2016(first: list[str]) -> bool:
    return len(first) == 2 and isic_id_from_name(first[0]) is not None


def detect_format(first_row: list[str]) -> str | None:
    """The challenge format whose columns the first CSV row has, or None."""
    if _is_headerless_2016(first_row):
        return "2016"
    names = {c.strip().casefold() for c in first_row}
    for name in _DETECT_ORDER:
        if {c.casefold() for c in FORMATS[name].required} <= names:
            return name
    return None


def _check_format(path: Path, fmt: str, first_row: list[str]) -> str:
    """The format to use: detected for ``auto``, else ``fmt`` after checking it fits (DataError if not)."""
    detected = detect_format(first_row)
    shown = ", ".join(first_row) if first_row else "(empty file)"
    if fmt == "auto":
        if detected is None:
            expected = "; ".join(f"{f.name}: {f.shape}" for f in FORMATS.values())
            raise DataError(
                f"{path}: cannot tell which ISIC challenge format this is; first row: {shown}. "
                f"Known formats: {expected}"
            )
        return detected
    spec = FORMATS[fmt]
    hint = (
        f" (it looks like format {detected!r}: set ingest.challenge.format to that or 'auto')"
        if detected
        else ""
    )
    if fmt == "2016":
        if not _is_headerless_2016(first_row):
            raise DataError(
                f"{path}: is not format '2016': expected {spec.shape}; found first row {shown}{hint}"
            )
        return fmt
    names = {c.strip().casefold() for c in first_row}
    missing = [c for c in spec.required if c.casefold() not in names]
    if missing:
        raise DataError(
            f"{path}: is not format {fmt!r}: expected columns {spec.shape}; missing {', '.join(missing)}; "
            f"found columns {shown}{hint}"
        )
    return fmt


def _one_hot(row: dict[str, str], codes: tuple[str, ...]) -> dict[str, Any]:
    hot = [c for c in codes if row.get(c) and parse_flag(row[c]) == 1]
    if not hot:
        raise ValueError(f"no class is 1 among {', '.join(c.upper() for c in codes)}")
    if len(hot) > 1:
        raise ValueError(f"several classes are 1 ({', '.join(c.upper() for c in hot)}); expected exactly one")
    for c in codes:  # the zeros must parse too: a typo there is a broken row, not a zero
        if row.get(c):
            parse_flag(row[c])
    dx, bm = CLASS_CODES[hot[0]]
    return {"diagnosis": dx, **({"benign_malignant": bm} if bm else {})}


def _row_fields(fmt: str, row: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """(image name, metadata fields) of one ground-truth row; ValueError says what is wrong."""
    if fmt == "2016":
        value = row["label"].casefold()
        if value in ("benign", "malignant"):
            return row["image"], {"benign_malignant": value}
        try:
            flag = parse_flag(value)
        except ValueError:
            raise ValueError(f"label {row['label']!r} is not benign, malignant, 0 or 1") from None
        return row["image"], {"benign_malignant": "malignant" if flag else "benign"}
    if fmt == "2017":
        mel, sk = parse_flag(row["melanoma"]), parse_flag(row["seborrheic_keratosis"])
        if mel and sk:
            raise ValueError("melanoma and seborrheic_keratosis are both 1")
        # The 2017 task has three classes: both 0 means nevus.
        dx = "melanoma" if mel else "seborrheic keratosis" if sk else "nevus"
        return row["image_id"], {"diagnosis": dx, "benign_malignant": "malignant" if mel else "benign"}
    if fmt == "2018":
        return row["image"], _one_hot(row, ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"))
    if fmt == "2019":
        codes = ("mel", "nv", "bcc", "ak", "bkl", "df", "vasc", "scc") + (("unk",) if "unk" in row else ())
        return row["image"], _one_hot(row, codes)
    if fmt == "2020":
        fields: dict[str, Any] = {}
        for key in ("patient_id", "lesion_id", "sex"):
            if row.get(key):
                fields[key] = row[key]
        if row.get("age_approx"):
            fields["age_approx"] = parse_age(row["age_approx"])
        site = site_general(row.get("anatom_site_general_challenge", ""))
        if site:
            fields["anatom_site_general"] = site
        if row.get("diagnosis"):
            fields["diagnosis"] = row["diagnosis"].casefold()
        target = parse_flag(row["target"])
        bm = row.get("benign_malignant", "").casefold()
        if bm and bm not in _BM_VALUES:
            raise ValueError(
                f"benign_malignant {row['benign_malignant']!r} is not one of {', '.join(_BM_VALUES)}"
            )
        if bm and (bm == "malignant") != bool(target):
            raise ValueError(f"target {target} contradicts benign_malignant {bm!r}")
        fields["benign_malignant"] = bm or ("malignant" if target else "benign")
        return row["image_name"], fields
    # ham10000
    dx = row["dx"].casefold()
    if dx not in CLASS_CODES or dx in ("ak", "scc", "unk"):
        raise ValueError(f"dx {row['dx']!r} is not one of mel, nv, bcc, akiec, bkl, df, vasc")
    diagnosis, bm = CLASS_CODES[dx]
    fields = {"diagnosis": diagnosis, "lesion_id": row["lesion_id"]}
    if bm:
        fields["benign_malignant"] = bm
    if row.get("dx_type"):
        fields["diagnosis_confirm_type"] = HAM_DX_TYPE.get(row["dx_type"].casefold(), row["dx_type"])
    if row.get("age"):
        fields["age_approx"] = parse_age(row["age"], round_to=5)
    if row.get("sex", "").casefold() in ("male", "female"):
        fields["sex"] = row["sex"].casefold()
    site = site_general(row.get("localization", ""))
    if site:
        fields["anatom_site_general"] = site
    if row.get("dataset"):
        fields["dataset"] = row["dataset"]
    return row["image_id"], fields


def read_ground_truth(path: Path, fmt: str) -> tuple[str, list[tuple[int, str, dict[str, Any]]], list[dict]]:
    """(format, [(line, isic_id, fields)], failures) of a ground-truth CSV; DataError if unusable."""
    _, rows = read_csv_table(path, has_header=False)
    if not rows:
        raise DataError(f"{path}: the ground-truth file is empty")
    fmt = _check_format(path, fmt, rows[0][1])
    if fmt == "2016":
        header, body = ["image", "label"], rows
    else:
        header, body = [h.strip().casefold() for h in rows[0][1]], rows[1:]
    failures: list[dict] = []
    good: list[tuple[int, str, dict[str, Any]]] = []
    first_line: dict[str, int] = {}
    name = path.name
    for line, cells in body:
        where = {"file": name, "row": line}
        if len(cells) != len(header):
            failures.append({**where, "reason": f"has {len(cells)} fields, the header has {len(header)}"})
            continue
        row = dict(zip(header, cells, strict=True))
        try:
            image, fields = _row_fields(fmt, row)
        except (ValueError, KeyError) as exc:
            failures.append({**where, "image": cells[0], "reason": f"bad value: {exc}"})
            continue
        isic_id = isic_id_from_name(image)
        if isic_id is None:
            failures.append(
                {**where, "image": image, "reason": "image id is not an ISIC id (ISIC_ + 7 digits)"}
            )
            continue
        if isic_id in first_line:
            failures.append(
                {
                    **where,
                    "isic_id": isic_id,
                    "reason": f"{isic_id} repeated (first at row {first_line[isic_id]})",
                }
            )
            continue
        first_line[isic_id] = line
        if image != isic_id:
            fields["source_image"] = image
        good.append((line, isic_id, fields))
    return fmt, good, failures


_META_IMAGE_COLUMNS = ("image", "image_name", "image_id", "isic_id")
# Label fields come from the ground truth only; metadata never changes a label.
_META_SKIP = frozenset({"diagnosis", "benign_malignant", "target", "label", "dx", "label_source"})


def read_extra_metadata(path: Path) -> tuple[dict[str, dict[str, Any]], list[dict]]:
    """{isic_id: fields} from a 2019/2020-style metadata CSV, and the failures of bad rows."""
    header, rows = read_csv_table(path)
    lower = [h.strip().casefold() for h in header]
    col = next((lower.index(c) for c in _META_IMAGE_COLUMNS if c in lower), None)
    if col is None:
        raise DataError(
            f"{path}: no image column; expected one of {', '.join(_META_IMAGE_COLUMNS)}; found {', '.join(header)}"
        )
    out: dict[str, dict[str, Any]] = {}
    failures: list[dict] = []
    first_line: dict[str, int] = {}
    for line, cells in rows:
        where = {"file": path.name, "row": line}
        if len(cells) != len(header):
            failures.append({**where, "reason": f"has {len(cells)} fields, the header has {len(header)}"})
            continue
        isic_id = isic_id_from_name(cells[col])
        if isic_id is None:
            failures.append(
                {**where, "image": cells[col], "reason": "image id is not an ISIC id (ISIC_ + 7 digits)"}
            )
            continue
        if isic_id in first_line:
            failures.append(
                {**where, "isic_id": isic_id, "reason": f"repeated (first at row {first_line[isic_id]})"}
            )
            continue
        fields: dict[str, Any] = {}
        try:
            for key, value in zip(lower, cells, strict=True):
                if (
                    not value
                    or key == lower[col]
                    or not key
                    or key.startswith("diagnosis_")
                    or key in _META_SKIP
                ):
                    continue
                if key in ("patient", "patient_id"):
                    fields["patient_id"] = value
                elif key in ("age_approx", "age"):
                    fields["age_approx"] = parse_age(value, 5 if key == "age" else 0)
                elif key in ("anatom_site_general", "anatom_site_general_challenge", "localization"):
                    if site := site_general(value):
                        fields["anatom_site_general"] = site
                else:
                    fields[key] = value
        except ValueError as exc:
            failures.append({**where, "isic_id": isic_id, "reason": f"bad value: {exc}"})
            continue
        first_line[isic_id] = line
        out[isic_id] = fields
    return out, failures


def index_challenge_images(images_dir: Path) -> tuple[dict[str, tuple[str, Path]], list[dict], int]:
    """{isic_id: (relative path, path)} of the image files below ``images_dir``; (failures, n_ignored).

    An exact ``ISIC_xxxxxxx`` file wins over a ``_downsampled`` one; files without an ISIC id in
    their name (superpixel masks, licence files) are ignored.
    """
    images, _, failures, ignored = scan_images(images_dir)
    out: dict[str, tuple[str, Path]] = {}
    for rel, path in images:  # sorted: deterministic choice among several files of one id
        isic_id = isic_id_from_name(path.stem)
        if isic_id is None:
            ignored += 1
            continue
        current = out.get(isic_id)
        if current is None or (current[1].stem != isic_id and path.stem == isic_id):
            out[isic_id] = (rel, path)
    return out, failures, ignored


def import_challenge(raw_dir: Path, params: ChallengeParams) -> dict:
    """Import an ISIC challenge ground truth plus its images into ``raw_dir``; returns the ingest report.

    With ``params.download`` the files are fetched first (cached next to ``raw_dir``, see
    ``melanoma.ingest.s3list.fetch_challenge``). Raises DataError for a missing or unrecognisable
    ground truth, a missing image folder, or when no row could be imported.
    """
    start = time.perf_counter()
    raw_dir = Path(raw_dir)
    download_report: dict[str, Any] | None = None
    failures: list[dict] = []
    if params.download:
        from melanoma.ingest.s3list import fetch_challenge

        fetched = fetch_challenge(raw_dir, params)
        gt_path, images_dir, meta_path = fetched.ground_truth, fetched.images, fetched.metadata_csv
        download_report = fetched.report
        failures.extend(fetched.failures)
    else:
        if not params.ground_truth:
            raise DataError("ingest.challenge.ground_truth is empty: set it to the ground-truth CSV")
        if not params.images:
            raise DataError("ingest.challenge.images is empty: set it to the folder of challenge images")
        gt_path, images_dir = Path(params.ground_truth), Path(params.images)
        meta_path = Path(params.metadata_csv) if params.metadata_csv else None
    if not images_dir.is_dir():
        raise DataError(f"ingest.challenge.images {images_dir}: folder not found")

    fmt, rows, gt_failures = read_ground_truth(gt_path, params.format)
    failures.extend(gt_failures)
    spec = FORMATS[fmt]
    extra: dict[str, dict[str, Any]] = {}
    if meta_path is not None:
        extra, meta_failures = read_extra_metadata(meta_path)
        failures.extend(meta_failures)
    files, scan_failures, n_ignored = index_challenge_images(images_dir)
    failures.extend(scan_failures)

    items: list[ImportItem] = []
    for line, isic_id, fields in rows:
        where = {"file": gt_path.name, "row": line, "isic_id": isic_id}
        if isic_id not in files:
            failures.append({**where, "reason": f"no image file for {isic_id} in {images_dir}"})
            continue
        for key, value in extra.get(isic_id, {}).items():
            fields.setdefault(key, value)  # the ground truth wins where both have a value
        fields["challenge"] = fmt
        rel, path = files[isic_id]
        items.append(ImportItem(rel=rel, path=path, fields=fields, real_id=isic_id, where=where))
    items, hashes = hash_items(items, failures, f"challenge {fmt}: reading")
    defaults = {"attribution": spec.attribution, "copyright_license": spec.license}
    records, stats = write_items(
        raw_dir, [(it.real_id or "", it) for it in items], hashes, failures, defaults
    )
    if not records:
        raise DataError(
            f"{gt_path}: none of {len(rows) + len(gt_failures)} row(s) could be imported; first problems: "
            + "; ".join(f"row {f.get('row', '?')}: {f['reason']}" for f in failures[:3])
        )
    ground_truth_ids = {isic_id for _, isic_id, _ in rows}
    report = {
        "source": "challenge",
        "format": fmt,
        "format_detected": params.format == "auto",
        "ground_truth": str(gt_path),
        "images": str(images_dir),
        "metadata_csv": str(meta_path) if meta_path else None,
        "params": asdict(params),
        "download": download_report,
        "n_ground_truth_rows": len(rows) + len(gt_failures),
        "n_metadata_rows_merged": len(ground_truth_ids & set(extra)),
        "n_metadata_rows_unmatched": len(set(extra) - ground_truth_ids),
        "n_image_files_without_row": len(set(files) - ground_truth_ids),
        "n_ignored_files": n_ignored,
        **stats,
        "counts": {
            "labels": label_summary(records),
            "diagnosis": dict(Counter(str(r.get("diagnosis", "")) for r in records).most_common()),
            "benign_malignant": dict(
                Counter(str(r.get("benign_malignant", "")) for r in records).most_common()
            ),
        },
        "n_failures": len(failures),
        "failures": failures,
        "seconds": round(time.perf_counter() - start, 3),
    }
    texts = license_texts_for(records, {}, source=f"ISIC challenge {fmt}")
    write_raw_metadata(raw_dir, records, texts, report)
    log.info(
        "challenge import (%s%s): %d images, %d failures",
        fmt, ", detected" if params.format == "auto" else "", len(records), len(failures),
    )  # fmt: skip
    return report
