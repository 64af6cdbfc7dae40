"""The compact CNN for 100x100 input: conv blocks with batch norm, global pooling, dropout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from melanoma.config import CnnParams, TrainParams
from melanoma.models.keras_model import KerasClassifier, fit_loop
from melanoma.models.layers import Preprocess


def build_cnn(image_size: int, params: CnnParams) -> keras.Model:
    """Blocks of ``convs_per_block`` 3x3 convs (BN + ReLU) then max-pooling, widths from params."""
    reg = keras.regularizers.L2(params.weight_decay) if params.weight_decay > 0 else None
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess("unit")(inputs)
    for width in params.filters:
        for _ in range(params.convs_per_block):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_regularizer=reg)(x)
            x = keras.layers.BatchNormalization(momentum=0.9)(x)  # small data: converge stats fast
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(params.dropout)(x)
    x = keras.layers.Dense(params.dense, activation="relu", kernel_regularizer=reg)(x)
    x = keras.layers.Dropout(params.dropout)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_melanoma")(x)
    return keras.Model(inputs, outputs, name="melanoma_cnn")


def fit_cnn(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: CnnParams,
    train: TrainParams,
    *,
    image_size: int,
    fit: str,
    seed: int,
    strategy: tf.distribute.Strategy,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
) -> tuple[KerasClassifier, dict[str, Any]]:
    """Train the CNN; return the model and what to record (history, best epoch, size)."""
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = build_cnn(image_size, params)
    history = fit_loop(
        model, x_train, y_train, x_val, y_val, train,
        epochs=train.epochs, lr=train.learning_rate, seed=seed, phase="train", strategy=strategy, on_epoch=on_epoch,
    )  # fmt: skip
    best = max(history, key=lambda r: r.get("val_auc", -1.0)) if history else {}
    info = {
        "history": history,
        "best_epoch": best.get("epoch"),
        "epochs_run": len(history),
        "n_params": int(model.count_params()),
    }
    return KerasClassifier(model=model, image_size=image_size, fit=fit), info
