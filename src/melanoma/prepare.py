"""Clean and resize the raw layout into one compact uint8 array plus an index.

Unlabeled, missing, corrupt and duplicate images are dropped and counted in the report, never a
crash; every kept image is decoded with ``melanoma.images`` (JPEG draft decoding) in parallel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
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
from melanoma.raw_layout import (
    IMAGES_DIR,
    index_image_files,
    licence_summary,
    read_metadata,
    write_provenance,
)

log = logging.getLogger(__name__)

# Index columns carried over from metadata when present (first match wins for 'site').
CARRIED = ("patient_id", "lesion_id", "age_approx", "sex", "copyright_license", "image_type")
SITE_COLUMNS = ("anatom_site_1", "anatom_site_general", "anatom_site_general_challenge")
MANIPULATED = {"altered", "synthetic"}


# One image's decode task: path, shown name, image_size, fit, draft, draft_margin, color_constancy,
# color_constancy_power.
Task = tuple[str, str, int, str, bool, float, str, float]


@dataclass(frozen=True)
class Decoded:
    """What a worker returns for one file."""

    sha1: str
    nbytes: int
    width: int
    height: int
    array: np.ndarray | None
    error: str | None


def _decode_one(task: Task) -> Decoded:
    """Read, hash and resize one file (runs in a worker process).

    Errors name the file as ``shown`` (relative to the raw folder's parent: ``raw/images/x.jpg``),
    never by the path it was read from: a scratch or absolute path in the tracked report would
    change its bytes from run to run and machine to machine.
    """
    path, shown, size, fit, draft, draft_margin, color, color_power = task

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
        array = load_resized(data, size, fit, draft, draft_margin, color, color_power)  # type: ignore[arg-type]
    except (ImageDecodeError, OSError, ValueError, SyntaxError) as exc:
        return Decoded(sha1, len(data), 0, 0, None, failed(exc))
    return Decoded(sha1, len(data), width, height, array, None)


def _decode_chunk(tasks: list[Task]) -> list[Decoded]:
    return [_decode_one(t) for t in tasks]


def _start_workers(pool: ProcessPoolExecutor) -> None:
    """Start the pool's processes now, before the metadata and file index are read.

    With the fork start method every worker is a copy of the parent at that moment: started
    later, each would carry (and count in its RSS) a table that grows with N.
    """
    pool.submit(os.getpid).result()


def _decoded_in_order(
    pool: ProcessPoolExecutor, chunks: Iterator[list[Task]], ahead: int
) -> Iterator[Decoded]:
    """Decode chunk after chunk with at most ``ahead`` chunks in flight, yielding in input order.

    ``Executor.map`` would submit every chunk at once: a future and its task tuples per image,
    alive until the end, the parent's memory growing with N.
    """
    pending: deque[Future[list[Decoded]]] = deque()
    for chunk in chunks:
        pending.append(pool.submit(_decode_chunk, chunk))
        if len(pending) >= ahead:
            yield from pending.popleft().result()
    while pending:
        yield from pending.popleft().result()


def _site(table: pd.DataFrame) -> pd.Series:
    """The first non-empty site column per row (an ISIC 'anatom_site_1' value up to its ':')."""
    site = pd.Series("", index=table.index, dtype=object)
    for col in reversed([c for c in SITE_COLUMNS if c in table.columns]):
        values = table[col].astype(str)
        site = site.where(values == "", values.str.split(":").str[0])
    return site


def prepare(raw_dir: Path, out_dir: Path, params: PrepareParams) -> dict:
    """Clean and resize ``raw_dir`` into ``out_dir`` (images.npy, index.csv, prepare_report.json).

    Returns the report. Raises DataError when the input is unusable or a class ends up empty.
    """
    workers = params.workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        _start_workers(pool)
        return _prepare(pool, workers, Path(raw_dir), Path(out_dir), params)


def _prepare(
    pool: ProcessPoolExecutor, workers: int, raw_dir: Path, out_dir: Path, params: PrepareParams
) -> dict:
    start = time.perf_counter()
    meta = read_metadata(raw_dir)
    labels = derive_labels(meta)
    meta[labels.columns] = labels  # in place: a concat would copy the whole table
    files = index_image_files(raw_dir / IMAGES_DIR)

    unlabeled = meta.loc[meta["label"].isna(), "isic_id"].tolist()
    manip = meta.get("image_manipulation", pd.Series("", index=meta.index)).str.lower().isin(MANIPULATED)
    manipulated = meta.loc[manip & meta["label"].notna(), "isic_id"].tolist()
    # Only the columns the index carries: the rest of the metadata is not copied per image.
    wanted = ["isic_id", *labels.columns, *CARRIED, *SITE_COLUMNS]
    candidates = meta.loc[meta["label"].notna() & ~manip, [c for c in meta.columns if c in wanted]]
    has_file = candidates["isic_id"].isin(files)
    missing = candidates.loc[~has_file, "isic_id"].tolist()
    candidates = candidates[has_file].reset_index(drop=True)
    orphans = sorted(set(files) - set(meta["isic_id"]))
    n_rows, licences = len(meta), licence_summary(meta)
    del meta  # the index needs only the candidates' columns

    size, n_tasks = params.image_size, len(candidates)
    images_dir, shown_dir = raw_dir / IMAGES_DIR, (raw_dir / IMAGES_DIR).relative_to(raw_dir.parent)
    chunk = max(1, min(64, n_tasks // (workers * 8) or 1))

    def chunks() -> Iterator[list[Task]]:
        # Built as the pool takes them: no list of N tasks is held.
        ids = candidates["isic_id"]
        for first in range(0, n_tasks, chunk):
            yield [
                (
                    str(images_dir / files[i]),
                    (shown_dir / files[i]).as_posix(),
                    size,
                    params.fit,
                    params.draft,
                    params.draft_margin,
                    params.color_constancy,
                    params.color_constancy_power,
                )
                for i in ids.iloc[first : first + chunk]
            ]

    log.info("prepare: decoding %d images to %dx%d on %d workers", n_tasks, size, size, workers)

    corrupt: list[dict] = []
    duplicates: list[dict] = []
    kept_rows: list[int] = []
    seen: dict[str, str] = {}
    with atomic.atomic_dir(out_dir) as tmp:
        # Kept images go straight to images.npy in order, one write each: memory holds the
        # workers' few results in flight, never the array.
        appender = prepared_appender(tmp, size)
        extra: dict[str, list] = {"sha1": [], "file_bytes": [], "orig_width": [], "orig_height": []}
        with appender:
            results = _decoded_in_order(pool, chunks(), ahead=workers * 4)
            for pos, res in enumerate(Progress(results, total=n_tasks, desc="prepare", unit="img")):
                isic_id = candidates.at[pos, "isic_id"]
                if res.error is not None:
                    corrupt.append({"isic_id": isic_id, "file": files[isic_id], "error": res.error})
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
        del seen  # its strings are the largest per-image objects still alive

        kept = candidates.iloc[kept_rows].reset_index(drop=True)
        counts = kept["label"].astype(int).value_counts()
        n_mel, n_ben = int(counts.get(MELANOMA, 0)), int(counts.get(BENIGN, 0))
        if n_mel == 0 or n_ben == 0:
            empty = "melanoma" if n_mel == 0 else "not-melanoma"
            raise DataError(
                f"after cleaning {raw_dir}, the {empty} class is empty ({n_mel} melanoma, {n_ben} other "
                f"of {n_rows} rows; {len(unlabeled)} unlabeled, {len(corrupt)} corrupt, "
                f"{len(missing)} missing files): a classifier needs both classes"
            )

        index = pd.DataFrame({"row": np.arange(len(kept)), "isic_id": kept["isic_id"]})
        index["label"] = kept["label"].astype(int)
        index["diagnosis"] = kept["diagnosis"]
        index["label_source"] = kept["label_source"]
        for col in CARRIED:
            index[col] = kept.get(col, "")
        index["site"] = _site(kept)
        for col, values in extra.items():
            index[col] = values

        seconds = time.perf_counter() - start
        report = {
            "raw_dir": str(raw_dir),
            "params": asdict(params),
            "n_metadata_rows": n_rows,
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
        write_provenance(raw_dir, tmp, licences)
    log.info("prepare: %.1f s (%.1f images/s)", seconds, n_tasks / seconds if seconds > 0 else 0.0)
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
