"""The from-scratch CNNs for 100x100 input, chosen by ``cnn.architecture``:

* ``plain``: VGG-style blocks of 3x3 convs (BN + ReLU) and max-pooling;
* ``residual``: a pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual
  Networks"): a stem conv, one stage of ``blocks_per_stage`` residual blocks per ``filters`` entry
  (stride 2 at the start of every stage after the first), a final BN + ReLU.

Both end in global average pooling, dropout, a dense layer, dropout and a sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from melanoma.config import CnnParams
from melanoma.models.deep.classifier import KerasClassifier
from melanoma.models.deep.layers import input_color_constancy, model_input
from melanoma.models.deep.loop import LoopSettings, fit_loop, seed_everything

ARCHITECTURES = ("plain", "residual")


def build_cnn(image_size: int, params: CnnParams, color_power: float = 6.0) -> keras.Model:
    """The CNN that ``params.architecture`` names, widths and depth from params; its first layer
    corrects colours when ``params.color_constancy`` says so (Minkowski p ``color_power``).

    Every layer is named: Keras' automatic names count up within a process, and the saved config
    must not depend on what the process built before.
    """
    if params.architecture == "residual":
        return build_residual_cnn(image_size, params, color_power)
    if params.architecture != "plain":
        raise ValueError(
            f"cnn.architecture: {params.architecture!r} is not one of {', '.join(ARCHITECTURES)}"
        )
    return build_plain_cnn(image_size, params, color_power)


def build_plain_cnn(image_size: int, params: CnnParams, color_power: float = 6.0) -> keras.Model:
    """Blocks of ``convs_per_block`` 3x3 convs (BN + ReLU) then max-pooling, one per ``filters`` entry."""
    reg = keras.regularizers.L2(params.weight_decay) if params.weight_decay > 0 else None
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = model_input(inputs, "unit", params.color_constancy, color_power)
    for b, width in enumerate(params.filters, start=1):
        for c in range(1, params.convs_per_block + 1):
            x = keras.layers.Conv2D(
                width, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"block{b}_conv{c}"
            )(x)
            # momentum 0.9: small data, converge the statistics fast
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{b}_bn{c}")(x)
            x = keras.layers.ReLU(name=f"block{b}_relu{c}")(x)
        x = keras.layers.MaxPooling2D(name=f"block{b}_pool")(x)
    return keras.Model(inputs, _head(x, params, reg), name="melanoma_cnn")


def build_residual_cnn(image_size: int, params: CnnParams, color_power: float = 6.0) -> keras.Model:
    """Stem conv (3x3, ``filters[0]``, BN, ReLU), one stage of ``blocks_per_stage`` residual blocks
    per ``filters`` entry, a final BN + ReLU, then the same head as the plain CNN.

    Pre-activation blocks (BN, ReLU, conv, twice; see ``_residual_block``): the sum is never passed
    through a ReLU, so every block adds to a clean identity path; He et al. found this easier to
    optimise and less prone to overfitting than post-activation (not measured here). Downsampling is a stride-2 first conv in every stage after
    the first (a learned downsampling, cheaper than a full-resolution conv followed by max-pooling).
    """
    reg = keras.regularizers.L2(params.weight_decay) if params.weight_decay > 0 else None
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = model_input(inputs, "unit", params.color_constancy, color_power)
    x = _conv(params.filters[0], 3, 1, reg, "stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for s, width in enumerate(params.filters, start=1):
        for b in range(1, params.blocks_per_stage + 1):
            stride = 2 if s > 1 and b == 1 else 1
            # The stem's BN + ReLU is the very first block's pre-activation: not applied twice.
            x = _residual_block(x, width, stride, reg, f"stage{s}_block{b}", preactivate=(s, b) != (1, 1))
    # Pre-activation blocks leave their sum un-normalised: one BN + ReLU before pooling.
    x = _bn("post_bn")(x)
    x = keras.layers.ReLU(name="post_relu")(x)
    return keras.Model(inputs, _head(x, params, reg), name="melanoma_resnet")


def _conv(width: int, kernel: int, stride: int, reg: Any, name: str) -> keras.layers.Conv2D:
    # No bias: a batch norm follows every conv (directly, or after the residual sum).
    return keras.layers.Conv2D(
        width, kernel, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg, name=name
    )


def _bn(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(momentum=0.9, name=name)  # small data: converge fast


def _residual_block(x: Any, width: int, stride: int, reg: Any, name: str, *, preactivate: bool) -> Any:
    """``x + F(x)`` with F = BN, ReLU, 3x3 conv (``stride``), BN, ReLU, 3x3 conv; the shortcut is a
    1x1 conv (``stride``) of the pre-activated input where width or stride changes, else ``x``."""
    act = x
    if preactivate:
        act = _bn(f"{name}_bn1")(x)
        act = keras.layers.ReLU(name=f"{name}_relu1")(act)
    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = _conv(width, 1, stride, reg, f"{name}_shortcut")(act)
    y = _conv(width, 3, stride, reg, f"{name}_conv1")(act)
    y = _bn(f"{name}_bn2")(y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(width, 3, 1, reg, f"{name}_conv2")(y)
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def _head(x: Any, params: CnnParams, reg: Any) -> Any:
    """Global average pooling, dropout, dense (ReLU), dropout, sigmoid: P(melanoma)."""
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(params.dropout, name="dropout1")(x)
    x = keras.layers.Dense(params.dense, activation="relu", kernel_regularizer=reg, name="dense")(x)
    x = keras.layers.Dropout(params.dropout, name="dropout2")(x)
    return keras.layers.Dense(1, activation="sigmoid", name="p_melanoma")(x)


def fit_cnn(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: CnnParams,
    loop: LoopSettings,
    *,
    image_size: int,
    fit: str,
    strategy: tf.distribute.Strategy,
    color_power: float = 6.0,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
) -> tuple[KerasClassifier, dict[str, Any]]:
    """Train the CNN; return the model and what to record (history, best epoch, size, class balance,
    the in-model colour constancy)."""
    seed_everything(loop.seed, loop.deterministic)
    with strategy.scope():
        model = build_cnn(image_size, params, color_power)
    history = fit_loop(
        model, x_train, y_train, x_val, y_val, loop, strategy=strategy, phase="train", on_epoch=on_epoch
    )
    best = max(history, key=lambda r: r.get("val_auc", -1.0)) if history else {}
    info = {
        "history": history,
        "best_epoch": best.get("epoch"),
        "epochs_run": len(history),
        "n_params": int(model.count_params()),
        "input_color_constancy": input_color_constancy(params.color_constancy, color_power),
        **loop.applied(y_train),
    }
    return KerasClassifier(model=model, image_size=image_size, fit=fit), info
