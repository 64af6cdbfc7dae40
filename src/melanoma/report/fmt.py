"""Number and Markdown formatting shared by the README and the model card.

One rule for every number printed: integers as they are, other numbers with 3 decimals, missing
values as "n/a". The test that traces README numbers back to files formats source values with
the same ``num``, so a number computed or typed in by the report has nothing to match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

NA = "n/a"


def num(value: Any) -> str:
    """Format one number from a report file (bools and non-numbers are not numbers)."""
    if value is None or isinstance(value, bool):
        return NA
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return NA if not math.isfinite(value) else f"{value:.3f}"
    return NA


def with_ci(values: dict[str, Any], key: str) -> str:
    """``value [low, high]`` from ``key``, ``key_ci_low`` and ``key_ci_high``; n/a when absent."""
    if values.get(key) is None:
        return NA
    low, high = values.get(f"{key}_ci_low"), values.get(f"{key}_ci_high")
    if low is None or high is None:
        return num(values[key])
    return f"{num(values[key])} [{num(low)}, {num(high)}]"


def cell(text: Any) -> str:
    """A Markdown table cell: no pipes or newlines inside."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(alt: str, file: str) -> str:
    """A Markdown image link to reports/figures/<file> (paths relative to the report)."""
    return f"![{alt}](figures/{file})"


def small_group_flag(n: int, n_melanoma: int, min_n: int, min_melanoma: int) -> str:
    """Why a subgroup's numbers are unreliable ('' when they are not)."""
    why = []
    if n < min_n:
        why.append(f"n<{min_n}")
    if n_melanoma < min_melanoma:
        why.append(f"melanoma<{min_melanoma}")
    return "⚠ small: " + ", ".join(why) if why else ""
