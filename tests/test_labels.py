"""Label derivation from current (hierarchical) and legacy ISIC metadata fields."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from melanoma.errors import DataError
from melanoma.labels import BENIGN, LABEL_COLUMNS, MELANOMA, derive_label, derive_labels

MEL_D2 = "Malignant melanocytic proliferations (Melanoma)"

CASES = [
    # --- current era: hierarchical diagnosis_1..5 ---
    pytest.param(
        {
            "sex": "female",
            "diagnosis_1": "Benign",
            "diagnosis_2": "Benign melanocytic proliferations",
            "diagnosis_3": "Nevus",
        },
        BENIGN,
        "Nevus",
        id="server-example-benign-nevus",
    ),
    pytest.param(
        {"diagnosis_1": "Malignant", "diagnosis_2": MEL_D2, "diagnosis_3": "Melanoma in situ"},
        MELANOMA,
        "Melanoma in situ",
        id="melanoma-in-situ",
    ),
    pytest.param(
        {
            "diagnosis_1": "Malignant",
            "diagnosis_2": MEL_D2,
            "diagnosis_3": "Melanoma Invasive",
            "diagnosis_4": "Melanoma Invasive, Superficial spreading",
        },
        MELANOMA,
        "Melanoma Invasive, Superficial spreading",
        id="melanoma-deepest-level-text",
    ),
    pytest.param(
        {"diagnosis_1": "Malignant", "diagnosis_2": MEL_D2}, MELANOMA, MEL_D2, id="melanoma-level-2-only"
    ),
    pytest.param(
        {"diagnosis_3": "Melanoma metastasis"}, MELANOMA, "Melanoma metastasis", id="melanoma-level-3-only"
    ),
    pytest.param(
        {"diagnosis_1": " malignant ", "diagnosis_2": MEL_D2.upper()},
        MELANOMA,
        MEL_D2.upper(),
        id="hierarchical-case-insensitive",
    ),
    pytest.param(
        {
            "diagnosis_1": "Malignant",
            "diagnosis_2": "Collision - At least one malignant proliferation",
        },
        MELANOMA,
        "Collision - At least one malignant proliferation",
        id="malignant-collision-counts-like-isic",
    ),
    pytest.param(
        {
            "diagnosis_1": "Benign",
            "diagnosis_2": "Collision - Only benign proliferations",
        },
        BENIGN,
        "Collision - Only benign proliferations",
        id="benign-collision",
    ),
    pytest.param(
        {
            "diagnosis_1": "Malignant",
            "diagnosis_2": "Malignant adnexal epithelial proliferations - Follicular",
            "diagnosis_3": "Basal cell carcinoma",
        },
        BENIGN,
        "Basal cell carcinoma",
        id="bcc-under-malignant-is-not-melanoma",
    ),
    pytest.param(
        {
            "diagnosis_1": "Indeterminate",
            "diagnosis_2": "Indeterminate melanocytic proliferations",
        },
        None,
        "Indeterminate melanocytic proliferations",
        id="indeterminate-unlabeled",
    ),
    pytest.param(
        {"diagnosis_1": "Indeterminate", "benign_malignant": "benign"},
        None,
        "Indeterminate",
        id="indeterminate-wins-over-legacy",
    ),
    pytest.param(
        {
            "diagnosis_1": "Benign",
            "diagnosis_2": "Benign melanocytic proliferations",
            "diagnosis": "melanoma",
        },
        BENIGN,
        "Benign melanocytic proliferations",
        id="current-era-wins-over-legacy",
    ),
    pytest.param(
        {"diagnosis_2": "Benign melanocytic proliferations", "benign_malignant": "benign"},
        BENIGN,
        "Benign melanocytic proliferations",
        id="no-diagnosis_1-falls-back-to-legacy",
    ),
    # --- legacy flat diagnosis ---
    pytest.param({"sex": "male", "diagnosis": "melanoma"}, MELANOMA, "melanoma", id="isic-cli-fixture"),
    pytest.param(
        {"diagnosis": "  Melanoma Metastasis "}, MELANOMA, "Melanoma Metastasis", id="legacy-case-whitespace"
    ),
    pytest.param({"diagnosis": "nevus"}, BENIGN, "nevus", id="legacy-nevus-alone"),
    pytest.param({"diagnosis": "lentigo NOS"}, BENIGN, "lentigo NOS", id="legacy-mixed-case-value"),
    pytest.param({"diagnosis": "AIMP"}, None, "AIMP", id="legacy-aimp"),
    pytest.param(
        {"diagnosis": "atypical melanocytic proliferation", "benign_malignant": "benign"},
        None,
        "atypical melanocytic proliferation",
        id="legacy-amp-unlabeled",
    ),
    pytest.param({"diagnosis": "other"}, None, "other", id="legacy-other-alone-unlabeled"),
    pytest.param({"diagnosis": "made-up thing"}, None, "made-up thing", id="legacy-unknown-string"),
    # --- legacy benign_malignant ---
    pytest.param({"benign_malignant": "malignant"}, MELANOMA, "malignant", id="bm-malignant-no-dx"),
    pytest.param(
        {"benign_malignant": "MALIGNANT ", "diagnosis": "melanoma"},
        MELANOMA,
        "melanoma",
        id="bm-malignant-mel",
    ),
    pytest.param(
        {"benign_malignant": "malignant", "diagnosis": "basal cell carcinoma"},
        BENIGN,
        "basal cell carcinoma",
        id="bm-malignant-bcc",
    ),
    pytest.param(
        {"benign_malignant": "malignant", "diagnosis": "other"}, None, "other", id="bm-malignant-other"
    ),
    pytest.param({"benign_malignant": "benign"}, BENIGN, "benign", id="bm-benign"),
    pytest.param(
        {"benign_malignant": "benign", "diagnosis": "unknown"}, BENIGN, "unknown", id="challenge-2020-row"
    ),
    pytest.param({"benign_malignant": "indeterminate"}, None, "indeterminate", id="bm-indeterminate"),
    pytest.param(
        {"benign_malignant": "indeterminate/malignant"}, None, "indeterminate/malignant", id="bm-indet-mal"
    ),
    pytest.param(
        {"benign_malignant": "Indeterminate/Benign", "diagnosis": "nevus"}, None, "nevus", id="bm-indet-ben"
    ),
    # --- missing values ---
    pytest.param({}, None, "", id="empty-row"),
    pytest.param({"sex": "male", "age_approx": 40}, None, "", id="no-label-fields"),
    pytest.param(
        {"diagnosis_1": None, "diagnosis": "", "benign_malignant": "   "}, None, "", id="none-and-blank"
    ),
    pytest.param(
        {"diagnosis_1": float("nan"), "diagnosis_2": np.nan, "diagnosis": "nevus"},
        BENIGN,
        "nevus",
        id="nan-cells-fall-back",
    ),
    pytest.param({"diagnosis_1": pd.NA, "benign_malignant": pd.NA}, None, "", id="pd-na-cells"),
]


@pytest.mark.parametrize(("row", "label", "diagnosis"), CASES)
def test_derive_label(row: dict, label: int | None, diagnosis: str) -> None:
    assert derive_label(row) == (label, diagnosis)


def test_label_columns() -> None:
    assert set(LABEL_COLUMNS) == {f"diagnosis_{i}" for i in range(1, 6)} | {"diagnosis", "benign_malignant"}


def test_derive_labels_matches_rowwise_and_keeps_index() -> None:
    rows = [p.values[0] for p in CASES]
    # Every frame column appears in every row after DataFrame construction (missing -> NaN).
    df = pd.DataFrame(rows, index=[f"r{i}" for i in range(len(rows))])
    out = derive_labels(df)
    assert list(out.columns) == ["label", "diagnosis", "label_source"]
    assert list(out.index) == list(df.index)
    assert str(out["label"].dtype) == "Int8"
    for (idx, row), p in zip(df.iterrows(), CASES, strict=True):
        expected_label, expected_dx = p.values[1], p.values[2]
        got = out.loc[idx, "label"]
        assert (got is pd.NA) if expected_label is None else got == expected_label, p.id
        assert out.loc[idx, "diagnosis"] == expected_dx, p.id
        assert derive_label(row.to_dict())[0] == expected_label, p.id


def test_derive_labels_sources() -> None:
    df = pd.DataFrame(
        {
            "diagnosis_1": ["Benign", "Indeterminate", None, None, None, None],
            "diagnosis": [None, None, "melanoma", None, "other", None],
            "benign_malignant": [None, None, None, "benign", None, None],
        }
    )
    out = derive_labels(df)
    assert list(out["label_source"]) == [
        "hierarchical",
        "hierarchical",
        "legacy_diagnosis",
        "benign_malignant",
        "none",
        "none",
    ]
    assert out["label"].isna().tolist() == [False, True, False, False, True, True]


def test_derive_labels_from_csv_like_frame() -> None:
    # The 2020 challenge ground truth as read by pandas: one legacy era column set, NaN gaps.
    df = pd.DataFrame(
        {
            "image_name": ["ISIC_2637011", "ISIC_0015719", "ISIC_0052212"],
            "diagnosis": ["unknown", "melanoma", math.nan],
            "benign_malignant": ["benign", "malignant", "benign"],
        }
    )
    out = derive_labels(df)
    assert out["label"].tolist() == [0, 1, 0]


def test_derive_labels_empty_frame() -> None:
    out = derive_labels(pd.DataFrame({"diagnosis": pd.Series([], dtype=object)}))
    assert len(out) == 0
    assert str(out["label"].dtype) == "Int8"


def test_derive_labels_without_label_columns() -> None:
    with pytest.raises(DataError) as exc:
        derive_labels(pd.DataFrame({"isic_id": ["ISIC_0000000"], "sex": ["male"]}))
    message = str(exc.value)
    for column in ("diagnosis_1", "benign_malignant", "diagnosis"):
        assert column in message
