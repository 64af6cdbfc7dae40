"""Model families behind one interface: ``predict_proba(uint8 images (N, S, S, 3)) -> P(melanoma)``.

``metadata`` (optional): a frame of patient metadata, one row per image (columns ``age_approx``,
``sex``, ``site``; missing columns or values allowed). Models that use none ignore it, and every model
predicts from images alone when it is None.

A trained model lives in a folder: the family's own file(s) plus ``model.json`` (threshold,
input size, data hashes, ...). ``load_model`` reads any family's folder back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from melanoma.contracts import MODEL_JSON, read_model_json
from melanoma.errors import DataError


class ImageClassifier(Protocol):
    """What every trained model offers."""

    image_size: int
    fit: str

    def predict_proba(self, images: np.ndarray, metadata: pd.DataFrame | None = None) -> np.ndarray:
        """uint8 (N, image_size, image_size, 3) (+ optional metadata rows) -> float (N,) P(melanoma)."""
        ...

    def save(self, out_dir: Path) -> None:
        """Write the model's own files into ``out_dir``."""
        ...


class ModelWrapper:
    """Base of the prediction-time wrappers (TTA, calibration) around a dataclass field ``inner``.

    Size, fit and every other attribute (``family``, ``model`` for Grad-CAM, ``members``) are the inner
    model's, so code that inspects a model sees through the wrappers.
    """

    inner: Any

    @property
    def image_size(self) -> int:
        return int(self.inner.image_size)

    @property
    def fit(self) -> str:
        return str(self.inner.fit)

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found on the wrapper itself (nor its dataclass fields)
        if name.startswith("__") or name in getattr(type(self), "__dataclass_fields__", {}):
            raise AttributeError(name)
        return getattr(self.inner, name)


def metadata_columns(model: Any) -> tuple[str, ...]:
    """The patient metadata columns a model (or, through wrappers, its inner model) reads."""
    return tuple(getattr(model, "metadata_columns", ()) or ())


def load_model(model_dir: Path, calibrated: bool = True) -> ImageClassifier:
    """Load a trained model folder of any family, as it predicts after training.

    ``"tta": true`` in model.json wraps the family's model in ``TTAClassifier`` (the mean over the 8
    flips/rotations); a ``"calibration"`` entry then wraps that in ``CalibratedClassifier`` (its
    ``.inner`` still gives the raw probabilities). ``calibrated=False`` skips the calibrator.
    """
    info = read_model_json(model_dir)
    model = _load_family(Path(model_dir), info)
    if info.get("tta"):
        from melanoma.models.tta import TTAClassifier

        model = TTAClassifier(model)
    if calibrated and info.get("calibration") is not None:
        from melanoma.models.calibration import CalibratedClassifier, Calibrator

        where = f"{Path(model_dir) / MODEL_JSON}: calibration"
        model = CalibratedClassifier(model, Calibrator.from_dict(info["calibration"], where))
    return model


def _load_family(model_dir: Path, info: dict[str, Any]) -> ImageClassifier:
    """The family's own model, as saved by train (no TTA, no calibration)."""
    family = info.get("family")
    if family == "baseline":
        from melanoma.models.baseline import BaselineModel

        return BaselineModel.load(Path(model_dir))
    if family == "keras":
        from melanoma.models.deep.classifier import KerasClassifier

        return KerasClassifier.load(Path(model_dir), int(info["image_size"]), str(info.get("fit", "crop")))
    if family == "ensemble":
        from melanoma.models.ensemble import EnsembleModel

        return EnsembleModel.load(Path(model_dir))
    raise DataError(f"{model_dir}: unknown model family {family!r} in {MODEL_JSON}")
