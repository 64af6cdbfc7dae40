"""The deep models on tiny shapes: tf.data pipeline, CNN and transfer training, weights handling."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import lesion_image
from melanoma.config import AugmentParams, CnnParams, TrainParams, TransferParams
from melanoma.errors import DataError
from melanoma.metrics import safe_auc
from melanoma.models.cnn import build_cnn, fit_cnn
from melanoma.models.deep.classifier import KerasClassifier
from melanoma.models.deep.data import augment_batch, class_weights, make_dataset
from melanoma.models.deep.loop import LoopSettings
from melanoma.models.transfer import build_backbone, fit_transfer, resolve_weights

SIZE = 32
STRATEGY = tf.distribute.get_strategy()
FAST = LoopSettings.from_params(
    TrainParams(
        epochs=4, batch_size=16, early_stopping_patience=4, lr_schedule="constant", learning_rate=3e-3
    ),
    seed=0,
)


def easy_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    x = np.stack([np.asarray(lesion_image(rng, bool(v), SIZE, SIZE)) for v in y])
    return x, y


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, ...]:
    x_tr, y_tr = easy_set(240, 0)
    x_va, y_va = easy_set(60, 1)
    return x_tr, y_tr, x_va, y_va


def test_dataset_batches_floats_in_range_and_keeps_eval_order() -> None:
    x, y = easy_set(20, 2)
    ds = make_dataset(x, y, 8, training=False, seed=0)
    xb, yb = next(iter(ds))
    assert xb.dtype == tf.float32 and xb.shape == (8, SIZE, SIZE, 3)
    assert np.array_equal(xb.numpy(), x[:8].astype(np.float32)) and np.array_equal(yb.numpy(), y[:8])


def test_augmentation_is_seeded_and_stays_in_range() -> None:
    x = tf.convert_to_tensor(easy_set(8, 3)[0], tf.float32)
    params = AugmentParams(brightness=0.1, contrast=0.1, saturation=0.1)  # every op on
    a = augment_batch(x, tf.constant([1, 2], tf.int64), params)
    b = augment_batch(x, tf.constant([1, 2], tf.int64), params)
    c = augment_batch(x, tf.constant([1, 3], tf.int64), params)
    assert np.array_equal(a.numpy(), b.numpy()) and not np.array_equal(a.numpy(), c.numpy())
    assert a.shape == x.shape and float(tf.reduce_min(a)) >= 0 and float(tf.reduce_max(a)) <= 255
    off = augment_batch(x, tf.constant([1, 2], tf.int64), AugmentParams(False, False, 0, 0, 0, 0))
    assert np.array_equal(off.numpy(), x.numpy())


def _symmetry_of(out: np.ndarray, original: np.ndarray) -> list[int]:
    """Which of the 8 symmetries of the square (np.rot90 k times, then mirrored if k >= 4) gives ``out``."""
    forms = [np.rot90(original, k % 4, axes=(0, 1)) for k in range(8)]
    forms = [f[:, ::-1] if k >= 4 else f for k, f in enumerate(forms)]
    return [k for k, f in enumerate(forms) if np.array_equal(f, out)]


@pytest.mark.parametrize(
    ("flip", "rotate90", "allowed"),
    [(True, True, set(range(8))), (True, False, {0, 2, 4, 6}), (False, True, {0, 1, 2, 3})],
)
def test_each_image_gets_one_symmetry_drawn_from_the_allowed_ones(flip, rotate90, allowed) -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (200, 6, 6, 3), dtype=np.uint8)  # random pixels: every symmetry is distinct
    params = AugmentParams(flip=flip, rotate90=rotate90, zoom=0.0)
    out = augment_batch(tf.constant(x), tf.constant([7, 0], tf.int64), params).numpy()
    assert out.dtype == np.float32
    drawn = [_symmetry_of(o.astype(np.uint8), i) for o, i in zip(out, x, strict=True)]
    assert all(len(d) == 1 for d in drawn)  # exactly one transform, pixels moved and unchanged
    counts = np.bincount([d[0] for d in drawn], minlength=8)
    assert set(np.flatnonzero(counts)) == allowed  # all allowed ones occur, no other
    assert counts[sorted(allowed)].min() > 200 / len(allowed) / 2  # roughly uniform


def test_oversampling_balances_classes_and_weights_are_inverse_frequency() -> None:
    x, y = easy_set(90, 4)  # one third positive
    ds = make_dataset(x, y, 30, training=True, seed=0, balance="oversample")
    labels = np.concatenate([yb.numpy() for _, yb in ds.take(20)])
    assert abs(labels.mean() - 0.5) < 0.06
    w = class_weights(y)
    assert w[1] == pytest.approx(2 * w[0]) and (
        w[0] * (y == 0).sum() + w[1] * (y == 1).sum()
    ) == pytest.approx(90)


def test_cnn_widths_and_depth_come_from_params() -> None:
    small = build_cnn(SIZE, CnnParams(filters=(4, 8), convs_per_block=1))
    big = build_cnn(SIZE, CnnParams(filters=(8, 16, 32), convs_per_block=2))
    convs = [layer for layer in big.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 8, 16, 16, 32, 32]
    assert small.count_params() < big.count_params()


def test_cnn_trains_beats_chance_and_round_trips(data, tmp_path: Path) -> None:
    x_tr, y_tr, x_va, y_va = data
    epochs: list[int] = []
    model, info = fit_cnn(
        x_tr, y_tr, x_va, y_va, CnnParams(filters=(8, 16), dense=16), FAST,
        image_size=SIZE, fit="crop", strategy=STRATEGY, on_epoch=lambda m, step: epochs.append(step),
    )  # fmt: skip
    assert safe_auc(y_va, model.predict_proba(x_va)) > 0.75
    assert epochs == list(range(info["epochs_run"])) and info["history"][0]["phase"] == "train"
    model.save(tmp_path)
    again = KerasClassifier.load(tmp_path, SIZE, "crop")
    assert np.allclose(again.predict_proba(x_va), model.predict_proba(x_va), atol=1e-6)


def test_transfer_random_init_is_recorded_and_beats_chance(data, caplog: pytest.LogCaptureFixture) -> None:
    x_tr, y_tr, x_va, y_va = data
    params = TransferParams(backbone="vgg16", weights="imagenet", head_units=16, head_epochs=15)
    with caplog.at_level(logging.WARNING):
        model, info = fit_transfer(
            x_tr, y_tr, x_va, y_va, params, FAST, image_size=SIZE, fit="crop",
            keras_home=Path("/nonexistent-keras-home"), strategy=STRATEGY,
        )  # fmt: skip
    assert info["weights"] == "random-init" and "not in the Keras cache" in info["weights_note"]
    assert "random initialisation" in caplog.text
    assert {r["phase"] for r in info["history"]} == {"head"}
    assert safe_auc(y_va, model.predict_proba(x_va)) > 0.7


def test_transfer_fine_tunes_top_layers(data) -> None:
    x_tr, y_tr, x_va, y_va = data
    params = TransferParams(
        backbone="vgg16",
        weights="random",
        head_units=8,
        head_epochs=2,
        fine_tune_layers=2,
        fine_tune_epochs=1,
    )
    _, info = fit_transfer(
        x_tr[:64], y_tr[:64], x_va, y_va, params, FAST, image_size=SIZE, fit="crop",
        keras_home=Path("/nonexistent"), strategy=STRATEGY,
    )  # fmt: skip
    assert info["fine_tuned_layers"] == 2 and info["history"][-1]["phase"] == "fine_tune"


def test_weights_files_missing_corrupt_and_valid(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        resolve_weights(str(tmp_path / "nope.weights.h5"), "vgg16", tmp_path, False)
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"definitely not HDF5")
    with pytest.raises(DataError, match="cannot load"):
        build_backbone("vgg16", SIZE, resolve_weights(str(corrupt), "vgg16", tmp_path, False))

    source = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg"
    )
    good = tmp_path / "vgg16.weights.h5"
    source.save_weights(good)
    net, choice = build_backbone("vgg16", SIZE, resolve_weights(str(good), "vgg16", tmp_path, False))
    assert choice.recorded == f"file:{good}"
    assert all(np.array_equal(a, b) for a, b in zip(net.get_weights(), source.get_weights(), strict=True))


def test_imagenet_in_the_keras_cache_is_used_without_download(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"x")
    assert resolve_weights("imagenet", "vgg16", tmp_path, False).recorded == "imagenet"
    assert resolve_weights("imagenet", "mobilenet_v2", tmp_path, False).recorded == "random-init"
    assert resolve_weights("random", "vgg16", tmp_path, True).recorded == "random-init"


def test_input_size_mismatch_is_a_clear_error(data) -> None:
    x_tr, y_tr, x_va, y_va = data
    with pytest.raises(DataError, match="input_size"):
        fit_transfer(
            x_tr, y_tr, x_va, y_va, TransferParams(input_size=64), FAST, image_size=SIZE, fit="crop",
            keras_home=Path("/x"), strategy=STRATEGY,
        )  # fmt: skip
