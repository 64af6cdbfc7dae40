"""The residual CNN (``cnn.architecture: residual``) on tiny shapes: structure from params, training,
saving and loading, Grad-CAM; and the plain CNN left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import lesion_image
from melanoma.config import AugmentParams, CnnParams, TrainParams
from melanoma.metrics import safe_auc
from melanoma.models.cnn import build_cnn, fit_cnn
from melanoma.models.deep.classifier import KerasClassifier
from melanoma.models.deep.loop import LoopSettings
from melanoma.serve.explain import grad_cam_explainer

SIZE = 24
STRATEGY = tf.distribute.get_strategy()


def residual(**changes: object) -> CnnParams:
    return CnnParams(**{"architecture": "residual", "filters": (4, 8), "dense": 8, **changes})


def tiny_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    return np.stack([np.asarray(lesion_image(rng, bool(v), SIZE, SIZE)) for v in y]), y


def convs(model: keras.Model) -> list[keras.layers.Conv2D]:
    return [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]


def test_stages_blocks_widths_and_strides_come_from_params() -> None:
    model = build_cnn(SIZE, residual(filters=(4, 8, 16), blocks_per_stage=2))
    assert model.name == "melanoma_resnet"
    main = [c for c in convs(model) if not c.name.endswith("_shortcut")]
    # stem + 3 stages x 2 blocks x 2 convs, widths per stage
    assert [c.filters for c in main] == [4] + [4] * 4 + [8] * 4 + [16] * 4
    strided = [c.name for c in convs(model) if c.strides == (2, 2)]
    assert sorted(strided) == [
        "stage2_block1_conv1",
        "stage2_block1_shortcut",
        "stage3_block1_conv1",
        "stage3_block1_shortcut",
    ]
    # A projection exactly where width or stride changes (stage 1 keeps the stem's width: identity).
    shortcuts = sorted(c.name for c in convs(model) if c.name.endswith("_shortcut"))
    assert shortcuts == ["stage2_block1_shortcut", "stage3_block1_shortcut"]
    assert all(c.kernel_size == (1, 1) for c in convs(model) if c.name.endswith("_shortcut"))
    assert len([la for la in model.layers if isinstance(la, keras.layers.Add)]) == 6
    assert model.get_layer("post_relu").output.shape == (
        None,
        SIZE // 4,
        SIZE // 4,
        16,
    )  # two stride-2 stages
    assert isinstance(model.get_layer("pool"), keras.layers.GlobalAveragePooling2D)
    assert model.get_layer("dense").units == 8 and model.output.shape == (None, 1)
    # Every conv is followed by BN (directly, or after the sum): no conv bias.
    assert not any(c.use_bias for c in convs(model))


def test_depth_adds_exactly_the_blocks_parameters() -> None:
    one = build_cnn(SIZE, residual(blocks_per_stage=1))
    two = build_cnn(SIZE, residual(blocks_per_stage=2))
    wide = build_cnn(SIZE, residual(filters=(8, 16), blocks_per_stage=1))
    # A second identity block per stage: two 3x3 convs (w*w*9 each, no bias) and two BNs (4w each).
    extra = sum(2 * (w * w * 9) + 2 * 4 * w for w in (4, 8))
    assert two.count_params() - one.count_params() == extra
    assert len(two.layers) > len(one.layers) and wide.count_params() > one.count_params()


def test_saved_config_does_not_depend_on_what_was_built_before() -> None:
    first = json.dumps(build_cnn(SIZE, residual()).get_config(), sort_keys=True)
    build_cnn(SIZE, CnnParams(filters=(4,)))  # anything in between: automatic names would count on
    assert json.dumps(build_cnn(SIZE, residual()).get_config(), sort_keys=True) == first


def test_plain_architecture_is_unchanged() -> None:
    model = build_cnn(SIZE, CnnParams(filters=(4, 8), convs_per_block=2, blocks_per_stage=3))
    assert model.name == "melanoma_cnn"  # blocks_per_stage is ignored by the plain CNN
    assert [c.name for c in convs(model)] == ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2"]
    assert not any(isinstance(la, keras.layers.Add) for la in model.layers)
    assert [la.name for la in model.layers[-5:]] == ["pool", "dropout1", "dense", "dropout2", "p_melanoma"]


def test_residual_cnn_trains_with_mixing_and_round_trips(tmp_path: Path) -> None:
    x, y = tiny_set(96, 0)
    xv, yv = tiny_set(36, 1)
    train = TrainParams(
        epochs=1, batch_size=16, lr_schedule="constant", learning_rate=3e-3, early_stopping_start=0,
        augment=AugmentParams(mixup=0.4, cutmix=1.0),
    )  # fmt: skip
    model, info = fit_cnn(
        x, y, xv, yv, residual(), LoopSettings.from_params(train, seed=0),
        image_size=SIZE, fit="crop", strategy=STRATEGY,
    )  # fmt: skip
    row = info["history"][0]
    assert info["n_params"] == build_cnn(SIZE, residual()).count_params()
    assert all(np.isfinite(row[k]) for k in ("loss", "auc", "val_auc"))
    assert 0 <= row["auc"] <= 1
    # Soft targets count by their class shares: every sample is split between the two tallies.
    assert row["seen_pos"] + row["seen_neg"] == pytest.approx(len(y), rel=1e-5)
    p = model.predict_proba(xv)
    assert p.shape == (len(yv),) and np.all((p >= 0) & (p <= 1)) and np.isfinite(safe_auc(yv, p))
    model.save(tmp_path)
    again = KerasClassifier.load(tmp_path, SIZE, "crop")
    assert again.model.name == "melanoma_resnet"
    assert np.array_equal(again.predict_proba(xv), p)


def test_grad_cam_splits_the_residual_cnn_at_its_last_activation() -> None:
    keras.utils.set_random_seed(0)
    model = build_cnn(SIZE, residual())
    out = grad_cam_explainer(model)(tiny_set(3, 2)[0][0])
    assert out["layer"] == "post_relu" and out["kind"] == "grad-cam"
