"""How the deep models train: distribution strategies, seeds, and ONE fit loop contract
(``LoopSettings``): early stopping on validation AUC with the best epoch restored, LR schedule,
class balance, augmentation, per-epoch logging. The trained model's wrapper, inference and saved
file are ``classifier``'s.

Every fit path (the CNN, the transfer head on cached features, fine-tuning, and the custom loop
used under MultiWorkerMirroredStrategy) takes a ``LoopSettings`` and applies
``train.class_balance`` the same way:

* ``class_weight``: the natural stream, each sample's loss weighted by inverse class frequency;
* ``oversample``: both classes drawn equally often (an infinite stream, ``ceil(n / batch)`` steps
  an epoch), unweighted loss;
* ``none``: the natural stream, unweighted loss.

Each epoch's row carries what the loop actually fed the loss: ``seen_pos``/``seen_neg`` (samples of
each class) and ``weight_pos``/``weight_neg`` (their summed loss weights).

The Keras fit() path and the custom distributed loop implement the same contract and stay side by
side here, so that a change to one is seen next to the other.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from melanoma.config import AugmentParams, TrainParams
from melanoma.errors import ConfigError
from melanoma.models.deep.classifier import predict_batches
from melanoma.models.deep.data import BALANCE_MODES, class_weights, make_dataset
from melanoma.models.deep.layers import ClassTally, SoftAUC

log = logging.getLogger(__name__)
SCHEDULES = ("cosine", "plateau", "constant")
TALLIES = ("seen_pos", "seen_neg", "weight_pos", "weight_neg")


@dataclass(frozen=True)
class LoopSettings:
    """Everything a fit path needs besides the data and the model; built once from ``TrainParams``.

    A phase that trains differently (the transfer head: its own epochs and LR, no augmentation)
    derives its settings with ``replace``; the rest (class balance, seed, ...) stays the same.
    """

    epochs: int
    batch_size: int  # per replica; the global batch is this times the replicas in sync
    learning_rate: float
    lr_schedule: str = "cosine"
    early_stopping_patience: int = 10
    early_stopping_start: int = 0  # epochs before early stopping may act
    class_balance: str = "class_weight"
    augment: AugmentParams | None = None  # None: no augmentation
    seed: int = 0
    shuffle_buffer: int = 4096
    deterministic: bool = True  # TensorFlow op determinism (byte-reproducible training on CPU)

    def __post_init__(self) -> None:
        if self.class_balance not in BALANCE_MODES:
            raise ConfigError(
                f"train.class_balance: {self.class_balance!r} is not one of {', '.join(BALANCE_MODES)}"
            )
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"train.lr_schedule: {self.lr_schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs ({self.epochs}) and batch size ({self.batch_size}) must be >= 1")

    @classmethod
    def from_params(cls, train: TrainParams, seed: int, *, deterministic: bool = True) -> LoopSettings:
        """The settings of the main training phase, from ``train.*`` and ``base.seed``."""
        return cls(
            epochs=train.epochs,
            batch_size=train.batch_size,
            learning_rate=train.learning_rate,
            lr_schedule=train.lr_schedule,
            early_stopping_patience=train.early_stopping_patience,
            early_stopping_start=train.early_stopping_start,
            class_balance=train.class_balance,
            augment=train.augment,
            seed=seed,
            shuffle_buffer=train.shuffle_buffer,
            deterministic=deterministic,
        )

    def replace(self, **changes: Any) -> LoopSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def sample_weights(self, y_train: np.ndarray) -> dict[int, float] | None:
        """The per-class loss weights the training stream attaches to each sample (``class_weight``
        mode), or None. They ride with the samples rather than Keras' ``class_weight``, which
        would round a mixup/cutmix soft target to one class; the stream mixes them instead."""
        return class_weights(np.asarray(y_train)) if self.class_balance == "class_weight" else None

    def applied(self, y_train: np.ndarray) -> dict[str, Any]:
        """What the loop applies for class balance, as recorded in model.json."""
        out: dict[str, Any] = {"class_balance": self.class_balance}
        if self.class_balance == "class_weight":
            w = class_weights(np.asarray(y_train))
            out["class_weights"] = {"0": w[0], "1": w[1]}
        return out


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Python, NumPy and TensorFlow seeds from ``base.seed``; op determinism if asked.

    Op determinism is process-wide and stays on: a stage trains one model per process.
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


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
        logs = {k: float(v) for k, v in (logs or {}).items() if k not in VAL_TALLIES}
        lr = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(lr.numpy() if hasattr(lr, "numpy") else lr)
        self.record(epoch, logs)

    def record(self, epoch: int, logs: dict[str, float]) -> None:
        """Keep the row and hand it on (the custom loop calls this directly)."""
        step = self.offset + epoch
        self.rows.append({"epoch": step, "phase": self.phase, **logs})
        if self.on_epoch is not None:
            self.on_epoch({k: v for k, v in logs.items() if math.isfinite(v)}, step)


VAL_TALLIES = frozenset(f"val_{t}" for t in TALLIES)  # constant (the validation set): not logged


def best_val_auc(patience: int, start: int = 0) -> keras.callbacks.EarlyStopping:
    """Stop when validation AUC stops improving and restore the best epoch's weights; ignore the first
    ``start`` epochs, whose validation AUC on a small, imbalanced set is mostly noise."""
    return keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=patience, restore_best_weights=True, start_from_epoch=start
    )


def learning_rate_for(lr: float, schedule: str, total_steps: int) -> Any:
    """The optimizer's learning rate: a cosine decay over the run, or a constant (``plateau`` lowers
    the constant from the loop when validation AUC stalls)."""
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(total_steps, 1), alpha=0.05)
    return lr


def tally_metrics() -> tuple[list[keras.metrics.Metric], list[keras.metrics.Metric]]:
    """The ``ClassTally`` records: samples of each class (plain metrics) and their summed loss
    weights (weighted metrics: Keras hands only those the class-weight sample weights)."""
    return [ClassTally(1), ClassTally(0)], [ClassTally(1, weighted=True), ClassTally(0, weighted=True)]


def compile_for(model: keras.Model, lr: float, schedule: str, total_steps: int) -> None:
    """Adam with the chosen schedule; binary cross-entropy; AUC as the tracked metric (plus the
    class tallies); both read soft targets of mixed batches by their class shares."""
    seen, weighted = tally_metrics()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate_for(lr, schedule, total_steps)),
        loss="binary_crossentropy",
        metrics=[SoftAUC(name="auc", num_thresholds=400), *seen],  # soft: mixup/cutmix targets
        weighted_metrics=weighted,
    )


# ReduceLROnPlateau's settings, shared by the fit() path and the custom loop.
PLATEAU_FACTOR, PLATEAU_PATIENCE, PLATEAU_FLOOR, PLATEAU_DELTA = 0.5, 2, 0.01, 1e-4


def steps_per_epoch(n: int, global_batch: int, loop: LoopSettings) -> int | None:
    """Steps of an epoch: oversampling streams forever, so an epoch is ``ceil(n / batch)`` steps."""
    return math.ceil(n / global_batch) if loop.class_balance == "oversample" else None


def fit_loop(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    loop: LoopSettings,
    *,
    strategy: tf.distribute.Strategy,
    phase: str = "train",
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
    epoch_offset: int = 0,
    verbose: int = 2,
) -> list[dict[str, Any]]:
    """Train ``model`` (on images, or on feature rows when ``loop.augment`` is None) with early
    stopping on val AUC; restore the best epoch's weights. Returns one row per epoch."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras 3's fit() cannot run under MultiWorkerMirroredStrategy (keras-team/keras#20585):
        # use TensorFlow's own distributed loop instead.
        return distributed_loop(
            model, x_train, y_train, x_val, y_val, loop,
            strategy=strategy, phase=phase, on_epoch=on_epoch, epoch_offset=epoch_offset,
        )  # fmt: skip
    batch = loop.batch_size * strategy.num_replicas_in_sync
    train_ds = make_dataset(
        x_train, y_train, batch, training=True, seed=loop.seed, augment=loop.augment,
        balance=loop.class_balance, shuffle_buffer=loop.shuffle_buffer,
        class_weight=loop.sample_weights(y_train),  # (x, y, w) batches: Keras' class_weight stays off
    )  # fmt: skip
    val_ds = make_dataset(x_val, y_val, batch, training=False, seed=loop.seed)
    steps = math.ceil(len(y_train) / batch)
    with strategy.scope():
        compile_for(model, loop.learning_rate, loop.lr_schedule, steps * loop.epochs)
    logger = EpochLogger(phase, on_epoch, epoch_offset)
    callbacks: list[keras.callbacks.Callback] = [
        best_val_auc(loop.early_stopping_patience, min(loop.early_stopping_start, loop.epochs - 1)),
        logger,
    ]
    if loop.lr_schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_auc", mode="max", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE,
                min_lr=loop.learning_rate * PLATEAU_FLOOR, min_delta=PLATEAU_DELTA,
            )
        )  # fmt: skip
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=loop.epochs,
        steps_per_epoch=steps_per_epoch(len(y_train), batch, loop),
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles, seeded
        verbose=verbose,
    )
    return logger.rows


def distributed_loop(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    loop: LoopSettings,
    *,
    strategy: tf.distribute.Strategy,
    phase: str = "train",
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
    epoch_offset: int = 0,
) -> list[dict[str, Any]]:
    """A custom synchronous data-parallel loop (strategy.run + all-reduce of gradients), for
    MultiWorkerMirroredStrategy; it runs under any strategy.

    Same contract as the fit() path: class balance, LR schedule, early stopping on validation AUC
    with the best weights restored. The training stream runs on across epochs in full global
    batches (``n // batch`` steps an epoch, at least one). Every worker evaluates the full
    validation set, so all take the same early-stopping decision.
    """
    from sklearn.metrics import roc_auc_score

    batch = loop.batch_size * strategy.num_replicas_in_sync
    ds = (
        make_dataset(
            x_train,
            y_train,
            batch,
            training=True,
            seed=loop.seed,
            augment=loop.augment,
            balance=loop.class_balance,
            shuffle_buffer=loop.shuffle_buffer,
            class_weight=loop.sample_weights(y_train) or {0: 1.0, 1: 1.0},  # always (x, y, w)
        )  # fmt: skip
        .repeat()
        .unbatch()
        .batch(batch, drop_remainder=True)
    )
    steps = max(len(y_train) // batch, 1)
    if loop.class_balance == "oversample":
        steps = math.ceil(len(y_train) / batch)
    with strategy.scope():
        optimizer = keras.optimizers.Adam(
            learning_rate=learning_rate_for(loop.learning_rate, loop.lr_schedule, steps * loop.epochs)
        )
        loss_fn = keras.losses.BinaryCrossentropy(reduction="none")
    batches = iter(strategy.experimental_distribute_dataset(ds))

    def replica_step(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        y, w = tf.reshape(y, (-1,)), tf.reshape(w, (-1,))
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            per_example = loss_fn(tf.reshape(y, (-1, 1)), p) * w
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch)
            if model.losses:
                loss += tf.add_n(model.losses) / strategy.num_replicas_in_sync
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
        pos = y  # a soft (mixed) target counts by its share of each class, as ClassTally
        tally = tf.stack([tf.reduce_sum(pos), tf.reduce_sum(1 - pos), tf.reduce_sum(pos * w), tf.reduce_sum((1 - pos) * w)])  # fmt: skip
        return loss, tally

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        loss, tally = strategy.run(replica_step, args=(x, y, w))
        sum_ = tf.distribute.ReduceOp.SUM
        return strategy.reduce(sum_, loss, axis=None), strategy.reduce(sum_, tally, axis=None)

    logger = EpochLogger(phase, on_epoch, epoch_offset)
    start = min(loop.early_stopping_start, loop.epochs - 1)
    best_auc, best_weights, waited = -math.inf, model.get_weights(), 0
    plateau_best, plateau_wait = -math.inf, 0
    for epoch in range(loop.epochs):
        total, seen = 0.0, np.zeros(4)
        for _ in range(steps):
            loss, tally = train_step(*next(batches))
            total += float(loss)
            seen += np.asarray(tally, dtype=np.float64)
        p_val = predict_batches(model, x_val)
        val_auc = float(roc_auc_score(y_val, p_val)) if len(np.unique(y_val)) == 2 else float("nan")
        current_lr = optimizer.learning_rate
        logs = {"loss": total / steps, **dict(zip(TALLIES, map(float, seen), strict=True)), "val_auc": val_auc,
                "learning_rate": float(current_lr.numpy() if hasattr(current_lr, "numpy") else current_lr)}  # fmt: skip
        logger.record(epoch, logs)
        if loop.lr_schedule == "plateau":  # as ReduceLROnPlateau in the fit() path
            if val_auc > plateau_best + PLATEAU_DELTA:
                plateau_best, plateau_wait = val_auc, 0
            else:
                plateau_wait += 1
                if plateau_wait >= PLATEAU_PATIENCE:
                    floor = loop.learning_rate * PLATEAU_FLOOR
                    optimizer.learning_rate.assign(max(float(current_lr.numpy()) * PLATEAU_FACTOR, floor))
                    plateau_wait = 0
        if epoch < start:
            continue  # as EarlyStopping(start_from_epoch): early validation AUC is noise
        if val_auc > best_auc:
            best_auc, best_weights, waited = val_auc, model.get_weights(), 0
        else:
            waited += 1
            if waited >= loop.early_stopping_patience:
                break
    model.set_weights(best_weights)
    return logger.rows
