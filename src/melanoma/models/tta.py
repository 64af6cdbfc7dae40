"""Test-time augmentation: P(melanoma) averaged over the 8 flips/rotations of each image.

A dermoscopy image has no canonical orientation, so the 8 symmetries of the square (the dihedral
group D4: 4 rotations, each with and without a mirror) are equally valid views of one lesion.
``TTAClassifier`` wraps any ``ImageClassifier`` (``melanoma.models``): it stacks the 8 views of a
chunk of images into one batch, makes one ``predict_proba`` call on it (a Keras model then runs full
batches instead of 8 small passes) and averages the 8 probabilities of each image. Patient metadata
rows go with every view unchanged. A model whose output is already invariant gets the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma.models import ModelWrapper

N_VIEWS = 8
# Images per inner call: 8 x 256 views of 100x100x3 uint8 are ~61 MB.
CHUNK = 256


def dihedral_views(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, C) -> (8, N, S, S, C): rotations by 0/90/180/270 degrees, then the same of
    the left-right mirror. View 0 is the image itself."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
        raise ValueError(f"TTA needs square images (N, S, S, C); got shape {x.shape}")
    mirrored = x[:, :, ::-1]
    return np.stack(
        [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
        + [np.rot90(mirrored, k, axes=(1, 2)) for k in range(4)]
    )


@dataclass
class TTAClassifier(ModelWrapper):
    """Mean of ``inner``'s probabilities over the 8 dihedral views (same interface as ``inner``).

    Other attributes (``family``, ``model`` for Grad-CAM, ...) are the inner model's, so the app
    explains the un-augmented view.
    """

    inner: Any
    chunk: int = CHUNK

    def predict_proba(self, images: np.ndarray, metadata: pd.DataFrame | None = None) -> np.ndarray:
        """uint8 (N, S, S, 3) (+ optional metadata rows) -> float32 (N,), the mean over 8 views."""
        n = len(images)
        if metadata is not None and len(metadata) != n:
            raise ValueError(f"TTA: {n} images but {len(metadata)} metadata rows")
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        out = []
        for i in range(0, n, self.chunk):
            views = dihedral_views(images[i : i + self.chunk])  # (8, m, S, S, 3)
            m = views.shape[1]
            meta = None
            if metadata is not None:
                rows = metadata.iloc[i : i + m]
                meta = pd.concat([rows] * N_VIEWS, ignore_index=True)  # view-major, like the images
            prob = self.inner.predict_proba(views.reshape(N_VIEWS * m, *views.shape[2:]), metadata=meta)
            out.append(np.asarray(prob, dtype=np.float64).reshape(N_VIEWS, m).mean(axis=0))
        return np.concatenate(out).astype(np.float32)

    def save(self, out_dir: Path) -> None:
        """The inner model's files; train records ``"tta": true`` in model.json."""
        self.inner.save(out_dir)
