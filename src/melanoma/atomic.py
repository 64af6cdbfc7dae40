"""Atomic file and directory writes: a killed stage never leaves half a file under its final name.

Temp files are hidden siblings (``.<name>.<random>.partial``) renamed into place on success. They
are created with the modes ``open`` and ``mkdir`` use (0666 / 0777 less the umask), not
``tempfile``'s private 0600 / 0700: the renamed file is the output, and a shared cache or a second
user must be able to read it exactly as if it had been written directly.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".partial"  # temp files are hidden: ``.<name>.<random>.partial``
_TRIES = 100  # name collisions are astronomically rare; a bound keeps a broken folder from looping


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


def create_temp_file(final: Path) -> Path:
    """Create an empty, new temp file next to ``final`` (mode 0666 less the umask); return its path."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_TRIES):
        tmp = _temp_name(final)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name next to {final}")


def create_temp_dir(final: Path) -> Path:
    """Create an empty, new temp folder next to ``final`` (mode 0777 less the umask); return its path."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_TRIES):
        tmp = _temp_name(final)
        try:
            tmp.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name next to {final}")


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it into place only if the block succeeds."""
    final = Path(final)
    tmp_path = create_temp_file(final)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: Path, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write pretty JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``final`` as a whole."""
    final = Path(final)
    tmp = create_temp_dir(final)
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
