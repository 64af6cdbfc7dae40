"""The raw layout (ingest -> prepare) and the provenance prepare carries from it, defined, read and
written in one place (the other hand-offs are ``contracts``'s).

``data/raw/``: images/<isic_id>.<ext>, metadata.csv (isic-cli columns), attribution.txt,
licenses/<lic>.txt, ingest_report.json. Every source writes it through ``write_raw_metadata``;
prepare reads it and copies its small files into ``data/prepared/provenance/`` (with licences.json),
from where the report reads them, so the report never depends on ``data/raw``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from melanoma import atomic
from melanoma.contracts import read_json
from melanoma.errors import DataError

ISIC_ID_RE = re.compile(r"^ISIC_\d{7}$")
FIRST_COLUMNS = ("isic_id", "attribution", "copyright_license")
IMAGES_DIR = "images"
METADATA_CSV = "metadata.csv"
ATTRIBUTION_TXT = "attribution.txt"
LICENSES_DIR = "licenses"
INGEST_REPORT = "ingest_report.json"
# Image file suffixes that count as images in the raw layout and in every importer.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"})


def format_cell(value: Any) -> str:
    """Render one metadata value as isic-cli does (bools as True/False, None as empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def metadata_csv_text(records: Iterable[Mapping[str, Any]]) -> str:
    """Return metadata.csv content: the first three isic-cli columns, then the sorted union of keys.

    Rows are sorted by isic_id so that the file does not depend on listing or download order.
    """
    rows = sorted(records, key=lambda r: str(r["isic_id"]))
    other = sorted({k for r in rows for k in r} - set(FIRST_COLUMNS))
    header = list(FIRST_COLUMNS) + other
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow([format_cell(r.get(col)) for col in header])
    return buf.getvalue()


def attribution_text(records: Iterable[Mapping[str, Any]]) -> str:
    """Distinct attributions by image count (desc), then name; "Anonymous" last; blank-line separated."""
    counts = Counter(str(r.get("attribution") or "Anonymous") for r in records)
    names = sorted(counts, key=lambda a: (a == "Anonymous", -counts[a], a))
    return "\n\n".join(names)


def write_raw_metadata(
    raw_dir: Path,
    records: list[Mapping[str, Any]],
    license_texts: Mapping[str, str],
    report: Mapping[str, Any],
) -> None:
    """Write metadata.csv, attribution.txt, licenses/ and ingest_report.json under ``raw_dir``.

    ``license_texts`` must hold a text for every distinct ``copyright_license`` in ``records``.
    Images are written by the source itself into ``raw_dir / IMAGES_DIR``. The report must hold
    no timings (it is a tracked output): durations go to the log.
    """
    raw_dir = Path(raw_dir)
    for r in records:
        if not ISIC_ID_RE.match(str(r.get("isic_id", ""))):
            raise ValueError(f"refusing to write a record with isic_id {r.get('isic_id')!r}")
    missing = {str(r.get("copyright_license")) for r in records} - set(license_texts)
    missing.discard("None")
    if missing:
        raise ValueError(f"no licence text for {sorted(missing)}")
    atomic.write_text(raw_dir / METADATA_CSV, metadata_csv_text(records))
    atomic.write_text(raw_dir / ATTRIBUTION_TXT, attribution_text(records))
    used = {str(r["copyright_license"]) for r in records if r.get("copyright_license")}
    for lic in sorted(used):
        atomic.write_text(raw_dir / LICENSES_DIR / f"{lic}.txt", license_texts[lic])
    atomic.write_json(raw_dir / INGEST_REPORT, dict(report))


def read_metadata(raw_dir: Path) -> pd.DataFrame:
    """Read metadata.csv as strings (empty = missing), sorted by isic_id; DataError if unusable."""
    path = Path(raw_dir) / METADATA_CSV
    if not path.is_file():
        raise DataError(f"{path}: missing; run the ingest stage first (or check prepare's input folder)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot be parsed as CSV: {exc}") from exc
    if "isic_id" not in df.columns:
        raise DataError(f"{path}: required column 'isic_id' is missing (columns: {', '.join(df.columns)})")
    dup_ids = df["isic_id"][df["isic_id"].duplicated()].tolist()
    if dup_ids:
        raise DataError(f"{path}: isic_id repeated in several rows: {dup_ids[:5]}")
    return df.sort_values("isic_id", kind="stable").reset_index(drop=True)


def index_image_files(images_dir: Path) -> dict[str, str]:
    """Map file stem (isic_id) -> file name for every image file in ``images_dir``.

    Names, not Paths: at 400K images the Path objects alone would cost ~80 MB of the caller's RSS.
    """
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder is missing")
    files: dict[str, str] = {}
    try:
        with os.scandir(images_dir) as entries:
            for entry in entries:
                stem, dot, suffix = entry.name.rpartition(".")
                wanted = dot and f".{suffix.lower()}" in IMAGE_SUFFIXES and not entry.name.startswith(".")
                if wanted and stem and entry.is_file():
                    files[stem] = entry.name
    except OSError as exc:
        raise DataError(f"{images_dir}: cannot list the image folder: {exc}") from exc
    return files


def read_ingest_report(raw_dir: Path) -> dict[str, Any]:
    """Read data/raw/ingest_report.json."""
    return read_json(Path(raw_dir) / INGEST_REPORT, "run the ingest stage first")


def describe_source(report: dict[str, Any]) -> dict[str, Any]:
    """What a trained model's data was, from ingest_report.json: ``source`` (the kind), ``name`` (in
    words a person reads), ``synthetic`` (generated images that say nothing about real lesions)."""
    kind = str(report.get("source") or "unknown")
    if kind == "synthetic":
        name = f"built-in synthetic sample (seed {report.get('seed')}, {report.get('n_images')} generated images)"
    elif kind == "isic":
        what = report.get("query") or ", ".join(map(str, report.get("collections") or [])) or "all images"
        name = f"ISIC Archive ({what}; {report.get('n_images')} images)"
    elif kind == "challenge":
        name = f"ISIC challenge set ({report.get('format')}: {report.get('ground_truth')})"
    elif kind == "folder":
        name = f"image folder {Path(str(report.get('path'))).name} ({report.get('mode')})"
    else:
        name = kind
    return {"source": kind, "name": name, "synthetic": kind == "synthetic"}


def read_attribution(raw_dir: Path) -> list[str]:
    """The distinct attributions of attribution.txt, in file order (blank-line separated)."""
    path = Path(raw_dir) / ATTRIBUTION_TXT
    if not path.is_file():
        raise DataError(f"{path}: missing; run the ingest stage first")
    return [a.strip() for a in path.read_text(encoding="utf-8").split("\n\n") if a.strip()]


def read_license_texts(raw_dir: Path) -> dict[str, str]:
    """Licence name -> text for every licenses/<name>.txt, sorted by name."""
    folder = Path(raw_dir) / LICENSES_DIR
    if not folder.is_dir():
        raise DataError(f"{folder}: missing; run the ingest stage first")
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


# The raw layout's small files, carried into data/prepared by prepare: what reads them (the report)
# then never depends on data/raw, so a box that pulled data/prepared alone has them.
PROVENANCE_DIR = "provenance"
LICENCES_JSON = "licences.json"


def licence_summary(meta: pd.DataFrame) -> dict[str, Any]:
    """Images per licence and, for the CC-BY* images, per attribution (most first), over every row."""
    if "copyright_license" not in meta.columns:
        return {"counts": None, "cc_by_attributions": {}}
    lic = meta["copyright_license"].replace("", "unknown")
    attr = meta.get("attribution", pd.Series("", index=meta.index)).replace("", "Anonymous")
    by = attr[lic.str.upper().str.startswith("CC-BY")]
    return {
        "counts": dict(sorted(Counter(lic).items())),
        "cc_by_attributions": dict(sorted(Counter(by).items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def write_provenance(raw_dir: Path, out_dir: Path, licences: dict[str, Any] | None = None) -> None:
    """``out_dir/provenance/``: ingest_report.json, attribution.txt and licenses/ of ``raw_dir``
    (those present; their readers name what is missing), and licences.json (``licence_summary`` of
    the metadata, or ``licences`` where the caller has it already)."""
    raw_dir, dest = Path(raw_dir), Path(out_dir) / PROVENANCE_DIR
    for name in (INGEST_REPORT, ATTRIBUTION_TXT):
        if (raw_dir / name).is_file():
            atomic.write_bytes(dest / name, (raw_dir / name).read_bytes())
    (dest / LICENSES_DIR).mkdir(parents=True, exist_ok=True)
    for path in sorted((raw_dir / LICENSES_DIR).glob("*.txt")):
        atomic.write_bytes(dest / LICENSES_DIR / path.name, path.read_bytes())
    atomic.write_json(dest / LICENCES_JSON, licences or licence_summary(read_metadata(raw_dir)))


def read_licence_summary(provenance_dir: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(images per licence, CC-BY images per attribution) from provenance/licences.json."""
    path = Path(provenance_dir) / LICENCES_JSON
    summary = read_json(path, "run the prepare stage first")
    if summary.get("counts") is None:
        raise DataError(f"{path}: the ingested metadata.csv had no copyright_license column")
    return dict(summary["counts"]), dict(summary.get("cc_by_attributions") or {})
