"""The logged model's pyfunc: raw uint8 images of any size in, P(melanoma) out.

It resizes with ``melanoma.images`` (the code ``prepare`` uses), so ``mlflow models serve`` and
the app need nothing beyond this package.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from melanoma.images import resize_batch

MODEL_DIR_ARTIFACT = "model_dir"


def image_signature() -> ModelSignature:
    """uint8 (N, H, W, 3) images in, float32 (N,) probabilities out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]),
    )


class MelanomaPyfunc(mlflow.pyfunc.PythonModel):
    """Wraps any trained model folder (see ``melanoma.models.load_model``)."""

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's PythonModelContext
        from melanoma.models import load_model

        self.model_dir = Path(context.artifacts[MODEL_DIR_ARTIFACT])  # the app reads its model.json
        self.model = load_model(self.model_dir)

    def predict(self, context, model_input, params=None) -> np.ndarray:  # noqa: ANN001
        """uint8 (N, H, W, 3) or a list of HxWx3 arrays -> float32 (N,)."""
        if isinstance(model_input, np.ndarray) and model_input.ndim == 3:
            model_input = model_input[None]
        size = self.model.image_size
        batch = resize_batch(model_input, size, self.model.fit)
        return self.model.predict_proba(batch).astype(np.float32)
