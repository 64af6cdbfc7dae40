"""Hand-crafted image features for the baseline: colour histograms and statistics, texture, shape.

All functions are vectorised over a batch of uint8 images (N, S, S, 3). HSV is matplotlib's
``rgb_to_hsv`` (bit-identical to the hand-written version it replaced, on all 2**24 uint8 colours).
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import rgb_to_hsv

HIST_BINS = 8
_QUANTILES = (0.1, 0.5, 0.9)
# 6 channels x (mean, std, 3 quantiles) + 3 x 8 histogram bins + 4 texture + 5 shape + 2 x 6 inside-lesion
N_FEATURES = 6 * 5 + 3 * HIST_BINS + 4 + 5 + 12


def _otsu(gray: np.ndarray) -> np.ndarray:
    """Per-image Otsu threshold for a batch of uint8 greyscale images (N, H, W)."""
    n = gray.shape[0]
    hist = np.zeros((n, 256))
    offsets = (np.arange(n)[:, None] * 256 + gray.reshape(n, -1)).ravel()
    hist.ravel()[:] = np.bincount(offsets, minlength=n * 256)
    levels = np.arange(256)
    w0 = np.cumsum(hist, 1)
    w1 = w0[:, -1:] - w0
    m0 = np.cumsum(hist * levels, 1)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[:, -1:] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return between.argmax(1)


def shape_features(gray: np.ndarray) -> np.ndarray:
    """Lesion mask (darker than Otsu) -> area, compactness, asymmetry, centroid offset."""
    n, h, w = gray.shape
    mask = gray <= _otsu(gray)[:, None, None]
    area = mask.mean((1, 2))
    # Boundary pixels: mask pixels with a non-mask 4-neighbour (a perimeter estimate).
    inner = (
        mask[:, 1:-1, 1:-1] & mask[:, :-2, 1:-1] & mask[:, 2:, 1:-1] & mask[:, 1:-1, :-2] & mask[:, 1:-1, 2:]
    )
    perimeter = mask[:, 1:-1, 1:-1].sum((1, 2)) - inner.sum((1, 2))
    pixels = np.maximum(mask.sum((1, 2)), 1)
    compactness = perimeter**2 / (4 * np.pi * pixels)
    asym_lr = (mask ^ mask[:, :, ::-1]).sum((1, 2)) / pixels
    asym_ud = (mask ^ mask[:, ::-1, :]).sum((1, 2)) / pixels
    ys, xs = np.mgrid[0:h, 0:w]
    cy = (mask * ys).sum((1, 2)) / pixels / h - 0.5
    cx = (mask * xs).sum((1, 2)) / pixels / w - 0.5
    return np.stack([area, compactness, asym_lr, asym_ud, np.hypot(cx, cy)], axis=1), mask


def extract_features(images: np.ndarray, batch: int = 256) -> np.ndarray:
    """uint8 (N, S, S, 3) -> float32 (N, F) feature matrix, in batches to bound memory."""
    if not hasattr(images, "shape"):
        images = np.asarray(images)
    # An ImageRows split (or a memmap) stays on disk: each batch is read when its turn comes.
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, S, S, 3), got {images.shape}")
    parts = [_extract(np.asarray(images[i : i + batch])) for i in range(0, len(images), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, N_FEATURES), np.float32)


def _extract(images: np.ndarray) -> np.ndarray:
    n = images.shape[0]
    rgb = images.astype(np.float32) / 255.0
    hsv = rgb_to_hsv(rgb)
    flat = np.concatenate([rgb, hsv], -1).reshape(n, -1, 6)
    feats = [flat.mean(1), flat.std(1)]
    feats += [np.quantile(flat, q, axis=1) for q in _QUANTILES]
    for c in range(3):  # colour histograms of H, S, V
        idx = np.minimum((hsv[..., c] * HIST_BINS).astype(int), HIST_BINS - 1).reshape(n, -1)
        counts = np.stack([(idx == b).mean(1) for b in range(HIST_BINS)], 1)
        feats.append(counts)
    gray8 = (0.299 * images[..., 0] + 0.587 * images[..., 1] + 0.114 * images[..., 2]).astype(np.uint8)
    gray = gray8.astype(np.float32) / 255.0
    gy, gx = np.gradient(gray, axis=(1, 2))
    grad = np.hypot(gx, gy)
    lap = np.abs(
        4 * gray[:, 1:-1, 1:-1]
        - gray[:, :-2, 1:-1]
        - gray[:, 2:, 1:-1]
        - gray[:, 1:-1, :-2]
        - gray[:, 1:-1, 2:]
    )
    feats.append(np.stack([grad.mean((1, 2)), grad.std((1, 2)), lap.mean((1, 2)), lap.std((1, 2))], 1))
    shape, mask = shape_features(gray8)
    feats.append(shape)
    # Colour inside the lesion mask: variegation shows as spread of colour within the lesion.
    m = mask[..., None].astype(np.float32)
    cnt = np.maximum(m.sum((1, 2)), 1)
    inside_mean = (flat.reshape(images.shape[:3] + (6,)) * m).sum((1, 2)) / cnt
    inside_sq = ((flat.reshape(images.shape[:3] + (6,)) ** 2) * m).sum((1, 2)) / cnt
    inside_std = np.sqrt(np.maximum(inside_sq - inside_mean**2, 0))
    feats += [inside_mean, inside_std]
    return np.concatenate(feats, axis=1).astype(np.float32)
