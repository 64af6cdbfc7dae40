"""``melanoma.atomic``: whole files or nothing, with the permissions a direct write would have."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from melanoma import atomic


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_files_and_folders_honour_the_umask(tmp_path: Path, umask: int) -> None:
    atomic.write_text(tmp_path / "a.txt", "x")
    atomic.write_json(tmp_path / "sub" / "b.json", {"k": 1})
    with atomic.atomic_dir(tmp_path / "dir") as tmp:
        (tmp / "c").write_text("y")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "sub" / "b.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "dir").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_path(tmp_path / "keep.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError), atomic.atomic_dir(tmp_path / "d"):
        raise RuntimeError("killed")
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_temp_names_are_hidden_partials_and_unique(tmp_path: Path) -> None:
    names = {atomic.create_temp_file(tmp_path / "f.jpg").name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(".f.jpg.") and n.endswith(atomic.PARTIAL_SUFFIX) for n in names)
