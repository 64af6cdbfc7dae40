"""Serializable Keras objects the deep models share (no Lambda layers: models load in safe mode):
the input preprocessing layer and the training loop's metrics (AUC and class tallies), which take
mixup/cutmix soft labels as well as hard ones."""

from __future__ import annotations

from typing import Any

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


@keras.saving.register_keras_serializable(package="melanoma")
class ClassTally(keras.metrics.Metric):
    """Per epoch: how many samples of class ``cls`` the loss saw, or (``weighted``) their summed weight.

    A mixed sample with soft target ``t`` counts ``t`` towards the positives and ``1 - t`` towards
    the negatives (with its loss weight, that is the loss mass each class gets).

    A training-loop record, not a quality metric: it shows what ``class_balance`` applied.
    """

    def __init__(self, cls: int = 1, weighted: bool = False, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(
            name=name or f"{'weight' if weighted else 'seen'}_{'pos' if cls else 'neg'}", **kwargs
        )
        self.cls, self.weighted = int(cls), bool(weighted)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:  # noqa: ANN001 - Keras tensors
        # A soft (mixed) label counts by its share of the class; a hard label counts 1 or 0.
        y = keras.ops.reshape(keras.ops.cast(y_true, "float32"), (-1,))
        hit = y if self.cls == 1 else 1.0 - y
        if self.weighted and sample_weight is not None:
            hit = hit * keras.ops.reshape(keras.ops.cast(sample_weight, "float32"), (-1,))
        self.total.assign_add(keras.ops.sum(hit))

    def result(self):  # noqa: ANN201 - Keras tensor
        # A new tensor, not a read of the variable: Keras reads training results after validation
        # has reset and re-filled the same metric, and a plain read showed the validation count.
        return keras.ops.add(self.total, 0.0)

    def reset_state(self) -> None:
        self.total.assign(0.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "cls": self.cls, "weighted": self.weighted}


@keras.saving.register_keras_serializable(package="melanoma")
class SoftAUC(keras.metrics.AUC):
    """ROC AUC that reads a soft target ``t`` in [0, 1] as a positive of weight ``t`` plus a negative
    of weight ``1 - t``.

    Keras' AUC casts labels to bool, so every mixed sample (``t > 0``) would count as a melanoma.
    On hard labels this adds exactly the same counts as ``keras.metrics.AUC``.
    """

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:  # noqa: ANN001 - Keras tensors
        y = ops.reshape(ops.cast(y_true, "float32"), (-1, 1))
        p = ops.reshape(y_pred, (-1, 1))
        w = 1.0 if sample_weight is None else ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
        super().update_state(ops.ones_like(y), p, sample_weight=w * y)
        super().update_state(ops.zeros_like(y), p, sample_weight=w * (1.0 - y))
