"""models/calibration.py: each method fitted on validation makes probabilities mean what they say."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

from melanoma.errors import DataError
from melanoma.metrics import expected_calibration_error
from melanoma.models.calibration import METHODS, Calibrator, fit_calibrator, logit, sigmoid


def overconfident(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z) and a model reporting sigmoid(z * temperature): over-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.5, n)
    y = (rng.random(n) < sigmoid(z)).astype(int)
    return y, sigmoid(z * temperature).astype(np.float32)


def test_temperature_recovers_a_known_temperature() -> None:
    y, p = overconfident(20_000, 2.5, seed=0)
    cal = fit_calibrator("temperature", y, p)
    assert cal.temperature == pytest.approx(2.5, rel=0.05)
    y, p = overconfident(20_000, 0.5, seed=1)  # under-confident: T < 1 sharpens
    assert fit_calibrator("temperature", y, p).temperature == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_each_method_lowers_ece_and_brier_on_held_out_data(method: str) -> None:
    y_val, p_val = overconfident(4000, 3.0, seed=2)
    y_test, p_test = overconfident(4000, 3.0, seed=3)
    cal = fit_calibrator(method, y_val, p_val)
    q = cal.apply(p_test)
    before = expected_calibration_error(y_test, p_test.astype(np.float64))
    after = expected_calibration_error(y_test, q)
    assert after < 0.5 * before, (before, after)
    assert np.mean((q - y_test) ** 2) < np.mean((p_test - y_test) ** 2)
    assert q.dtype == np.float64 and np.all((q >= 0) & (q <= 1))


def test_platt_fixes_a_shifted_model_that_temperature_cannot() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, 5000)
    y = (rng.random(5000) < sigmoid(z)).astype(int)
    p = sigmoid(0.5 * z + 2.0)  # under-confident and biased towards melanoma
    platt = fit_calibrator("platt", y, p)
    assert platt.slope == pytest.approx(2.0, rel=0.1) and platt.intercept == pytest.approx(-4.0, rel=0.1)
    temp = fit_calibrator("temperature", y, p)
    assert expected_calibration_error(y, platt.apply(p)) < expected_calibration_error(y, temp.apply(p))


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_temperature_and_platt_keep_the_ranking(method: str) -> None:
    y, p = overconfident(2000, 2.0, seed=5)
    q = fit_calibrator(method, y, p).apply(p)
    assert np.array_equal(np.argsort(p, kind="stable"), np.argsort(q, kind="stable"))
    assert roc_auc_score(y, q) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_isotonic_is_monotone_and_matches_scikit_learn() -> None:
    y, p = overconfident(3000, 2.0, seed=6)
    cal = fit_calibrator("isotonic", y, p)
    grid = np.linspace(0, 1, 1001)
    q = cal.apply(grid)
    assert np.all(np.diff(q) >= 0)
    ref = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p.astype(np.float64), y)
    assert np.allclose(q, ref.predict(grid), atol=1e-12)
    # outside the validation range the end values hold
    assert cal.apply(np.array([0.0, 1.0])).tolist() == [cal.y[0], cal.y[-1]]


@pytest.mark.parametrize("method", METHODS)
def test_to_dict_round_trips_bit_exactly_through_json(method: str) -> None:
    y, p = overconfident(1500, 1.7, seed=7)
    cal = fit_calibrator(method, y, p)
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    assert cal.apply(p).tobytes() == back.apply(p).tobytes()
    assert fit_calibrator(method, y, p) == cal  # deterministic


def test_none_is_the_identity_and_logits_stay_finite() -> None:
    p = np.array([0.0, 0.2, 1.0], dtype=np.float32)
    assert np.array_equal(fit_calibrator("none", np.array([0, 1, 1]), p).apply(p), p.astype(np.float64))
    assert np.all(np.isfinite(logit(p)))
    q = fit_calibrator("temperature", np.array([0, 1, 1]), p).apply(p)
    assert np.all(np.isfinite(q))


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="unknown calibration method 'beta'"):
        Calibrator.from_dict({"method": "beta"}, "m/model.json: calibration")
    with pytest.raises(DataError, match="m/model.json: calibration: bad temperature"):
        Calibrator.from_dict({"method": "temperature", "temperature": -1}, "m/model.json: calibration")
    with pytest.raises(DataError, match="bad isotonic"):
        Calibrator.from_dict({"method": "isotonic", "x": [0.5, 0.1], "y": [0, 1]})
    with pytest.raises(DataError, match="both classes"):
        fit_calibrator("platt", np.zeros(5), np.full(5, 0.3))
    with pytest.raises(DataError, match="calibration.method 'beta'"):
        fit_calibrator("beta", np.array([0, 1]), np.array([0.1, 0.9]))
