"""The ISIC challenge ground-truth formats: detection, validation and the parser of one row of each.

The formats (see shared reference isic_api.md §8) are listed in ``melanoma.sources.challenge``.
Class codes come from the shared vocabulary ``common.vocabulary.CLASS_FOLDERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melanoma.errors import DataError
from melanoma.sources.common.ids import isic_id_from_name
from melanoma.sources.common.items import Failure
from melanoma.sources.common.table import age_cell, csv_rows, parse_flag, read_csv_table
from melanoma.sources.common.vocabulary import CLASS_FOLDERS, UNKNOWN_CLASS, label_fields, site_general

# One-hot column codes (and HAM10000 dx values) -> the shared class vocabulary.
CLASS_CODES = {c: CLASS_FOLDERS[c] for c in ("mel", "nv", "bcc", "scc", "akiec", "ak", "bkl", "df", "vasc")}
CLASS_CODES["unk"] = UNKNOWN_CLASS
HAM_CODES = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")
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

# ---------------------------------------------------------------------------------------- formats


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


def check_format(path: Path, fmt: str, first_row: list[str]) -> str:
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


# ------------------------------------------------------------------------- one row of each format
# Each takes the row as {lower-case column: cell} and returns (image name, metadata fields);
# a ValueError says what is wrong with the row.

Row = dict[str, str]


def _one_hot(row: Row, codes: tuple[str, ...]) -> dict[str, Any]:
    hot = [c for c in codes if row.get(c) and parse_flag(row[c]) == 1]
    if not hot:
        raise ValueError(f"no class is 1 among {', '.join(c.upper() for c in codes)}")
    if len(hot) > 1:
        raise ValueError(f"several classes are 1 ({', '.join(c.upper() for c in hot)}); expected exactly one")
    for c in codes:  # the zeros must parse too: a typo there is a broken row, not a zero
        if row.get(c):
            parse_flag(row[c])
    return label_fields(CLASS_CODES[hot[0]])


def _row_2016(row: Row) -> tuple[str, dict[str, Any]]:
    value = row["label"].casefold()
    if value in ("benign", "malignant"):
        return row["image"], {"benign_malignant": value}
    try:
        flag = parse_flag(value)
    except ValueError:
        raise ValueError(f"label {row['label']!r} is not benign, malignant, 0 or 1") from None
    return row["image"], {"benign_malignant": "malignant" if flag else "benign"}


def _row_2017(row: Row) -> tuple[str, dict[str, Any]]:
    mel, sk = parse_flag(row["melanoma"]), parse_flag(row["seborrheic_keratosis"])
    if mel and sk:
        raise ValueError("melanoma and seborrheic_keratosis are both 1")
    # The 2017 task has three classes: both 0 means nevus.
    dx = "melanoma" if mel else "seborrheic keratosis" if sk else "nevus"
    return row["image_id"], {"diagnosis": dx, "benign_malignant": "malignant" if mel else "benign"}


def _row_2018(row: Row) -> tuple[str, dict[str, Any]]:
    return row["image"], _one_hot(row, ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"))


def _row_2019(row: Row) -> tuple[str, dict[str, Any]]:
    codes = ("mel", "nv", "bcc", "ak", "bkl", "df", "vasc", "scc") + (("unk",) if "unk" in row else ())
    return row["image"], _one_hot(row, codes)


def _row_2020(row: Row) -> tuple[str, dict[str, Any]]:
    fields: dict[str, Any] = {key: row[key] for key in ("patient_id", "lesion_id", "sex") if row.get(key)}
    if row.get("age_approx"):
        fields["age_approx"] = age_cell(row["age_approx"])
    if site := site_general(row.get("anatom_site_general_challenge", "")):
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


def _row_ham10000(row: Row) -> tuple[str, dict[str, Any]]:
    dx = row["dx"].casefold()
    if dx not in HAM_CODES:
        raise ValueError(f"dx {row['dx']!r} is not one of {', '.join(HAM_CODES)}")
    fields = {**label_fields(CLASS_CODES[dx]), "lesion_id": row["lesion_id"]}
    if row.get("dx_type"):
        fields["diagnosis_confirm_type"] = HAM_DX_TYPE.get(row["dx_type"].casefold(), row["dx_type"])
    if row.get("age"):
        fields["age_approx"] = age_cell(row["age"], round_to=5)
    if row.get("sex", "").casefold() in ("male", "female"):
        fields["sex"] = row["sex"].casefold()
    if site := site_general(row.get("localization", "")):
        fields["anatom_site_general"] = site
    if row.get("dataset"):
        fields["dataset"] = row["dataset"]
    return row["image_id"], fields


ROW_PARSERS: dict[str, Callable[[Row], tuple[str, dict[str, Any]]]] = {
    "2016": _row_2016,
    "2017": _row_2017,
    "2018": _row_2018,
    "2019": _row_2019,
    "2020": _row_2020,
    "ham10000": _row_ham10000,
}


# ------------------------------------------------------------------------------------ the CSV files


def read_ground_truth(
    path: Path, fmt: str
) -> tuple[str, list[tuple[int, str, dict[str, Any]]], list[Failure]]:
    """(format, [(line, isic_id, fields)], failures) of a ground-truth CSV; DataError if unusable."""
    _, rows = read_csv_table(path, has_header=False)
    if not rows:
        raise DataError(f"{path}: the ground-truth file is empty")
    fmt = check_format(path, fmt, rows[0][1])
    if fmt == "2016":
        header, body = ["image", "label"], rows
    else:
        header, body = [h.strip().casefold() for h in rows[0][1]], rows[1:]
    parse = ROW_PARSERS[fmt]
    failures: list[Failure] = []
    good: list[tuple[int, str, dict[str, Any]]] = []
    first_line: dict[str, int] = {}
    for where, cells in csv_rows(path.name, len(header), body, failures):
        try:
            image, fields = parse(dict(zip(header, cells, strict=True)))
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
            reason = f"{isic_id} repeated (first at row {first_line[isic_id]})"
            failures.append({**where, "isic_id": isic_id, "reason": reason})
            continue
        first_line[isic_id] = where["row"]
        if image != isic_id:
            fields["source_image"] = image
        good.append((where["row"], isic_id, fields))
    return fmt, good, failures
