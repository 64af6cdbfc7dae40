"""The baseline family: features, candidate selection, save/load, chance-beating on an easy signal."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import lesion_image, save_local_pyfunc
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


def metadata_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Images that say nothing about the label; age and site that do (with gaps and odd spellings)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    x = np.stack([np.asarray(lesion_image(rng, bool(rng.random() < 0.5), 24, 24)) for _ in range(n)])
    age = np.where(y == 1, rng.normal(70, 6, n), rng.normal(35, 8, n)).round()
    site = np.where(y == 1, "Lower extremity", rng.choice(["Trunk", "lower extremity"], n))
    meta = pd.DataFrame(
        {
            "age_approx": [str(a) if rng.random() > 0.2 else "" for a in age],  # 20% unknown
            "sex": rng.choice(["male", "female", ""], n),
            "site": [s if rng.random() > 0.2 else "" for s in site],
        }
    )
    return x, y, meta


@pytest.mark.parametrize(
    "candidate", ["logistic_regression", "random_forest", "gradient_boosting", "adaboost"]
)
def test_metadata_is_used_with_missing_values_and_images_alone_still_predict(candidate: str) -> None:
    x_tr, y_tr, m_tr = metadata_set(160, 10)
    x_te, y_te, m_te = metadata_set(80, 11)
    # no dropout: 160 rows are too few to learn the metadata from half of them (random forest 0.82)
    params = BaselineParams(
        candidates=(candidate,), n_estimators=20, metadata=("age_approx", "sex", "site"), metadata_dropout=0.0
    )
    model, _ = fit_baseline(x_tr, y_tr, x_tr, y_tr, params, 0, 24, meta_train=m_tr, meta_val=m_tr)
    assert model.metadata_columns == ("age_approx", "sex", "site")
    assert model.encoder is not None and model.encoder.categories["site"] == ("lower extremity", "trunk")
    assert safe_auc(y_te, model.predict_proba(x_te, m_te)) > 0.85  # the images alone carry no signal
    alone = model.predict_proba(x_te)  # no metadata at all: every value missing, still a probability
    assert alone.shape == (80,) and np.isfinite(alone).all() and ((alone >= 0) & (alone <= 1)).all()
    partial = model.predict_proba(x_te, m_te[["sex"]])  # only some columns
    assert partial.shape == (80,) and np.isfinite(partial).all()
    with pytest.raises(ValueError, match="80 images but 79 metadata rows"):
        model.predict_proba(x_te, m_te.iloc[:79])


def test_configured_columns_without_values_are_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    x, y, meta = metadata_set(60, 12)
    meta["sex"] = ""  # e.g. a source that records age and site only
    params = BaselineParams(candidates=("gradient_boosting",), n_estimators=10, metadata=("sex", "site"))
    model, _ = fit_baseline(x, y, x, y, params, 0, 24, meta_train=meta, meta_val=meta)
    assert model.metadata_columns == ("site",)
    assert "['sex'] have no value in the training rows" in caplog.text
    # a folder of images without metadata (no columns at all): the image-only model, as by default
    bare, _ = fit_baseline(x, y, x, y, params, 0, 24)
    assert bare.encoder is None and bare.metadata_columns == ()


def save_pyfunc(model: BaselineModel, tmp_path: Path) -> None:
    """Save a fitted baseline as the project's pyfunc at ``tmp_path / "pyfunc"`` (a local MLflow model)."""
    folder = tmp_path / "baseline"
    folder.mkdir()
    model.save(folder)
    (folder / "model.json").write_text('{"family": "baseline", "image_size": 24}')
    save_local_pyfunc(folder, tmp_path / "pyfunc")


def test_pyfunc_round_trip_with_and_without_metadata(tmp_path: Path) -> None:
    import mlflow

    from melanoma.images import resize_batch

    x_tr, y_tr, m_tr = metadata_set(120, 13)
    params = BaselineParams(
        candidates=("gradient_boosting",), n_estimators=20, metadata=("age_approx", "site")
    )
    model, _ = fit_baseline(x_tr, y_tr, x_tr, y_tr, params, 0, 24, meta_train=m_tr, meta_val=m_tr)
    save_pyfunc(model, tmp_path)
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    rng = np.random.default_rng(0)
    raw = np.stack([np.asarray(lesion_image(rng, False, 40, 30)) for _ in range(3)])  # raw sizes: resized
    pixels = resize_batch(raw, 24)
    meta = {"age_approx": [75.0, 30.0, None], "site": ["lower extremity", "Trunk", ""]}

    alone = np.asarray(loaded.predict(raw))  # images only: unchanged usage
    assert np.allclose(alone, model.predict_proba(pixels), atol=1e-6)
    given = np.asarray(loaded.predict(raw, params=meta))
    assert np.allclose(given, model.predict_proba(pixels, pd.DataFrame(meta)), atol=1e-6)
    assert given[0] > given[1]  # the old patient's leg lesion vs the young patient's trunk
    with pytest.raises(ValueError, match=r"age_approx has 2 value\(s\) for 3 image\(s\)"):
        loaded.predict(raw, params={"age_approx": [75.0, 30.0]})


def test_registry_scorer_rescoring_a_champion_passes_its_metadata(tmp_path: Path) -> None:
    """register re-scores a champion through its pyfunc: with the test rows' metadata, as evaluate did."""
    from melanoma.registry import make_scorer

    x_tr, y_tr, m_tr = metadata_set(160, 14)
    x_te, y_te, m_te = metadata_set(90, 15)
    params = BaselineParams(
        candidates=("gradient_boosting",), n_estimators=20, metadata=("age_approx", "site")
    )
    model, _ = fit_baseline(x_tr, y_tr, x_tr, y_tr, params, 0, 24, meta_train=m_tr, meta_val=m_tr)
    save_pyfunc(model, tmp_path)
    uri = str(tmp_path / "pyfunc")
    with_meta = make_scorer(x_te, y_te, m_te, batch_size=32)(uri)  # 3 batches: params sliced per batch
    assert with_meta == pytest.approx(safe_auc(y_te, model.predict_proba(x_te, m_te)), abs=1e-6)
    assert with_meta > 0.85
    assert make_scorer(x_te, y_te)(uri) < 0.75  # images alone carry no signal here


# ------------------------------------------------------------------------------------ XGBoost
def test_xgboost_trains_alone_and_is_chosen() -> None:
    from xgboost import XGBClassifier

    x, y = easy_set(60, 5)
    params = BaselineParams(candidates=("xgboost",), n_estimators=10, max_depth=2, learning_rate=0.3)
    model, scores = fit_baseline(x, y, x, y, params, seed=0, image_size=48)
    assert set(scores) == {"xgboost"} and model.candidate == "xgboost" and scores["xgboost"] > 0.8
    clf = model.head.steps[-1][1]
    assert isinstance(clf, XGBClassifier)
    # gradient boosting's hyperparameters carry over; one thread keeps the pickle free of the core count
    assert (clf.n_estimators, clf.max_depth, clf.learning_rate) == (10, 2, 0.3)
    assert (clf.tree_method, clf.n_jobs, clf.random_state) == ("hist", 1, 0)


def test_xgboost_is_deterministic_and_survives_joblib(tmp_path: Path) -> None:
    x, y = easy_set(60, 7)
    x_te, _ = easy_set(30, 8)
    params = BaselineParams(candidates=("xgboost",), n_estimators=10)
    probs = []
    for run in ("a", "b"):
        model, _ = fit_baseline(x, y, x, y, params, seed=3, image_size=48)
        probs.append(model.predict_proba(x_te))
        (tmp_path / run).mkdir()
        model.save(tmp_path / run)
    assert np.array_equal(probs[0], probs[1])
    assert (tmp_path / "a" / "model.joblib").read_bytes() == (tmp_path / "b" / "model.joblib").read_bytes()
    loaded = BaselineModel.load(tmp_path / "a")
    assert loaded.candidate == "xgboost"
    assert np.array_equal(loaded.predict_proba(x_te), probs[0])


def test_xgboost_balances_classes_with_sample_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    from xgboost import XGBClassifier

    seen: list[np.ndarray | None] = []
    fit = XGBClassifier.fit

    def spy(self: XGBClassifier, x: np.ndarray, y: np.ndarray, **kw: object) -> XGBClassifier:
        seen.append(kw.get("sample_weight"))  # type: ignore[arg-type]
        return fit(self, x, y, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(XGBClassifier, "fit", spy)
    x, y = easy_set(40, 9)
    for class_weight in ("balanced", "none"):
        params = BaselineParams(candidates=("xgboost",), n_estimators=5, class_weight=class_weight)
        fit_baseline(x, y, x, y, params, seed=0, image_size=48)
    balanced, plain = seen
    assert plain is None and balanced is not None
    # each class carries half the total weight, as HistGradientBoosting's class_weight="balanced"
    assert balanced[y == 1].sum() == pytest.approx(balanced[y == 0].sum())


def test_xgboost_splits_on_nan_metadata_without_an_imputer() -> None:
    x_tr, y_tr, m_tr = metadata_set(160, 10)
    x_te, y_te, m_te = metadata_set(80, 11)
    params = BaselineParams(candidates=("xgboost",), n_estimators=20, metadata=("age_approx", "sex", "site"))
    model, _ = fit_baseline(x_tr, y_tr, x_tr, y_tr, params, 0, 24, meta_train=m_tr, meta_val=m_tr)
    assert [name for name, _ in model.head.steps] == ["standardscaler", "xgbclassifier"]  # NaN goes in
    assert safe_auc(y_te, model.predict_proba(x_te, m_te)) > 0.85  # the images alone carry no signal
    alone = model.predict_proba(x_te)  # every value missing
    assert np.isfinite(alone).all() and ((alone >= 0) & (alone <= 1)).all()


# --------------------------------------------------------------------------- metadata dropout
def both_signals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """A noisy image signal (the lesion matches the label 85% of the time) and an age that separates
    the classes perfectly, recorded for every training row: without dropout, trees need only age."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    looks = np.where(rng.random(n) < 0.85, y, 1 - y)
    x = np.stack([np.asarray(lesion_image(rng, bool(v), 24, 24)) for v in looks])
    age = np.where(y == 1, 70, 30) + rng.integers(-5, 6, n)
    return x, y, pd.DataFrame({"age_approx": age.astype(float)})


def test_dropout_rows_are_a_seeded_fraction_of_each_class() -> None:
    from melanoma.models.baseline import dropout_rows

    y = np.array([1] * 30 + [0] * 70)
    rows = dropout_rows(y, 0.5, seed=3)
    assert len(rows) == 50 and len(np.unique(rows)) == 50 and np.all(np.diff(rows) > 0)
    assert (y[rows] == 1).sum() == 15  # per class: missing metadata says nothing about the label
    assert np.array_equal(rows, dropout_rows(y, 0.5, seed=3))
    assert not np.array_equal(rows, dropout_rows(y, 0.5, seed=4))
    assert len(dropout_rows(y, 0.2, seed=3)) == 6 + 14
    assert len(dropout_rows(y, 0.0, seed=3)) == 0


def test_masked_rows_encode_exactly_like_prediction_without_metadata() -> None:
    from melanoma.metadata import MetadataEncoder
    from melanoma.models.baseline import head_inputs, without_metadata

    x, _, meta = metadata_set(12, 20)
    encoder = MetadataEncoder.fit(meta, ("age_approx", "sex", "site"))
    inputs = head_inputs(x, encoder, meta)
    rows = np.array([0, 3, 4, 11])
    masked = without_metadata(inputs, encoder, rows)
    np.testing.assert_array_equal(masked[rows], head_inputs(x[rows], encoder, None))  # NaN == NaN here
    keep = np.setdiff1d(np.arange(12), rows)
    np.testing.assert_array_equal(masked[keep], inputs[keep])
    np.testing.assert_array_equal(without_metadata(inputs, encoder), head_inputs(x, encoder, None))
    assert not np.array_equal(masked[rows], inputs[rows], equal_nan=True)  # the masking did something


@pytest.mark.parametrize("candidate", ["xgboost", "gradient_boosting"])
def test_metadata_dropout_teaches_the_images_alone(candidate: str) -> None:
    x_tr, y_tr, m_tr = both_signals(200, 30)
    x_te, y_te, m_te = both_signals(120, 31)
    alone: dict[float, float] = {}
    for dropout in (0.0, 0.5):
        params = BaselineParams(
            candidates=(candidate,), n_estimators=20, metadata=("age_approx",), metadata_dropout=dropout
        )
        model, _ = fit_baseline(x_tr, y_tr, x_tr, y_tr, params, 0, 24, meta_train=m_tr, meta_val=m_tr)
        assert safe_auc(y_te, model.predict_proba(x_te, m_te)) > 0.95  # with metadata: age decides
        alone[dropout] = safe_auc(y_te, model.predict_proba(x_te))
    assert alone[0.0] < 0.7 < 0.8 < alone[0.5]  # never saw missing age: the images were ignored


def test_dropout_fit_is_seeded_and_logs_the_images_only_auc(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="melanoma.models.baseline")
    x, y, meta = both_signals(80, 32)
    params = BaselineParams(candidates=("random_forest",), n_estimators=10, metadata=("age_approx",))
    fits = [fit_baseline(x, y, x, y, params, s, 24, meta_train=meta, meta_val=meta)[0] for s in (5, 5, 6)]
    a, b, c = (m.predict_proba(x) for m in fits)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert "metadata dropout 0.50: 40 of 80 training rows without metadata" in caplog.text
    assert re.search(
        r"random_forest +validation AUC [01]\.\d{4} \(without metadata [01]\.\d{4}\)", caplog.text
    )


def test_no_dropout_without_metadata_columns(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="melanoma.models.baseline")
    x, y = easy_set(40, 33)
    params = BaselineParams(candidates=("logistic_regression",), metadata_dropout=0.5)
    model, _ = fit_baseline(x, y, x, y, params, seed=0, image_size=48)  # images only: nothing to mask
    assert model.encoder is None and "dropout" not in caplog.text and "without metadata" not in caplog.text
