"""Operating points, calibration and grouped bootstrap."""

import numpy as np
import pytest
from sklearn.metrics import auc, roc_curve

from melanoma.metrics import (
    brier,
    choose_threshold,
    confusion_at,
    expected_calibration_error,
    grouped_bootstrap_ci,
    partial_auc_above_tpr,
    pauc_80,
    rates,
    reliability,
    safe_auc,
    sens_at_spec,
    spec_at_sens,
)


def test_youden_threshold_separates_perfectly_separable_scores() -> None:
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    t = choose_threshold(y, p)
    assert 0.3 < t <= 0.7
    cm = confusion_at(y, p, t)
    assert cm == {"tp": 2, "fp": 0, "tn": 3, "fn": 0}
    assert rates(cm)["balanced_accuracy"] == 1.0


def test_target_sensitivity_threshold_reaches_the_target() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.normal(0.35, 0.2, 500), 0, 1)
    t = choose_threshold(y, p, target_sensitivity=0.95)
    assert rates(confusion_at(y, p, t))["sensitivity"] >= 0.95
    assert choose_threshold(y, p, target_sensitivity=0.5) > t


def test_operating_point_curves() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert spec_at_sens(y, p, 0.75) == 1.0
    assert spec_at_sens(y, p, 1.0) == 0.75
    assert sens_at_spec(y, p, 1.0) == 0.75


def test_ece_on_a_hand_worked_case() -> None:
    # bins of width 0.1: [0.05] y=0 -> |0.05 - 0| * 1/5; [0.15, 0.15] y=0,1 -> |0.15 - 0.5| * 2/5;
    # [0.85] y=1 -> 0.15 * 1/5; [0.95] y=1 -> 0.05 * 1/5: 0.01 + 0.14 + 0.03 + 0.01 = 0.19
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.15, 0.85, 0.95])
    assert expected_calibration_error(y, p, bins=10) == pytest.approx(0.19)
    # five bins of width 0.2: [0.05, 0.15, 0.15] -> |0.1167 - 1/3| * 3/5; [0.85, 0.95] -> 0.1 * 2/5
    assert expected_calibration_error(y, p, bins=5) == pytest.approx(0.6 * (1 / 3 - 0.35 / 3) + 0.4 * 0.1)


def test_ece_is_the_count_weighted_gap_of_the_reliability_table() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(200) ** 2
    y = (rng.random(200) < p).astype(int)
    rows = reliability(y, p, 10)
    assert sum(r["n"] for r in rows) == 200 and all(r["n"] > 0 for r in rows)  # empty bins left out
    gap = sum(r["n"] / 200 * abs(r["predicted"] - r["observed"]) for r in rows)
    assert expected_calibration_error(y, p, 10) == pytest.approx(gap, abs=1e-12)


def test_a_probability_on_an_inner_bin_edge_falls_in_the_lower_bin() -> None:
    # scikit-learn's calibration_curve rule (searchsorted); 0.0 and 1.0 stay in the end bins
    rows = reliability(np.array([0, 1, 0, 1]), np.array([0.0, 0.2, 0.5, 1.0]), 10)
    assert [(r["bin"], r["n"]) for r in rows] == [(0, 1), (1, 1), (4, 1), (9, 1)]


def test_brier_is_the_mean_squared_error() -> None:
    y = np.array([0, 1, 1, 0])
    p = np.array([0.1, 0.9, 0.8, 0.3], dtype=np.float32)
    assert brier(y, p) == pytest.approx(np.mean((p.astype(np.float64) - y) ** 2), abs=1e-15)
    assert brier(np.zeros(3, int), np.array([0.1, 0.5, 0.9])) == pytest.approx((0.01 + 0.25 + 0.81) / 3)


def test_ece_zero_for_calibrated_and_large_for_overconfident() -> None:
    y = np.array([0] * 50 + [1] * 50)
    assert expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.where(y == 1, 0.0, 1.0)) == pytest.approx(1.0)


def test_grouped_bootstrap_ci_contains_estimate_and_is_wider_for_clustered_data() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p = np.clip(y * 0.25 + rng.normal(0.4, 0.2, 400), 0, 1)
    auc = safe_auc(y, p)
    lo, hi = grouped_bootstrap_ci(y, p, np.arange(400), safe_auc, 300, 0.95, 0)
    assert lo < auc < hi
    # 20 copies of 20 patients: resampling patients must give a wider interval than by image
    y20, p20 = y[:20].repeat(20), p[:20].repeat(20)
    by_image = grouped_bootstrap_ci(y20, p20, np.arange(400), safe_auc, 300, 0.95, 0)
    by_patient = grouped_bootstrap_ci(y20, p20, np.arange(20).repeat(20), safe_auc, 300, 0.95, 0)
    assert (by_patient[1] - by_patient[0]) > 2 * (by_image[1] - by_image[0])


def test_single_class_auc_is_nan() -> None:
    assert np.isnan(safe_auc(np.zeros(5), np.linspace(0, 1, 5)))


def test_target_sensitivity_picks_the_highest_threshold_reaching_it() -> None:
    # Three positives in a row (0.9, 0.8, 0.7) lie on one vertical ROC segment: the threshold 0.8
    # reaches sensitivity 2/3 and must not be skipped for 0.7.
    y = np.array([0, 1, 1, 1, 0, 0])
    p = np.array([0.95, 0.9, 0.8, 0.7, 0.2, 0.1])
    assert choose_threshold(y, p, target_sensitivity=0.6) == 0.8
    assert choose_threshold(y, p, target_sensitivity=2 / 3) == 0.8
    assert choose_threshold(y, p, target_sensitivity=0.7) == 0.7
    assert choose_threshold(y, p, target_sensitivity=0.3) == 0.9
    # Brute force on noisy data: no higher score reaches the target.
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(y * 0.2 + rng.normal(0.4, 0.2, 300), 0, 1), 2)  # rounding makes ties
    for target in (0.5, 0.8, 0.9, 0.95):
        t = choose_threshold(y, p, target_sensitivity=target)
        reaching = [s for s in np.unique(p) if (p[y == 1] >= s).mean() >= target]
        assert t == max(reaching)


def isic2024_pauc(y: np.ndarray, p: np.ndarray, min_tpr: float = 0.8) -> float:
    """The ISIC 2024 challenge's own scoring recipe (labels and scores flipped, sklearn auc)."""
    max_fpr = 1 - min_tpr
    fpr, tpr, _ = roc_curve(1 - y, -p)
    stop = np.searchsorted(fpr, max_fpr, "right")
    tpr = np.append(tpr[:stop], np.interp(max_fpr, [fpr[stop - 1], fpr[stop]], [tpr[stop - 1], tpr[stop]]))
    fpr = np.append(fpr[:stop], max_fpr)
    return float(auc(fpr, tpr))


def test_partial_auc_hand_computed_perfect_and_random() -> None:
    # ROC points (0,0) (0,.5) (.5,.5) (.5,1) (1,1): above TPR 0.8 only FPR .5..1 at TPR 1 -> 0.5 * 0.2.
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    assert pauc_80(y, p) == pytest.approx(0.1)
    # One diagonal segment crossing the 0.8 floor (all scores tied): the triangle 0.2 * 0.2 / 2.
    assert pauc_80(np.array([0, 1, 0, 1]), np.full(4, 0.5)) == pytest.approx(0.02)
    assert pauc_80(y, y.astype(float)) == pytest.approx(0.2)
    assert pauc_80(y, 1.0 - y) == pytest.approx(0.0)
    assert partial_auc_above_tpr(y, y.astype(float), 0.0) == pytest.approx(1.0)  # floor 0: full AUC
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20_000)
    assert pauc_80(y, rng.random(20_000)) == pytest.approx(0.02, abs=0.003)
    assert np.isnan(pauc_80(np.ones(4), np.linspace(0, 1, 4)))


def test_partial_auc_matches_the_isic_2024_recipe_and_bootstraps() -> None:
    rng = np.random.default_rng(2)
    for n in (30, 200):
        y = rng.integers(0, 2, n)
        p = np.round(np.clip(y * 0.3 + rng.normal(0.4, 0.25, n), 0, 1), 1)  # ties -> diagonal segments
        assert pauc_80(y, p) == pytest.approx(isic2024_pauc(y, p), abs=1e-12)
    lo, hi = grouped_bootstrap_ci(y, p, np.arange(n), pauc_80, 200, 0.95, 0)
    assert 0 <= lo < pauc_80(y, p) < hi <= 0.2
