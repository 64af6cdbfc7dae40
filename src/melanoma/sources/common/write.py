"""The end of the import pipeline: images placed into the raw layout, their metadata records,
duplicate groups, and the counts of a local import's report."""

from __future__ import annotations

import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from melanoma import atomic
from melanoma.labels import derive_label
from melanoma.progress import Progress
from melanoma.raw_layout import IMAGES_DIR
from melanoma.sources.common.items import Failure, ImportItem
from melanoma.sources.common.licenses import UNKNOWN_LICENSE, safe_license_id


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


def _record(isic_id: str, item: ImportItem, defaults: Mapping[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {**defaults, **item.fields, "isic_id": isic_id}
    record["copyright_license"] = safe_license_id(str(record.get("copyright_license") or UNKNOWN_LICENSE))
    record["source_path"] = item.rel
    if item.source_split is not None:  # folder imports: say which ids are made up, and the split
        record["id_assigned"] = bool(item.fields.get("id_assigned", False))
        record["source_split"] = item.source_split
    return record


def duplicate_groups(by_hash: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Groups of records with identical files, sorted by their first id; flags conflicting labels."""
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
    return sorted(duplicates, key=lambda d: d["isic_ids"][0])


def write_items(
    raw_dir: Path,
    assigned: list[tuple[str, ImportItem]],
    hashes: Mapping[str, str],
    failures: list[Failure],
    defaults: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Link or copy each image to ``images/<isic_id><ext>``; returns (metadata records, report stats)."""
    images_dir = Path(raw_dir) / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    methods: Counter[str] = Counter()
    by_hash: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for isic_id, item in Progress(assigned, desc="writing images", unit="img"):
        dest = images_dir / f"{isic_id}{item.path.suffix.lower()}"
        try:
            methods[place_file(item.path, dest)] += 1
        except OSError as exc:
            failures.append(
                {**item.where, "path": item.rel, "reason": f"cannot copy into {dest.parent}: {exc}"}
            )
            continue
        record = _record(isic_id, item, defaults)
        records.append(record)
        by_hash[hashes[item.rel]].append(record)
    duplicates = duplicate_groups(by_hash)
    stats = {
        "n_images": len(records),
        "n_linked": methods["link"],
        "n_copied": methods["copy"],
        "n_synthetic_ids": sum(1 for r in records if r.get("id_assigned")),
        "n_duplicate_files": sum(len(d["isic_ids"]) - 1 for d in duplicates),
        "duplicates": duplicates,
    }
    return records, stats


def label_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How prepare will label the records: melanoma / not_melanoma / unlabeled counts."""
    counts: Counter[str] = Counter()
    for r in records:
        label, _ = derive_label(r)
        counts["unlabeled" if label is None else ("melanoma" if label == 1 else "not_melanoma")] += 1
    return {k: counts.get(k, 0) for k in ("melanoma", "not_melanoma", "unlabeled")}


def value_counts(records: Iterable[Mapping[str, Any]], key: str) -> dict[str, int]:
    """{value: count} of one field, most common first (missing = "")."""
    return dict(Counter(str(r.get(key, "")) for r in records).most_common())


def report_counts(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """The ``counts`` section of a local import's report: prepare's labels, then each field's values."""
    return {"labels": label_summary(records), **{k: value_counts(records, k) for k in keys}}
