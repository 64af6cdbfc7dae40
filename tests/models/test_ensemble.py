"""The ensemble candidate on tiny fitted members: a baseline (24 px) and a one-epoch CNN (16 px)."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tensorflow as tf

from helpers import lesion_image
from melanoma.config import BaselineParams, CnnParams, EnsembleParams, TrainParams
from melanoma.contracts import write_model_json
from melanoma.errors import DataError
from melanoma.images import resize_batch
from melanoma.metrics import safe_auc
from melanoma.models import load_model
from melanoma.models.baseline import fit_baseline
from melanoma.models.cnn import fit_cnn
from melanoma.models.deep.loop import LoopSettings
from melanoma.models.ensemble import ENSEMBLE_JSON, MEMBERS_DIR, EnsembleModel, fit_ensemble, mid_ranks

SIZE, CNN_SIZE = 24, 16
DATA = {"images_sha256": "a" * 64, "test_csv_sha256": "b" * 64}


def easy_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    return np.stack([np.asarray(lesion_image(rng, bool(v), SIZE, SIZE)) for v in y]), y


def model_folder(folder: Path, model, name: str, info: dict | None = None) -> Path:  # noqa: ANN001
    """A model folder as train writes it: the model's files plus model.json."""
    folder.mkdir(parents=True)
    model.save(folder)
    base = {"name": name, "family": model.family, "image_size": model.image_size, "fit": model.fit}
    write_model_json(folder, {**base, "threshold": 0.5, "data": DATA, **(info or {})})
    return folder


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Member folders: a logistic-regression baseline at 24 px and a one-epoch CNN at 16 px."""
    root = tmp_path_factory.mktemp("members")
    x_tr, y_tr = easy_set(90, 0)
    x_va, y_va = easy_set(30, 1)
    base, _ = fit_baseline(
        x_tr, y_tr, x_va, y_va, BaselineParams(candidates=("logistic_regression",)), 0, SIZE
    )
    small_tr, small_va = resize_batch(x_tr, CNN_SIZE), resize_batch(x_va, CNN_SIZE)
    loop = LoopSettings.from_params(TrainParams(epochs=1, batch_size=16, lr_schedule="constant"), seed=0)
    cnn, _ = fit_cnn(
        small_tr, y_tr, small_va, y_va, CnnParams(filters=(4,), convs_per_block=1, dense=8), loop,
        image_size=CNN_SIZE, fit="crop", strategy=tf.distribute.get_strategy(),
    )  # fmt: skip
    return {
        "baseline": model_folder(root / "baseline", base, "baseline"),
        "cnn": model_folder(root / "cnn", cnn, "cnn"),
    }


@pytest.fixture(scope="module")
def val() -> tuple[np.ndarray, np.ndarray]:
    return easy_set(60, 2)


def fit(members: dict[str, Path], val, method: str, **kw):  # noqa: ANN001, ANN201
    params = EnsembleParams(members=("baseline", "cnn"), method=method)
    return fit_ensemble(members, *val, params, seed=0, image_size=SIZE, **kw)


def saved(model: EnsembleModel, folder: Path) -> Path:
    """Save as train does (the model's files, then model.json naming the family)."""
    return model_folder(folder, model, "ensemble")


@pytest.mark.parametrize("method", ["stack", "rank_mean"])
def test_fit_records_members_and_the_saved_folder_reloads_with_identical_predictions(
    members: dict[str, Path], val, method: str, tmp_path: Path
) -> None:
    model, info = fit(members, val, method)
    x, y = val
    p = model.predict_proba(x)
    assert p.shape == (len(x),) and p.dtype == np.float32 and ((p >= 0) & (p <= 1)).all()
    assert list(info["member_val_auc"]) == ["baseline", "cnn"]
    assert info["member_image_sizes"] == {"baseline": SIZE, "cnn": CNN_SIZE}  # members of different sizes
    assert info["val_roc_auc_in_sample"] == pytest.approx(safe_auc(y, p), abs=1e-6)
    if method == "stack":
        assert set(info["coefficients"]) == {"baseline", "cnn"} and "intercept" in info
        assert info["coefficients"]["baseline"] > 0  # the informative member gets positive weight

    folder = saved(model, tmp_path / "ensemble")
    assert (folder / ENSEMBLE_JSON).is_file()
    for name in ("baseline", "cnn"):  # self-contained: a copy of each member folder
        assert (folder / MEMBERS_DIR / name / "model.json").read_bytes() == (
            members[name] / "model.json"
        ).read_bytes()
    again = load_model(folder)
    assert isinstance(again, EnsembleModel) and again.method == method
    assert all(Path(d).is_relative_to(folder) for d in again.member_dirs.values())
    assert np.array_equal(again.predict_proba(x), p)


def test_out_of_fold_validation_scores_differ_from_in_sample(members: dict[str, Path], val) -> None:
    x, y = val
    for method in ("stack", "rank_mean"):
        model, info = fit(members, val, method)
        oof = info["val_proba_oof"]
        assert oof.shape == (len(y),) and np.isfinite(oof).all()
        assert not np.allclose(oof, model.predict_proba(x))
        assert info["oof_folds"] == 5 and info["val_roc_auc_oof"] == pytest.approx(safe_auc(y, oof), abs=1e-6)
    # the same seed gives the same folds and scores
    assert np.array_equal(fit(members, val, "rank_mean")[1]["val_proba_oof"], oof)


def test_rank_mean_scores_a_single_image_on_the_validation_scale(members: dict[str, Path], val) -> None:
    model, _ = fit(members, val, "rank_mean")
    x, _ = val
    one = model.predict_proba(x[:1])
    assert one.shape == (1,)
    p = model.member_probas(x[:1])[0]
    expected = np.mean([mid_ranks(model.references[n], p[i : i + 1])[0] for i, n in enumerate(model.members)])
    assert one[0] == pytest.approx(expected, abs=1e-6)
    assert one[0] == pytest.approx(model.predict_proba(x)[0], abs=0.02)  # same scale alone or in a batch
    assert mid_ranks(np.array([0.1, 0.2, 0.3]), np.array([0.0, 0.2, 0.9])).tolist() == [0.0, 0.5, 1.0]


def test_a_missing_member_folder_is_an_error_naming_it(members: dict[str, Path], val, tmp_path: Path) -> None:
    gone = tmp_path / "models" / "cnn"
    with pytest.raises(DataError, match=r"ensemble member 'cnn'.*models/cnn.*train@cnn"):
        fit(members | {"cnn": gone}, val, "stack")
    with pytest.raises(DataError, match="no folder given for member"):
        fit({"baseline": members["baseline"]}, val, "stack")
    # a saved ensemble that lost a member's copy
    folder = saved(fit(members, val, "stack")[0], tmp_path / "ensemble")
    shutil.rmtree(folder / MEMBERS_DIR / "cnn")
    with pytest.raises(DataError, match=r"ensemble member 'cnn'"):
        load_model(folder)


def test_members_trained_on_other_data_are_refused(members: dict[str, Path], val) -> None:
    with pytest.raises(DataError, match=r"baseline, cnn were trained on other data"):
        fit(members, val, "stack", expected_data={**DATA, "images_sha256": "c" * 64})
    fit(members, val, "stack", expected_data=DATA)  # today's data: accepted


def test_pyfunc_round_trip_on_raw_images(members: dict[str, Path], val, tmp_path: Path) -> None:
    """The logged pyfunc over an ensemble folder: raw images of any size in, the same P(melanoma) out."""
    from helpers import save_local_pyfunc

    model, _ = fit(members, val, "stack")
    folder = saved(model, tmp_path / "ensemble")
    save_local_pyfunc(folder, tmp_path / "pyfunc")
    shutil.rmtree(folder)  # the logged model carries its own copy of the folder
    raw = np.stack([np.asarray(lesion_image(np.random.default_rng(i), i % 2 == 0, 40, 30)) for i in range(4)])
    got = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc")).predict(raw)
    want = model.predict_proba(resize_batch(raw, SIZE))
    assert np.asarray(got).shape == (4,) and np.allclose(got, want, atol=1e-6)


def test_the_app_serves_an_ensemble_folder_with_a_members_grad_cam(
    members: dict[str, Path], val, tmp_path: Path
) -> None:
    from melanoma.serve import load_folder
    from melanoma.serve.explain import explanation_kind, make_explainer

    model, _ = fit(members, val, "stack")
    served = load_folder(saved(model, tmp_path / "ensemble"))
    x, _ = val
    assert served.family == "ensemble" and served.image_size == SIZE
    assert np.allclose(served.predict(x[:3]), model.predict_proba(x[:3]), atol=1e-6)
    assert served.describe()["explanation"] == "grad-cam"
    out = served.explainer(x[0])  # a 24 px image; the CNN member sees it at 16 px
    assert out["kind"] == "grad-cam" and out["member"] == "cnn" and "cnn" in out["note"]
    assert out["image_png_b64"]

    # no deep member: no heat map, a note saying why, and no crash
    only_baseline = EnsembleModel({"baseline": load_model(members["baseline"])}, {}, "rank_mean", SIZE)
    assert explanation_kind(only_baseline) == "none"
    plain = make_explainer(only_baseline)(x[0])
    assert plain["kind"] == "none" and "no heat map" in plain["note"] and plain["image_png_b64"]


def test_the_report_describes_the_ensemble_and_its_members() -> None:
    from melanoma.report.inputs import ModelResult
    from melanoma.report.readme import model_section

    info = {
        "name": "ensemble", "family": "ensemble", "members": ["baseline", "cnn"], "method": "stack",
        "member_val_auc": {"baseline": 0.81, "cnn": 0.77}, "coefficients": {"baseline": 1.25, "cnn": 0.5},
        "oof_folds": 5, "val_roc_auc_in_sample": 0.9, "weights": "members' weights: baseline none",
        "val": {"val_roc_auc": 0.85},
    }  # fmt: skip
    text = "\n".join(model_section(ModelResult("ensemble", info, None, {}, {})))
    assert "ensemble of `baseline`, `cnn`: logistic regression on their logits" in text
    assert "| cnn | 0.770 | 0.500 |" in text and "out-of-fold (5 folds" in text and "0.900" in text
    assert "members' weights: baseline none" in text


def test_with_a_metadata_member_the_combiner_is_fitted_with_and_without_metadata(
    members: dict[str, Path], val, tmp_path: Path
) -> None:
    """The stack sees the validation rows twice, with age and without: its log-loss over both
    conditions is the lowest a combiner fitted on the metadata rows alone can reach, or lower."""
    import pandas as pd
    from sklearn.metrics import log_loss

    from melanoma.models.calibration import logit, sigmoid
    from melanoma.models.ensemble import _fit_stack

    x_tr, y_tr = easy_set(90, 0)

    def age(y: np.ndarray, seed: int) -> pd.DataFrame:  # older melanoma patients: informative
        noise = np.random.default_rng(seed).normal(0, 8, len(y))
        return pd.DataFrame({"age_approx": np.where(y == 1, 70.0, 30.0) + noise})

    base, _ = fit_baseline(
        x_tr, y_tr, *val, BaselineParams(candidates=("logistic_regression",), metadata=("age_approx",)), 0, SIZE,
        meta_train=age(y_tr, 0), meta_val=age(val[1], 1),
    )  # fmt: skip
    dirs = {"baseline": model_folder(tmp_path / "baseline", base, "baseline"), "cnn": members["cnn"]}
    meta_val = age(val[1], 2)
    model, info = fit(dirs, val, "stack", meta_val=meta_val)
    assert model.metadata_columns == ("age_approx",)
    assert info["combiner_fit_on"] == "validation, with and without metadata"
    with_meta, alone = model.member_probas(val[0], meta_val), model.member_probas(val[0], None)
    both, y2 = np.vstack([with_meta, alone]), np.concatenate([val[1], val[1]])
    meta_only = _fit_stack(with_meta, val[1])
    loss = lambda coef, b: log_loss(y2, sigmoid(logit(both) @ coef + b))  # noqa: E731
    assert not np.allclose(meta_only[0], model.coef)
    assert loss(model.coef, model.intercept) <= loss(*meta_only) + 1e-9
    _, plain = fit(members, val, "stack")  # image-only members: validation as before
    assert plain["combiner_fit_on"] == "validation"
