"""Model families behind one interface: ``predict_proba(uint8 images (N, S, S, 3)) -> P(melanoma)``.

A trained model lives in a folder: the family's own file(s) plus ``model.json`` (threshold,
input size, data hashes, ...). ``load_model`` reads any family's folder back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from melanoma.errors import DataError

MODEL_JSON = "model.json"


class ImageClassifier(Protocol):
    """What every trained model offers."""

    image_size: int
    fit: str

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, image_size, image_size, 3) -> float (N,) P(melanoma)."""
        ...

    def save(self, out_dir: Path) -> None:
        """Write the model's own files into ``out_dir``."""
        ...


def read_model_json(model_dir: Path) -> dict[str, Any]:
    """Read ``model.json`` of a trained model folder."""
    path = Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise DataError(f"{path}: missing; train this model first")
    return json.loads(path.read_text(encoding="utf-8"))


def load_model(model_dir: Path) -> ImageClassifier:
    """Load a trained model folder of any family."""
    info = read_model_json(model_dir)
    family = info.get("family")
    if family == "baseline":
        from melanoma.models.baseline import BaselineModel

        return BaselineModel.load(Path(model_dir))
    if family == "keras":
        from melanoma.models.keras_model import KerasClassifier

        return KerasClassifier.load(Path(model_dir), int(info["image_size"]), str(info.get("fit", "crop")))
    raise DataError(f"{model_dir}: unknown model family {family!r} in {MODEL_JSON}")
