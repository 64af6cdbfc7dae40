"""The ``metadata_csv`` mode: one CSV row per image, its labels translated, its image file found.

The image column is the first of ``IMAGE_COLUMNS`` present; ``csv_row_fields`` keeps the ISIC
label columns and translates ``CLASS_COLUMNS`` and ``target`` / ``melanoma`` into them;
``FileIndex`` finds the one file a row names.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from melanoma.errors import DataError
from melanoma.labels import LABEL_COLUMNS
from melanoma.raw_layout import IMAGE_SUFFIXES
from melanoma.sources.common.ids import isic_id_from_name
from melanoma.sources.common.items import Failure, ImportItem
from melanoma.sources.common.table import age_cell, csv_rows, first_column, parse_flag, read_csv_table
from melanoma.sources.common.vocabulary import CLASS_FOLDERS, label_fields, normalise_class, site_general
from melanoma.sources.folder.tree import RESERVED_COLUMNS, class_of

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
_SITE_COLUMNS = ("localization", "anatom_site_general_challenge", "anatom_site_general")


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


def _match_problem(found: list[tuple[str, Path]], used: Mapping[str, int]) -> str | None:
    """Why a row's matches are unusable (none, several, or a file an earlier row took), else None."""
    if len(found) != 1:
        paths = ", ".join(rel for rel, _ in found[:3])
        return f"ambiguous: matches several files ({paths})" if found else "no image file matches this row"
    rel = found[0][0]
    if rel in used:
        return f"second row for {rel} (first at row {used[rel]})"
    return None


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
        reason = _match_problem(found, used)
        if reason is None:
            try:
                fields = csv_row_fields(header, cells, image_col)
            except ValueError as exc:
                reason = f"bad value: {exc}"
        if reason is not None:
            failures.append({**where, "image": value, "reason": reason})
            continue
        rel, path = found[0]
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


def resolve_csv(folder: Path, metadata_csv: str) -> Path:
    """A relative ``metadata_csv`` is looked up inside the folder first, then from the working directory."""
    path = Path(metadata_csv)
    if not path.is_absolute() and (folder / path).is_file():
        return folder / path
    return path
