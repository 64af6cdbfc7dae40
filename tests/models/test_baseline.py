"""The baseline family: features, candidate selection, save/load, chance-beating on an easy signal."""

from pathlib import Path

import numpy as np
import pytest

from helpers import lesion_image
from melanoma.config import BaselineParams
from melanoma.features import N_FEATURES, extract_features
from melanoma.metrics import safe_auc
from melanoma.models import load_model
from melanoma.models.baseline import BaselineModel, fit_baseline


def easy_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    x = np.stack([np.asarray(lesion_image(rng, bool(v), 48, 48)) for v in y])
    return x, y


def test_features_shape_and_finite() -> None:
    x, _ = easy_set(10, 0)
    f = extract_features(x)
    assert f.shape == (10, N_FEATURES) and np.isfinite(f).all()
    assert np.allclose(extract_features(x[:3]), f[:3])  # batching does not change values
    with pytest.raises(ValueError, match="shape"):
        extract_features(x[..., 0])


def test_shape_features_see_the_lesion() -> None:
    x, y = easy_set(40, 1)
    area = extract_features(x)[:, 30 + 24 + 4]  # first shape feature: lesion area fraction
    assert area[y == 1].mean() > area[y == 0].mean()


def test_fit_selects_best_candidate_and_beats_chance(tmp_path: Path) -> None:
    x_tr, y_tr = easy_set(120, 2)
    x_va, y_va = easy_set(60, 3)
    x_te, y_te = easy_set(60, 4)
    params = BaselineParams(candidates=("logistic_regression", "gradient_boosting"), n_estimators=30)
    model, scores = fit_baseline(x_tr, y_tr, x_va, y_va, params, seed=0, image_size=48)
    assert set(scores) == {"logistic_regression", "gradient_boosting"}
    assert model.candidate == max(scores, key=scores.get)
    p = model.predict_proba(x_te)
    assert p.shape == (60,) and ((p >= 0) & (p <= 1)).all()
    assert safe_auc(y_te, p) > 0.8

    model.save(tmp_path)
    (tmp_path / "model.json").write_text('{"family": "baseline"}')
    again = load_model(tmp_path)
    assert isinstance(again, BaselineModel)
    assert np.array_equal(again.predict_proba(x_te), p)


@pytest.mark.parametrize("name", ["random_forest", "adaboost"])
def test_other_candidates_train(name: str) -> None:
    x, y = easy_set(60, 5)
    params = BaselineParams(candidates=(name,), n_estimators=10)
    model, scores = fit_baseline(x, y, x, y, params, seed=0, image_size=48)
    assert scores[name] > 0.5 and model.candidate == name


def test_seeded_fit_is_deterministic() -> None:
    x, y = easy_set(60, 6)
    params = BaselineParams(candidates=("random_forest",), n_estimators=10)
    a, _ = fit_baseline(x, y, x, y, params, seed=7, image_size=48)
    b, _ = fit_baseline(x, y, x, y, params, seed=7, image_size=48)
    assert np.array_equal(a.predict_proba(x), b.predict_proba(x))


def test_two_seeded_fits_save_identical_bytes(tmp_path: Path) -> None:
    # model.joblib is a DVC output: the same seed and data must give the same file (the
    # fresh-process version of this check, for every family, is tests/models/test_determinism.py).
    x, y = easy_set(60, 7)
    params = BaselineParams(
        candidates=("logistic_regression", "random_forest", "gradient_boosting"), n_estimators=10
    )
    for run in ("a", "b"):
        model, _ = fit_baseline(x, y, x, y, params, seed=3, image_size=48)
        (tmp_path / run).mkdir()
        model.save(tmp_path / run)
    assert (tmp_path / "a" / "model.joblib").read_bytes() == (tmp_path / "b" / "model.joblib").read_bytes()
