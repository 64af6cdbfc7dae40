"""ISIC ids: the one in a file name, and the ids given to images that have none."""

from __future__ import annotations

import re
from collections.abc import Mapping

from melanoma.errors import DataError
from melanoma.sources.common.items import Failure, ImportItem

# An ISIC id in a file name; the 2019 challenge names some files ISIC_xxxxxxx_downsampled.
ID_IN_NAME_RE = re.compile(r"^isic_(\d{7})(?:_downsampled)?$", re.IGNORECASE)
# Ids given to images that have none: a range no real ISIC image uses (yet).
ASSIGNED_ID_START = 9_000_000
ASSIGNED_ID_END = 9_999_999


def isic_id_from_name(name: str) -> str | None:
    """``ISIC_1234567`` from a stem like ``isic_1234567`` or ``ISIC_1234567_downsampled``, else None."""
    m = ID_IN_NAME_RE.match(name.strip())
    return f"ISIC_{m.group(1)}" if m else None


def assign_ids(
    items: list[ImportItem], hashes: Mapping[str, str], failures: list[Failure]
) -> tuple[list[tuple[str, ImportItem]], list[dict[str, str]]]:
    """([(isic_id, item)], skipped copies): real ids first, then assigned ones in sorted path order.

    A real id given twice keeps the first file (sorted path); a later one is a failure if its
    content differs, and is skipped (listed as a copy, nothing is lost) if it is the same file.
    Assigned ids depend only on the sorted paths, so a re-import gives the same ids.
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
    next_id = ASSIGNED_ID_START
    for item in pending:
        while f"ISIC_{next_id:07d}" in taken:
            next_id += 1
        if next_id > ASSIGNED_ID_END:
            raise DataError("more images than the assigned id range ISIC_9000000..ISIC_9999999 holds")
        new_id = f"ISIC_{next_id:07d}"
        taken[new_id] = item
        item.fields["id_assigned"] = True
        out.append((new_id, item))
    return out, copies
