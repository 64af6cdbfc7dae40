"""The one resize implementation: sizes, EXIF orientation, colour modes, corrupt input, draft decoding
and its margin (prepare.draft_margin)."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from melanoma.config import params_from_dict
from melanoma.errors import ConfigError
from melanoma.images import (
    ImageDecodeError,
    draft_scale,
    fit_box,
    fit_resize,
    load_resized,
    open_oriented,
    resize_array,
    resize_batch,
)


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def half_image(w: int = 400, h: int = 300) -> Image.Image:
    """Left half red, right half blue: orientation-sensitive."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (220, 20, 20)
    arr[:, w // 2 :] = (20, 20, 220)
    return Image.fromarray(arr)


@pytest.mark.parametrize("fit", ["crop", "squash", "pad"])
@pytest.mark.parametrize("size", [16, 100])
def test_output_shape_and_dtype(fit: str, size: int) -> None:
    out = load_resized(encode(half_image()), size, fit)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8


def test_crop_takes_the_centred_square() -> None:
    assert fit_box(400, 300, "crop") == (50, 0, 350, 300)
    assert fit_box(300, 400, "crop") == (0, 50, 300, 350)
    assert fit_box(400, 300, "squash") == (0, 0, 400, 300)


def test_exif_orientation_is_applied() -> None:
    img = half_image()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(img, exif=exif.tobytes())
    out = load_resized(data, 32, "squash").astype(int)
    # After a 90-degree clockwise rotation, red (left) ends up at the top.
    assert out[:8, :, 0].mean() > 150 and out[-8:, :, 2].mean() > 150
    plain = load_resized(encode(img), 32, "squash").astype(int)
    assert plain[:, :8, 0].mean() > 150  # without EXIF: red stays left


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16"])
def test_colour_modes_become_rgb(mode: str) -> None:
    img = half_image().convert("RGBA" if mode in ("LA",) else "RGB")
    if mode == "I;16":
        img = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 10).astype(np.uint16))
    else:
        img = img.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out = load_resized(encode(img, fmt), 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8


def test_transparent_png_goes_on_white() -> None:
    img = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    out = load_resized(encode(img, "PNG"), 10)
    assert out.min() == 255


def test_truncated_and_garbage_bytes_raise_clear_errors() -> None:
    good = encode(half_image(800, 600), quality=90)
    with pytest.raises(ImageDecodeError):
        load_resized(good[: len(good) // 2], 32)
    with pytest.raises(ImageDecodeError, match="UnidentifiedImageError"):
        load_resized(b"this is not an image", 32)


def test_draft_is_close_to_full_decode_on_a_large_jpeg() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)  # lesion-scale structure, not pixel noise
    big = Image.fromarray(base).resize((2000, 1500), Image.Resampling.BICUBIC)
    data = encode(big, quality=92)
    fast = load_resized(data, 100, draft=True).astype(int)
    full = load_resized(data, 100, draft=False).astype(int)
    assert np.abs(fast - full).mean() < 3.0


def test_resize_array_matches_file_path() -> None:
    img = half_image(640, 480)
    data = encode(img, "PNG")
    from_file = load_resized(data, 50, "crop", draft=False)
    from_array = resize_array(np.asarray(img), 50, "crop")
    assert np.array_equal(from_file, from_array)


def test_resize_batch_accepts_mixed_sizes_and_rejects_bad_arrays() -> None:
    batch = resize_batch([np.zeros((30, 40, 3), np.uint8), np.zeros((100, 100, 3), np.uint8)], 20)
    assert batch.shape == (2, 20, 20, 3)
    with pytest.raises(ValueError, match="uint8"):
        resize_array(np.zeros((10, 10, 3), np.float32), 5)
    with pytest.raises(ValueError, match="shape"):
        resize_array(np.zeros((10, 10, 2), np.uint8), 5)


# --------------------------------------------------------------------------- draft margin


def _legacy_decode(data: bytes, size: int, fit: str) -> np.ndarray:
    """The decode before prepare.draft_margin existed (a hard-coded 2x request), kept verbatim."""
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    scale = max(2 * size / min(w, h), 1 / 8)
    img.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
    img.load()
    return fit_resize(ImageOps.exif_transpose(img), size, fit)  # type: ignore[arg-type]


def _legacy_scale(w: int, h: int, size: int) -> int:
    """Pillow's choice for that request: the largest of 8/4/2/1 <= min(w // rw, h // rh)."""
    scale = max(2 * size / min(w, h), 1 / 8)
    fits = min(w // max(1, int(w * scale)), h // max(1, int(h * scale)))
    return next(s for s in (8, 4, 2, 1) if fits >= s or s == 1)


@pytest.mark.parametrize("fit", ["crop", "squash", "pad"])
@pytest.mark.parametrize("margin", [1.0, 1.5, 2.0, 3.3])
def test_draft_scale_covers_the_target_and_is_the_largest_that_does(fit: str, margin: float) -> None:
    for size in (16, 33, 100, 224):
        for short in (8, 50, 99, 100, 101, 150, 199, 224, 399, 400, 767, 800, 1600, 4000):
            for long_ in (short, short + 1, short * 4 // 3, short * 3):
                for w, h in ((long_, short), (short, long_)):
                    s = draft_scale(w, h, size, fit, margin)  # type: ignore[arg-type]
                    side = max(w, h) if fit == "pad" else min(w, h)
                    dec_w, dec_h = -(-w // s), -(-h // s)  # Pillow's decoded size: ceil(side / s)
                    covered = max(dec_w, dec_h) if fit == "pad" else min(dec_w, dec_h)
                    if s > 1:  # reduced: the content still spans margin x size, the output never upsamples
                        assert side / s >= margin * size and covered >= size, (w, h, size, s)
                    if s < 8 and min(w, h) >= 2 * s:  # and the next reduction would fall short
                        assert side / (2 * s) < margin * size, (w, h, size, s)


@pytest.mark.parametrize(
    ("w", "h", "fit", "margin", "decoded"),
    [
        (640, 480, "crop", 1.0, (160, 120)),  # 480 >= 4 x 100 > 480 / 8
        (640, 480, "crop", 2.0, (320, 240)),  # today's 2x
        (640, 480, "pad", 1.0, (160, 120)),  # long side 640 >= 4 x 100 (short 120 >= 100 x 480/640)
        (900, 480, "pad", 2.0, (225, 120)),  # long side 900 >= 4 x 200 (the old short-side rule: 1/2)
        (900, 480, "crop", 2.0, (450, 240)),
        (224, 224, "crop", 1.0, (112, 112)),  # the Kaggle set at 100 px: 1/2 at margin 1.0 ...
        (224, 224, "crop", 2.0, (224, 224)),  # ... and a full decode at 2.0
        (100, 90, "crop", 1.0, (100, 90)),  # smaller than the target: never reduced
    ],
)
def test_decoded_size_is_the_chosen_scale(w: int, h: int, fit: str, margin: float, decoded: tuple) -> None:
    data = encode(half_image(w, h), quality=90)
    assert open_oriented(data, 100, fit=fit, draft_margin=margin).size == decoded  # type: ignore[arg-type]
    out = load_resized(data, 100, fit, draft_margin=margin)  # type: ignore[arg-type]
    assert out.shape == (100, 100, 3)


@pytest.mark.parametrize("fit", ["crop", "squash", "pad"])
@pytest.mark.parametrize("margin", [1.0, 2.0])
def test_exif_rotated_jpegs_draft_on_the_rotated_sides(fit: str, margin: float) -> None:
    # 1200x400 stored, shown 400x1200 (orientation 6): the short/long sides swap places, not lengths.
    img = half_image(1200, 400)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(img, quality=90, exif=exif.tobytes())
    s = draft_scale(1200, 400, 50, fit, margin)  # type: ignore[arg-type]
    assert s == draft_scale(400, 1200, 50, fit, margin)  # type: ignore[arg-type]
    shown = open_oriented(data, 50, fit=fit, draft_margin=margin)  # type: ignore[arg-type]
    assert shown.size == (-(-400 // s), -(-1200 // s))
    side = max(shown.size) if fit == "pad" else min(shown.size)
    assert side >= margin * 50
    out = load_resized(data, 50, "squash", draft_margin=margin).astype(int)
    assert out[:8, :, 0].mean() > 150 and out[-8:, :, 2].mean() > 150  # red (left) rotated to the top


@pytest.mark.parametrize("fit", ["crop", "squash"])
def test_margin_two_reproduces_the_previous_decoding_byte_identically(fit: str) -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    # sizes that decode at 1/8, 1/4, 1/2 and full for a 32 px target (2x = 64 px), one EXIF-rotated
    for (w, h), orientation in [
        ((640, 512), 1),
        ((300, 260), 1),
        ((200, 150), 6),
        ((100, 90), 1),
        ((257, 513), 8),
    ]:
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = encode(
            Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC), quality=90, exif=exif.tobytes()
        )
        ours = load_resized(data, 32, fit, draft_margin=2.0)  # type: ignore[arg-type]
        assert np.array_equal(ours, _legacy_decode(data, 32, fit)), (w, h)


def test_margin_two_picks_the_previous_scale_except_where_it_fell_short_of_2x() -> None:
    # The old request was computed in floats and truncated: for a few shapes it asked for one pixel
    # less than 2x the target and got a reduction that decoded below 2x. Everywhere else: the same.
    differ = 0
    for size in (16, 32, 100, 224):
        for short in range(8, 3000, 7):
            for w, h in ((short, short), (short * 4 // 3, short), (short, short * 3 // 2 + 1)):
                old, new = _legacy_scale(w, h, size), draft_scale(w, h, size, "crop", 2.0)
                if old != new:
                    differ += 1
                    assert old > new and min(w, h) / old < 2 * size, (w, h, size, old, new)
    assert differ < 10


def test_a_bad_margin_is_refused_by_params_and_by_the_library() -> None:
    with pytest.raises(ConfigError, match=r"prepare\.draft_margin: must be >= 1 \(got 0\.5\)"):
        params_from_dict({"prepare": {"draft_margin": 0.5}})
    data = encode(half_image(), quality=90)
    with pytest.raises(ValueError, match="draft_margin must be >= 1.0"):  # not an ImageDecodeError
        load_resized(data, 32, draft_margin=0.5)
    with pytest.raises(ValueError, match="draft margin must be >= 1.0"):
        draft_scale(400, 300, 32, "crop", float("nan"))
