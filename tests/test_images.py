"""The one resize implementation: sizes, EXIF orientation, colour modes, corrupt input, draft decoding."""

import io

import numpy as np
import pytest
from PIL import Image

from melanoma.images import ImageDecodeError, fit_box, load_resized, resize_array, resize_batch


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
