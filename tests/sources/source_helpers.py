"""Helpers shared by the source tests: tiny unique images and what prepare will see in a raw folder."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pandas as pd
from PIL import Image

from melanoma.labels import derive_labels

_counter = iter(range(1, 1_000_000))


def tiny_jpeg(size: int = 8) -> bytes:
    """A small JPEG with unique content (each call a different colour), so no accidental duplicates."""
    i = next(_counter)
    img = Image.new("RGB", (size, size), (i % 251, (i * 7) % 253, (i * 13) % 255))
    img.putpixel((0, 0), (i // 251 % 256, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def put(path: Path, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny_jpeg() if data is None else data)
    return path


def read_meta(raw: Path) -> pd.DataFrame:
    return pd.read_csv(raw / "metadata.csv", dtype=str, keep_default_na=False).set_index(
        "isic_id", drop=False
    )


def labels(raw: Path) -> dict[str, int | None]:
    """isic_id -> label exactly as prepare will derive it (1 melanoma, 0 not, None unlabeled)."""
    meta = read_meta(raw)
    lab = derive_labels(meta)["label"]
    return {i: (None if pd.isna(v) else int(v)) for i, v in lab.items()}


def reasons(report: dict) -> str:
    return "\n".join(json.dumps(f) for f in report["failures"])


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` (the report included), by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
