"""The logged model's pyfunc: raw uint8 images of any size in, P(melanoma) out.

It resizes with ``melanoma.images`` (the code ``prepare`` uses), so ``mlflow models serve`` and
the app need nothing beyond this package.

Patient metadata is optional and goes in MLflow inference ``params``: ``age_approx`` (numbers),
``sex`` and ``site`` (strings), each a list with one entry per image in input order (null or ""
for a missing value), e.g. ``predict(images, params={"age_approx": [55, None], "sex": ["male", ""]})``.
Omitted lists mean "not given": images alone always work, and a model that uses no metadata
ignores them. A list of another length than the batch is refused.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

from melanoma.contracts import read_model_json
from melanoma.images import color_constancy, decoding_of, resize_batch
from melanoma.metadata import metadata_frame

MODEL_DIR_ARTIFACT = "model_dir"


def metadata_params() -> ParamSchema:
    """The optional per-image metadata params (list params; the empty default = not given)."""
    return ParamSchema(
        [
            ParamSpec("age_approx", "double", [], (-1,)),
            ParamSpec("sex", "string", [], (-1,)),
            ParamSpec("site", "string", [], (-1,)),
        ]
    )


def image_signature() -> ModelSignature:
    """uint8 (N, H, W, 3) images (+ optional metadata params) in, float32 (N,) probabilities out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]),
        params=metadata_params(),
    )


class MelanomaPyfunc(mlflow.pyfunc.PythonModel):
    """Wraps any trained model folder (see ``melanoma.models.load_model``)."""

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's PythonModelContext
        from melanoma.models import load_model

        self.model_dir = Path(context.artifacts[MODEL_DIR_ARTIFACT])  # the app reads its model.json
        self.model = load_model(self.model_dir)
        info = read_model_json(self.model_dir)
        # prepare's colour constancy, so a caller's images get the pixels the model was trained on
        # (on images prepare already corrected, a second pass moves a pixel by at most one level)
        decoding = decoding_of(info)
        self.color = (decoding["color_constancy"], decoding["color_constancy_power"])

    def predict(self, context, model_input, params=None) -> np.ndarray:  # noqa: ANN001
        """uint8 (N, H, W, 3) or a list of HxWx3 arrays (+ metadata ``params``) -> float32 (N,)."""
        if isinstance(model_input, np.ndarray) and model_input.ndim == 3:
            model_input = model_input[None]
        size = self.model.image_size
        batch = resize_batch(model_input, size, self.model.fit)
        if self.color[0] != "none":
            batch = np.stack([color_constancy(image, *self.color) for image in batch])  # type: ignore[arg-type]
        metadata = metadata_frame(params or {}, len(batch), where="pyfunc params")
        return self.model.predict_proba(batch, metadata).astype(np.float32)
