"""Colour constancy inside the deep models (cnn/transfer.color_constancy): the layer equals
``images.color_constancy``, travels with the saved model, and makes the model blind to a camera's cast."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import lesion_image
from melanoma.config import CnnParams, TrainParams, TransferParams
from melanoma.errors import ConfigError
from melanoma.images import color_constancy
from melanoma.models.cnn import build_cnn, fit_cnn
from melanoma.models.deep.classifier import KerasClassifier
from melanoma.models.deep.layers import ColorConstancy
from melanoma.models.deep.loop import LoopSettings
from melanoma.models.transfer import fit_transfer

SIZE = 32
CAST = np.array([0.9, 0.6, 0.4])  # a warm light: blue dimmed the most (no clipping after the rescale)


def images(n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(int)
    return np.stack([np.asarray(lesion_image(rng, bool(v), SIZE, SIZE)) for v in y]), y


def tinted(x: np.ndarray, power: float = 6.0) -> np.ndarray:
    """The same scenes under a coloured light of the same strength: each channel times CAST, then one
    factor per image that keeps the illuminant's norm (the correction keeps an image's brightness, so
    only the colour of the light can be taken away). Float: no rounding, the cast stays exact."""
    out = x * CAST
    light = lambda v: np.mean((v / 255.0) ** power, axis=(1, 2)) ** (1 / power)  # noqa: E731 - (N, 3)
    scale = np.linalg.norm(light(x), axis=-1) / np.linalg.norm(light(out), axis=-1)
    out = out * scale[:, None, None, None]
    assert out.max() <= 255, "the cast clips: use darker images"  # clipping is not a channel gain
    return out.astype(np.float32)


@pytest.mark.parametrize(
    ("method", "power"), [("shades_of_gray", 6.0), ("gray_world", 1.0), ("shades_of_gray", 2.5)]
)
def test_the_layer_is_the_prepare_function_before_rounding(method: str, power: float) -> None:
    x, _ = images()
    x[1] = (x[1] * CAST).astype(np.uint8)
    x[2] = 0  # all black: gain 1, no division by zero
    x[3, ..., 2] = 0  # a channel with no light
    out = keras.ops.convert_to_numpy(ColorConstancy(method, power)(x))
    want = np.stack([color_constancy(image, method, power) for image in x])  # type: ignore[arg-type]
    assert np.isfinite(out).all() and np.array_equal(np.rint(out).astype(np.uint8), want)
    assert np.abs(out - want).max() <= 0.5 + 1e-4


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="gray_world or shades_of_gray"):
        ColorConstancy("none")
    with pytest.raises(ValueError, match=">= 1"):
        ColorConstancy("shades_of_gray", 0.5)
    with pytest.raises(ConfigError, match="color_constancy"):
        CnnParams(color_constancy="max_rgb")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="color_constancy"):
        TransferParams(color_constancy="white_patch")  # type: ignore[arg-type]


def test_a_cnn_with_it_cannot_see_a_cameras_cast_and_one_without_can() -> None:
    x = images()[0] // 2  # so that the cast's brightest channel does not clip
    for method, blind in (("shades_of_gray", True), ("none", False)):
        keras.utils.set_random_seed(0)
        model = build_cnn(SIZE, CnnParams(filters=(4, 8), dense=8, color_constancy=method), color_power=6.0)
        p, p_cast = (
            keras.ops.convert_to_numpy(model(v, training=False)) for v in (x.astype(np.float32), tinted(x))
        )
        assert np.allclose(p, p_cast, atol=1e-5) is blind, (method, np.abs(p - p_cast).max())


def test_it_is_the_first_layer_and_travels_with_the_saved_model(tmp_path: Path) -> None:
    x, y = images(16)
    loop = LoopSettings.from_params(TrainParams(epochs=1, batch_size=8, lr_schedule="constant"), seed=0)
    params = CnnParams(filters=(4,), dense=4, color_constancy="shades_of_gray")
    model, info = fit_cnn(
        x, y, x, y, params, loop, image_size=SIZE, fit="crop", strategy=tf.distribute.get_strategy(),
        color_power=3.0,
    )  # fmt: skip
    assert info["input_color_constancy"] == "shades_of_gray (p=3)"
    layer = model.model.layers[1]
    assert isinstance(layer, ColorConstancy) and (layer.method, layer.power) == ("shades_of_gray", 3.0)
    model.save(tmp_path / "m")
    again = KerasClassifier.load(tmp_path / "m", SIZE, "crop")
    assert isinstance(again.model.get_layer("color_constancy"), ColorConstancy)
    assert again.model.get_layer("color_constancy").power == 3.0
    assert np.array_equal(again.predict_proba(x), model.predict_proba(x))


def test_the_transfer_model_corrects_before_its_backbone() -> None:
    x, y = images(16)
    loop = LoopSettings.from_params(TrainParams(epochs=1, batch_size=8, lr_schedule="constant"), seed=0)
    params = TransferParams(
        weights="random", blocks=2, head_units=4, head_epochs=1, color_constancy="gray_world"
    )
    model, info = fit_transfer(
        x, y, x, y, params, loop, image_size=SIZE, fit="crop", keras_home=Path("/nonexistent"),
        strategy=tf.distribute.get_strategy(),
    )  # fmt: skip
    assert info["input_color_constancy"] == "gray_world"
    features = model.model.get_layer("features")
    assert [type(layer).__name__ for layer in features.layers[1:3]] == ["ColorConstancy", "Preprocess"]
    dark = x // 2  # so that the cast's brightest channel does not clip
    p = keras.ops.convert_to_numpy(model.model(dark.astype(np.float32), training=False))
    p_cast = keras.ops.convert_to_numpy(model.model(tinted(dark, power=1.0), training=False))
    assert np.allclose(p, p_cast, atol=1e-5)


def test_the_report_says_what_the_model_does_to_its_input() -> None:
    from melanoma.report.inputs import ModelResult
    from melanoma.report.readme import model_section

    def described(info: dict) -> str:
        return "\n".join(model_section(ModelResult(info["name"], info, None, {}, {})))

    cnn = {"name": "cnn", "family": "cnn", "input_color_constancy": "shades_of_gray (p=6)", "val": {}}
    assert "colour constancy in the model: shades_of_gray (p=6)" in described(cnn)
    assert "colour constancy" not in described({**cnn, "input_color_constancy": "none"})
    transfer = {
        "name": "transfer",
        "family": "transfer",
        "backbone": "vgg16",
        "backbone_blocks": 3,
        "val": {},
    }
    assert "`vgg16` backbone cut after block3" in described(transfer)
    assert "cut after" not in described({**transfer, "backbone_blocks": 5})
