"""The study's baseline family: scikit-learn classifiers on hand-crafted image features.

Candidates (logistic regression, random forest, gradient boosting, AdaBoost, XGBoost) are fitted
on the training split and the one with the best validation ROC AUC is kept.

With ``baseline.metadata`` columns, they train on [image features, encoded patient metadata]
(``melanoma.metadata``). Metadata may be missing anywhere: gradient boosting and XGBoost split on
NaN natively, the others impute (with a missing-indicator column); at prediction, no metadata means
all missing. Metadata dropout (``baseline.metadata_dropout``) masks a seeded fraction of the
training rows' metadata exactly so, so that the model also learns to predict from images alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import AdaBoostClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight

from melanoma.config import BaselineParams
from melanoma.features import extract_features
from melanoma.metadata import MetadataEncoder, usable_columns
from melanoma.metrics import safe_auc

log = logging.getLogger(__name__)
MODEL_FILE = "model.joblib"
# Candidates that split on NaN themselves: no imputer, so "age unknown" stays its own branch.
NAN_NATIVE = frozenset({"gradient_boosting", "xgboost"})
# Candidates without a class_weight option: class balance goes in as fit-time sample weights.
SAMPLE_WEIGHTED = frozenset({"adaboost", "xgboost"})
# Second entropy word of the dropout generator: the masked rows do not reuse the candidates' stream.
_DROPOUT_STREAM = 0x6D657461


def make_candidate(name: str, params: BaselineParams, seed: int) -> ClassifierMixin:
    """One untrained candidate classifier."""
    balanced = params.class_weight == "balanced"
    if name == "logistic_regression":
        return LogisticRegression(max_iter=5000, C=1.0, class_weight="balanced" if balanced else None)
    if name == "random_forest":
        return RandomForestClassifier(
            n_estimators=params.n_estimators,
            min_samples_leaf=2,
            class_weight="balanced_subsample" if balanced else None,
            n_jobs=-1,
            random_state=seed,
        )
    if name == "gradient_boosting":
        return HistGradientBoostingClassifier(
            max_iter=params.n_estimators,
            max_depth=params.max_depth,
            learning_rate=params.learning_rate,
            class_weight="balanced" if balanced else None,
            early_stopping=False,
            random_state=seed,
        )
    if name == "adaboost":
        return AdaBoostClassifier(
            n_estimators=params.n_estimators, learning_rate=params.learning_rate, random_state=seed
        )
    if name == "xgboost":
        from xgboost import XGBClassifier  # imported here: about a second only this candidate needs

        # n_jobs=1 so the trained bytes cannot depend on the core count. Measured with XGBoost 3.2
        # hist, they do not anyway: n_jobs 1, 2, 3, 4, 8, 16 (5,000 x 70, NaNs, weights) and 1, 2,
        # 5, 8 (60,000 rows) gave the same booster bytes and probabilities (its histogram sums are
        # deterministic since dmlc/xgboost#5023). But that is the library's behaviour, not a promise,
        # and one thread fits the synthetic sample's 200 trees in under a second.
        return XGBClassifier(
            n_estimators=params.n_estimators,
            max_depth=params.max_depth,
            learning_rate=params.learning_rate,
            tree_method="hist",
            n_jobs=1,
            random_state=seed,
        )
    raise ValueError(f"unknown baseline candidate {name!r}")


def make_head(name: str, params: BaselineParams, seed: int, with_metadata: bool) -> Pipeline:
    """[imputer] -> scaler -> candidate; the imputer only when metadata (the only NaN source) is used.

    Gradient boosting and XGBoost take NaN as its own branch, which keeps "age unknown" informative.
    """
    steps: list[object] = [StandardScaler(), make_candidate(name, params, seed)]
    if with_metadata and name not in NAN_NATIVE:
        steps.insert(0, SimpleImputer(strategy="median", add_indicator=True))
    return make_pipeline(*steps)


def head_inputs(
    images: np.ndarray, encoder: MetadataEncoder | None, metadata: pd.DataFrame | None
) -> np.ndarray:
    """The head's input matrix: image features, then the encoded metadata (None = all missing)."""
    features = extract_features(images)
    if encoder is None or not encoder.columns:
        return features
    return np.hstack([features, encoder.transform(metadata, len(features))])


def without_metadata(
    inputs: np.ndarray, encoder: MetadataEncoder, rows: np.ndarray | None = None
) -> np.ndarray:
    """A copy of head inputs whose ``rows`` (None: all) have no metadata, as ``head_inputs(.., None)`` encodes it.

    Only the trailing metadata block changes; it is filled from ``encoder.transform(None, ..)``, so a
    masked row is exactly what prediction without metadata feeds the head.
    """
    out = np.array(inputs, copy=True)
    rows = np.arange(len(out)) if rows is None else np.asarray(rows)
    width = len(encoder.feature_names)
    if width and len(rows):
        out[rows, out.shape[1] - width :] = encoder.transform(None, len(rows))
    return out


def dropout_rows(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the training rows whose metadata dropout masks: ``round(fraction * n)`` per class.

    Drawn per class so that "metadata missing" says nothing about the label in training (a chance
    imbalance at small n would teach the model that missing metadata means one class).
    """
    rng = np.random.default_rng([seed, _DROPOUT_STREAM])
    y = np.asarray(y)
    picked = [
        rng.choice(members, size=round(fraction * len(members)), replace=False)
        for members in (np.flatnonzero(y == label) for label in np.unique(y))
    ]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


@dataclass
class BaselineModel:
    """Features (+ encoded metadata) -> [imputer] -> scaler -> the chosen classifier."""

    head: Pipeline
    image_size: int
    fit: str = "crop"
    candidate: str = ""
    family: str = field(default="baseline", init=False)
    # None: image features only (also what a model saved before metadata existed unpickles to)
    encoder: MetadataEncoder | None = None

    @property
    def metadata_columns(self) -> tuple[str, ...]:
        """The patient metadata columns this model uses (empty: images only)."""
        return self.encoder.columns if self.encoder is not None else ()

    def predict_proba(self, images: np.ndarray, metadata: pd.DataFrame | None = None) -> np.ndarray:
        """uint8 (N, S, S, 3) (+ optional metadata rows, one per image) -> P(melanoma)."""
        if metadata is not None and len(metadata) != len(images):
            raise ValueError(
                f"{len(images)} images but {len(metadata)} metadata rows: give one row per image"
            )
        if len(images) == 0:
            return np.zeros(0, dtype=np.float32)
        x = head_inputs(images, self.encoder, metadata)
        return self.head.predict_proba(x)[:, 1].astype(np.float32)

    def save(self, out_dir: Path) -> None:
        """Write ``model.joblib`` into ``out_dir``."""
        joblib.dump(self, Path(out_dir) / MODEL_FILE)

    @staticmethod
    def load(model_dir: Path) -> BaselineModel:
        """Read a saved baseline."""
        return joblib.load(Path(model_dir) / MODEL_FILE)


def fit_baseline(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: BaselineParams,
    seed: int,
    image_size: int,
    fit: str = "crop",
    meta_train: pd.DataFrame | None = None,
    meta_val: pd.DataFrame | None = None,
) -> tuple[BaselineModel, dict[str, float]]:
    """Fit every candidate on training features; keep the best by validation ROC AUC.

    ``meta_train``/``meta_val``: the splits' metadata rows (one per image) for ``params.metadata``.
    A configured column that the training rows lack, or hold no value of (a folder of images
    without metadata), is left out with a warning: the default params must run on any source, and
    the saved model records what it really uses. Returns the model and each candidate's validation AUC.
    """
    columns: tuple[str, ...] = ()
    if params.metadata:
        columns, dropped = usable_columns(
            meta_train if meta_train is not None else pd.DataFrame(), params.metadata
        )
        if dropped:
            log.warning(
                "baseline: metadata column(s) %s have no value in the training rows; "
                "training without them (using %s)",
                list(dropped),
                list(columns) or "image features only",
            )
    encoder = MetadataEncoder.fit(meta_train, columns) if columns else None
    f_train, f_val = head_inputs(x_train, encoder, meta_train), head_inputs(x_val, encoder, meta_val)
    f_val_bare = None
    f_fit, y_fit = f_train, np.asarray(y_train)
    if encoder is not None:
        log.info(
            "baseline: %d image features + %s",
            f_train.shape[1] - len(encoder.feature_names),
            encoder.feature_names,
        )
        f_val_bare = without_metadata(f_val, encoder)
        if params.metadata_dropout > 0:
            # Masked in place (each image once, a fraction without its metadata), not appended as
            # masked copies (1 + p rows): on the synthetic sample, in place was as good or better on
            # validation with metadata (mean over 5 candidates x 4 seeds 0.829 vs 0.823) and without
            # (0.786 vs 0.777), with no duplicated images for the trees to fit twice.
            rows = dropout_rows(y_fit, params.metadata_dropout, seed)
            f_fit = without_metadata(f_train, encoder, rows)
            log.info(
                "baseline: metadata dropout %.2f: %d of %d training rows without metadata",
                params.metadata_dropout,
                len(rows),
                len(f_train),
            )
    weights = compute_sample_weight("balanced", y_fit) if params.class_weight == "balanced" else None
    scores: dict[str, float] = {}
    best: tuple[float, str, Pipeline] | None = None
    for name in params.candidates:
        head = make_head(name, params, seed, with_metadata=encoder is not None)
        if name in SAMPLE_WEIGHTED and weights is not None:
            head.fit(f_fit, y_fit, **{f"{head.steps[-1][0]}__sample_weight": weights})
        else:
            head.fit(f_fit, y_fit)
        auc = safe_auc(y_val, head.predict_proba(f_val)[:, 1])
        scores[name] = auc
        if f_val_bare is None:
            log.info("baseline candidate %-20s validation AUC %.4f", name, auc)
        else:  # the images-only AUC shows what a source without metadata will get
            bare = safe_auc(y_val, head.predict_proba(f_val_bare)[:, 1])
            log.info("baseline candidate %-20s validation AUC %.4f (without metadata %.4f)", name, auc, bare)
        if best is None or auc > best[0]:
            best = (auc, name, head)
    assert best is not None  # params validation guarantees at least one candidate
    model = BaselineModel(head=best[2], image_size=image_size, fit=fit, candidate=best[1], encoder=encoder)
    return model, scores
