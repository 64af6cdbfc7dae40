"""Import a local folder of lesion images into the raw layout (``ingest.source: folder``).

The output is the same raw layout every source writes (``melanoma.ingest.layout``), so prepare,
split and train do not care where the images came from.

Where each image's label comes from
-----------------------------------
* ``metadata_csv`` set: one CSV row per image. The image column is the first of
  ``IMAGE_COLUMNS`` present (a stem, a file name or a relative path); label columns of any ISIC
  era are kept as they are (``diagnosis_1..5``, ``benign_malignant``, ``diagnosis``), and
  ``target`` / ``melanoma`` (0/1; ``seborrheic_keratosis`` as in 2017) and ``label`` / ``class`` /
  ``dx`` (the class-folder vocabulary below) are translated into them. Other columns are copied.
* otherwise a class folder: the nearest folder above the image whose name is in
  ``CLASS_FOLDERS`` (case-insensitive; ``_``, ``-`` and spaces are the same) gives the label;
  any folders above it are split folders (``train/``, ``part1/test/``) kept as ``source_split``.
* or an ISIC JSON sidecar ``<stem>.json`` next to the image (API v1 ``{"name", "meta":
  {"clinical", "acquisition"}}`` or v2 ``{"isic_id", "metadata": {...}}``); a class folder wins
  for the label fields when both exist.

Class folder vocabulary (``benign_malignant`` / legacy ``diagnosis`` written)::

    benign, 0                      benign    /  -
    malignant, 1                   malignant /  -
    melanoma, mel                  malignant /  melanoma
    nevus, nevi, nv                benign    /  nevus
    bcc, basal cell carcinoma      malignant /  basal cell carcinoma
    scc, squamous cell carcinoma   malignant /  squamous cell carcinoma
    bkl, pigmented benign keratosis   benign /  pigmented benign keratosis
    seborrheic keratosis, sk       benign    /  seborrheic keratosis
    df, dermatofibroma             benign    /  dermatofibroma
    vasc, vascular lesion          benign    /  vascular lesion
    akiec, ak, actinic keratosis   -         /  actinic keratosis

``melanoma.labels`` then makes ``malignant`` without a diagnosis a melanoma (as the benign vs
malignant study did) and any named non-melanoma diagnosis the negative class.

Ids
---
A file (or CSV value, or sidecar name) called ``ISIC_\\d{7}`` (any case, optional
``_downsampled``) keeps that id. Every other image gets a synthetic id from the reserved range
``ISIC_9000000..ISIC_9999999`` in the order of the sorted relative paths, skipping ids already
taken, so a re-import of the same folder gives the same ids; ``id_assigned`` is True for them and
``source_path`` names the original file. Synthetic ids are unique only within one import.

Licence: a ``LICENSE``/``LICENCE`` file at the folder root naming CC0, CC BY or CC BY-NC gives
that licence; another licence file is kept as ``custom``; with none the licence is ``unknown``
and ``licenses/unknown.txt`` says that the distributor stated none (a CSV or sidecar
``copyright_license`` wins). The attribution is the first line of a root ``ATTRIBUTION.txt``,
else ``Unknown (local folder <name>)``. Files are hardlinked into
``images/`` when the filesystem allows it, else copied. Exact duplicate files are kept (prepare
drops them) and listed in the report.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from melanoma import atomic
from melanoma.config import FolderParams
from melanoma.contracts import IMAGE_SUFFIXES, IMAGES_DIR, write_raw_metadata
from melanoma.errors import DataError
from melanoma.labels import LABEL_COLUMNS, derive_label

log = logging.getLogger(__name__)

# An ISIC id in a file name; the 2019 challenge names some files ISIC_xxxxxxx_downsampled.
ID_IN_NAME_RE = re.compile(r"^isic_(\d{7})(?:_downsampled)?$", re.IGNORECASE)
SYNTHETIC_ID_START = 9_000_000
SYNTHETIC_ID_END = 9_999_999
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

# name (normalised) -> (benign_malignant or None, legacy diagnosis or None)
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

# HAM10000 localization / 2020 sites -> ISIC anatom_site_general.
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

UNKNOWN_LICENSE = "unknown"
CUSTOM_LICENSE = "custom"
_CC = {
    "CC-0": ("CC0 1.0 Universal (CC0 1.0) Public Domain Dedication", "https://creativecommons.org/publicdomain/zero/1.0/"),
    "CC-BY": ("Creative Commons Attribution 4.0 International (CC BY 4.0)", "https://creativecommons.org/licenses/by/4.0/"),
    "CC-BY-NC": ("Creative Commons Attribution-NonCommercial 4.0 International (CC BY-NC 4.0)",
                 "https://creativecommons.org/licenses/by-nc/4.0/"),
}  # fmt: skip


# ------------------------------------------------------------------------------------- shared helpers


def normalise_class(name: str) -> str:
    """Case-folded name with ``_``/``-`` as spaces, for the class vocabulary."""
    return " ".join(re.split(r"[\s_\-]+", name.strip().casefold())).strip()


def isic_id_from_name(name: str) -> str | None:
    """``ISIC_1234567`` from a stem like ``isic_1234567`` or ``ISIC_1234567_downsampled``, else None."""
    m = ID_IN_NAME_RE.match(name.strip())
    return f"ISIC_{m.group(1)}" if m else None


def license_text(lic: str, source: str = "") -> str:
    """A short licences/<lic>.txt for a Creative Commons licence or the ``unknown`` licence."""
    if lic in _CC:
        name, url = _CC[lic]
        where = f" ({source})" if source else ""
        return f"{lic}: {name}\n{url}\n\nThe images{where} are released under the licence named above.\n"
    if lic == UNKNOWN_LICENSE:
        return (
            "unknown: the distributor of these images did not state a licence.\n\n"
            "Images that come from the ISIC Archive are licensed per image (CC-0, CC-BY or CC-BY-NC); "
            "find out the licence of the original source before any use beyond research and testing.\n"
        )
    return f"{lic}: a licence named by the source's metadata; its text was not supplied with the images.\n"


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


def hash_file(path: Path) -> tuple[str, int]:
    """(sha1, size) of a file; reading it all is also the readability check."""
    digest = hashlib.sha1()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


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
                if not any(c.strip() for c in cells):
                    continue
                rows.append((reader.line_num, [c.strip() for c in cells]))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV file: {exc}") from exc
    if not has_header:
        return [], rows
    if not rows:
        raise DataError(f"{path}: the CSV file is empty (no header)")
    return rows[0][1], rows[1:]


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


def site_general(value: str) -> str:
    """ISIC ``anatom_site_general`` for a HAM10000/2020 site name (unchanged if already ISIC's)."""
    low = value.strip().casefold()
    return SITE_MAP.get(low, low)


def scan_images(root: Path) -> tuple[list[tuple[str, Path]], dict[str, Path], list[dict], int]:
    """All image files below ``root``: ([(relative posix path, path)], sidecar JSONs, failures, n_ignored).

    Symlinked folders are followed (once each). Hidden files and folders (``.x``, ``__MACOSX``) are
    skipped; other non-image files are counted as ignored. Sidecars are keyed by relative path
    without the suffix.
    """
    images: list[tuple[str, Path]] = []
    sidecars: dict[str, Path] = {}
    failures: list[dict] = []
    ignored = 0
    seen_dirs: set[str] = set()

    def on_error(exc: OSError) -> None:
        rel = os.path.relpath(exc.filename, root) if exc.filename else "?"
        failures.append(
            {"path": Path(rel).as_posix(), "reason": f"cannot list folder: {exc.strerror or exc}"}
        )

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                images.append((rel, path))
            elif suffix == ".json":
                sidecars[rel[: -len(path.suffix)]] = path
            else:
                ignored += 1
    images.sort()
    return images, sidecars, failures, ignored


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


# --------------------------------------------------------------------------------------- the importer


@dataclass
class ImportItem:
    """One image on its way into the raw layout."""

    rel: str  # relative path below the source folder (posix)
    path: Path
    fields: dict[str, Any]  # metadata fields, labels included
    source_split: str | None = None  # folder imports only: the split folders above the class folder
    real_id: str | None = None  # an ISIC id the source gave, else a synthetic one is assigned
    where: dict[str, Any] = field(default_factory=dict)  # row number etc. for failure messages


def _class_of(rel: str) -> tuple[tuple[str | None, str | None] | None, str, str]:
    """(label from the nearest class folder or None, split folders above it, immediate parent)."""
    parts = rel.split("/")[:-1]
    for i in range(len(parts) - 1, -1, -1):
        label = CLASS_FOLDERS.get(normalise_class(parts[i]))
        if label is not None:
            return label, "/".join(parts[:i]), parts[i]
    return None, "/".join(parts), parts[-1] if parts else ""


def _label_fields(label: tuple[str | None, str | None]) -> dict[str, str]:
    bm, dx = label
    out = {}
    if bm:
        out["benign_malignant"] = bm
    if dx:
        out["diagnosis"] = dx
    return out


def _resolve_csv(folder: Path, metadata_csv: str) -> Path:
    """A relative ``metadata_csv`` is looked up inside the folder first, then from the working directory."""
    path = Path(metadata_csv)
    if not path.is_absolute() and (folder / path).is_file():
        return folder / path
    return path


def _csv_row_fields(header: list[str], cells: list[str], image_col: int) -> dict[str, Any]:
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
            out["age_approx"] = parse_age(raw, 5 if low == "age" else 0)
        elif low in ("localization", "anatom_site_general_challenge", "anatom_site_general"):
            site = site_general(raw)
            if site:
                out["anatom_site_general"] = site
        elif low in CLASS_COLUMNS or low in ("target", "melanoma", "seborrheic_keratosis"):
            continue  # translated below
        else:
            out[name] = raw
    # Derived label fields only fill what the explicit ISIC label columns left empty.
    derived: dict[str, str] = {}
    for col in CLASS_COLUMNS:
        if row.get(col):
            label = CLASS_FOLDERS.get(normalise_class(row[col]))
            if label is None:
                raise ValueError(f"{col} {row[col]!r} is not a known class ({', '.join(CLASS_FOLDERS)})")
            derived = {**_label_fields(label), **derived}
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
    for key, value in derived.items():
        out.setdefault(key, value)
    return out


def _items_from_csv(csv_path: Path, images: list[tuple[str, Path]], failures: list[dict]) -> list[ImportItem]:
    header, rows = read_csv_table(csv_path)
    lower = [h.strip().casefold() for h in header]
    image_col = next((lower.index(c) for c in IMAGE_COLUMNS if c in lower), None)
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
    by_rel = {rel: (rel, p) for rel, p in images}
    by_rel_ci: dict[str, list] = defaultdict(list)
    by_name: dict[str, list] = defaultdict(list)
    by_stem: dict[str, list] = defaultdict(list)
    by_id: dict[str, list] = defaultdict(list)
    for rel, p in images:
        by_rel_ci[rel.casefold()].append((rel, p))
        by_name[p.name].append((rel, p))
        by_stem[p.stem].append((rel, p))
        if (found := isic_id_from_name(p.stem)) is not None:
            by_id[found].append((rel, p))

    items: list[ImportItem] = []
    used: dict[str, int] = {}
    name = csv_path.name
    for line, cells in rows:
        where = {"file": name, "row": line}
        if len(cells) != len(header):
            failures.append({**where, "reason": f"has {len(cells)} fields, the header has {len(header)}"})
            continue
        value = cells[image_col].replace("\\", "/").removeprefix("./")
        if not value:
            failures.append({**where, "reason": f"empty {header[image_col]}"})
            continue
        as_path = PurePosixPath(value)
        value_id = isic_id_from_name(
            as_path.stem if as_path.suffix.lower() in IMAGE_SUFFIXES else as_path.name
        )
        found = (
            ([by_rel[value]] if value in by_rel else [])
            or by_rel_ci.get(value.casefold())
            or by_name.get(value)
            or by_stem.get(value)
            or (by_id.get(value_id) if value_id else None)
            or []
        )
        if not found:
            failures.append({**where, "image": value, "reason": "no image file matches this row"})
            continue
        if len(found) > 1:
            paths = ", ".join(rel for rel, _ in found[:3])
            failures.append(
                {**where, "image": value, "reason": f"ambiguous: matches several files ({paths})"}
            )
            continue
        rel, path = found[0]
        if rel in used:
            failures.append(
                {**where, "image": value, "reason": f"second row for {rel} (first at row {used[rel]})"}
            )
            continue
        try:
            fields = _csv_row_fields(header, cells, image_col)
        except ValueError as exc:
            failures.append({**where, "image": value, "reason": f"bad value: {exc}"})
            continue
        used[rel] = line
        label, split, _ = _class_of(rel)
        if label is not None:  # a class folder only fills label fields the row left empty
            for key, val in _label_fields(label).items():
                fields.setdefault(key, val)
        else:
            split = rel.rpartition("/")[0]
        items.append(
            ImportItem(
                rel=rel,
                path=path,
                fields=fields,
                source_split=split,
                real_id=value_id or isic_id_from_name(path.stem),
                where=where,
            )
        )
    for rel, _ in images:
        if rel not in used:
            failures.append({"path": rel, "reason": f"no row in {name} (image without a label row)"})
    return items


def _items_from_folders(
    images: list[tuple[str, Path]], sidecars: Mapping[str, Path], failures: list[dict]
) -> list[ImportItem]:
    items: list[ImportItem] = []
    unknown: dict[str, list[str]] = defaultdict(list)  # parent folder -> images there
    for rel, path in images:
        label, split, parent = _class_of(rel)
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
            fields.update(_label_fields(label))  # the class folder wins over the sidecar
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


def assign_ids(
    items: list[ImportItem], hashes: Mapping[str, str], failures: list[dict]
) -> tuple[list[tuple[str, ImportItem]], list[dict[str, str]]]:
    """([(isic_id, item)], skipped copies): real ids first, then synthetic ones in sorted path order.

    A real id given twice keeps the first file (sorted path); a later one is a failure if its
    content differs, and is skipped (listed as a copy, nothing is lost) if it is the same file.
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
    next_id = SYNTHETIC_ID_START
    for item in pending:
        while f"ISIC_{next_id:07d}" in taken:
            next_id += 1
        if next_id > SYNTHETIC_ID_END:
            raise DataError("more images than the synthetic id range ISIC_9000000..ISIC_9999999 holds")
        new_id = f"ISIC_{next_id:07d}"
        taken[new_id] = item
        item.fields["id_assigned"] = True
        out.append((new_id, item))
    return out, copies


def label_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How prepare will label the records: melanoma / not_melanoma / unlabeled counts."""
    counts = Counter()
    for r in records:
        label, _ = derive_label(r)
        counts["unlabeled" if label is None else ("melanoma" if label == 1 else "not_melanoma")] += 1
    return {k: counts.get(k, 0) for k in ("melanoma", "not_melanoma", "unlabeled")}


def _try_hash(path: Path) -> tuple[str, int] | OSError:
    try:
        return hash_file(path)
    except OSError as exc:
        return exc


def hash_items(
    items: list[ImportItem], failures: list[dict], desc: str
) -> tuple[list[ImportItem], dict[str, str]]:
    """Read every file once (readability check + sha1); unreadable or empty files become failures.

    Threads, because the work is file I/O and hashlib releases the GIL on large buffers.
    """
    good: list[ImportItem] = []
    hashes: dict[str, str] = {}
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_try_hash, [it.path for it in items])
        for item, res in zip(items, tqdm(results, total=len(items), desc=desc, unit="img", leave=False,
                                         mininterval=1.0), strict=True):  # fmt: skip
            if isinstance(res, OSError):
                reason = f"unreadable file: {res.strerror or res}"
                failures.append({**item.where, "path": item.rel, "reason": reason})
            elif res[1] == 0:
                failures.append({**item.where, "path": item.rel, "reason": "empty file (0 bytes)"})
            else:
                hashes[item.rel] = res[0]
                good.append(item)
    return good, hashes


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


def write_items(
    raw_dir: Path,
    assigned: list[tuple[str, ImportItem]],
    hashes: Mapping[str, str],
    failures: list[dict],
    defaults: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Link or copy each image to ``images/<isic_id><ext>``; returns (metadata records, report stats)."""
    images_dir = Path(raw_dir) / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    methods: Counter[str] = Counter()
    by_hash: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for isic_id, item in tqdm(assigned, desc="writing images", unit="img", leave=False, mininterval=1.0):
        dest = images_dir / f"{isic_id}{item.path.suffix.lower()}"
        try:
            methods[place_file(item.path, dest)] += 1
        except OSError as exc:
            failures.append(
                {**item.where, "path": item.rel, "reason": f"cannot copy into {dest.parent}: {exc}"}
            )
            continue
        record: dict[str, Any] = {**defaults, **item.fields, "isic_id": isic_id}
        record["copyright_license"] = safe_license_id(str(record.get("copyright_license") or UNKNOWN_LICENSE))
        record["source_path"] = item.rel
        if item.source_split is not None:  # folder imports: say which ids are made up, and the split
            record["id_assigned"] = bool(item.fields.get("id_assigned", False))
            record["source_split"] = item.source_split
        records.append(record)
        by_hash[hashes[item.rel]].append(record)
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
    duplicates.sort(key=lambda d: d["isic_ids"][0])
    stats = {
        "n_images": len(records),
        "n_linked": methods["link"],
        "n_copied": methods["copy"],
        "n_synthetic_ids": sum(1 for r in records if r.get("id_assigned")),
        "n_duplicate_files": sum(len(d["isic_ids"]) - 1 for d in duplicates),
        "duplicates": duplicates,
    }
    return records, stats


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
    images, sidecars, failures, n_ignored = scan_images(folder)
    if not images:
        raise DataError(
            f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder or below it"
        )
    if params.metadata_csv:
        csv_path = _resolve_csv(folder, params.metadata_csv)
        mode = "metadata_csv"
        items = _items_from_csv(csv_path, images, failures)
    else:
        csv_path = None
        mode = "class_folders"
        items = _items_from_folders(images, sidecars, failures)

    lic, lic_text = detect_license(folder)
    attribution = detect_attribution(folder) or f"Unknown (local folder {folder.resolve().name})"
    items, hashes = hash_items(items, failures, "folder: reading")
    assigned, copies = assign_ids(items, hashes, failures)
    defaults = {"attribution": attribution, "copyright_license": lic}
    records, stats = write_items(raw_dir, assigned, hashes, failures, defaults)
    if not records:
        raise DataError(
            f"{folder}: none of {len(images)} image(s) could be imported; first problems: "
            + "; ".join(f"{f.get('path', f.get('row'))}: {f['reason']}" for f in failures[:3])
        )
    texts = license_texts_for(records, {lic: lic_text} if lic_text else {}, str(folder), search=folder)
    report = {
        "source": "folder",
        "path": str(folder),
        "mode": mode,
        "metadata_csv": str(csv_path) if csv_path else None,
        "params": asdict(params),
        "seed_used": False,
        "n_image_files": len(images),
        "n_ignored_files": n_ignored,
        **stats,
        "same_id_copies_skipped": copies,
        "counts": {
            "labels": label_summary(records),
            "benign_malignant": dict(
                Counter(str(r.get("benign_malignant", "")) for r in records).most_common()
            ),
            "diagnosis": dict(Counter(str(r.get("diagnosis", "")) for r in records).most_common()),
            "source_split": dict(Counter(str(r.get("source_split", "")) for r in records).most_common()),
            "copyright_license": dict(Counter(str(r["copyright_license"]) for r in records).most_common()),
        },
        "n_failures": len(failures),
        "failures": failures,
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_raw_metadata(raw_dir, records, texts, report)
    log.info(
        "folder import: %d images from %s (%d failures, %d duplicate files)",
        len(records), folder, len(failures), stats["n_duplicate_files"],
    )  # fmt: skip
    return report
