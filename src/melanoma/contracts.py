"""Every file one stage hands to the next, defined, read and written in one place.

Stages depend on this module, never on each other: a stage reads its input through the reader
here and writes its output through the writer here. It depends on nothing above it (only the
atomic writers, the error types and ``image_rows``), so changing a stage's code never changes
another's inputs. The raw layout (ingest's output, the first row below) and the provenance prepare
carries from it are defined in ``raw_layout``, on top of this module; the rest is here, with the
lineage of a model (``data_hashes``, ``model_fingerprint``).

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

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma import atomic
from melanoma.errors import DataError
from melanoma.image_rows import ArrayAppender, ImageRows


# ------------------------------------------------------------------ JSON hand-offs, read one way
def read_json(path: Path, hint: str) -> Any:
    """Parse a JSON hand-off; DataError naming the file (and the stage to run) when unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing; {hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


# ------------------------------------------------------ prepared set (prepare -> split, train, ...)
ARRAY_FILE = "images.npy"
INDEX_FILE = "index.csv"
PREPARE_REPORT = "prepare_report.json"
# Text columns of index.csv that must never be parsed as numbers (ids with leading zeros).
_ID_DTYPES = {"isic_id": str, "patient_id": str, "lesion_id": str}


# Rows copied at a time when ``write_prepared`` is given an ``ImageRows``.
COPY_CHUNK = 256


def write_prepared(
    out_dir: Path, images: np.ndarray | ImageRows | None, index: pd.DataFrame, report: Mapping[str, Any]
) -> None:
    """Write images.npy, index.csv and prepare_report.json into ``out_dir`` (a fresh temp folder).

    ``images`` None: images.npy is already there (written row by row with ``prepared_appender``);
    an ``ImageRows`` is copied ``COPY_CHUNK`` rows at a time (the same bytes as ``np.save``), so a
    subset of a prepared array is written without a copy of it in memory.
    """
    out_dir = Path(out_dir)
    if isinstance(images, ImageRows):
        with atomic.atomic_path(out_dir / ARRAY_FILE) as tmp, ArrayAppender(tmp, images.shape[1:]) as out:
            for start in range(0, len(images), COPY_CHUNK):
                for image in images[start : start + COPY_CHUNK]:
                    out.append(image)
    elif images is not None:
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
    prepared: tuple[np.ndarray | ImageRows, pd.DataFrame, Mapping[str, Any]] | None = None,
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
    return read_json(Path(external_dir) / EXTERNAL_REPORT, "run the external stage first")


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


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed (``hashlib.file_digest``)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
    return read_json(Path(model_dir) / MODEL_JSON, "train this model first")


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
    return read_json(path, "run the evaluate stage first")


# ------------------------------------------------------------- registry decision (register -> report)
def write_registry_decision(path: Path, decision: Mapping[str, Any]) -> None:
    """Write the register stage's decision (reports/registry.json): no timings, no run ids."""
    atomic.write_json(Path(path), dict(decision))


# ------------------------------------------- readers for the report stage (every hand-off above)
REGISTRY_JSON = "registry.json"  # written by register under reports/
PLOT_SERIES = ("roc", "prc", "calibration", "subgroups")  # evaluate's reports/plots/X/<key>.json
# written beside them only when an external set was scored (the metrics JSON then has "external")
EXTERNAL_PLOT_SERIES = ("external_roc", "external_prc")


def read_prepare_report(prepared_dir: Path) -> dict[str, Any]:
    """Read data/prepared/prepare_report.json."""
    return read_json(Path(prepared_dir) / PREPARE_REPORT, "run the prepare stage first")


def read_split_report(splits_dir: Path) -> dict[str, Any]:
    """Read data/splits/split_report.json (per split: n, n_melanoma, n_benign, n_groups, ...)."""
    return read_json(Path(splits_dir) / SPLIT_REPORT, "run the split stage first")


def read_history(model_dir: Path) -> list[dict[str, Any]] | None:
    """Per-epoch history of a deep model, or None for a model that has none (the baseline)."""
    path = Path(model_dir) / HISTORY_JSON
    if not path.is_file():
        return None
    history = read_json(path, "retrain this model")
    if not isinstance(history, list):
        raise DataError(f"{path}: expected a list of per-epoch records")
    return history


def read_plot_data(plots_dir: Path, key: str) -> list[dict[str, Any]]:
    """One series evaluate wrote under reports/plots/X/ (``key`` in PLOT_SERIES)."""
    rows = read_json(Path(plots_dir) / f"{key}.json", "run the evaluate stage first")
    if not isinstance(rows, list):
        raise DataError(f"{Path(plots_dir) / f'{key}.json'}: expected a list of rows")
    return rows


def read_registry_record(path: Path) -> dict[str, Any]:
    """Read the register stage's decision (reports/registry.json)."""
    return read_json(path, "run the register stage first")
