"""ImageRows: a split of the prepared array read on demand, row for row what the array holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melanoma.contracts import split_arrays
from melanoma.image_rows import ArrayAppender, ImageRows, open_rows


@pytest.fixture
def array_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 6, 6, 3), dtype=np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, images)
    return path, images


def test_reads_the_rows_asked_for_in_the_order_asked(array_file) -> None:
    path, images = array_file
    rows = np.array([7, 3, 3, 49, 0, 1, 2, 20])  # unsorted, a repeat, a run of consecutive rows
    view = open_rows(path, rows)
    assert len(view) == 8 and view.shape == (8, 6, 6, 3) and view.dtype == np.uint8 and view.ndim == 4
    assert np.array_equal(np.asarray(view), images[rows])
    assert np.array_equal(view[2:6], images[rows[2:6]])
    assert np.array_equal(view[1], images[3])
    assert np.array_equal(view[np.array([5, 0, 5])], images[rows[[5, 0, 5]]])
    assert np.array_equal(np.concatenate([view[i : i + 3] for i in range(0, 8, 3)]), images[rows])


def test_the_file_is_read_positionally_not_through_the_map(array_file) -> None:
    path, images = array_file
    mm = np.load(path, mmap_mode="r")
    view = ImageRows(mm, np.arange(10))
    assert view._fd is not None  # the positional path, not memmap fancy indexing
    in_memory = ImageRows(np.array(images), np.arange(10))
    assert in_memory._fd is None
    assert np.array_equal(view[:], in_memory[:])


def test_split_arrays_gives_a_lazy_view_in_split_order(array_file) -> None:
    path, images = array_file
    frame = pd.DataFrame({"row": [4, 1, 9], "label": [1, 0, 1]})
    x, y = split_arrays(np.load(path, mmap_mode="r"), frame)
    assert isinstance(x, ImageRows)
    assert np.array_equal(x[:], images[[4, 1, 9]]) and y.tolist() == [1, 0, 1]


def test_a_truncated_array_file_is_a_clear_error(array_file, tmp_path: Path) -> None:
    path, _ = array_file
    view = open_rows(path)
    with open(path, "r+b") as f:  # cut the last image short after the view was opened
        f.truncate(path.stat().st_size - 10)
    with pytest.raises(OSError, match=r"images.npy: short read at rows 45..49 .*truncated"):
        view[45:50]


def test_rows_out_of_range_are_refused(array_file) -> None:
    path, _ = array_file
    with pytest.raises(IndexError, match=r"\[0, 50\)"):
        open_rows(path, np.array([0, 50]))


@pytest.mark.parametrize("n", [0, 1, 37])
def test_appended_rows_make_the_file_np_save_writes(tmp_path: Path, n: int) -> None:
    images = np.random.default_rng(n).integers(0, 256, size=(n, 5, 5, 3), dtype=np.uint8)
    with ArrayAppender(tmp_path / "a.npy", (5, 5, 3)) as out:
        for image in images:
            out.append(image)
    np.save(tmp_path / "b.npy", images)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    assert np.array_equal(open_rows(tmp_path / "a.npy")[:], images)


def test_an_image_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    with ArrayAppender(tmp_path / "a.npy", (5, 5, 3)) as out, pytest.raises(ValueError, match=r"\(5, 5, 3\)"):
        out.append(np.zeros((4, 5, 3), np.uint8))


def test_write_prepared_copies_a_row_subset_in_chunks_with_np_save_bytes(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from melanoma import contracts

    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(50, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "all.npy", images)
    keep = np.flatnonzero(rng.random(50) < 0.6)
    monkeypatch.setattr(contracts, "COPY_CHUNK", 7)  # several chunks, the last one partial
    out = tmp_path / "out"
    out.mkdir()
    index = pd.DataFrame({"row": np.arange(len(keep))})
    contracts.write_prepared(out, open_rows(tmp_path / "all.npy", keep), index, {})
    np.save(tmp_path / "expected.npy", images[keep])
    assert (out / contracts.ARRAY_FILE).read_bytes() == (tmp_path / "expected.npy").read_bytes()
