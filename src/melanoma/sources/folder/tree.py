"""What the folder tree itself says: class folders, ISIC JSON sidecars, the root licence and attribution.

Used when no ``metadata_csv`` is set (``items_from_folders``); ``class_of`` also fills the label
fields a metadata CSV row leaves empty.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from melanoma.sources.common.ids import isic_id_from_name
from melanoma.sources.common.items import Failure, ImportItem
from melanoma.sources.common.licenses import CUSTOM_LICENSE, UNKNOWN_LICENSE
from melanoma.sources.common.vocabulary import CLASS_FOLDERS, label_fields, normalise_class

# Columns that the derived labels replace or that prepare computes itself: never copied through.
RESERVED_COLUMNS = frozenset({"label", "label_source", "source_path", "source_split", "id_assigned"})

# ----------------------------------------------------------------------------- folder-level facts


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


def class_of(rel: str) -> tuple[tuple[str | None, str | None] | None, str, str]:
    """(label from the nearest class folder or None, split folders above it, immediate parent)."""
    parts = rel.split("/")[:-1]
    for i in range(len(parts) - 1, -1, -1):
        label = CLASS_FOLDERS.get(normalise_class(parts[i]))
        if label is not None:
            return label, "/".join(parts[:i]), parts[i]
    return None, "/".join(parts), parts[-1] if parts else ""


# -------------------------------------------------------------------------------- class folders


def items_from_folders(
    images: list[tuple[str, Path]], sidecars: Mapping[str, Path], failures: list[Failure]
) -> list[ImportItem]:
    """One item per image with a class folder or a sidecar; the others are reported per folder."""
    items: list[ImportItem] = []
    unknown: dict[str, list[str]] = defaultdict(list)  # parent folder -> images there
    for rel, path in images:
        label, split, _ = class_of(rel)
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
            fields.update(label_fields(label))  # the class folder wins over the sidecar
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
