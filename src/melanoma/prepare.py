"""Clean and resize the raw layout into one compact uint8 array plus an index.

Unlabeled, missing, corrupt and duplicate images are dropped and counted in the report, never a
crash; every kept image is decoded with ``melanoma.images`` (JPEG draft decoding) in parallel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from melanoma import atomic
from melanoma.config import PrepareParams
from melanoma.contracts import prepared_appender, write_prepared
from melanoma.errors import DataError
from melanoma.images import ImageDecodeError, load_resized
from melanoma.labels import BENIGN, MELANOMA, derive_labels
from melanoma.progress import Progress
from melanoma.raw_layout import IMAGES_DIR, index_image_files, read_metadata, write_provenance

log = logging.getLogger(__name__)

# Index columns carried over from metadata when present (first match wins for 'site').
CARRIED = ("patient_id", "lesion_id", "age_approx", "sex", "copyright_license", "image_type")
SITE_COLUMNS = ("anatom_site_1", "anatom_site_general", "anatom_site_general_challenge")
MANIPULATED = {"altered", "synthetic"}


@dataclass(frozen=True)
class Decoded:
    """What a worker returns for one file."""

    sha1: str
    nbytes: int
    width: int
    height: int
    array: np.ndarray | None
    error: str | None


def _decode_one(task: tuple[str, str, int, str, bool, float]) -> Decoded:
    """Read, hash and resize one file (runs in a worker process).

    Errors name the file as ``shown`` (relative to the raw folder's parent: ``raw/images/x.jpg``),
    never by the path it was read from: a scratch or absolute path in the tracked report would
    change its bytes from run to run and machine to machine.
    """
    path, shown, size, fit, draft, draft_margin = task

    def failed(exc: BaseException) -> str:
        return str(exc).replace(path, shown).splitlines()[0][:300] if str(exc) else type(exc).__name__

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return Decoded("", 0, 0, 0, None, f"unreadable: {failed(exc)}")
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        with Image.open(Path(path)) as head:
            width, height = head.size
        array = load_resized(data, size, fit, draft, draft_margin)  # type: ignore[arg-type]
    except (ImageDecodeError, OSError, ValueError, SyntaxError) as exc:
        return Decoded(sha1, len(data), 0, 0, None, failed(exc))
    return Decoded(sha1, len(data), width, height, array, None)


def _site(row: pd.Series) -> str:
    for col in SITE_COLUMNS:
        if col in row and row[col]:
            return str(row[col]).split(":")[0]
    return ""


def prepare(raw_dir: Path, out_dir: Path, params: PrepareParams) -> dict:
    """Clean and resize ``raw_dir`` into ``out_dir`` (images.npy, index.csv, prepare_report.json).

    Returns the report. Raises DataError when the input is unusable or a class ends up empty.
    """
    start = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    meta = read_metadata(raw_dir)
    labels = derive_labels(meta)
    meta = pd.concat([meta.drop(columns=labels.columns, errors="ignore"), labels], axis=1)
    files = index_image_files(raw_dir / IMAGES_DIR)

    unlabeled = meta.loc[meta["label"].isna(), "isic_id"].tolist()
    manip = meta.get("image_manipulation", pd.Series("", index=meta.index)).str.lower().isin(MANIPULATED)
    manipulated = meta.loc[manip & meta["label"].notna(), "isic_id"].tolist()
    candidates = meta[meta["label"].notna() & ~manip]
    has_file = candidates["isic_id"].isin(files)
    missing = candidates.loc[~has_file, "isic_id"].tolist()
    candidates = candidates[has_file].reset_index(drop=True)
    orphans = sorted(set(files) - set(meta["isic_id"]))

    size, workers = params.image_size, params.workers or os.cpu_count() or 1
    shown = {i: files[i].relative_to(raw_dir.parent).as_posix() for i in candidates["isic_id"]}
    tasks = [
        (str(files[i]), shown[i], size, params.fit, params.draft, params.draft_margin)
        for i in candidates["isic_id"]
    ]
    log.info("prepare: decoding %d images to %dx%d on %d workers", len(tasks), size, size, workers)

    corrupt: list[dict] = []
    duplicates: list[dict] = []
    kept_rows: list[int] = []
    seen: dict[str, str] = {}
    with atomic.atomic_dir(out_dir) as tmp:
        # Kept images go straight to images.npy in order, one write each: memory holds the
        # workers' few results in flight, never the array.
        appender = prepared_appender(tmp, size)
        extra: dict[str, list] = {"sha1": [], "file_bytes": [], "orig_width": [], "orig_height": []}
        chunk = max(1, min(64, len(tasks) // (workers * 8) or 1))
        with appender, ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_decode_one, tasks, chunksize=chunk)
            for pos, res in enumerate(Progress(results, total=len(tasks), desc="prepare", unit="img")):
                isic_id = candidates.at[pos, "isic_id"]
                if res.error is not None:
                    corrupt.append({"isic_id": isic_id, "file": Path(tasks[pos][0]).name, "error": res.error})
                    continue
                if params.drop_duplicates and res.sha1 in seen:
                    duplicates.append({"isic_id": isic_id, "duplicate_of": seen[res.sha1]})
                    continue
                seen.setdefault(res.sha1, isic_id)
                appender.append(res.array)
                kept_rows.append(pos)
                extra["sha1"].append(res.sha1)
                extra["file_bytes"].append(res.nbytes)
                extra["orig_width"].append(res.width)
                extra["orig_height"].append(res.height)

        kept = candidates.iloc[kept_rows].reset_index(drop=True)
        counts = kept["label"].astype(int).value_counts()
        n_mel, n_ben = int(counts.get(MELANOMA, 0)), int(counts.get(BENIGN, 0))
        if n_mel == 0 or n_ben == 0:
            empty = "melanoma" if n_mel == 0 else "not-melanoma"
            raise DataError(
                f"after cleaning {raw_dir}, the {empty} class is empty ({n_mel} melanoma, {n_ben} other "
                f"of {len(meta)} rows; {len(unlabeled)} unlabeled, {len(corrupt)} corrupt, "
                f"{len(missing)} missing files): a classifier needs both classes"
            )

        index = pd.DataFrame({"row": np.arange(len(kept)), "isic_id": kept["isic_id"]})
        index["label"] = kept["label"].astype(int)
        index["diagnosis"] = kept["diagnosis"]
        index["label_source"] = kept["label_source"]
        for col in CARRIED:
            index[col] = kept.get(col, "")
        index["site"] = kept.apply(_site, axis=1) if len(kept) else ""
        for col, values in extra.items():
            index[col] = values

        seconds = time.perf_counter() - start
        report = {
            "raw_dir": str(raw_dir),
            "params": asdict(params),
            "n_metadata_rows": len(meta),
            "n_kept": len(kept),
            "n_melanoma": n_mel,
            "n_not_melanoma": n_ben,
            "melanoma_fraction": round(n_mel / len(kept), 4),
            "n_unlabeled": len(unlabeled),
            "n_manipulated": len(manipulated),
            "n_missing_image": len(missing),
            "n_corrupt": len(corrupt),
            "n_duplicates": len(duplicates),
            "n_orphan_images": len(orphans),
            "label_sources": kept["label_source"].value_counts().to_dict(),
            "unlabeled": unlabeled,
            "manipulated": manipulated,
            "missing_image": missing,
            "corrupt": corrupt,
            "duplicates": duplicates,
            "orphan_images": orphans,
        }
        write_prepared(tmp, None, index, report)
        write_provenance(raw_dir, tmp, meta)
    log.info("prepare: %.1f s (%.1f images/s)", seconds, len(tasks) / seconds if seconds > 0 else 0.0)
    log.info(
        "prepare: kept %d (%d melanoma); dropped %d unlabeled, %d corrupt, %d duplicate, %d missing",
        len(kept),
        n_mel,
        len(unlabeled),
        len(corrupt),
        len(duplicates),
        len(missing),
    )
    return report
