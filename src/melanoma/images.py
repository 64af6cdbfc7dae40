"""Decode, orient, convert and resize images: ONE implementation.

``prepare`` (files on disk), the logged model's pyfunc (arrays) and the app (uploads) all go
through ``fit_resize``, so training and serving can never see different pixels. ``color_constancy``
(``prepare.color_constancy``) is applied by ``load_resized`` to what prepare and the app decode.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image, ImageOps

Fit = Literal["crop", "squash", "pad"]
ColorConstancy = Literal["none", "gray_world", "shades_of_gray"]

# Decompression-bomb guard: Pillow's default warns at ~89 Mpx; real dermoscopy stops well below.
Image.MAX_IMAGE_PIXELS = 200_000_000


class ImageDecodeError(ValueError):
    """An image that cannot be decoded (corrupt, truncated or not an image)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (L, LA, P, RGBA, CMYK, I;16, ...) to RGB; transparency goes on white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # 16-bit / float greyscale: scale to 8 bits by its own range rather than clipping.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr8 = np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) / (hi - lo) * 255).round()
        return Image.fromarray(arr8.astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def fit_box(width: int, height: int, fit: Fit) -> tuple[int, int, int, int]:
    """The source box to resize from: the centred square for ``crop``, the whole image otherwise."""
    if fit != "crop" or width == height:
        return (0, 0, width, height)
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return (left, top, left + side, top + side)


def fit_resize(img: Image.Image, size: int, fit: Fit = "crop") -> np.ndarray:
    """Oriented RGB image -> uint8 array (size, size, 3).

    ``crop`` takes the centred square (dermoscopy centres the lesion; keeps shape, which
    matters for asymmetry), ``squash`` stretches the whole frame as the original study did,
    ``pad`` letterboxes on black.
    """
    img = _to_rgb(img)
    w, h = img.size
    if fit == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        inner = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
        canvas = Image.new("RGB", (size, size))
        canvas.paste(inner, ((size - nw) // 2, (size - nh) // 2))
        return np.asarray(canvas, dtype=np.uint8)
    box = fit_box(w, h, fit)
    # reducing_gap: an integer box-reduce first, then the filter; visually equal, much faster.
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
    return np.asarray(out, dtype=np.uint8)


def draft_scale(width: int, height: int, size: int, fit: Fit = "crop", margin: float = 2.0) -> int:
    """The JPEG DCT reduction (8, 4, 2, or 1 = none) to decode a ``width`` x ``height`` image at.

    The largest reduction whose decoded side, for ``fit``, still spans ``margin * size`` pixels: the
    short side for ``crop`` (the centre square's side) and ``squash`` (each side is resized to
    ``size``), the long side for ``pad`` (it is resized to ``size``, the short side by the same
    factor). So no fit ever upsamples because of the draft, and ``margin`` is the oversampling the
    final resize gets. It uses only min/max of the stored sides, which an EXIF rotation swaps but
    never changes, so the choice is the same before and after orientation.
    """
    if not margin >= 1.0:  # also refuses NaN
        raise ValueError(
            f"draft margin must be >= 1.0 (1.0 = the decode just covers the target), got {margin}"
        )
    side = max(width, height) if fit == "pad" else min(width, height)
    need = margin * size
    for scale in (8, 4, 2):
        # Pillow can only reduce by ``scale`` when both sides are at least that long.
        if side >= scale * need and min(width, height) >= scale:
            return scale
    return 1


def open_oriented(
    source: bytes | Path,
    size: int | None = None,
    draft: bool = True,
    *,
    fit: Fit = "crop",
    draft_margin: float = 2.0,
) -> Image.Image:
    """Open an image, let a JPEG decode at reduced scale (draft) when ``size`` allows, fully load it
    and apply its EXIF orientation. Raises ImageDecodeError for anything unreadable.

    The reduction is ``draft_scale(..., fit, draft_margin)``; ``fit`` only decides which side must
    cover the target, and ``crop`` (the default) is the most conservative for every fit.
    """
    if not draft_margin >= 1.0:  # checked here, not per image: a bad setting is not a corrupt file
        raise ValueError(
            f"draft_margin must be >= 1.0 (1.0 = the decode just covers the target), got {draft_margin}"
        )
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if draft and size is not None and img.format == "JPEG":
            w, h = img.size
            scale = draft_scale(w, h, size, fit, draft_margin)
            if scale > 1:
                # Pillow picks the largest of 8/4/2/1 <= min(w // rw, h // rh): (w // s, h // s)
                # gives exactly ``scale`` (both quotients lie in [s, 2s)).
                img.draft("RGB", (w // scale, h // scale))
        img.load()  # forces the full decode: truncated files raise here, not later
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # Pillow raises many types for bad bytes
        raise ImageDecodeError(f"{type(exc).__name__}: {exc}") from exc


def color_constancy(
    image: np.ndarray, method: ColorConstancy = "shades_of_gray", power: float = 6.0
) -> np.ndarray:
    """Shades of Gray colour constancy (Finlayson & Trezzi 2004): uint8 (H, W, 3) -> uint8 (H, W, 3).

    The illuminant is the per-channel Minkowski p-mean ``e_c = mean(I_c ** p) ** (1 / p)``
    (``gray_world`` is p = 1 whatever ``power`` says; ``none`` returns ``image`` itself). ``e`` is
    scaled to L2 norm sqrt(3), so a neutral illuminant is (1, 1, 1), and each channel is divided by
    its ``e_c``: the cast goes, the overall brightness stays (as the common ISIC reference code).
    Computed in float64 on [0, 1] (``x ** p`` cannot overflow for any p), rounded half-to-even
    (``np.rint``, not the reference's truncation, which would darken every pixel by half a level on
    average), clipped to [0, 255]. A channel with no light at all (e_c == 0) keeps gain 1 (it is all
    zeros either way); an all-black image comes back unchanged.
    """
    if method == "none":
        return image
    if method not in ("gray_world", "shades_of_gray"):
        raise ValueError(f"color constancy must be none, gray_world or shades_of_gray, got {method!r}")
    p = 1.0 if method == "gray_world" else float(power)
    if not p >= 1.0:  # also refuses NaN
        raise ValueError(f"color constancy power must be >= 1 (1 = gray world), got {power}")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected a uint8 image of shape (H, W, 3), got {arr.dtype} {arr.shape}")
    if arr.size == 0:
        return arr.copy()
    # uint8 has 256 levels per channel: the p-means come from a histogram and 256 powers, and the
    # output from a 256-entry table per channel, instead of a float pow, multiply and rint per pixel
    # (2.6x faster at 100 px; the same numbers up to the order of one float sum). ``index`` is each
    # value's slot in the 3 x 256 histogram / table, shared by both.
    index = arr.reshape(-1, 3).astype(np.uint16)
    index += np.array([0, 256, 512], dtype=np.uint16)
    counts = np.bincount(index.ravel(), minlength=768).reshape(3, 256)
    levels = np.arange(256, dtype=np.float64)
    powers = levels / 255.0 if p == 1.0 else (levels / 255.0) ** p
    illuminant = (np.sum(counts * powers, axis=1) / len(index)) ** (1.0 / p)
    norm = float(np.sqrt(np.sum(illuminant**2)))
    if norm == 0.0:
        return arr.copy()
    illuminant = illuminant / norm * np.sqrt(3.0)
    gain = 1.0 / np.where(illuminant > 0.0, illuminant, 1.0)  # e_c == 0: the channel is all zeros
    table = np.clip(np.rint(levels * gain[:, None]), 0, 255).astype(np.uint8)  # (3, 256)
    return table.ravel()[index].reshape(arr.shape)


def decoding_of(info: dict[str, Any]) -> dict[str, Any]:
    """model.json -> the ``load_resized`` settings prepare used for the model's training data:
    ``draft``, ``draft_margin``, ``color_constancy``, ``color_constancy_power`` (the app's decode
    and the logged pyfunc both read them here, so they cannot drift apart).

    A key model.json lacks takes the value prepare had before it existed (draft margin 2.0, no
    colour constancy): models saved earlier were trained on pixels decoded that way. An unknown
    colour-constancy method is refused here, when the model loads, not on every image.
    """
    method = str(info.get("color_constancy", "none"))
    if method not in get_args(ColorConstancy):
        raise ValueError(
            f"model.json: unknown color_constancy {method!r} (this code knows {get_args(ColorConstancy)})"
        )
    return {
        "draft": bool(info.get("draft", True)),
        "draft_margin": float(info.get("draft_margin", 2.0)),
        "color_constancy": method,
        "color_constancy_power": float(info.get("color_constancy_power", 6.0)),
    }


def load_resized(
    source: bytes | Path,
    size: int,
    fit: Fit = "crop",
    draft: bool = True,
    draft_margin: float = 2.0,
    color: ColorConstancy = "none",
    color_power: float = 6.0,
) -> np.ndarray:
    """Decode a file or bytes and return the uint8 (size, size, 3) array the models see.

    ``color``/``color_power`` are ``prepare.color_constancy``/``color_constancy_power``.
    """
    image = fit_resize(
        open_oriented(source, size=size, draft=draft, fit=fit, draft_margin=draft_margin), size, fit
    )
    # After the resize, not before: at 100 px it costs ~0.2 ms (+13% CPU on a 224 px JPEG's decode;
    # before the resize it would grow with the original's pixels), the illuminant is estimated on
    # exactly the pixels the model sees (the crop), and a mean changes little under a downscale.
    # pad's black border is neutral: zeros scale every channel's p-mean by the same factor, which
    # the L2 normalisation removes.
    return color_constancy(image, color, color_power)


def resize_array(image: np.ndarray, size: int, fit: Fit = "crop") -> np.ndarray:
    """Resize an already decoded uint8 HxWx3 (or HxW) array exactly as prepare resizes files."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an image of shape (H, W, 3), got {arr.shape}")
    if arr.shape[0] == size and arr.shape[1] == size and arr.shape[-1] == 3:
        return arr
    mode = "RGBA" if arr.shape[-1] == 4 else "RGB"
    return fit_resize(Image.fromarray(np.ascontiguousarray(arr), mode), size, fit)


def resize_batch(images: np.ndarray | list[np.ndarray], size: int, fit: Fit = "crop") -> np.ndarray:
    """Resize a batch (N, H, W, 3) or a list of differently sized arrays to (N, size, size, 3)."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = resize_array(image, size, fit)
    return out
