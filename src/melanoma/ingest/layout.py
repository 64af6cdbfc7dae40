"""The one writer of the raw layout that every ingest source shares.

Layout (as isic-cli writes a download, see shared/reference/isic_api.md §4.7)::

    data/raw/images/<isic_id>.<ext>
    data/raw/metadata.csv        isic_id, attribution, copyright_license + sorted other keys
    data/raw/attribution.txt     distinct attributions by image count desc, name asc, "Anonymous" last
    data/raw/licenses/<lic>.txt  one per distinct copyright_license
    data/raw/ingest_report.json  what the source did (counts, failures, timing)
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from melanoma import atomic

ISIC_ID_RE = re.compile(r"^ISIC_\d{7}$")
FIRST_COLUMNS = ("isic_id", "attribution", "copyright_license")
IMAGES_DIR = "images"
METADATA_CSV = "metadata.csv"
ATTRIBUTION_TXT = "attribution.txt"
LICENSES_DIR = "licenses"
REPORT_JSON = "ingest_report.json"


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
    Images are written by the source itself into ``raw_dir / IMAGES_DIR``.
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
    atomic.write_json(raw_dir / REPORT_JSON, dict(report))
