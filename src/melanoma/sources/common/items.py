"""What travels through the import pipeline: one ``ImportItem`` an image, one ``Failure`` a problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Failure = dict[str, Any]  # one entry of report["failures"]: where (file, row, path, ...) and reason


@dataclass
class ImportItem:
    """One image on its way into the raw layout."""

    rel: str  # relative path below the source folder (posix)
    path: Path
    fields: dict[str, Any]  # metadata fields, labels included
    source_split: str | None = None  # folder imports only: the split folders above the class folder
    real_id: str | None = None  # an ISIC id the source gave, else one is assigned
    where: dict[str, Any] = field(default_factory=dict)  # row number etc. for failure messages
