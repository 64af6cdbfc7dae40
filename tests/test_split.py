"""Grouped, stratified train/val/test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melanoma.config import SplitParams
from melanoma.contracts import write_splits
from melanoma.errors import DataError
from melanoma.split import group_keys, split_frame, split_indices, split_report

PARAMS = SplitParams(test_fraction=0.2, val_fraction=0.15, group_by=("patient_id", "lesion_id"))


def make_index(
    n_rows: int = 2000, prevalence: float = 0.10, seed: int = 0, blank_patient: float = 0.0
) -> pd.DataFrame:
    """An ISIC-like index: patients with 1-8 images over 1-3 lesions; a lesion's images share a label."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    patient = lesion = 0
    while len(rows) < n_rows:
        patient += 1
        n_images = int(rng.integers(1, 9))
        n_lesions = int(rng.integers(1, min(3, n_images) + 1))
        lesion_labels = {}
        for i in range(n_images):
            k = i % n_lesions
            if k not in lesion_labels:
                lesion += 1
                lesion_labels[k] = (lesion, int(rng.random() < prevalence))
            lesion_no, label = lesion_labels[k]
            rows.append(
                {
                    "row": len(rows),
                    "isic_id": f"ISIC_{len(rows):07d}",
                    "label": label,
                    "patient_id": f"IP_{patient:07d}",
                    "lesion_id": f"IL_{lesion_no:07d}",
                }
            )
    df = pd.DataFrame(rows[:n_rows])
    if blank_patient:
        blank = rng.random(len(df)) < blank_patient
        df.loc[blank, "patient_id"] = rng.choice(np.array(["", None, np.nan], dtype=object), blank.sum())
    return df


@pytest.fixture(scope="module")
def index() -> pd.DataFrame:
    return make_index()


@pytest.fixture(scope="module")
def frames(index: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return split_frame(index, PARAMS, seed=42)


def test_group_keys_precedence() -> None:
    df = pd.DataFrame(
        {
            "isic_id": ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4", "ISIC_5"],
            "patient_id": ["IP_1", "", None, np.nan, " IP_2 "],
            "lesion_id": ["IL_1", "IL_2", None, "IL_3", None],
        },
        index=[10, 11, 12, 13, 14],
    )
    keys = group_keys(df, ("patient_id", "lesion_id"))
    assert keys.tolist() == [
        "patient_id:IP_1",
        "lesion_id:IL_2",
        "isic_id:ISIC_3",
        "lesion_id:IL_3",
        "patient_id:IP_2",
    ]
    assert keys.index.tolist() == df.index.tolist()
    # Absent columns are skipped.
    assert group_keys(df, ("no_such_column", "lesion_id")).tolist()[0] == "lesion_id:IL_1"
    assert group_keys(df[["isic_id"]], ("patient_id",)).tolist()[0] == "isic_id:ISIC_1"
    assert group_keys(pd.DataFrame({"x": [1, 2]}), ("patient_id",)).tolist() == ["row:0", "row:1"]


def test_every_row_in_exactly_one_split(index: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> None:
    assert set(frames) == {"train", "val", "test"}
    rows = np.concatenate([f["row"].to_numpy() for f in frames.values()])
    assert len(rows) == len(index)
    assert sorted(rows) == index["row"].tolist()
    for frame in frames.values():
        assert list(frame.columns) == [*index.columns, "group"]
        assert frame["row"].is_monotonic_increasing


def test_no_patient_in_two_splits(frames: dict[str, pd.DataFrame]) -> None:
    patients = [set(f["patient_id"]) for f in frames.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert all(g.startswith("patient_id:") for f in frames.values() for g in f["group"])


def test_fallback_to_lesion_and_isic_id() -> None:
    df = make_index(seed=3, blank_patient=0.3)
    # Some rows have neither id: they fall back to their own isic_id.
    df.loc[df.index[::97], ["patient_id", "lesion_id"]] = None
    frames = split_frame(df, PARAMS, seed=1)
    kinds = {g.split(":")[0] for f in frames.values() for g in f["group"]}
    assert kinds == {"patient_id", "lesion_id", "isic_id"}
    for column in ("group", "lesion_id"):
        seen: dict[str, str] = {}
        for name, frame in frames.items():
            # A lesion (or group) never spans splits when its rows share a patient or have none.
            values = frame.loc[frame["patient_id"].isna() | (frame["patient_id"] == ""), column]
            for value in values.dropna():
                assert seen.setdefault(value, name) == name, (column, value)


def test_sizes_and_prevalence_close_to_target(index: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> None:
    n = len(index)
    overall = index["label"].mean()
    expected = {"train": 0.8 * 0.85, "val": 0.8 * 0.15, "test": 0.2}
    for name, frame in frames.items():
        assert abs(len(frame) / n - expected[name]) <= 0.03, name
        assert abs(frame["label"].mean() - overall) <= 0.03, name


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_prevalence_holds_across_seeds(seed: int) -> None:
    df = make_index(seed=100 + seed)
    overall = df["label"].mean()
    for frame in split_frame(df, PARAMS, seed=seed).values():
        assert abs(frame["label"].mean() - overall) <= 0.03


def test_deterministic_for_a_seed(index: pd.DataFrame) -> None:
    labels, groups = index["label"].to_numpy(), group_keys(index, PARAMS.group_by).to_numpy()
    a = split_indices(labels, groups, 0.2, 0.15, seed=7)
    b = split_indices(labels, groups, 0.2, 0.15, seed=7)
    c = split_indices(labels, groups, 0.2, 0.15, seed=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    for rows in a.values():
        assert np.all(np.diff(rows) > 0)


def test_few_positives_still_reach_every_split() -> None:
    labels = np.zeros(200, dtype=int)
    labels[[5, 50, 100, 150]] = 1
    groups = np.arange(200)
    result = split_indices(labels, groups, 0.2, 0.15, seed=0)
    assert all(labels[rows].sum() >= 1 for rows in result.values())


@pytest.mark.parametrize("positives", [[], [3], [3, 4], [3, 4, 5]])
def test_too_few_positive_groups(positives: list[int]) -> None:
    labels = np.zeros(100, dtype=int)
    labels[positives] = 1
    groups = np.arange(100)
    if len(positives) == 3:
        groups[[3, 4, 5]] = 3  # three melanomas, but one patient
    with pytest.raises(DataError, match="melanoma"):
        split_indices(labels, groups, 0.2, 0.15, seed=0)


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match="0 or 1"):
        split_indices(np.array([0, 1, 2]), np.arange(3), 0.2, 0.15, seed=0)
    with pytest.raises(DataError, match="equal length"):
        split_indices(np.array([0, 1]), np.arange(3), 0.2, 0.15, seed=0)
    df = make_index(n_rows=50)
    with pytest.raises(DataError, match="label"):
        split_frame(df.drop(columns="label"), PARAMS, seed=0)
    df["label"] = df["label"].astype("Int8")
    df.loc[0, "label"] = pd.NA
    with pytest.raises(DataError, match="unlabeled"):
        split_frame(df, PARAMS, seed=0)


def test_report(index: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> None:
    report = split_report(frames)
    assert report["group_overlap"] == 0
    assert report["overall"]["n"] == len(index)
    assert report["overall"]["n_melanoma"] == int(index["label"].sum())
    assert report["overall"]["n_groups"] == index["patient_id"].nunique()
    for name in ("train", "val", "test"):
        part = report[name]
        frame = frames[name]
        assert part["n"] == len(frame) == part["n_melanoma"] + part["n_benign"]
        assert part["n_melanoma"] == int(frame["label"].sum())
        assert part["melanoma_fraction"] == pytest.approx(frame["label"].mean(), abs=1e-6)
        assert part["n_groups"] == frame["group"].nunique()
    assert sum(report[s]["n_groups"] for s in ("train", "val", "test")) == report["overall"]["n_groups"]
    json.dumps(report)  # plain JSON types only


def test_report_rejects_overlap(frames: dict[str, pd.DataFrame]) -> None:
    leaky = dict(frames)
    leaky["test"] = pd.concat([frames["test"], frames["train"].head(1)], ignore_index=True)
    with pytest.raises(DataError, match="more than one split"):
        split_report(leaky)


def test_write_splits(tmp_path: Path, frames: dict[str, pd.DataFrame]) -> None:
    report = split_report(frames)
    out = tmp_path / "splits"
    write_splits(out, frames, report)
    assert sorted(p.name for p in out.iterdir()) == ["split_report.json", "test.csv", "train.csv", "val.csv"]
    for name, frame in frames.items():
        back = pd.read_csv(out / f"{name}.csv")
        assert back["isic_id"].tolist() == frame["isic_id"].tolist()
        assert back["group"].tolist() == frame["group"].tolist()
    assert json.loads((out / "split_report.json").read_text()) == report


def test_split_twice_gives_byte_identical_files(tmp_path: Path, index: pd.DataFrame) -> None:
    for out in ("a", "b"):
        frames = split_frame(index.copy(), PARAMS, seed=42)
        write_splits(tmp_path / out, frames, split_report(frames))
    for name in ("train.csv", "val.csv", "test.csv", "split_report.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
