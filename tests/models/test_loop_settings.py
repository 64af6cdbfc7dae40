"""One training-loop contract: ``LoopSettings`` built once from TrainParams, and ``train.class_balance``
meaning the same on every fit path (Keras fit for the CNN and fine-tuning, the transfer head on cached
features, the custom loop used under MultiWorkerMirroredStrategy).

Each path trains one epoch on a handful of tiny samples; the check reads what the loop actually fed
the loss (``seen_*``: samples of each class, ``weight_*``: their summed loss weights), not a flag.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import lesion_image
from melanoma.config import AugmentParams, CnnParams, TrainParams, TransferParams
from melanoma.errors import ConfigError
from melanoma.models.cnn import build_cnn, fit_cnn
from melanoma.models.deep.data import class_weights
from melanoma.models.deep.loop import TALLIES, LoopSettings, distributed_loop
from melanoma.models.transfer import build_head, fit_head, fit_transfer, head_settings

SIZE = 16
N = 96  # a third positive: 32 / 64
BATCH = 8
STRATEGY = tf.distribute.get_strategy()
MODES = ("class_weight", "oversample", "none")


def tiny_set(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    return np.stack([np.asarray(lesion_image(rng, bool(v), size, size)) for v in y]), y


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, ...]:
    x, y = tiny_set(N, SIZE, 0)
    xv, yv = tiny_set(24, SIZE, 1)
    return x, y, xv, yv


def loop_for(balance: str, **changes: object) -> LoopSettings:
    train = TrainParams(
        epochs=1, batch_size=BATCH, lr_schedule="constant", early_stopping_start=0, class_balance=balance
    )
    return LoopSettings.from_params(train, seed=0).replace(**changes)


def assert_applied(row: dict, balance: str, y: np.ndarray, drawn: int) -> None:
    """What one epoch fed the loss matches ``balance``."""
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    seen = (row["seen_pos"], row["seen_neg"])
    weight = (row["weight_pos"], row["weight_neg"])
    if balance == "oversample":
        # An epoch draws ceil(n / batch) batches from a stream of both classes equally often,
        # unweighted: about half positives where the data have a third.
        assert sum(seen) == drawn
        assert abs(seen[0] / drawn - 0.5) < 0.15, seen
        assert weight == pytest.approx(seen)
    elif balance == "class_weight":
        # Every sample once, each class's loss weighted by inverse frequency: equal totals.
        w = class_weights(y)
        assert seen == (n_pos, n_neg)
        assert weight == pytest.approx((n_pos * w[1], n_neg * w[0]))
        assert weight[0] == pytest.approx(weight[1])
    else:
        assert seen == (n_pos, n_neg) and weight == pytest.approx(seen)


def test_settings_come_from_train_params_once() -> None:
    train = TrainParams(
        epochs=7, batch_size=12, learning_rate=2e-3, lr_schedule="plateau", early_stopping_patience=3,
        early_stopping_start=2, class_balance="oversample", shuffle_buffer=99, augment=AugmentParams(zoom=0.2),
    )  # fmt: skip
    loop = LoopSettings.from_params(train, seed=5)
    assert (loop.epochs, loop.batch_size, loop.learning_rate, loop.lr_schedule) == (7, 12, 2e-3, "plateau")
    assert (loop.early_stopping_patience, loop.early_stopping_start) == (3, 2)
    assert (loop.class_balance, loop.shuffle_buffer, loop.seed, loop.augment) == (
        "oversample", 99, 5, AugmentParams(zoom=0.2),
    )  # fmt: skip
    with pytest.raises(AttributeError):
        loop.epochs = 3  # type: ignore[misc]  # frozen
    head = head_settings(loop, TransferParams(head_epochs=11, head_learning_rate=0.01))
    assert (head.epochs, head.learning_rate, head.augment, head.early_stopping_start) == (11, 0.01, None, 0)
    assert (head.class_balance, head.seed, head.batch_size) == ("oversample", 5, 12)  # the rest is shared


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="class_balance"):
        LoopSettings(epochs=1, batch_size=8, learning_rate=1e-3, class_balance="smote")
    with pytest.raises(ConfigError, match="lr_schedule"):
        LoopSettings(epochs=1, batch_size=8, learning_rate=1e-3, lr_schedule="step")


@pytest.mark.parametrize("balance", MODES)
def test_cnn_fit_path_applies_class_balance(data, balance: str) -> None:
    x, y, xv, yv = data
    model, info = fit_cnn(
        x, y, xv, yv, CnnParams(filters=(4,), dense=4), loop_for(balance),
        image_size=SIZE, fit="crop", strategy=STRATEGY,
    )  # fmt: skip
    assert info["class_balance"] == balance
    assert ("class_weights" in info) == (balance == "class_weight")
    assert_applied(info["history"][0], balance, y, drawn=-(-N // BATCH) * BATCH)


@pytest.mark.parametrize("balance", MODES)
def test_transfer_head_path_applies_class_balance(balance: str) -> None:
    rng = np.random.default_rng(2)
    y = (np.arange(N) % 3 == 0).astype(int)
    f = rng.normal(size=(N, 6)).astype(np.float32) + y[:, None]
    fv = rng.normal(size=(24, 6)).astype(np.float32) + (np.arange(24) % 2)[:, None]
    head = build_head(f, TransferParams(head_units=4))
    loop = head_settings(loop_for(balance), TransferParams(head_epochs=1))
    rows = fit_head(head, f, y, fv, np.arange(24) % 2, loop, strategy=STRATEGY)
    assert rows[0]["phase"] == "head"
    assert_applied(rows[0], balance, y, drawn=-(-N // BATCH) * BATCH)


@pytest.mark.parametrize("balance", MODES)
def test_distributed_loop_applies_class_balance(data, balance: str) -> None:
    # The MultiWorkerMirroredStrategy loop, run under the default strategy (one replica); the two
    # workers' version runs in tests/integration/test_strategies.py.
    x, y, xv, yv = data
    keras.utils.set_random_seed(0)
    model = build_cnn(SIZE, CnnParams(filters=(4,), dense=4))
    rows = distributed_loop(model, x, y, xv, yv, loop_for(balance), strategy=STRATEGY)
    # Full batches: oversampling draws ceil(n / batch) of them, the natural stream n // batch (N is a
    # multiple of BATCH, so the first epoch is exactly one pass).
    assert_applied(rows[0], balance, y, drawn=-(-N // BATCH) * BATCH)
    assert np.isfinite(rows[0]["loss"]) and "val_auc" in rows[0]


def test_distributed_loop_uses_the_shared_schedule(data) -> None:
    x, y, xv, yv = data
    keras.utils.set_random_seed(0)
    model = build_cnn(SIZE, CnnParams(filters=(4,), dense=4))
    loop = loop_for("none", epochs=3, lr_schedule="cosine", learning_rate=0.01, early_stopping_patience=5)
    rows = distributed_loop(model, x[:48], y[:48], xv, yv, loop, strategy=STRATEGY)
    rates = [r["learning_rate"] for r in rows]
    assert rates[0] > rates[1] > rates[2] >= 0.01 * 0.05  # cosine decay to alpha=0.05, as compile_for


def test_transfer_records_the_balance_of_both_phases(tmp_path: Path) -> None:
    x, y = tiny_set(48, 32, 3)
    xv, yv = tiny_set(16, 32, 4)
    params = TransferParams(
        weights="random", head_units=4, head_epochs=1, fine_tune_layers=1, fine_tune_epochs=1
    )
    _, info = fit_transfer(
        x, y, xv, yv, params, loop_for("oversample"), image_size=32, fit="crop",
        keras_home=tmp_path, strategy=STRATEGY,
    )  # fmt: skip
    assert info["class_balance"] == "oversample" and "class_weights" not in info
    head, tune = info["history"]
    assert (head["phase"], tune["phase"]) == ("head", "fine_tune")
    for row in (head, tune):
        assert_applied(row, "oversample", y, drawn=48)


def test_mixed_batches_keep_class_weighting_on_both_paths(data) -> None:
    # Mixup/cutmix: soft targets; each sample's class weight is mixed with the same lambda in the
    # stream, so the fit() path (sample weights from the stream, not Keras' class_weight, which
    # rounds soft targets) and the custom loop feed the loss the same class masses.
    x, y, xv, yv = data
    loop = loop_for("class_weight", augment=AugmentParams(mixup=0.4, cutmix=1.0))
    _, info = fit_cnn(
        x, y, xv, yv, CnnParams(filters=(4,), dense=4), loop, image_size=SIZE, fit="crop", strategy=STRATEGY
    )
    keras.utils.set_random_seed(0)
    rows = distributed_loop(
        build_cnn(SIZE, CnnParams(filters=(4,), dense=4)), x, y, xv, yv, loop, strategy=STRATEGY
    )
    fit_row, loop_row = info["history"][0], rows[0]
    assert [fit_row[t] for t in TALLIES] == pytest.approx([loop_row[t] for t in TALLIES], rel=1e-5)
    seen, weight = (fit_row["seen_pos"], fit_row["seen_neg"]), (fit_row["weight_pos"], fit_row["weight_neg"])
    assert sum(seen) == pytest.approx(N, rel=1e-5)  # a mixed sample is split between the classes
    assert seen[0] not in (32, 64)  # soft: shares, not whole samples
    assert 0.75 < weight[0] / weight[1] < 1.33  # balanced in expectation, as without mixing
    assert np.isfinite(fit_row["auc"]) and 0 <= fit_row["auc"] <= 1
