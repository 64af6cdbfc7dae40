"""Every file one stage hands to the next, defined, read and written in one place.

Stages depend on this module, never on each other: a stage reads its input through the reader
here and writes its output through the writer here. It depends on nothing above it (only the
atomic writers and the error types), so changing a stage's code never changes another's inputs.

The hand-offs::

    ingest   -> data/raw/        images/<isic_id>.<ext>, metadata.csv (isic-cli columns),
                                 attribution.txt, licenses/<lic>.txt, ingest_report.json
    prepare  -> data/prepared/   images.npy (N x S x S x 3 uint8), index.csv (row i = image i),
                                 prepare_report.json, provenance/ (raw's small files + licences.json)
    split    -> data/splits/     {train,val,test}.csv (rows of index.csv + group), split_report.json
    external -> data/external/   external_report.json; when a set is configured also images.npy,
                                 index.csv, prepare_report.json (the prepared layout, same prepare params)
    train@X  -> models/X/        the family's own files, model.json, history.json (deep models)
    evaluate -> reports/metrics/X.json, reports/plots/X/

Tracked outputs are byte-reproducible: no timings, run ids or host names go into any of them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma import atomic
from melanoma.errors import DataError
from melanoma.image_rows import ArrayAppender, ImageRows

# ---------------------------------------------------------------- raw layout (ingest -> prepare)
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


def index_image_files(images_dir: Path) -> dict[str, Path]:
    """Map file stem (isic_id) -> path for every image file in ``images_dir``."""
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder is missing")
    try:
        entries = list(os.scandir(images_dir))
    except OSError as exc:
        raise DataError(f"{images_dir}: cannot list the image folder: {exc}") from exc
    files: dict[str, Path] = {}
    for entry in entries:
        path = Path(entry.path)
        if entry.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            files[path.stem] = path
    return files


# ------------------------------------------------------ prepared set (prepare -> split, train, ...)
ARRAY_FILE = "images.npy"
INDEX_FILE = "index.csv"
PREPARE_REPORT = "prepare_report.json"
# Text columns of index.csv that must never be parsed as numbers (ids with leading zeros).
_ID_DTYPES = {"isic_id": str, "patient_id": str, "lesion_id": str}


def write_prepared(
    out_dir: Path, images: np.ndarray | None, index: pd.DataFrame, report: Mapping[str, Any]
) -> None:
    """Write images.npy, index.csv and prepare_report.json into ``out_dir`` (a fresh temp folder).

    ``images`` None: images.npy is already there (written row by row with ``prepared_appender``).
    """
    out_dir = Path(out_dir)
    if images is not None:
        with atomic.atomic_path(out_dir / ARRAY_FILE) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(images, dtype=np.uint8))
    n_images = len(np.load(out_dir / ARRAY_FILE, mmap_mode="r"))  # reads the header only
    if len(index) != n_images:
        raise ValueError(f"index has {len(index)} rows for {n_images} images")
    with atomic.atomic_path(out_dir / INDEX_FILE) as tmp:
        index.to_csv(tmp, index=False, lineterminator="\n")
    atomic.write_json(out_dir / PREPARE_REPORT, dict(report))


def prepared_appender(out_dir: Path, image_size: int) -> ArrayAppender:
    """images.npy of ``out_dir`` (a fresh temp folder), written one image at a time."""
    return ArrayAppender(Path(out_dir) / ARRAY_FILE, (image_size, image_size, 3), np.uint8)


def load_prepared(prepared_dir: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Memory-map the image array and read the index of a prepared folder."""
    prepared_dir = Path(prepared_dir)
    array_path, index_path = prepared_dir / ARRAY_FILE, prepared_dir / INDEX_FILE
    for p in (array_path, index_path):
        if not p.is_file():
            raise DataError(f"{p}: missing; run the prepare stage first")
    images = np.load(array_path, mmap_mode="r")
    index = pd.read_csv(index_path, dtype=_ID_DTYPES, keep_default_na=False)
    if len(index) != len(images):
        raise DataError(
            f"{prepared_dir}: index has {len(index)} rows but the array holds {len(images)} images"
        )
    return images, index


# ----------------------------------------------------------- external set (external -> evaluate)
EXTERNAL_REPORT = "external_report.json"


@dataclass(frozen=True)
class ExternalSet:
    """A prepared external test set: images, index (row i = image i) and the external stage's report."""

    images: np.ndarray
    index: pd.DataFrame
    report: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.report.get("name") or self.report.get("source"))


def write_external(
    out_dir: Path,
    report: Mapping[str, Any],
    prepared: tuple[np.ndarray, pd.DataFrame, Mapping[str, Any]] | None = None,
) -> None:
    """Replace ``out_dir`` with external_report.json and, for a configured set, the prepared layout.

    ``prepared`` = (images, index, prepare report); None when there is no external set (the report
    alone then says so, so the stage still has its output).
    """
    with atomic.atomic_dir(Path(out_dir)) as tmp:
        if prepared is not None:
            write_prepared(tmp, *prepared)
        atomic.write_json(tmp / EXTERNAL_REPORT, {"present": prepared is not None, **report})


def read_external_report(external_dir: Path) -> dict[str, Any]:
    """Read data/external/external_report.json."""
    return _read_json_file(Path(external_dir) / EXTERNAL_REPORT, "run the external stage first")


def load_external(external_dir: Path) -> ExternalSet | None:
    """The prepared external set, or None when the external stage recorded that there is none."""
    report = read_external_report(external_dir)
    if not report.get("present"):
        return None
    images, index = load_prepared(external_dir)
    return ExternalSet(images, index, report)


# --------------------------------------------------------------- splits (split -> train, evaluate)
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_REPORT = "split_report.json"


def write_splits(out_dir: Path, frames: Mapping[str, pd.DataFrame], report: Mapping[str, Any]) -> None:
    """Write out_dir/{train,val,test}.csv and out_dir/split_report.json, each atomically."""
    out_dir = Path(out_dir)
    for name in SPLITS:
        with atomic.atomic_path(out_dir / f"{name}.csv") as tmp:
            frames[name].to_csv(tmp, index=False, lineterminator="\n")
    atomic.write_json(out_dir / SPLIT_REPORT, dict(report))


def load_splits(splits_dir: Path) -> dict[str, pd.DataFrame]:
    """Read the train/val/test CSVs written by the split stage."""
    frames = {}
    for name in SPLITS:
        path = Path(splits_dir) / f"{name}.csv"
        if not path.is_file():
            raise DataError(f"{path}: missing; run the split stage first")
        frames[name] = pd.read_csv(path, dtype=_ID_DTYPES, keep_default_na=False)
    return frames


def split_arrays(images: np.ndarray, frame: pd.DataFrame) -> tuple[ImageRows, np.ndarray]:
    """Images (read on demand, in split order: never all in memory) and labels of one split."""
    return ImageRows(images, frame["row"].to_numpy()), frame["label"].to_numpy().astype(np.int64)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_hashes(prepared_dir: Path, splits_dir: Path) -> dict[str, str]:
    """Content hashes of a model's inputs: its lineage in model.json, MLflow tags and the registry."""
    out = {"images_sha256": file_sha256(Path(prepared_dir) / ARRAY_FILE)}
    for name in SPLITS:
        out[f"{name}_csv_sha256"] = file_sha256(Path(splits_dir) / f"{name}.csv")
    return out


# ------------------------------------------------------------ model folder (train -> evaluate, ...)
MODEL_JSON = "model.json"
HISTORY_JSON = "history.json"


def write_model_json(model_dir: Path, info: Mapping[str, Any]) -> None:
    """Write model.json: threshold, input size, data hashes, family details (no timings, no run ids)."""
    atomic.write_json(Path(model_dir) / MODEL_JSON, dict(info))


def read_model_json(model_dir: Path) -> dict[str, Any]:
    """Read ``model.json`` of a trained model folder."""
    path = Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise DataError(f"{path}: missing; train this model first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def write_history(model_dir: Path, history: Mapping[str, Any] | list[Any]) -> None:
    """Per-epoch training metrics (the DVC "Training-AUC" plot)."""
    atomic.write_json(Path(model_dir) / HISTORY_JSON, history)


def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 over every file of a model folder (relative path and content), in sorted order.

    Identifies a model by content, not by run: the same training inputs give the same
    fingerprint, so evaluation and the registry find its MLflow run and recognise a re-run.
    """
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        h.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        h.update(file_sha256(path).encode() + b"\n")
    return h.hexdigest()


# --------------------------------------------------------------- metrics (evaluate -> register, ...)
def write_metrics(path: Path, metrics: Mapping[str, Any]) -> None:
    """Write one model's metrics JSON (reports/metrics/X.json)."""
    atomic.write_json(Path(path), dict(metrics))


def read_metrics(path: Path) -> dict[str, Any]:
    """Read one model's metrics JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing; run the evaluate stage first")
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------- registry decision (register -> report)
def write_registry_decision(path: Path, decision: Mapping[str, Any]) -> None:
    """Write the register stage's decision (reports/registry.json): no timings, no run ids."""
    atomic.write_json(Path(path), dict(decision))


# ------------------------------------------- readers for the report stage (every hand-off above)
REGISTRY_JSON = "registry.json"  # written by register under reports/
PLOT_SERIES = ("roc", "prc", "calibration", "subgroups")  # evaluate's reports/plots/X/<key>.json
# written beside them only when an external set was scored (the metrics JSON then has "external")
EXTERNAL_PLOT_SERIES = ("external_roc", "external_prc")


def _read_json_file(path: Path, hint: str) -> Any:
    """Parse a JSON hand-off; DataError naming the file (and the stage to run) when unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing; {hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def read_ingest_report(raw_dir: Path) -> dict[str, Any]:
    """Read data/raw/ingest_report.json."""
    return _read_json_file(Path(raw_dir) / INGEST_REPORT, "run the ingest stage first")


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


def write_provenance(raw_dir: Path, out_dir: Path, meta: pd.DataFrame | None = None) -> None:
    """``out_dir/provenance/``: ingest_report.json, attribution.txt and licenses/ of ``raw_dir``
    (those present; their readers name what is missing), and licences.json (``licence_summary``)."""
    raw_dir, dest = Path(raw_dir), Path(out_dir) / PROVENANCE_DIR
    for name in (INGEST_REPORT, ATTRIBUTION_TXT):
        if (raw_dir / name).is_file():
            atomic.write_bytes(dest / name, (raw_dir / name).read_bytes())
    (dest / LICENSES_DIR).mkdir(parents=True, exist_ok=True)
    for path in sorted((raw_dir / LICENSES_DIR).glob("*.txt")):
        atomic.write_bytes(dest / LICENSES_DIR / path.name, path.read_bytes())
    atomic.write_json(dest / LICENCES_JSON, licence_summary(read_metadata(raw_dir) if meta is None else meta))


def read_licence_summary(provenance_dir: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(images per licence, CC-BY images per attribution) from provenance/licences.json."""
    path = Path(provenance_dir) / LICENCES_JSON
    summary = _read_json_file(path, "run the prepare stage first")
    if summary.get("counts") is None:
        raise DataError(f"{path}: the ingested metadata.csv had no copyright_license column")
    return dict(summary["counts"]), dict(summary.get("cc_by_attributions") or {})


def read_prepare_report(prepared_dir: Path) -> dict[str, Any]:
    """Read data/prepared/prepare_report.json."""
    return _read_json_file(Path(prepared_dir) / PREPARE_REPORT, "run the prepare stage first")


def read_split_report(splits_dir: Path) -> dict[str, Any]:
    """Read data/splits/split_report.json (per split: n, n_melanoma, n_benign, n_groups, ...)."""
    return _read_json_file(Path(splits_dir) / SPLIT_REPORT, "run the split stage first")


def read_history(model_dir: Path) -> list[dict[str, Any]] | None:
    """Per-epoch history of a deep model, or None for a model that has none (the baseline)."""
    path = Path(model_dir) / HISTORY_JSON
    if not path.is_file():
        return None
    history = _read_json_file(path, "retrain this model")
    if not isinstance(history, list):
        raise DataError(f"{path}: expected a list of per-epoch records")
    return history


def read_plot_data(plots_dir: Path, key: str) -> list[dict[str, Any]]:
    """One series evaluate wrote under reports/plots/X/ (``key`` in PLOT_SERIES)."""
    rows = _read_json_file(Path(plots_dir) / f"{key}.json", "run the evaluate stage first")
    if not isinstance(rows, list):
        raise DataError(f"{Path(plots_dir) / f'{key}.json'}: expected a list of rows")
    return rows


def read_registry_record(path: Path) -> dict[str, Any]:
    """Read the register stage's decision (reports/registry.json)."""
    return _read_json_file(path, "run the register stage first")
