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
from collections.abc import Iterator
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
    def nbytes(self) -> int:
        """Bytes the rows would take in memory (what ``np.asarray`` would allocate)."""
        return len(self.rows) * self._row_bytes

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

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Consecutive batches of at most ``size`` images, in ``rows`` order."""
        for i in range(0, len(self.rows), size):
            yield self.read(self.rows[i : i + size])


def open_rows(path: Path, rows: np.ndarray | None = None) -> ImageRows:
    """``ImageRows`` over an ``.npy`` file (memory-mapped for its header, read positionally)."""
    return ImageRows(np.load(Path(path), mmap_mode="r"), rows)
