"""What the deep models share: the saved-model wrapper, distribution strategies and the fit loop
(early stopping on validation AUC with the best epoch restored, LR schedule, per-epoch logging)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from melanoma.config import TrainParams
from melanoma.data import class_weights, make_dataset
from melanoma.models import layers  # noqa: F401 - registers the custom layers for loading

log = logging.getLogger(__name__)
KERAS_FILE = "model.keras"
PREDICT_BATCH = 128


@dataclass
class KerasClassifier:
    """A Keras model mapping float pixels in [0, 255] (N, S, S, 3) to P(melanoma)."""

    model: keras.Model
    image_size: int
    fit: str = "crop"
    family: str = field(default="keras", init=False)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> float32 (N,)."""
        if len(images) == 0:
            return np.zeros(0, dtype=np.float32)
        out = []
        for i in range(0, len(images), PREDICT_BATCH):
            batch = tf.convert_to_tensor(np.asarray(images[i : i + PREDICT_BATCH]), dtype=tf.float32)
            out.append(np.asarray(self.model(batch, training=False)).reshape(-1))
        return np.concatenate(out).astype(np.float32)

    def save(self, out_dir: Path) -> None:
        """Write ``model.keras``."""
        self.model.save(Path(out_dir) / KERAS_FILE)

    @staticmethod
    def load(model_dir: Path, image_size: int, fit: str) -> KerasClassifier:
        """Read ``model.keras`` (safe mode: no arbitrary code)."""
        model = keras.saving.load_model(Path(model_dir) / KERAS_FILE, compile=False)
        return KerasClassifier(model=model, image_size=image_size, fit=fit)


def make_strategy(name: str, devices: tuple[str, ...] = ()) -> tf.distribute.Strategy:
    """TensorFlow's own engine for scaling: one device, all local devices, or many workers.

    ``multi_worker`` reads the cluster from the ``TF_CONFIG`` environment variable (TensorFlow's
    convention); it must be created before any other TensorFlow op runs.
    """
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) or None)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief (worker 0) writes outputs and logs; other workers train and discard."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


class EpochLogger(keras.callbacks.Callback):
    """Keeps one row per epoch and hands it to ``on_epoch`` (e.g. MLflow's log_metrics with step)."""

    def __init__(self, phase: str, on_epoch: Callable[[dict[str, float], int], None] | None, offset: int = 0):
        super().__init__()
        self.phase, self.on_epoch, self.offset = phase, on_epoch, offset
        self.rows: list[dict[str, Any]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        lr = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(lr.numpy() if hasattr(lr, "numpy") else lr)
        step = self.offset + epoch
        self.rows.append({"epoch": step, "phase": self.phase, **logs})
        if self.on_epoch is not None:
            self.on_epoch({k: v for k, v in logs.items() if math.isfinite(v)}, step)


def best_val_auc(patience: int, start: int = 0) -> keras.callbacks.EarlyStopping:
    """Stop when validation AUC stops improving and restore the best epoch's weights; ignore the first
    ``start`` epochs, whose validation AUC on a small, imbalanced set is mostly noise."""
    return keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=patience, restore_best_weights=True, start_from_epoch=start
    )


def compile_for(model: keras.Model, lr: float, schedule: str, total_steps: int) -> None:
    """Adam with the chosen schedule; binary cross-entropy; AUC as the tracked metric."""
    rate: Any = lr
    if schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(total_steps, 1), alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc", num_thresholds=400)],
    )


def fit_loop(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: TrainParams,
    *,
    epochs: int,
    lr: float,
    seed: int,
    phase: str,
    strategy: tf.distribute.Strategy,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
    epoch_offset: int = 0,
    augment: bool = True,
) -> list[dict[str, Any]]:
    """Train ``model`` on images with early stopping on val AUC; restore the best epoch's weights."""
    batch = params.batch_size * strategy.num_replicas_in_sync
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras 3's fit() cannot run under MultiWorkerMirroredStrategy (keras-team/keras#20585):
        # use TensorFlow's own distributed loop instead.
        return _multi_worker_loop(
            model, x_train, y_train, x_val, y_val, params,
            epochs=epochs, lr=lr, seed=seed, phase=phase, strategy=strategy, on_epoch=on_epoch,
            epoch_offset=epoch_offset, augment=augment, batch=batch,
        )  # fmt: skip
    train_ds = make_dataset(
        x_train, y_train, batch, training=True, seed=seed,
        augment=params.augment if augment else None,
        balance=params.class_balance, shuffle_buffer=params.shuffle_buffer,
    )  # fmt: skip
    val_ds = make_dataset(x_val, y_val, batch, training=False, seed=seed)
    steps = math.ceil(len(y_train) / batch)
    with strategy.scope():
        compile_for(model, lr, params.lr_schedule, steps * epochs)
    logger = EpochLogger(phase, on_epoch, epoch_offset)
    callbacks: list[keras.callbacks.Callback] = [
        best_val_auc(params.early_stopping_patience, min(params.early_stopping_start, epochs - 1)),
        logger,
    ]
    if params.lr_schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_auc", mode="max", factor=0.5, patience=2, min_lr=lr / 100
            )
        )
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        steps_per_epoch=steps if params.class_balance == "oversample" else None,
        class_weight=class_weights(y_train) if params.class_balance == "class_weight" else None,
        callbacks=callbacks,
        verbose=2,
    )
    return logger.rows


def _multi_worker_loop(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: TrainParams,
    *,
    epochs: int,
    lr: float,
    seed: int,
    phase: str,
    strategy: tf.distribute.Strategy,
    on_epoch: Callable[[dict[str, float], int], None] | None,
    epoch_offset: int,
    augment: bool,
    batch: int,
) -> list[dict[str, Any]]:
    """A custom synchronous data-parallel loop (strategy.run + all-reduce of gradients).

    Same contract as the fit() path: class weights, LR schedule, early stopping on validation
    AUC with the best weights restored. Every worker evaluates the full validation set, so all
    take the same early-stopping decision.
    """
    from sklearn.metrics import roc_auc_score

    ds = make_dataset(
        x_train, y_train, batch, training=True, seed=seed, augment=params.augment if augment else None,
        balance="none", shuffle_buffer=params.shuffle_buffer,
    ).unbatch().batch(batch, drop_remainder=True)  # fmt: skip
    steps = max(len(y_train) // batch, 1)
    weights = class_weights(y_train) if params.class_balance != "none" else {0: 1.0, 1: 1.0}
    with strategy.scope():
        rate: Any = lr
        if params.lr_schedule == "cosine":
            rate = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps * epochs, alpha=0.05)
        optimizer = keras.optimizers.Adam(learning_rate=rate)
        loss_fn = keras.losses.BinaryCrossentropy(reduction="none")
    dist = strategy.experimental_distribute_dataset(ds)

    def replica_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            w = tf.where(y > 0.5, weights[1], weights[0])
            per_example = loss_fn(tf.reshape(y, (-1, 1)), p) * w
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch)
            if model.losses:
                loss += tf.add_n(model.losses) / strategy.num_replicas_in_sync
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
        return loss

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(x, y)), axis=None)

    rows: list[dict[str, Any]] = []
    best_auc, best_weights, waited = -1.0, model.get_weights(), 0
    for epoch in range(epochs):
        total, n = 0.0, 0
        for x, y in dist:
            total += float(train_step(x, y))
            n += 1
        p_val = np.concatenate(
            [np.asarray(model(tf.convert_to_tensor(x_val[i : i + 256], tf.float32), training=False)).reshape(-1)
             for i in range(0, len(x_val), 256)]
        )  # fmt: skip
        val_auc = float(roc_auc_score(y_val, p_val)) if len(np.unique(y_val)) == 2 else float("nan")
        current_lr = optimizer.learning_rate
        logs = {"loss": total / max(n, 1), "val_auc": val_auc,
                "learning_rate": float(current_lr.numpy() if hasattr(current_lr, "numpy") else current_lr)}  # fmt: skip
        rows.append({"epoch": epoch_offset + epoch, "phase": phase, **logs})
        if on_epoch is not None:
            on_epoch({k: v for k, v in logs.items() if math.isfinite(v)}, epoch_offset + epoch)
        if epoch < min(params.early_stopping_start, epochs - 1):
            continue  # as EarlyStopping(start_from_epoch): early validation AUC is noise
        if val_auc > best_auc:
            best_auc, best_weights, waited = val_auc, model.get_weights(), 0
        else:
            waited += 1
            if waited >= params.early_stopping_patience:
                break
    model.set_weights(best_weights)
    return rows
