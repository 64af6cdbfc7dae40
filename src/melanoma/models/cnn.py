"""The compact CNN for 100x100 input: conv blocks with batch norm, global pooling, dropout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from melanoma.config import CnnParams
from melanoma.models.deep.layers import Preprocess
from melanoma.models.deep.loop import KerasClassifier, LoopSettings, fit_loop, seed_everything


def build_cnn(image_size: int, params: CnnParams) -> keras.Model:
    """Blocks of ``convs_per_block`` 3x3 convs (BN + ReLU) then max-pooling, widths from params.

    Every layer is named: Keras' automatic names count up within a process, and the saved config
    must not depend on what the process built before.
    """
    reg = keras.regularizers.L2(params.weight_decay) if params.weight_decay > 0 else None
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess("unit", name="preprocess")(inputs)
    for b, width in enumerate(params.filters, start=1):
        for c in range(1, params.convs_per_block + 1):
            x = keras.layers.Conv2D(
                width, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"block{b}_conv{c}"
            )(x)
            # momentum 0.9: small data, converge the statistics fast
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{b}_bn{c}")(x)
            x = keras.layers.ReLU(name=f"block{b}_relu{c}")(x)
        x = keras.layers.MaxPooling2D(name=f"block{b}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(params.dropout, name="dropout1")(x)
    x = keras.layers.Dense(params.dense, activation="relu", kernel_regularizer=reg, name="dense")(x)
    x = keras.layers.Dropout(params.dropout, name="dropout2")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_melanoma")(x)
    return keras.Model(inputs, outputs, name="melanoma_cnn")


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
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
) -> tuple[KerasClassifier, dict[str, Any]]:
    """Train the CNN; return the model and what to record (history, best epoch, size, class balance)."""
    seed_everything(loop.seed, loop.deterministic)
    with strategy.scope():
        model = build_cnn(image_size, params)
    history = fit_loop(
        model, x_train, y_train, x_val, y_val, loop, strategy=strategy, phase="train", on_epoch=on_epoch
    )
    best = max(history, key=lambda r: r.get("val_auc", -1.0)) if history else {}
    info = {
        "history": history,
        "best_epoch": best.get("epoch"),
        "epochs_run": len(history),
        "n_params": int(model.count_params()),
        **loop.applied(y_train),
    }
    return KerasClassifier(model=model, image_size=image_size, fit=fit), info
