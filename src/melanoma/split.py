"""Patient-grouped, label-stratified train/val/test split.

Images of one patient (or, failing a patient id, one lesion) share skin, camera and often the
very lesion, so they must all land in the same split or the test score leaks. Within that
constraint each split should hold its share of rows *and* of melanomas, which matters at the
~2-10 % prevalence of ISIC data where a split can otherwise end up with no positive at all.

sklearn's StratifiedGroupKFold only produces equal folds, so the split is a small deterministic
greedy assignment instead (see ``split_indices``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from melanoma.config import SplitParams
from melanoma.contracts import SPLITS
from melanoma.errors import DataError


def _present(value: object) -> str | None:
    """Stripped text of a cell, or None for None / NaN / blank."""
    if value is None:
        return None
    if not isinstance(value, str):
        missing = pd.isna(value)
        if isinstance(missing, bool | np.bool_) and missing:
            return None
    return str(value).strip() or None


def group_keys(df: pd.DataFrame, group_by: Sequence[str]) -> pd.Series:
    """Per row: the first non-empty ``group_by`` column as 'column:value', else 'isic_id:<id>'.

    Columns absent from df are skipped. The column name is part of the key so that a patient id
    and a lesion id with the same text never merge. A row with no usable id at all (not even
    ``isic_id``) becomes its own group 'row:<position>'.
    """
    columns = [c for c in (*group_by, "isic_id") if c in df.columns]
    arrays = [df[c].to_numpy(dtype=object) for c in columns]
    keys: list[str] = []
    for pos in range(len(df)):
        key = f"row:{pos}"
        for name, values in zip(columns, arrays, strict=True):
            text = _present(values[pos])
            if text is not None:
                key = f"{name}:{text}"
                break
        keys.append(key)
    return pd.Series(keys, index=df.index, name="group", dtype=object)


def _fractions(test_fraction: float, val_fraction: float) -> np.ndarray:
    """Share of all rows per split, in SPLITS order (val is a fraction of the non-test part)."""
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1):
        raise DataError(
            f"split fractions must lie strictly between 0 and 1, got test_fraction={test_fraction}, "
            f"val_fraction={val_fraction}"
        )
    rest = 1.0 - test_fraction
    return np.array([rest * (1.0 - val_fraction), rest * val_fraction, test_fraction])


def split_indices(
    labels: np.ndarray, groups: np.ndarray, test_fraction: float, val_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Return {'train', 'val', 'test'} -> sorted row positions.

    Test gets ~test_fraction of the rows and val ~val_fraction of the rest; no group is in two
    splits; each split's positive rate is close to the overall rate; the result depends only on
    the inputs and the seed. Raises DataError if a split would get no positive or no negative.

    Algorithm: groups are shuffled with ``default_rng(seed)`` (so ties break randomly but
    reproducibly), then stably sorted by (positives desc, size desc) so the hard-to-place groups
    go first and small all-negative groups fine-tune at the end. Each group goes to the split
    where it least increases sum over splits and classes of (count - target)^2 / target, with
    target = split fraction x class total. Dividing by the target makes the error relative, so
    the small val split gets its share of rare positives too, and the squared term keeps a
    large group out of a split it would overshoot. When only as many groups carrying a class
    are left as there are splits without that class, they go to those splits, so a split lacks
    a class only when there are too few groups to go round.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if labels.ndim != 1 or groups.shape != labels.shape:
        raise DataError(
            f"labels and groups must be 1-D of equal length, got {labels.shape} and {groups.shape}"
        )
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = sorted({str(v) for v in labels[~np.isin(labels, (0, 1))]})[:5]
        raise DataError(f"labels must be 0 or 1 (drop unlabeled rows first), found {', '.join(bad)}")
    labels = labels.astype(np.int64)
    fractions = _fractions(test_fraction, val_fraction)

    # Sorted unique keys (as text) make the outcome independent of the row order.
    uniques, group_of_row = np.unique(groups.astype(str), return_inverse=True)
    n_groups = len(uniques)
    pos = np.bincount(group_of_row, weights=labels, minlength=n_groups).astype(np.int64)
    size = np.bincount(group_of_row, minlength=n_groups).astype(np.int64)
    neg = size - pos
    totals = np.array([pos.sum(), neg.sum()], dtype=float)
    if n_groups < len(SPLITS) or (totals < len(SPLITS)).any():
        raise DataError(
            f"too little data to split: {labels.size} rows in {n_groups} groups with "
            f"{int(totals[0])} melanoma and {int(totals[1])} benign; each of train, val and test "
            "needs at least one group and one example of each class. Add data (more melanomas) "
            "or change split.test_fraction / split.val_fraction."
        )

    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n_groups)
    # np.lexsort is stable: the last key is the primary one.
    order = shuffled[np.lexsort((-size[shuffled], -pos[shuffled]))]

    target = fractions[:, None] * totals[None, :]  # (split, class): 0 = positive, 1 = negative
    count = np.zeros_like(target)
    has_class = np.stack([pos > 0, neg > 0], axis=1)  # (group, class)
    # Groups still to place that carry each class, to reserve the last ones for empty splits.
    remaining = has_class.sum(axis=0)
    assign = np.empty(n_groups, dtype=np.int64)
    for g in order:
        k = np.array([pos[g], neg[g]], dtype=float)
        # Increase of sum (count - target)^2 / target if group g joins each split.
        delta = ((2.0 * k * (count - target) + k * k) / target).sum(axis=1)
        # With few melanomas the error-minimising choice can leave the small val split without
        # one; once the groups left carrying a class are no more than the splits still lacking
        # it, they may only go to those splits.
        allowed = np.ones(len(SPLITS), dtype=bool)
        for c in range(2):
            lacking = count[:, c] == 0
            if has_class[g, c] and remaining[c] <= lacking.sum():
                allowed &= lacking
        if not allowed.any():  # the two classes ask for different splits: let the error decide
            allowed[:] = True
        delta[~allowed] = np.inf
        s = int(np.argmin(delta))  # ties go to the earlier split (train, val, test)
        assign[g] = s
        count[s] += k
        remaining -= has_class[g]

    row_split = assign[group_of_row]
    result = {name: np.flatnonzero(row_split == i) for i, name in enumerate(SPLITS)}
    for i, name in enumerate(SPLITS):
        n_pos, n_neg = int(count[i, 0]), int(count[i, 1])
        if n_pos == 0 or n_neg == 0:
            missing = "melanoma" if n_pos == 0 else "benign"
            raise DataError(
                f"the {name} split would have no {missing} example ({n_pos} melanoma, {n_neg} benign "
                f"of {labels.size} rows, {int(totals[0])} melanoma in all); add more data or change "
                "split.test_fraction / split.val_fraction"
            )
    return result


def split_frame(index: pd.DataFrame, params: SplitParams, seed: int) -> dict[str, pd.DataFrame]:
    """Split an index frame (columns row, isic_id, label 0/1, optionally patient_id, lesion_id).

    Returns {'train', 'val', 'test'} -> the frame's rows (all original columns plus 'group'), in
    their original order with a fresh 0..n-1 index.
    """
    missing = [c for c in ("row", "isic_id", "label") if c not in index.columns]
    if missing:
        raise DataError(
            f"split input lacks column(s) {', '.join(missing)}; expected row, isic_id, label "
            f"(and optionally {', '.join(params.group_by)}), got {', '.join(map(str, index.columns))}"
        )
    if index["label"].isna().any():
        raise DataError(
            f"{int(index['label'].isna().sum())} rows have no label; unlabeled rows must be dropped "
            "before splitting"
        )
    groups = group_keys(index, params.group_by)
    labels = index["label"].to_numpy()
    positions = split_indices(labels, groups.to_numpy(), params.test_fraction, params.val_fraction, seed)
    frame = index.assign(group=groups.to_numpy())
    return {name: frame.iloc[rows].reset_index(drop=True) for name, rows in positions.items()}


def _counts(frame: pd.DataFrame) -> dict[str, int | float]:
    n = len(frame)
    n_melanoma = int((frame["label"] == 1).sum())
    return {
        "n": n,
        "n_melanoma": n_melanoma,
        "n_benign": int((frame["label"] == 0).sum()),
        "melanoma_fraction": round(n_melanoma / n, 6) if n else 0.0,
        "n_groups": int(frame["group"].nunique()),
    }


def split_report(frames: dict[str, pd.DataFrame]) -> dict:
    """Counts per split and overall (n, n_melanoma, n_benign, melanoma_fraction, n_groups).

    Each split also gets ``fraction`` (its share of all rows). ``group_overlap`` is the number of
    groups found in more than one split; it is checked here, and anything but 0 raises DataError
    rather than letting a leaky split be written.
    """
    for name, frame in frames.items():
        missing = [c for c in ("label", "group") if c not in frame.columns]
        if missing:
            raise DataError(f"split '{name}' lacks column(s) {', '.join(missing)}")
    total = sum(len(f) for f in frames.values())
    report: dict = {}
    seen: dict[str, str] = {}
    overlapping: set[str] = set()
    for name, frame in frames.items():
        report[name] = _counts(frame) | {"fraction": round(len(frame) / total, 6) if total else 0.0}
        for group in frame["group"].unique():
            if seen.setdefault(group, name) != name:
                overlapping.add(group)
    report["overall"] = _counts(pd.concat(list(frames.values()), ignore_index=True))
    if overlapping:
        example = sorted(overlapping)[0]
        raise DataError(
            f"{len(overlapping)} group(s) appear in more than one split (e.g. {example}); "
            "the split would leak patients between train and evaluation"
        )
    report["group_overlap"] = 0
    return report
