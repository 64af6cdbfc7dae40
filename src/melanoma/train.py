"""Train one model: data -> fit -> threshold on validation -> save -> log to MLflow."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma import atomic
from melanoma.config import Params, flatten
from melanoma.contracts import (
    data_hashes,
    load_prepared,
    load_splits,
    model_fingerprint,
    read_json,
    split_arrays,
    write_history,
    write_model_json,
)
from melanoma.errors import DataError
from melanoma.metadata import metadata_rows
from melanoma.metrics import (
    brier,
    choose_threshold,
    confusion_at,
    expected_calibration_error,
    rates,
    safe_ap,
    safe_auc,
)
from melanoma.models import ImageClassifier, metadata_columns
from melanoma.models.calibration import CalibratedClassifier, fit_calibrator
from melanoma.models.tta import TTAClassifier
from melanoma.raw_layout import INGEST_REPORT, PROVENANCE_DIR, describe_source
from melanoma.tracking import FINGERPRINT_TAG, Tracking, log_split_inputs, run_tags, set_experiment

log = logging.getLogger(__name__)


def fit_model(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: Params,
    *,
    strategy: Any = None,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
    keras_home: Path | None = None,
    member_dirs: Mapping[str, Path] | None = None,
    expected_data: Mapping[str, str] | None = None,
    meta_train: pd.DataFrame | None = None,
    meta_val: pd.DataFrame | None = None,
) -> tuple[ImageClassifier, dict[str, Any]]:
    """Dispatch to the model family; return the model and family-specific info to record.

    The deep models get one ``LoopSettings``, built here once from ``train.*`` and ``base.seed``.
    The ensemble is fitted on validation only, from the trained members' folders (``member_dirs``,
    name -> folder); ``expected_data`` (today's data hashes) refuses members trained on other data.
    ``meta_train``/``meta_val``: the splits' patient metadata rows (used by the baseline when
    ``baseline.metadata`` names columns).
    """
    size, fit, seed = params.prepare.image_size, params.prepare.fit, params.base.seed
    if name == "ensemble":
        from melanoma.models.ensemble import fit_ensemble

        if member_dirs is None:
            raise DataError("ensemble: the member model folders were not given")
        return fit_ensemble(
            member_dirs, x_val, y_val, params.ensemble, seed, size, fit,
            meta_val=meta_val, expected_data=expected_data,
        )  # fmt: skip
    if name == "baseline":
        from melanoma.models.baseline import fit_baseline

        model, scores = fit_baseline(
            x_train, y_train, x_val, y_val, params.baseline, seed, size, fit,
            meta_train=meta_train, meta_val=meta_val,
        )  # fmt: skip
        info: dict[str, Any] = {"candidate": model.candidate, "candidate_val_auc": scores}
        if model.encoder is not None:
            info["metadata"] = model.encoder.describe()  # the columns and categories it uses
        return model, info
    if name not in ("cnn", "transfer"):
        raise DataError(f"unknown model {name!r}; expected one of baseline, cnn, transfer, ensemble")
    import tensorflow as tf

    from melanoma.models.deep.loop import LoopSettings

    loop = LoopSettings.from_params(params.train, seed)
    strategy = tf.distribute.get_strategy() if strategy is None else strategy
    if name == "cnn":
        from melanoma.models.cnn import fit_cnn

        return fit_cnn(
            x_train, y_train, x_val, y_val, params.cnn, loop,
            image_size=size, fit=fit, strategy=strategy, on_epoch=on_epoch,
            color_power=params.prepare.color_constancy_power,
        )  # fmt: skip
    from melanoma.models.transfer import fit_transfer

    return fit_transfer(
        x_train, y_train, x_val, y_val, params.transfer, loop,
        image_size=size, fit=fit, keras_home=keras_home or Path.home() / ".keras",
        strategy=strategy, on_epoch=on_epoch, color_power=params.prepare.color_constancy_power,
    )  # fmt: skip


def tta_and_calibration(
    name: str,
    model: ImageClassifier,
    family_info: dict[str, Any],
    x_val: np.ndarray,
    y_val: np.ndarray,
    meta_val: pd.DataFrame | None,
    params: Params,
) -> tuple[CalibratedClassifier, np.ndarray, dict[str, Any]]:
    """After fit: TTA when the family's section says ``tta``, then a calibrator fitted on validation.

    Returns the wrapped model, its calibrated validation probabilities and what model.json records:
    ``tta``, ``calibration`` (method + fitted values) and, under ``val``, ECE and Brier before/after.
    A family may hand back out-of-fold validation probabilities (``val_proba_oof``, popped here):
    its in-sample ones would be optimistic, and a calibrator fitted on them would be too confident.
    """
    tta = bool(getattr(getattr(params, name, None), "tta", False))
    if tta:
        model = TTAClassifier(model)
    p_raw = family_info.pop("val_proba_oof", None)
    if p_raw is None:
        p_raw = model.predict_proba(x_val, meta_val)
    p_raw = np.asarray(p_raw, dtype=np.float64).reshape(-1)
    if len(p_raw) != len(y_val):
        raise DataError(f"{name}: {len(p_raw)} validation probabilities for {len(y_val)} images")
    calibrator = fit_calibrator(params.calibration.method, y_val, p_raw)
    p_val = calibrator.apply(p_raw)
    bins = params.evaluate.calibration_bins
    # val_ece/val_brier are in-sample for the calibrator (fitted on these very labels; isotonic
    # reaches ECE 0): the test ones in evaluate are the honest before/after.
    val = {
        "val_ece_uncalibrated": expected_calibration_error(y_val, p_raw, bins),
        "val_brier_uncalibrated": brier(y_val, p_raw),
        "val_ece": expected_calibration_error(y_val, p_val, bins),
        "val_brier": brier(y_val, p_val),
    }
    log.info(
        "train@%s: %s calibration on validation: ECE %.4f -> %.4f, Brier %.4f -> %.4f%s",
        name, calibrator.method, val["val_ece_uncalibrated"], val["val_ece"],
        val["val_brier_uncalibrated"], val["val_brier"], " (TTA)" if tta else "",
    )  # fmt: skip
    record = {"tta": tta, "calibration": calibrator.to_dict(), "val": val}
    return CalibratedClassifier(model, calibrator), p_val, record


def operating_point(
    model: ImageClassifier, x_val: np.ndarray, y_val: np.ndarray, p_val: np.ndarray, target: float | None
) -> tuple[float, str, dict[str, float]]:
    """(threshold, its rule, images-only validation metrics) fixed on validation.

    Most uploads come without age, sex or site. A model that reads them is also scored on validation
    with none given, and the threshold is the lower of the two that reach ``target`` sensitivity,
    so the target holds in both conditions (a model tuned only with metadata lost half its
    sensitivity on a real external set without it). Youden's J (``target`` None) uses metadata only.
    """
    threshold = choose_threshold(y_val, p_val, target)
    rule = "youden" if target is None else f"sensitivity>={target}"
    if not metadata_columns(model):
        return threshold, rule, {}
    p_img = np.asarray(model.predict_proba(x_val, None), dtype=np.float64).reshape(-1)
    if target is not None:
        threshold = min(threshold, choose_threshold(y_val, p_img, target))
        rule += " with and without metadata"
    cm = confusion_at(y_val, p_img, threshold)
    images_only = {"roc_auc": safe_auc(y_val, p_img), "pr_auc": safe_ap(y_val, p_img), **rates(cm)}
    return threshold, rule, {f"val_images_only_{k}": v for k, v in images_only.items()}


def trained_on(prepared_dir: Path, n_train: int, n_val: int) -> dict[str, Any]:
    """The data a model learnt from, in words (model.json's ``trained_on``: the app and the model
    card say it), from the ingest report prepare keeps in its provenance folder."""
    path = Path(prepared_dir) / PROVENANCE_DIR / INGEST_REPORT
    report = read_json(path, "run prepare again") if path.is_file() else {}
    return {**describe_source(report), "n_train": n_train, "n_val": n_val}


def logged_params(name: str, params: Params) -> dict[str, Any]:
    """The params a run of ``name`` depends on, flattened with dotted keys."""
    out = {
        **flatten(params.base, "base."),
        **flatten(params.prepare, "prepare."),
        **flatten(params.split, "split."),
        **flatten(params.calibration, "calibration."),
        "evaluate.calibration_bins": params.evaluate.calibration_bins,  # the val ECE's bins
    }
    out.update(
        flatten(params.train, "train.")
        if name not in ("baseline", "ensemble")  # neither runs the deep training loop
        else {"train.target_sensitivity": params.train.target_sensitivity}
    )
    section = getattr(params, name, None)
    if section is not None:
        out.update(flatten(section, f"{name}."))
    return out


def train_model(
    name: str,
    prepared_dir: Path,
    splits_dir: Path,
    out_dir: Path,
    params: Params,
    tracking: Tracking,
    keras_home: Path | None = None,
    member_dirs: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """Train ``name`` on the prepared data and splits; write ``out_dir``; log one MLflow run.

    ``member_dirs``: the ensemble's member model folders (name -> folder); other models ignore it.

    Under a multi-worker strategy every worker trains, but only the chief logs to MLflow.
    Returns the content of ``model.json``, plus (on the chief) where MLflow keeps the run and model
    under ``"mlflow"``: run ids stay out of the tracked file, which must be byte-reproducible.
    """
    import mlflow

    start = time.perf_counter()
    strategy = None
    if name not in ("baseline", "ensemble"):  # the ensemble trains no network: it combines saved ones
        from melanoma.models.deep.loop import is_chief, make_strategy

        strategy = make_strategy(params.train.strategy, params.train.devices)  # before other TF ops
    chief = strategy is None or is_chief(strategy)

    images, _ = load_prepared(prepared_dir)
    frames = load_splits(splits_dir)
    x_train, y_train = split_arrays(images, frames["train"])
    x_val, y_val = split_arrays(images, frames["val"])
    meta_train, meta_val = metadata_rows(frames["train"]), metadata_rows(frames["val"])
    for split, y in (("train", y_train), ("val", y_val)):
        if len(np.unique(y)) < 2:
            raise DataError(f"the {split} split has only one class; re-run split with more data")
    hashes = data_hashes(prepared_dir, splits_dir)
    log.info("train@%s: %d train / %d val images", name, len(y_train), len(y_val))

    run_ctx: Any = contextlib.nullcontext()
    if chief:
        experiment_id = set_experiment(tracking)
        run_ctx = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"{tracking.dvc_exp_name}:{name}" if tracking.dvc_exp_name else f"train@{name}",
            tags=run_tags(tracking, f"train@{name}", hashes),
        )
    with run_ctx as run:
        if chief:
            mlflow.log_params(logged_params(name, params))
            log_split_inputs(frames, {k: (Path(splits_dir) / f"{k}.csv").as_posix() for k in frames}, hashes)
            if strategy is not None:
                mlflow.set_tag("strategy", f"{params.train.strategy} x{strategy.num_replicas_in_sync}")
        on_epoch = (lambda metrics, step: mlflow.log_metrics(metrics, step=step)) if chief else None
        model, family_info = fit_model(
            name,
            x_train,
            y_train,
            x_val,
            y_val,
            params,
            strategy=strategy,
            on_epoch=on_epoch,
            keras_home=keras_home,
            member_dirs=member_dirs,
            expected_data=hashes,
            meta_train=meta_train,
            meta_val=meta_val,
        )
        history = family_info.pop("history", None)
        model, p_val, post = tta_and_calibration(name, model, family_info, x_val, y_val, meta_val, params)
        # The operating point and every validation metric are on the calibrated scale.
        threshold, rule, images_only = operating_point(
            model, x_val, y_val, p_val, params.train.target_sensitivity
        )
        cm = confusion_at(y_val, p_val, threshold)
        val_metrics = {"val_roc_auc": safe_auc(y_val, p_val), "val_pr_auc": safe_ap(y_val, p_val)}
        val_metrics.update({f"val_{k}": v for k, v in rates(cm).items()})
        val_metrics.update(images_only)
        val_metrics.update(post.pop("val"))
        info: dict[str, Any] = {
            "name": name,
            "family": model.family,
            "image_size": model.image_size,
            "fit": model.fit,
            # how prepare decoded the JPEGs: the app decodes uploads the same way (serve.holder)
            "draft": params.prepare.draft,
            "draft_margin": params.prepare.draft_margin,
            # prepare's colour constancy: the app applies it to uploads too
            "color_constancy": params.prepare.color_constancy,
            "color_constancy_power": params.prepare.color_constancy_power,
            "threshold": threshold,
            "threshold_rule": rule,
            # what the app must be given for the model to see all it was trained on
            "metadata_columns": list(metadata_columns(model)),
            "val": val_metrics,
            "n_train": int(len(y_train)),
            "n_val": int(len(y_val)),
            "trained_on": trained_on(prepared_dir, int(len(y_train)), int(len(y_val))),
            "data": hashes,
            **post,
            **family_info,
        }
        log.info("train@%s: val AUC %.4f, threshold %.4f", name, val_metrics["val_roc_auc"], threshold)
        with atomic.atomic_dir(out_dir) as tmp:
            model.save(tmp)
            if history is not None:
                write_history(tmp, history)
            write_model_json(tmp, info)
            if chief:
                # Timings and run ids go to MLflow only: model.json stays byte-reproducible.
                mlflow.log_metric("train_seconds", round(time.perf_counter() - start, 2))
                run_info = _log_run(run, tracking, model, info, val_metrics, threshold, tmp, x_val)
                return {**info, "mlflow": run_info}
    return info


def _log_run(
    run: Any,
    tracking: Tracking,
    model: ImageClassifier,
    info: dict[str, Any],
    val_metrics: dict[str, float],
    threshold: float,
    model_dir: Path,
    x_val: np.ndarray,
) -> dict[str, str]:
    """Log metrics, tags and the model (pyfunc over raw images; plus the Keras flavor)."""
    import mlflow

    from melanoma.pyfunc import MODEL_DIR_ARTIFACT, MelanomaPyfunc, image_signature

    mlflow.log_metrics({k: v for k, v in val_metrics.items() if np.isfinite(v)})
    mlflow.log_metric("threshold", threshold)
    for cand, auc in info.get("candidate_val_auc", {}).items():
        mlflow.log_metric(f"val_roc_auc.{cand}", auc)
    # the ensemble: each member's validation AUC, and its own in-sample one (val_roc_auc is out-of-fold)
    ensemble_aucs = {f"member_val_roc_auc.{m}": v for m, v in info.get("member_val_auc", {}).items()}
    if "val_roc_auc_in_sample" in info:
        ensemble_aucs["val_roc_auc_in_sample"] = info["val_roc_auc_in_sample"]
    if ensemble_aucs:
        mlflow.log_metrics({k: v for k, v in ensemble_aucs.items() if np.isfinite(v)})
    mlflow.set_tag("model_family", info["family"])
    # Evaluation and the registry find this run by the model's content (see model_fingerprint).
    mlflow.set_tag(FINGERPRINT_TAG, model_fingerprint(model_dir))
    if "weights" in info:
        mlflow.set_tag("weights", info["weights"])  # "random-init" when ImageNet weights were missing
        if info["name"] == "transfer":  # the ensemble's "weights" describes its members'
            mlflow.log_param("transfer.weights_used", info["weights"])
    if info["family"] == "keras":
        mlflow.keras.log_model(model.model, name="keras_model")
    model_info = mlflow.pyfunc.log_model(
        name="model",
        python_model=MelanomaPyfunc(),
        artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
        signature=image_signature(),
        input_example=np.asarray(x_val[:1]),
    )
    log.info("train: MLflow run %s, model %s (%s)", run.info.run_id, model_info.model_uri, tracking.uri)
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "model_uri": model_info.model_uri,
        "tracking_uri": tracking.uri,
    }
