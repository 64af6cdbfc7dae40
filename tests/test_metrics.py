"""Operating points, calibration and grouped bootstrap."""

import numpy as np
import pytest

from melanoma.metrics import (
    choose_threshold,
    confusion_at,
    expected_calibration_error,
    grouped_bootstrap_ci,
    rates,
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
