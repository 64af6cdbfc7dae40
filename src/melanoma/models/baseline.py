"""The study's baseline family: scikit-learn classifiers on hand-crafted image features.

Candidates (logistic regression, random forest, gradient boosting, AdaBoost) are fitted on the
training split and the one with the best validation ROC AUC is kept.
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
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight

from melanoma.config import BaselineParams
from melanoma.features import extract_features
from melanoma.metrics import safe_auc

log = logging.getLogger(__name__)
MODEL_FILE = "model.joblib"


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
    raise ValueError(f"unknown baseline candidate {name!r}")


@dataclass
class BaselineModel:
    """Features -> scaler -> the chosen classifier."""

    head: Pipeline
    image_size: int
    fit: str = "crop"
    candidate: str = ""
    family: str = field(default="baseline", init=False)

    def predict_proba(self, images: np.ndarray, metadata: pd.DataFrame | None = None) -> np.ndarray:
        """uint8 (N, S, S, 3) -> P(melanoma)."""
        if len(images) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.head.predict_proba(extract_features(images))[:, 1].astype(np.float32)

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
) -> tuple[BaselineModel, dict[str, float]]:
    """Fit every candidate on training features; keep the best by validation ROC AUC.

    Returns the model and each candidate's validation AUC.
    """
    f_train, f_val = extract_features(x_train), extract_features(x_val)
    weights = compute_sample_weight("balanced", y_train) if params.class_weight == "balanced" else None
    scores: dict[str, float] = {}
    best: tuple[float, str, Pipeline] | None = None
    for name in params.candidates:
        head = make_pipeline(StandardScaler(), make_candidate(name, params, seed))
        if name == "adaboost" and weights is not None:
            head.fit(f_train, y_train, **{f"{head.steps[-1][0]}__sample_weight": weights})
        else:
            head.fit(f_train, y_train)
        auc = safe_auc(y_val, head.predict_proba(f_val)[:, 1])
        scores[name] = auc
        log.info("baseline candidate %-20s validation AUC %.4f", name, auc)
        if best is None or auc > best[0]:
            best = (auc, name, head)
    assert best is not None  # params validation guarantees at least one candidate
    return BaselineModel(head=best[2], image_size=image_size, fit=fit, candidate=best[1]), scores
