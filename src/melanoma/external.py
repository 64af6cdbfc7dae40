"""The external stage's own step: a prepared external test set, minus every image the training data holds.

The CLI imports the external source with the ingest code and prepares it with the prepare code
(same ``prepare`` params, so the pixels are made exactly as the training data's); this module then
applies the leakage guard and writes ``data/external/`` through ``melanoma.contracts``.

Leakage guard: an external image is dropped when its file content (the sha1 in the prepared
index) or its ISIC id is also in the training data's prepared index (all of it: train, val and
test). Ids that an importer assigned (``id_assigned`` in the raw metadata, e.g. a folder of
``IMG_0001.jpg``) are not ISIC ids and never match by id; their content hash still does.
Re-encoded or resized copies of a training image have another hash and are not caught.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma.contracts import load_prepared, read_prepare_report, write_external
from melanoma.errors import DataError
from melanoma.image_rows import ImageRows
from melanoma.raw_layout import read_metadata

log = logging.getLogger(__name__)


def assigned_ids(raw_dir: Path) -> set[str]:
    """Ids an importer made up (``id_assigned`` true in the raw metadata): not ISIC ids."""
    meta = read_metadata(raw_dir)
    if "id_assigned" not in meta.columns:
        return set()
    return set(meta.loc[meta["id_assigned"].str.lower() == "true", "isic_id"])


def leakage_guard(
    index: pd.DataFrame, train_index: pd.DataFrame, made_up_ids: Collection[str] = ()
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """(keep mask over ``index`` rows, one record per dropped image naming its training twin).

    A row is dropped when its ``sha1`` (file content) or its real ISIC id appears in ``train_index``.
    """
    for frame, what in ((index, "external index"), (train_index, "training data's index")):
        missing = {"isic_id", "sha1"} - set(frame.columns)
        if missing:
            raise DataError(f"the {what} has no {', '.join(sorted(missing))} column: rerun its prepare step")
    by_sha1 = dict(zip(train_index["sha1"], train_index["isic_id"], strict=True))
    train_ids = set(train_index["isic_id"])
    made_up = set(made_up_ids)
    keep = np.ones(len(index), dtype=bool)
    dropped: list[dict[str, str]] = []
    for pos, (isic_id, sha1) in enumerate(zip(index["isic_id"], index["sha1"], strict=True)):
        if sha1 in by_sha1:
            dropped.append({"isic_id": isic_id, "reason": "same file", "training_isic_id": by_sha1[sha1]})
        elif isic_id in train_ids and isic_id not in made_up:
            dropped.append({"isic_id": isic_id, "reason": "same ISIC id", "training_isic_id": isic_id})
        else:
            continue
        keep[pos] = False
    return keep, dropped


def _counts(index: pd.DataFrame) -> dict[str, Any]:
    n, n_mel = len(index), int(index["label"].astype(int).sum())
    return {
        "n": n,
        "n_melanoma": n_mel,
        "n_not_melanoma": n - n_mel,
        "melanoma_fraction": round(n_mel / n, 4) if n else None,
    }


def finish_external(
    raw_dir: Path,
    prepared_dir: Path,
    train_prepared_dir: Path,
    out_dir: Path,
    *,
    source: str,
    name: str,
    ingest_report: Mapping[str, Any],
) -> dict[str, Any]:
    """Apply the leakage guard to the prepared external set and write ``out_dir``; return its report.

    ``raw_dir`` and ``prepared_dir`` hold the imported and prepared external set (scratch folders);
    ``train_prepared_dir`` is the training data's prepared folder. Raises DataError when the guard
    leaves a class empty (no AUC can be computed on one class).
    """
    images, index = load_prepared(prepared_dir)
    _, train_index = load_prepared(train_prepared_dir)
    keep, dropped = leakage_guard(index, train_index, assigned_ids(raw_dir))
    kept = index[keep].reset_index(drop=True)
    kept["row"] = np.arange(len(kept))
    counts = _counts(kept)
    if counts["n_melanoma"] == 0 or counts["n_not_melanoma"] == 0:
        raise DataError(
            f"external set {name!r}: after dropping {len(dropped)} image(s) also in the training data "
            f"({train_prepared_dir}), {counts['n_melanoma']} melanoma and {counts['n_not_melanoma']} other "
            "remain: it needs both classes (use another external.seed or source)"
        )
    prep = read_prepare_report(prepared_dir)
    # The scratch folder's path would make the tracked report differ on every run.
    prep["raw_dir"] = f"external set ({source})"
    report = {
        "name": name,
        "source": source,
        **counts,
        "n_prepared": len(index),
        "n_dropped_in_training": len(dropped),
        "n_dropped_same_file": sum(d["reason"] == "same file" for d in dropped),
        "n_dropped_same_isic_id": sum(d["reason"] == "same ISIC id" for d in dropped),
        "dropped_in_training": dropped,
        "ingest": dict(ingest_report),
    }
    # the kept rows, read from the scratch array a chunk at a time: no copy of the set in memory
    write_external(out_dir, report, (ImageRows(images, np.flatnonzero(keep)), kept, prep))
    log.info(
        "external %r: %d images (%d melanoma); %d dropped as also in the training data",
        name, counts["n"], counts["n_melanoma"], len(dropped),
    )  # fmt: skip
    return {"present": True, **report}


def write_no_external(out_dir: Path) -> dict[str, Any]:
    """Record that no external set is configured (the stage's output still exists)."""
    report = {"name": "", "source": "none", "note": "external.source is none: no external validation"}
    write_external(out_dir, report)
    log.info("external: none configured (external.source: none)")
    return {"present": False, **report}
