"""A trained Keras model as the project's classifier: inference in batches, and the saved file.

``KerasClassifier`` maps uint8 images to P(melanoma) (``predict_batches``: ``PREDICT_BATCH`` images
converted to floats at a time) and saves itself as ``model.keras``, rewritten byte-reproducibly
(``reproducible_keras_zip``) because a model folder is a DVC output. How models are trained is
``loop``'s job; this module never trains.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

import melanoma.models.deep.layers  # noqa: F401  registers the custom layers for load_model
from melanoma import atomic

KERAS_FILE = "model.keras"
# Eager inference keeps every layer's activations of a batch alive at once: measured on the CNN at
# 100 px, a batch of 128 raised peak RSS by 960 MB, 32 by 260 MB (probabilities bit-identical,
# ~1.3x the seconds), so 32 keeps training's post-fit TTA and evaluate under training's own peak.
PREDICT_BATCH = 32
# The fixed time stamp of every entry of a saved .keras zip: the earliest a zip can hold.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class KerasClassifier:
    """A Keras model mapping float pixels in [0, 255] (N, S, S, 3) to P(melanoma)."""

    model: keras.Model
    image_size: int
    fit: str = "crop"
    family: str = field(default="keras", init=False)

    def predict_proba(self, images: np.ndarray, metadata: pd.DataFrame | None = None) -> np.ndarray:
        """uint8 (N, S, S, 3) -> float32 (N,)."""
        return predict_batches(self.model, images)

    def save(self, out_dir: Path) -> None:
        """Write ``model.keras``, byte-reproducibly (see ``reproducible_keras_zip``)."""
        with tempfile.TemporaryDirectory(prefix="melanoma-save-") as tmp:
            raw = Path(tmp) / KERAS_FILE
            self.model.save(raw)
            atomic.write_bytes(Path(out_dir) / KERAS_FILE, reproducible_keras_zip(raw.read_bytes()))

    @staticmethod
    def load(model_dir: Path, image_size: int, fit: str) -> KerasClassifier:
        """Read ``model.keras`` (safe mode: no arbitrary code)."""
        model = keras.saving.load_model(Path(model_dir) / KERAS_FILE, compile=False)
        return KerasClassifier(model=model, image_size=image_size, fit=fit)


def forward_batches(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """``model``'s outputs (inference mode) for uint8 (N, S, S, 3) images, an array or ``ImageRows``,
    ``PREDICT_BATCH`` images at a time: only one batch is ever converted to floats."""
    out = []
    for i in range(0, len(images), PREDICT_BATCH):
        batch = tf.convert_to_tensor(np.asarray(images[i : i + PREDICT_BATCH]), dtype=tf.float32)
        out.append(np.asarray(model(batch, training=False), dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, *model.output_shape[1:]), np.float32)


def predict_batches(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """P(melanoma) float32 (N,) from a one-output model (``forward_batches``)."""
    return forward_batches(model, images).reshape(-1)


def reproducible_keras_zip(data: bytes) -> bytes:
    """A ``.keras`` archive rewritten without what changes from save to save.

    Keras stamps ``metadata.json`` with ``date_saved``, gives zip entries the time of writing and
    marks objects shared between layers (the dtype policy, a regularizer) in ``config.json`` with
    their memory address (``shared_object_id``), which changes from process to process: those are
    renumbered 1, 2, ... in order of appearance, which keeps which layers share what. The weights
    are already stable (h5py writes no object times by default). Entries keep their order, names
    and compression; ``load_model`` reads the result as before.
    """
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename == "metadata.json":
                meta = json.loads(body)
                meta.pop("date_saved", None)
                body = json.dumps(meta, sort_keys=True).encode()
            elif info.filename == "config.json":
                body = json.dumps(_renumber_shared_objects(json.loads(body))).encode()
            entry = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
            entry.compress_type = info.compress_type
            entry.external_attr = 0o644 << 16
            entry.create_system = 3  # unix, whatever the host
            dst.writestr(entry, body)
    return out.getvalue()


def _renumber_shared_objects(config: Any, ids: dict[int, int] | None = None) -> Any:
    """``config`` with every ``shared_object_id`` replaced by its rank of first appearance."""
    ids = {} if ids is None else ids
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "shared_object_id" and isinstance(value, int):
                out[key] = ids.setdefault(value, len(ids) + 1)
            else:
                out[key] = _renumber_shared_objects(value, ids)
        return out
    if isinstance(config, list):
        return [_renumber_shared_objects(v, ids) for v in config]
    return config
