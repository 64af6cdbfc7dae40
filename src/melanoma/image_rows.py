"""Selected rows of the prepared image array, read on demand: a split never held in memory.

A split of ``images.npy`` (N x S x S x 3 uint8) is a list of row numbers. ``ImageRows`` answers
``len``, ``shape`` and indexing like an array, but reads only the rows asked for, with positional
reads (``os.preadv``) straight into the batch's buffer. Reading through the memory map instead
would leave every touched page mapped into the process (counted in its RSS until it exits), so a
400K-image epoch would look like 12 GB resident; positional reads go through the page cache,
which the kernel shares and reclaims, and the process keeps only the batch it asked for.

An in-memory array (tests, small sets) is indexed directly, with the same interface.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


class ImageRows:
    """Rows ``rows`` of a (memory-mapped) image array, read lazily, in ``rows`` order.

    Indexing with an int gives one image; with a slice or an integer array, a fresh uint8 array
    of those images (positions into ``rows``, not into the whole array).
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray | None = None) -> None:
        if array.ndim < 1:
            raise ValueError(f"expected an array of images, got shape {array.shape}")
        self._array = array
        self.rows = np.arange(len(array), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        if self.rows.ndim != 1:
            raise ValueError(f"rows must be one-dimensional, got shape {self.rows.shape}")
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= len(array)):
            raise IndexError(
                f"row numbers must lie in [0, {len(array)}): got {self.rows.min()}..{self.rows.max()}"
            )
        self._fd: int | None = None
        filename = getattr(array, "filename", None)
        # Only a memmap of a whole file (np.load(mmap_mode="r")) is read positionally.
        if isinstance(array, np.memmap) and filename and array.flags.c_contiguous and self._is_whole(array):
            self._fd = os.open(filename, os.O_RDONLY)
            self._offset = int(array.offset)
            self._path = str(filename)

    @staticmethod
    def _is_whole(array: np.memmap) -> bool:
        base = array
        while isinstance(base.base, np.memmap):  # a view of a memmap keeps its own offset
            base = base.base
        return base is array or base.shape == array.shape

    # -- array-like ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self._array.shape[1:])

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._array.dtype

    @property
    def ndim(self) -> int:
        return self._array.ndim

    @property
    def _row_bytes(self) -> int:
        return int(np.prod(self._array.shape[1:], dtype=np.int64)) * self._array.dtype.itemsize

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | slice | np.ndarray | list[int]) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self.take(np.asarray([key]))[0]
        if isinstance(key, slice):
            return self.read(self.rows[key])
        return self.take(np.asarray(key))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        # Materialises every row: for small sets and tests; the pipeline reads in batches.
        out = self.read(self.rows)
        return out if dtype is None else out.astype(dtype)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]
            self._fd = None

    # -- reading ------------------------------------------------------------------------------
    def take(self, positions: np.ndarray) -> np.ndarray:
        """Images at ``positions`` (indices into ``rows``), in that order."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        return self.read(self.rows[positions])

    def read(self, array_rows: np.ndarray) -> np.ndarray:
        """Rows of the underlying array, in the given order, as a new array."""
        array_rows = np.asarray(array_rows, dtype=np.int64).reshape(-1)
        if self._fd is None:
            return np.array(self._array[array_rows]) if len(array_rows) else self._empty()
        out = self._empty(len(array_rows))
        if not len(array_rows):
            return out
        # Read in ascending row order, merging runs of consecutive rows into one call.
        order = np.argsort(array_rows, kind="stable")
        sorted_rows = array_rows[order]
        target = out if np.array_equal(order, np.arange(len(order))) else np.empty_like(out)
        flat = target.reshape(len(sorted_rows), -1).view(np.uint8)
        size = self._row_bytes
        start = 0
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        for stop in (*breaks.tolist(), len(sorted_rows)):
            want = (stop - start) * size
            got = os.preadv(
                self._fd,
                [memoryview(flat[start:stop]).cast("B")],
                self._offset + int(sorted_rows[start]) * size,
            )
            if got != want:
                last = int(sorted_rows[stop - 1])
                raise OSError(
                    f"{self._path}: short read at rows {int(sorted_rows[start])}..{last} "
                    f"({got} of {want} bytes): the image array is truncated; rerun prepare"
                )
            start = stop
        if target is not out:
            out[order] = target
        return out

    def _empty(self, n: int = 0) -> np.ndarray:
        return np.empty((n, *self._array.shape[1:]), dtype=self._array.dtype)


def open_rows(path: Path, rows: np.ndarray | None = None) -> ImageRows:
    """``ImageRows`` over an ``.npy`` file (memory-mapped for its header, read positionally)."""
    return ImageRows(np.load(Path(path), mmap_mode="r"), rows)


class ArrayAppender:
    """Write an ``.npy`` array of images one image at a time, with plain writes.

    The header is rewritten with the final count on ``close``; numpy pads the header so that the
    first axis can grow to 21 digits in place, so the file is byte for byte what ``np.save``
    writes for the same array. Writing through a memory map instead would keep every written
    page mapped (the whole array counted in the writer's RSS).
    """

    def __init__(
        self, path: Path, item_shape: tuple[int, ...], dtype: np.dtype[Any] | type = np.uint8
    ) -> None:
        self.path = Path(path)
        self.item_shape = tuple(int(d) for d in item_shape)
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._write_header()
        self._header_bytes = self._file.tell()

    def _write_header(self) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.count, *self.item_shape),
        }
        np.lib.format.write_array_header_1_0(self._file, header)

    def append(self, image: np.ndarray) -> None:
        """Add one image (of ``item_shape``) as the next row."""
        image = np.ascontiguousarray(image, dtype=self.dtype)
        if image.shape != self.item_shape:
            raise ValueError(f"{self.path}: expected an image of shape {self.item_shape}, got {image.shape}")
        self._file.write(image.tobytes())
        self.count += 1

    def close(self) -> int:
        """Write the final header; returns the number of rows."""
        if not self._file.closed:
            self._file.seek(0)
            self._write_header()  # same length: numpy leaves room for the count to grow
            if self._file.tell() != self._header_bytes:
                raise OSError(f"{self.path}: the .npy header changed length ({self.count} rows)")
            self._file.close()
        return self.count

    def __enter__(self) -> ArrayAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
