"""Serializable Keras objects the deep models share (no Lambda layers: models load in safe mode):
the input layers (colour constancy, preprocessing) and the training loop's metrics (AUC and class tallies), which take
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
class ColorConstancy(keras.layers.Layer):
    """Shades of Gray colour constancy inside the network: pixels [0, 255] -> pixels [0, 255].

    The same correction as ``melanoma.images.color_constancy`` (per image and channel, the
    illuminant is the Minkowski p-mean of the [0, 1] values, scaled to norm sqrt(3); each channel is
    divided by its share), in float32 and without rounding to uint8. Inside the model it travels
    with it: evaluate, the registry's pyfunc and the app apply it without being told, and only the
    model that carries it sees corrected colours (``prepare.color_constancy`` changes every model's
    input, the baseline's colour features included). ``gray_world`` is p = 1. It sees the batch as
    the loop delivers it, i.e. after geometric augmentation. No weights: nothing is trained here.
    """

    def __init__(self, method: str = "shades_of_gray", power: float = 6.0, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        if method not in ("gray_world", "shades_of_gray"):
            raise ValueError(f"color constancy must be gray_world or shades_of_gray, got {method!r}")
        if not float(power) >= 1.0:  # also refuses NaN
            raise ValueError(f"color constancy power must be >= 1 (1 = gray world), got {power}")
        self.method, self.power = method, float(power)

    def call(self, inputs):  # noqa: ANN001, ANN201 - Keras tensors
        x = ops.cast(inputs, "float32")
        p = 1.0 if self.method == "gray_world" else self.power
        unit = ops.clip(x / 255.0, 0.0, 1.0)
        illuminant = ops.power(ops.mean(ops.power(unit, p), axis=(1, 2), keepdims=True), 1.0 / p)
        norm = ops.sqrt(ops.sum(ops.square(illuminant), axis=-1, keepdims=True))
        # An all-black image (norm 0) and a channel with no light (e_c 0) keep gain 1, as in images.py.
        illuminant = ops.where(norm > 0.0, illuminant / ops.maximum(norm, 1e-12) * 3.0**0.5, 0.0)
        gain = 1.0 / ops.where(illuminant > 0.0, illuminant, 1.0)
        return ops.clip(x * gain, 0.0, 255.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "method": self.method, "power": self.power}


def input_color_constancy(method: str, power: float) -> str:
    """What model.json records about the in-model correction: 'none', 'gray_world' or 'shades_of_gray (p=6)'."""
    return f"{method} (p={power:g})" if method == "shades_of_gray" else method


def model_input(inputs: Any, mode: str, color_constancy: str = "none", power: float = 6.0) -> Any:
    """The shared start of every deep model: optional colour constancy, then ``Preprocess(mode)``."""
    x = inputs
    if color_constancy != "none":
        x = ColorConstancy(color_constancy, power, name="color_constancy")(x)
    return Preprocess(mode, name="preprocess")(x)


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
