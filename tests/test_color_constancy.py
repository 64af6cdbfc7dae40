"""Colour constancy (prepare.color_constancy): the function itself, and that prepare, the external set
(prepare's own code) and the app's upload decode all apply it the same way."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from PIL import Image

from helpers import jpeg_bytes, lesion_image
from melanoma.config import PrepareParams
from melanoma.contracts import load_prepared
from melanoma.images import ColorConstancy, color_constancy, decoding_of, load_resized
from melanoma.prepare import prepare
from melanoma.serve.holder import Served
from melanoma.serve.intake import Limits, Upload, decode

CAST = np.array([1.2, 1.0, 0.7])
LIMITS = Limits(max_bytes=1 << 20, max_pixels=10_000_000, max_batch=4)


def gray_pattern(seed: int = 0, size: int = 48) -> np.ndarray:
    """A neutral image: random grey levels, the same in every channel (max 200: no clipping at 1.2x)."""
    levels = np.random.default_rng(seed).integers(40, 201, (size, size))
    return np.repeat(levels[..., None], 3, axis=-1).astype(np.uint8)


def cast(image: np.ndarray, gains: np.ndarray = CAST) -> np.ndarray:
    return np.clip(np.rint(image * gains), 0, 255).astype(np.uint8)


def lesion(seed: int, melanoma: bool = True, w: int = 64, h: int = 48) -> np.ndarray:
    return np.asarray(lesion_image(np.random.default_rng(seed), melanoma, w, h))


def jpeg(image: np.ndarray) -> bytes:
    return jpeg_bytes(Image.fromarray(image))


@pytest.mark.parametrize(
    ("method", "power"), [("shades_of_gray", 6), ("gray_world", 1), ("shades_of_gray", 2.5)]
)
def test_a_known_illuminant_cast_is_removed(method: ColorConstancy, power: float) -> None:
    tinted = cast(gray_pattern())
    assert np.ptp(tinted.reshape(-1, 3).mean(axis=0)) > 40  # the cast is there: R and B means far apart
    out = color_constancy(tinted, method, power)
    means = out.reshape(-1, 3).mean(axis=0)
    assert np.ptp(means) < 1.0, means
    # not only the means: every pixel is grey again (the cast was a pure per-channel gain)
    assert np.abs(out.astype(int) - out[..., 1:2].astype(int)).max() <= 2


def test_two_cameras_casts_of_one_lesion_come_out_alike() -> None:
    """The point of the option: one scene under two illuminants gives the same colours.

    Only up to one brightness factor: the correction keeps each image's brightness (the illuminant's
    L2 norm), and the two casts lit the scene differently bright.
    """
    scene = lesion(8, True, 100, 100)
    seen = [cast(scene, np.array(g)) for g in ((1.15, 1.0, 0.8), (0.85, 0.95, 1.1))]
    a, b = (color_constancy(x, "shades_of_gray", 6).astype(float) for x in seen)
    ratio = b.reshape(-1, 3).mean(axis=0) / a.reshape(-1, 3).mean(axis=0)
    raw_ratio = seen[1].reshape(-1, 3).mean(axis=0) / seen[0].reshape(-1, 3).mean(axis=0)
    assert np.ptp(raw_ratio) > 0.5 and np.ptp(ratio) < 0.01, (raw_ratio, ratio)
    assert np.abs(a * ratio.mean() - b).mean() < 1.0


def test_gray_world_is_shades_of_gray_with_power_1() -> None:
    image = lesion(3)
    assert np.array_equal(color_constancy(image, "gray_world"), color_constancy(image, "shades_of_gray", 1))
    # gray_world ignores the power it is given
    assert np.array_equal(color_constancy(image, "gray_world", 6), color_constancy(image, "gray_world", 1))


@pytest.mark.parametrize("method", ["gray_world", "shades_of_gray"])
def test_an_already_neutral_image_is_unchanged(method: ColorConstancy) -> None:
    image = gray_pattern(1)
    out = color_constancy(image, method)
    assert np.abs(out.astype(int) - image.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8, 3), np.uint8),  # all black: no illuminant at all
        np.full((8, 8, 3), (255, 0, 0), np.uint8),  # two all-black channels
        np.full((8, 8, 3), (10, 200, 30), np.uint8),  # one flat colour
        np.full((1, 1, 3), 255, np.uint8),
        np.zeros((0, 5, 3), np.uint8),  # empty
    ],
)
@pytest.mark.parametrize("method", ["gray_world", "shades_of_gray"])
def test_black_and_single_colour_images_never_divide_by_zero(
    image: np.ndarray, method: ColorConstancy
) -> None:
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out = color_constancy(image, method, 6)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(out == 0, image == 0)  # a channel with no light stays dark, none appears
    if not image.any():
        assert not out.any()


def test_output_is_uint8_deterministic_and_the_input_untouched() -> None:
    image = lesion(7, False, 100, 100)
    before = image.copy()
    a = color_constancy(image, "shades_of_gray", 6)
    b = color_constancy(image.copy(), "shades_of_gray", 6)
    assert a.dtype == np.uint8 and a.shape == image.shape
    assert np.array_equal(a, b)
    assert np.array_equal(image, before)
    assert color_constancy(image, "none") is image  # off: the very array, no copy


def test_a_black_pad_border_does_not_change_the_correction() -> None:
    """pad letterboxes on black: zeros scale every channel's estimate alike, so the gains are the same."""
    content = lesion(5, True, 40, 40)
    padded = np.zeros((60, 40, 3), np.uint8)
    padded[10:50] = content
    out = color_constancy(padded, "shades_of_gray", 6)
    assert not out[:10].any() and not out[50:].any()
    assert (
        np.abs(out[10:50].astype(int) - color_constancy(content, "shades_of_gray", 6).astype(int)).max() <= 1
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("max_rgb", 6), "none, gray_world or shades_of_gray"),
        (("shades_of_gray", 0), "power must be >= 1"),
        (("shades_of_gray", float("nan")), "power must be >= 1"),
    ],
)
def test_bad_settings_are_refused(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        color_constancy(np.zeros((4, 4, 3), np.uint8), *args)


def test_bad_images_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8 image of shape"):
        color_constancy(np.zeros((4, 4, 3), np.float32), "gray_world")
    with pytest.raises(ValueError, match="uint8 image of shape"):
        color_constancy(np.zeros((4, 4), np.uint8), "gray_world")


def test_the_config_choices_are_the_functions() -> None:
    """config does not import images (PIL), so the two Literals are written twice: they must agree."""
    annotation = PrepareParams.__pydantic_fields__["color_constancy"].annotation  # type: ignore[attr-defined]
    assert get_args(annotation) == get_args(ColorConstancy)
    assert PrepareParams().color_constancy == "none" and PrepareParams().color_constancy_power == 6.0


def test_load_resized_applies_it_after_the_resize() -> None:
    data = jpeg(cast(lesion(2, True, 160, 120)))
    plain = load_resized(data, 32, "crop", True, 1.5)
    assert np.array_equal(load_resized(data, 32, "crop", True, 1.5, "none"), plain)  # default off
    got = load_resized(data, 32, "crop", True, 1.5, "shades_of_gray", 6)
    assert np.array_equal(got, color_constancy(plain, "shades_of_gray", 6))
    assert not np.array_equal(got, plain)


def test_prepare_writes_corrected_pixels(raw_dir: Path, tmp_path: Path) -> None:
    """The external stage runs this same prepare with the same params, so it gets the same pixels."""
    off = PrepareParams(image_size=24, workers=1)
    on = PrepareParams(image_size=24, workers=1, color_constancy="shades_of_gray", color_constancy_power=6)
    prepare(raw_dir, tmp_path / "off", off)
    report = prepare(raw_dir, tmp_path / "on", on)
    plain, index_off = load_prepared(tmp_path / "off")
    corrected, index_on = load_prepared(tmp_path / "on")
    assert list(index_on["isic_id"]) == list(index_off["isic_id"])
    expected = np.stack([color_constancy(im, "shades_of_gray", 6) for im in plain])
    assert np.array_equal(corrected, expected)
    assert not np.array_equal(corrected, plain)
    assert report["params"]["color_constancy"] == "shades_of_gray"
    assert report["params"]["color_constancy_power"] == 6.0


def test_the_app_decodes_uploads_as_model_json_says() -> None:
    data = jpeg(cast(lesion(4, False, 160, 120)))
    info = {
        "draft": True,
        "draft_margin": 1.5,
        "color_constancy": "shades_of_gray",
        "color_constancy_power": 6,
    }
    decoding = decoding_of(info)
    # the app calls decode(upload, limits, size, fit, **served.decoding)
    got = decode(Upload(data, "image/jpeg"), LIMITS, 32, "crop", **decoding)
    assert np.array_equal(got, load_resized(data, 32, "crop", True, 1.5, "shades_of_gray", 6))
    assert np.array_equal(
        got, color_constancy(load_resized(data, 32, "crop", True, 1.5), "shades_of_gray", 6)
    )


def test_models_saved_before_the_option_decode_without_it() -> None:
    old = decoding_of({"draft": True, "draft_margin": 1.5})
    assert old["color_constancy"] == "none"
    assert Served.__dataclass_fields__["decoding"].default_factory()["color_constancy"] == "none"  # type: ignore[misc]
    data = jpeg(lesion(6, True, 160, 120))
    assert np.array_equal(
        decode(Upload(data, ""), LIMITS, 32, "crop", **old), load_resized(data, 32, "crop", True, 1.5)
    )


def test_an_unknown_method_in_model_json_is_refused_when_the_model_loads() -> None:
    with pytest.raises(ValueError, match="unknown color_constancy 'max_rgb'"):
        decoding_of({"color_constancy": "max_rgb"})
