"""Patient metadata (age, sex, anatomic site) as model inputs: parse, normalise, encode.

A ``MetadataEncoder`` is fitted on the training rows and saved with the model, so serving encodes
exactly as training did:

- ``age_approx``: one float column, NaN when missing (the model's pipeline imputes it or, for
  gradient boosting, splits on NaN natively);
- ``sex`` and ``site``: one-hot over the normalised categories seen in training, plus a
  ``<column>=missing`` indicator; a missing or unseen value is all zeros plus the indicator.

Category spelling is normalised (case, whitespace, underscores), so ISIC's ``lower extremity``
and the synthetic sample's ``Lower extremity`` are one category. The column order is fixed
(``METADATA_COLUMNS`` order, categories sorted), so the same training rows give the same encoder.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

# The prepared index's metadata columns (contracts: index.csv), in encoding order.
METADATA_COLUMNS: tuple[str, ...] = ("age_approx", "sex", "site")
CATEGORICAL: frozenset[str] = frozenset({"sex", "site"})
# Spellings that sources use for "not recorded" (HAM10000 writes "unknown"; index.csv writes "").
MISSING_TOKENS = frozenset({"", "nan", "none", "null", "na", "n/a", "unknown", "unk", "?"})
MAX_AGE = 120.0


def normalise_category(value: Any) -> str:
    """A category in canonical spelling (``"  Lower_Extremity "`` -> ``"lower extremity"``); "" if missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = unicodedata.normalize("NFKC", str(value)).replace("_", " ")
    text = re.sub(r"\s+", " ", text).strip().casefold()
    return "" if text in MISSING_TOKENS else text


def parse_age(value: Any, where: str = "", round_to: int = 0) -> float:
    """Age in years as a float, NaN when missing; ValueError naming ``where`` when not a plausible age.

    The one age rule of the project: the sources read CSV cells with it, training and the app
    encode with it. ``round_to`` rounds to a multiple of that many years (ISIC publishes ages
    rounded to 5, so a source's exact ``age`` column is rounded the same way).
    """
    if value is None or isinstance(value, bool):
        return math.nan if value is None else _bad_age(value, where)
    if isinstance(value, int | float | np.integer | np.floating):
        age = float(value)
        if math.isnan(age):
            return math.nan
    else:
        text = str(value).strip()
        if text.casefold() in MISSING_TOKENS:
            return math.nan
        try:
            age = float(text)
        except ValueError:
            return _bad_age(value, where)
    if not math.isfinite(age) or not 0 <= age <= MAX_AGE:
        return _bad_age(value, where)
    if round_to:
        age = float(round_to * round(age / round_to))
    return age


def _bad_age(value: Any, where: str) -> float:
    place = f"{where}: " if where else ""
    raise ValueError(f"{place}age {value!r} is not a number of years between 0 and {MAX_AGE:g} (or empty)")


def metadata_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The metadata columns a frame has (split or index rows), in row order with a fresh index."""
    return frame[[c for c in METADATA_COLUMNS if c in frame.columns]].reset_index(drop=True)


def metadata_frame(
    values: Mapping[str, Sequence[Any] | None], n: int, where: str = ""
) -> pd.DataFrame | None:
    """Per-image lists (e.g. pyfunc params) -> a frame of ``n`` rows, or None when no list is given.

    An empty list or None means "not given" (all missing). Any other length than ``n`` is an error
    naming the column, because a mismatch would give one image another patient's metadata.
    """
    unknown = sorted(set(values) - set(METADATA_COLUMNS))
    if unknown:
        raise ValueError(
            f"{where or 'metadata'}: unknown column(s) {unknown}; expected {list(METADATA_COLUMNS)}"
        )
    given = {k: list(v) for k, v in values.items() if v is not None and len(v) > 0}
    for column, items in given.items():
        if len(items) != n:
            raise ValueError(
                f"{where or 'metadata'}: {column} has {len(items)} value(s) for {n} image(s); "
                "give one per image (empty or null for a missing value) or none at all"
            )
    if not given:
        return None
    return pd.DataFrame({c: given[c] for c in METADATA_COLUMNS if c in given}, index=range(n))


@dataclass(frozen=True)
class MetadataEncoder:
    """Fitted encoding of the metadata columns a model uses (see the module docstring)."""

    columns: tuple[str, ...] = ()
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def fit(cls, frame: pd.DataFrame | None, columns: Sequence[str]) -> MetadataEncoder:
        """Learn the categories of ``columns`` from training rows (every requested column must be present)."""
        unknown = sorted(set(columns) - set(METADATA_COLUMNS))
        if unknown:
            raise ValueError(
                f"unknown metadata column(s) {unknown}; expected some of {list(METADATA_COLUMNS)}"
            )
        missing = [c for c in columns if frame is None or c not in frame.columns]
        if missing:
            raise ValueError(f"the training rows have no metadata column(s) {missing}")
        ordered = tuple(c for c in METADATA_COLUMNS if c in columns)
        assert frame is not None or not ordered
        categories = {
            c: tuple(sorted({v for v in frame[c].map(normalise_category) if v}))  # type: ignore[index]
            for c in ordered
            if c in CATEGORICAL
        }
        return cls(columns=ordered, categories=categories)

    @property
    def feature_names(self) -> list[str]:
        """Names of the encoded columns, in order."""
        names: list[str] = []
        for c in self.columns:
            if c in CATEGORICAL:
                names += [f"{c}={v}" for v in self.categories[c]] + [f"{c}=missing"]
            else:
                names.append(c)
        return names

    def transform(self, frame: pd.DataFrame | None, n: int) -> np.ndarray:
        """``n`` rows of metadata -> float32 (n, len(feature_names)); None or absent columns = all missing."""
        if frame is not None and len(frame) != n:
            raise ValueError(f"metadata has {len(frame)} row(s) for {n} image(s): give one row per image")
        parts: list[np.ndarray] = []
        for c in self.columns:
            raw = None if frame is None or c not in frame.columns else frame[c].tolist()
            if c not in CATEGORICAL:
                ages = (
                    [math.nan] * n
                    if raw is None
                    else [parse_age(v, f"{c} row {i}") for i, v in enumerate(raw)]
                )
                parts.append(np.asarray(ages, np.float32)[:, None])
                continue
            cats = self.categories[c]
            values = [""] * n if raw is None else [normalise_category(v) for v in raw]
            lookup = {v: j for j, v in enumerate(cats)}
            onehot = np.zeros((n, len(cats) + 1), np.float32)
            for i, v in enumerate(values):
                onehot[i, lookup.get(v, len(cats))] = 1.0  # unseen or missing: the indicator column
            parts.append(onehot)
        return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.float32)

    def describe(self) -> dict[str, Any]:
        """What model.json records: the columns used, the categories and the encoded feature names."""
        return {
            "columns": list(self.columns),
            "categories": {c: list(v) for c, v in self.categories.items()},
            "features": self.feature_names,
        }


def usable_columns(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(usable, dropped): configured columns that the training rows have with at least one value.

    A column absent from the rows, or present but empty in every row (a folder of images without
    metadata still writes the index columns, empty), carries no information to learn from.
    """
    usable, dropped = [], []
    for c in columns:
        if c not in frame.columns:
            dropped.append(c)
            continue
        if c in CATEGORICAL:
            present = any(normalise_category(v) for v in frame[c])
        else:
            present = any(not math.isnan(parse_age(v, f"{c} row {i}")) for i, v in enumerate(frame[c]))
        (usable if present else dropped).append(c)
    return tuple(usable), tuple(dropped)
