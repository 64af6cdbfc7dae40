"""Patient metadata encoding: spelling, missing and unseen values, column order, frames from lists."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest

from melanoma.metadata import (
    MetadataEncoder,
    metadata_frame,
    metadata_rows,
    normalise_category,
    parse_age,
    usable_columns,
)

TRAIN = pd.DataFrame(
    {
        "age_approx": ["50", "", "35"],  # index.csv keeps empty cells as ""
        "sex": ["male", "female", ""],
        "site": ["Lower extremity", "Trunk", "unknown"],
    }
)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("Lower extremity", "lower extremity"),
        ("  lower   EXTREMITY ", "lower extremity"),
        ("lower_extremity", "lower extremity"),
        ("", ""),
        ("Unknown", ""),
        (None, ""),
        (float("nan"), ""),
    ],
)
def test_category_spelling_is_normalised(raw: object, want: str) -> None:
    assert normalise_category(raw) == want


def test_ages_parse_and_bad_ones_name_the_place() -> None:
    assert parse_age("55") == 55.0 and parse_age(40) == 40.0 and parse_age(12.5) == 12.5
    assert all(math.isnan(parse_age(v)) for v in ("", " ", None, float("nan"), "unknown"))
    for bad in ("fifty", "-3", "400", True):
        with pytest.raises(ValueError, match=r"age_approx row 2: age"):
            parse_age(bad, "age_approx row 2")
    # ISIC's rounding to 5 years (round half to even, as Python rounds), checked before rounding
    assert [parse_age(v, round_to=5) for v in ("42", "42.5", "43", "77.0", "118")] == [40, 40, 45, 75, 120]
    with pytest.raises(ValueError, match="age '121'"):
        parse_age("121", round_to=5)


def test_encoder_one_hot_with_missing_indicator_in_fixed_order() -> None:
    # asked for in another order: the encoding order is age, sex, site
    enc = MetadataEncoder.fit(TRAIN, ["site", "age_approx", "sex"])
    assert enc.columns == ("age_approx", "sex", "site")
    assert enc.categories == {"sex": ("female", "male"), "site": ("lower extremity", "trunk")}
    assert enc.feature_names == [
        "age_approx",
        "sex=female",
        "sex=male",
        "sex=missing",
        "site=lower extremity",
        "site=trunk",
        "site=missing",
    ]
    rows = pd.DataFrame(
        {
            "age_approx": [70, None],
            "sex": ["MALE ", "other"],  # another spelling of a known value; an unseen one
            "site": ["lower extremity", ""],  # ISIC's spelling of the synthetic "Lower extremity"
        }
    )
    x = enc.transform(rows, 2)
    assert x.dtype == np.float32 and x.shape == (2, 7)
    assert x[0].tolist() == [70, 0, 1, 0, 1, 0, 0]
    assert math.isnan(x[1, 0]) and x[1, 1:].tolist() == [0, 0, 1, 0, 0, 1]  # unseen/missing -> indicator


def test_no_metadata_or_missing_columns_mean_all_missing() -> None:
    enc = MetadataEncoder.fit(TRAIN, ["age_approx", "sex", "site"])
    none = enc.transform(None, 3)
    assert np.isnan(none[:, 0]).all()
    assert (none[:, [3, 6]] == 1).all() and (none[:, [1, 2, 4, 5]] == 0).all()
    only_sex = enc.transform(pd.DataFrame({"sex": ["female"]}), 1)
    assert only_sex[0, 1:4].tolist() == [1, 0, 0] and only_sex[0, 6] == 1 and math.isnan(only_sex[0, 0])
    with pytest.raises(ValueError, match=r"2 row\(s\) for 3 image"):
        enc.transform(TRAIN.iloc[:2], 3)


def test_encoder_survives_pickling_and_describes_itself() -> None:
    enc = MetadataEncoder.fit(TRAIN, ["sex"])
    again = pickle.loads(pickle.dumps(enc))
    assert again == enc
    assert np.array_equal(again.transform(TRAIN, 3), enc.transform(TRAIN, 3))
    assert enc.describe() == {
        "columns": ["sex"],
        "categories": {"sex": ["female", "male"]},
        "features": ["sex=female", "sex=male", "sex=missing"],
    }


def test_fit_refuses_unknown_or_absent_columns() -> None:
    with pytest.raises(ValueError, match="unknown metadata column"):
        MetadataEncoder.fit(TRAIN, ["weight"])
    with pytest.raises(ValueError, match=r"no metadata column\(s\) \['site'\]"):
        MetadataEncoder.fit(TRAIN[["sex"]], ["site"])


def test_usable_columns_drop_absent_and_empty_ones() -> None:
    # a folder of images without metadata: prepare still writes the columns, all empty
    empty = pd.DataFrame({"age_approx": ["", ""], "sex": ["", "unknown"]})
    assert usable_columns(empty, ("age_approx", "sex", "site")) == ((), ("age_approx", "sex", "site"))
    assert usable_columns(TRAIN, ("site", "sex")) == (("site", "sex"), ())


def test_metadata_rows_select_the_columns_in_order() -> None:
    split = pd.DataFrame({"label": [1, 0], "site": ["a", "b"], "age_approx": [1, 2]}, index=[5, 9])
    rows = metadata_rows(split)
    assert list(rows.columns) == ["age_approx", "site"] and list(rows.index) == [0, 1]


def test_metadata_frame_from_per_image_lists() -> None:
    assert metadata_frame({}, 2) is None
    assert metadata_frame({"age_approx": [], "sex": None}, 2) is None  # MLflow's empty defaults
    frame = metadata_frame({"age_approx": [50.0, None], "sex": [], "site": ["trunk", ""]}, 2)
    assert frame is not None and list(frame.columns) == ["age_approx", "site"] and len(frame) == 2
    with pytest.raises(ValueError, match=r"pyfunc params: sex has 1 value\(s\) for 2 image\(s\)"):
        metadata_frame({"sex": ["male"]}, 2, where="pyfunc params")
    with pytest.raises(ValueError, match="unknown column"):
        metadata_frame({"weight": [80, 90]}, 2)
