"""Serializable Keras layers the deep models share (no Lambda layers: models load in safe mode)."""

from __future__ import annotations

import keras
from keras import ops

# Per-backbone input conventions of keras.applications (mirrors their preprocess_input).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
MODES = ("unit", "caffe", "tf", "raw")


@keras.saving.register_keras_serializable(package="melanoma")
class Preprocess(keras.layers.Layer):
    """uint8/float pixels in [0, 255] -> what the network expects.

    ``unit``: [0, 1] (our CNN); ``caffe``: BGR minus ImageNet means (VGG16); ``tf``: [-1, 1]
    (MobileNetV2); ``raw``: unchanged (EfficientNet rescales inside).
    """

    def __init__(self, mode: str = "unit", **kwargs) -> None:  # noqa: ANN003 - Keras layer kwargs
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {MODES}")
        self.mode = mode

    def call(self, inputs):  # noqa: ANN001, ANN201 - Keras tensors
        x = ops.cast(inputs, "float32")
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            x = x[..., ::-1]
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype="float32")
        return x

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}
