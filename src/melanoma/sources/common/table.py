"""Reading a source's metadata CSV: the table, the row loop and the parsing of its cells."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from melanoma.errors import DataError
from melanoma.metadata import parse_age
from melanoma.sources.common.items import Failure


def read_csv_table(path: Path, has_header: bool = True) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, cells)]) of a CSV; cells stripped, blank lines skipped.

    Line numbers count from 1 with the header as line 1, so they match what an editor shows.
    Raises DataError if the file is missing or cannot be read as CSV text.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    rows: list[tuple[int, list[str]]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            for cells in reader:
                if any(c.strip() for c in cells):
                    rows.append((reader.line_num, [c.strip() for c in cells]))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV file: {exc}") from exc
    if not has_header:
        return [], rows
    if not rows:
        raise DataError(f"{path}: the CSV file is empty (no header)")
    return rows[0][1], rows[1:]


def csv_rows(
    name: str, n_columns: int, rows: Iterable[tuple[int, list[str]]], failures: list[Failure]
) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """The CSV row loop: (where, cells) of each row with ``n_columns`` cells; others become failures.

    ``where`` ({"file", "row"}) is what every failure of that row starts with.
    """
    for line, cells in rows:
        where = {"file": name, "row": line}
        if len(cells) != n_columns:
            failures.append({**where, "reason": f"has {len(cells)} fields, the header has {n_columns}"})
            continue
        yield where, cells


def first_column(lower: Sequence[str], candidates: Sequence[str]) -> int | None:
    """Index of the first of ``candidates`` among the (case-folded) column names, or None."""
    return next((lower.index(c) for c in candidates if c in lower), None)


def parse_flag(value: str) -> int:
    """0 or 1 from ``0``, ``1``, ``0.0``, ``1.0``, ``true``, ``false``; ValueError otherwise."""
    text = value.strip().casefold()
    if text in ("true", "yes"):
        return 1
    if text in ("false", "no"):
        return 0
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not 0 or 1") from None
    if number not in (0.0, 1.0):
        raise ValueError(f"{value!r} is not 0 or 1")
    return int(number)


def age_cell(value: str, round_to: int = 0) -> int | float | None:
    """An ``age_approx`` record value from a CSV cell, by the one age rule ``metadata.parse_age``.

    None when missing; an int when whole, so metadata.csv says ``40``, not ``40.0``.
    ValueError (the reason of that row's failure) when not a plausible age.
    """
    age = parse_age(value, round_to=round_to)
    if math.isnan(age):
        return None
    return int(age) if age.is_integer() else age
