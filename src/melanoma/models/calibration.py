"""Probability calibration fitted on the validation split: P(melanoma) that means what it says.

``fit_calibrator(method, y_val, p_val)`` returns a ``Calibrator`` whose ``apply(p)`` maps a model's raw
probabilities to calibrated ones. Methods (``calibration.method`` in params):

* ``none``: the identity.
* ``temperature``: ``sigmoid(logit(p) / T)``, one positive temperature fitted by minimising the
  validation log-loss over log T (bounded Brent search). T > 1 softens an over-confident model.
* ``platt``: ``sigmoid(a * logit(p) + b)``, slope and intercept fitted by Newton's method on the
  log-loss against Platt's smoothed targets ``(n1 + 1) / (n1 + 2)`` and ``1 / (n0 + 2)`` (Platt 1999;
  also scikit-learn's sigmoid calibration): they keep a and b finite when validation is separable.
* ``isotonic``: scikit-learn's ``IsotonicRegression(out_of_bounds="clip")`` on p, stored as its
  thresholds and applied with ``np.interp`` (the same piecewise-linear map; no pickle).

Ranking: temperature and a positive Platt slope are strictly increasing maps, so ROC AUC and PR AUC
are unchanged (a negative Platt slope, only fitted for a model worse than chance, reverses them).
Isotonic is monotone but not strictly: it merges scores into flat steps, which creates ties, so AUC
can change slightly (usually a little down on new data).

Everything is deterministic (no random state) and JSON-serialisable: ``to_dict`` holds plain floats,
which ``json`` writes with ``repr`` and reads back bit-exactly, so ``model.json`` stays reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma.errors import DataError
from melanoma.models import ModelWrapper

METHODS = ("none", "temperature", "platt", "isotonic")
# float32 probabilities saturate at 1 - 6e-8; clipping keeps every logit finite (|logit| <= 16.1).
EPS = 1e-7
LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64, with p clipped to [EPS, 1 - EPS] so it stays finite."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow."""
    from scipy.special import expit

    return expit(np.asarray(z, dtype=np.float64))


@dataclass(frozen=True)
class Calibrator:
    """A fitted monotone map from raw to calibrated P(melanoma)."""

    method: str = "none"
    temperature: float = 1.0  # temperature
    slope: float = 1.0  # platt
    intercept: float = 0.0  # platt
    x: tuple[float, ...] = field(default=())  # isotonic: thresholds on the raw probability
    y: tuple[float, ...] = field(default=())  # isotonic: calibrated value at each threshold

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Raw probabilities (N,) -> calibrated probabilities (N,), float64."""
        p = np.asarray(p, dtype=np.float64).reshape(-1)
        if self.method == "none" or len(p) == 0:
            return p
        if self.method == "temperature":
            return sigmoid(logit(p) / self.temperature)
        if self.method == "platt":
            return sigmoid(self.slope * logit(p) + self.intercept)
        # np.interp holds the end values outside [x0, xn]: out_of_bounds="clip"
        return np.interp(p, np.asarray(self.x), np.asarray(self.y))

    def to_dict(self) -> dict[str, Any]:
        """The method and its fitted values, as plain JSON types."""
        if self.method == "temperature":
            return {"method": self.method, "temperature": float(self.temperature)}
        if self.method == "platt":
            return {"method": self.method, "slope": float(self.slope), "intercept": float(self.intercept)}
        if self.method == "isotonic":
            return {"method": self.method, "x": [float(v) for v in self.x], "y": [float(v) for v in self.y]}
        return {"method": "none"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "calibration") -> Calibrator:
        """Inverse of ``to_dict``; a missing or malformed value is a ``DataError`` naming ``where``."""
        if not isinstance(data, Mapping):
            raise DataError(f"{where}: expected an object with a method, got {data!r}")
        method = data.get("method")
        if method not in METHODS:
            raise DataError(f"{where}: unknown calibration method {method!r}; expected one of {METHODS}")
        try:
            if method == "temperature":
                out = cls(method, temperature=float(data["temperature"]))
                if not (math.isfinite(out.temperature) and out.temperature > 0):
                    raise ValueError("temperature must be a positive number")
                return out
            if method == "platt":
                return cls(method, slope=float(data["slope"]), intercept=float(data["intercept"]))
            if method == "isotonic":
                x, y = tuple(float(v) for v in data["x"]), tuple(float(v) for v in data["y"])
                if len(x) != len(y) or not x or any(b < a for a, b in zip(x, x[1:], strict=False)):
                    raise ValueError("x and y must be equally long, non-empty, x non-decreasing")
                return cls(method, x=x, y=y)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: bad {method} calibration ({exc})") from exc
        return cls("none")


def fit_calibrator(method: str, y_val: np.ndarray, p_val: np.ndarray) -> Calibrator:
    """Fit ``method`` on validation labels (0/1) and the model's raw validation probabilities."""
    if method not in METHODS:
        raise DataError(f"calibration.method {method!r}: expected one of {METHODS}")
    y = np.asarray(y_val, dtype=np.float64).reshape(-1)
    p = np.asarray(p_val, dtype=np.float64).reshape(-1)
    if len(y) != len(p):
        raise DataError(f"calibration: {len(y)} validation labels but {len(p)} probabilities")
    if method == "none":
        return Calibrator("none")
    if len(np.unique(y)) < 2 or not np.all(np.isfinite(p)):
        raise DataError("calibration: validation needs both classes and finite probabilities")
    if method == "temperature":
        return Calibrator(method, temperature=_fit_temperature(y, logit(p)))
    if method == "platt":
        slope, intercept = _fit_platt(y, logit(p))
        return Calibrator(method, slope=slope, intercept=intercept)
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, y)
    return Calibrator(
        method,
        x=tuple(float(v) for v in iso.X_thresholds_),
        y=tuple(float(v) for v in iso.y_thresholds_),
    )


def _log_loss(t: np.ndarray, z: np.ndarray) -> float:
    """Mean binary cross-entropy of logits ``z`` against (soft) targets ``t``, computed stably."""
    # -[t log s(z) + (1-t) log(1-s(z))] = softplus(z) - t z
    return float(np.mean(np.logaddexp(0.0, z) - t * z))


def _fit_temperature(y: np.ndarray, z: np.ndarray) -> float:
    """argmin over T of the log-loss of z / T (T searched on a log scale within [0.01, 100])."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(
        lambda log_t: _log_loss(y, z / math.exp(log_t)),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-9},
    )
    return float(math.exp(res.x))


def _fit_platt(y: np.ndarray, z: np.ndarray, max_iter: int = 100) -> tuple[float, float]:
    """Newton's method with step halving for sigmoid(a z + b) on Platt's smoothed targets."""
    n1, n0 = float(y.sum()), float(len(y) - y.sum())
    t = np.where(y > 0.5, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))
    x = np.column_stack([z, np.ones_like(z)])
    w = np.array([1.0, math.log((n1 + 1) / (n0 + 1))])  # identity slope, prior-odds intercept
    loss = _log_loss(t, x @ w)
    for _ in range(max_iter):
        s = sigmoid(x @ w)
        grad = x.T @ (s - t) / len(t)
        hess = (x.T * (s * (1 - s))) @ x / len(t) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-10:
            cand = w - scale * step
            cand_loss = _log_loss(t, x @ cand)
            if cand_loss <= loss:
                break
            scale /= 2
        else:
            break  # no descent left: converged to float precision
        converged = loss - cand_loss < 1e-15 and np.max(np.abs(cand - w)) < 1e-10
        w, loss = cand, cand_loss
        if converged:
            break
    return float(w[0]), float(w[1])


@dataclass
class CalibratedClassifier(ModelWrapper):
    """An image classifier whose probabilities go through a fitted ``Calibrator``.

    ``inner`` gives the raw probabilities (evaluate reports ECE/Brier before and after from one
    prediction); other attributes (``family``, ``model`` for Grad-CAM, ...) are the inner model's.
    """

    inner: Any
    calibrator: Calibrator

    def predict_proba(self, images: np.ndarray, metadata: pd.DataFrame | None = None) -> np.ndarray:
        """uint8 (N, S, S, 3) (+ optional metadata rows) -> calibrated float64 (N,)."""
        return self.calibrator.apply(self.inner.predict_proba(images, metadata=metadata))

    def save(self, out_dir: Path) -> None:
        """The inner model's files; the calibrator itself is recorded in model.json by train."""
        self.inner.save(out_dir)


def raw_and_calibrated(
    model: Any, images: np.ndarray, metadata: pd.DataFrame | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One prediction, both scales: (raw, calibrated) float64 probabilities of ``model``.

    For a ``CalibratedClassifier`` the raw ones are its inner model's; any other model is its own
    calibration (both the same array), e.g. a folder trained before calibration existed.
    """
    if isinstance(model, CalibratedClassifier):
        raw = np.asarray(model.inner.predict_proba(images, metadata=metadata), dtype=np.float64)
        return raw, model.calibrator.apply(raw)
    prob = np.asarray(model.predict_proba(images, metadata=metadata), dtype=np.float64)
    return prob, prob
