"""The licences of imported images: the vocabulary of ids and the texts of ``licenses/<lic>.txt``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# The licences of ISIC images: id -> (name, deed URL).
CC_LICENSES: dict[str, tuple[str, str]] = {
    "CC-0": ("CC0 1.0 Universal (CC0 1.0) Public Domain Dedication", "https://creativecommons.org/publicdomain/zero/1.0/"),
    "CC-BY": ("Creative Commons Attribution 4.0 International (CC BY 4.0)", "https://creativecommons.org/licenses/by/4.0/"),
    "CC-BY-NC": ("Creative Commons Attribution-NonCommercial 4.0 International (CC BY-NC 4.0)",
                 "https://creativecommons.org/licenses/by-nc/4.0/"),
}  # fmt: skip
UNKNOWN_LICENSE = "unknown"
CUSTOM_LICENSE = "custom"


def license_text(lic: str, source: str = "") -> str:
    """A short licenses/<lic>.txt for a Creative Commons licence or the ``unknown`` licence."""
    if lic in CC_LICENSES:
        name, url = CC_LICENSES[lic]
        where = f" ({source})" if source else ""
        return f"{lic}: {name}\n{url}\n\nThe images{where} are released under the licence named above.\n"
    if lic == UNKNOWN_LICENSE:
        return (
            "unknown: the distributor of these images did not state a licence.\n\n"
            "Images that come from the ISIC Archive are licensed per image (CC-0, CC-BY or CC-BY-NC); "
            "find out the licence of the original source before any use beyond research and testing.\n"
        )
    return f"{lic}: a licence named by the source's metadata; its text was not supplied with the images.\n"


def safe_license_id(value: str) -> str:
    """A licence id usable as ``licenses/<id>.txt`` (the value comes from untrusted metadata)."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", value.strip()).strip(".-")
    return cleaned or CUSTOM_LICENSE


def license_texts_for(
    records: Iterable[Mapping[str, Any]],
    known: Mapping[str, str],
    source: str = "",
    search: Path | None = None,
) -> dict[str, str]:
    """A text for every licence the records use: ``known``, then ``search/licenses/<lic>.txt``, then built in."""
    out: dict[str, str] = {}
    for lic in sorted({str(r["copyright_license"]) for r in records if r.get("copyright_license")}):
        if lic in known:
            out[lic] = known[lic]
            continue
        candidate = search / "licenses" / f"{lic}.txt" if search else None
        try:
            if candidate is not None and candidate.is_file():
                out[lic] = candidate.read_text(encoding="utf-8", errors="replace")
                continue
        except OSError:
            pass
        out[lic] = license_text(lic, source)
    return out
