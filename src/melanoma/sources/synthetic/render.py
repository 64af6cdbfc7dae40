"""Rendering the synthetic sample: the pixels and JPEG bytes of one planned image.

Speed: the lesion and skin are rendered on a small canvas (short side ``CANVAS``), upscaled with
Pillow, then hairs, ruler marks and sensor noise are added at full resolution. Each image draws
from its own ``np.random.default_rng([seed, index])``, so the bytes do not depend on which worker
renders it, and the order of the draws below is part of the sample (see ``plan.py``).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from melanoma import atomic
from melanoma.sources.synthetic.lesion import Lesion
from melanoma.sources.synthetic.plan import RenderTask

CANVAS = 256  # short side of the canvas the lesion is rendered on
# Beer-Lambert absorption of melanin per RGB channel: density d turns skin into brown/black.
_ABSORB = np.array([0.80, 1.10, 1.30], dtype=np.float32)
_COLOURS = {  # overlay colours (RGB 0-255)
    "blue_grey": (96, 110, 138),
    "steel_blue": (70, 86, 120),
    "white": (226, 214, 212),
    "red": (196, 96, 104),
    "pink": (214, 142, 146),
}


def _smooth_field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, n: int, fmax: float) -> np.ndarray:
    """A smooth random field of unit-ish amplitude from a few random low-frequency waves."""
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.float32)
    for _ in range(n):
        f = rng.uniform(0.5, fmax)
        t = rng.uniform(0, 2 * math.pi)
        out += np.cos(np.float32(f * math.cos(t)) * x + np.float32(f * math.sin(t)) * y + rng.uniform(0, 6.3))
    return out / np.float32(math.sqrt(n / 2))


def _lesion_density(lesion: Lesion, u: np.ndarray, v: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, list]:
    """Melanin density over the lesion frame (profile, network, dark/light blobs) and colour overlays."""
    density = lesion.density * np.clip(1 + lesion.centre_dark * (1 - 2 * rel * rel), 0.2, None)
    if lesion.net_strength > 0:
        field = np.zeros_like(u)
        for fx, fy, ph in lesion.net_freqs:
            field += np.cos(np.float32(fx) * u + np.float32(fy) * v + np.float32(ph))
        field /= np.float32(math.sqrt(len(lesion.net_freqs) / 2))
        net = np.exp(-((field / np.float32(lesion.net_width)) ** 2))
        density = density * (1 + np.float32(lesion.net_strength) * (net - 0.35))
    overlays = []
    for bu, bv, sigma, colour, strength in lesion.blobs:
        g = np.float32(strength) * np.exp(-((u - bu) ** 2 + (v - bv) ** 2) / np.float32(2 * sigma * sigma))
        if colour == "dark":
            density = density + 0.8 * g
        elif colour == "black":
            density = density + 2.2 * g
        elif colour == "light":
            density = density * (1 - 0.6 * g)
        else:
            overlays.append((np.array(_COLOURS[colour], dtype=np.float32), g))
    return density, overlays


def _lesion_frame(task: RenderTask, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """(u, v, rho, alpha, rel): the rotated lesion frame in units of the radius and its soft mask."""
    lesion = task.lesion
    rad = lesion.radius * task.zoom
    c, sn = math.cos(task.rotation), math.sin(task.rotation)
    dx, dy = (x - task.offset[0]) / rad, (y - task.offset[1]) / rad
    u = c * dx + sn * dy  # lesion frame (rotated, in units of the radius)
    v = -sn * dx + c * dy
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    n_table = 1024
    t_grid = np.linspace(-math.pi, math.pi, n_table, endpoint=False)
    r_table = np.ones(n_table)
    for k, amp, phase in lesion.harmonics:
        r_table += amp * np.cos(k * t_grid + phase)
    idx = ((theta + math.pi) * (n_table / (2 * math.pi))).astype(np.int32) % n_table
    r_theta = r_table.astype(np.float32)[idx]
    alpha = 1 / (1 + np.exp(np.clip((rho - r_theta) / np.float32(lesion.edge), -30, 30)))
    rel = np.clip(rho / r_theta, 0, 1.5)
    return u, v, rho, alpha, rel


def _nuisances(
    task: RenderTask, rng: np.random.Generator, img: np.ndarray, frame: tuple, grid: tuple
) -> np.ndarray:
    """Arborizing vessels (BCC), gel bubbles, vignetting and the camera's colour gain."""
    u, v, rho, alpha, _ = frame
    x, y, s, cw = grid
    for _ in range(task.lesion.vessels):  # arborizing vessels: thin red curves inside the lesion
        t0 = rng.uniform(0, 2 * math.pi)
        k = rng.uniform(1.5, 4.0)
        off = rng.uniform(-0.4, 0.4)
        line = np.abs(
            np.cos(t0) * u + np.sin(t0) * v - off - 0.15 * np.sin(k * (np.cos(t0) * v - np.sin(t0) * u))
        )
        g = (np.exp(-((line / 0.03) ** 2)) * alpha * (rho < 0.8))[..., None]
        img = img * (1 - 0.6 * g) + np.array(_COLOURS["red"], dtype=np.float32) * 0.6 * g
    for _ in range(task.bubbles):  # gel bubbles: a bright rim with a faint highlight
        bx, by = rng.uniform(-0.7, 0.7) * cw / s, rng.uniform(-0.45, 0.45)
        br = rng.uniform(0.015, 0.07)
        d = np.sqrt((x - bx) ** 2 + (y - by) ** 2)
        rim = np.exp(-(((d - br) / (0.12 * br + 0.002)) ** 2))
        img = img + (40 * rim + 10 * (d < br))[..., None]
    r = np.sqrt(x * x + y * y)
    if task.vignette == "aperture":
        r_ap = rng.uniform(0.56, 0.72)
        mask = 1 / (1 + np.exp(np.clip((r - r_ap) / np.float32(0.012), -30, 30)))
        img = img * (1 - 0.25 * (r / r_ap) ** 4)[..., None]
        img = img * mask[..., None] + np.float32(rng.uniform(4, 20)) * (1 - mask[..., None])
    else:
        img = img * (1 - rng.uniform(0.1, 0.35) * (r / r.max()) ** 2.5)[..., None]
    img *= np.array(task.gain, dtype=np.float32)
    return img


def render_canvas(task: RenderTask, rng: np.random.Generator, cw: int, ch: int) -> np.ndarray:
    """Skin, lesion, vignetting and lighting on the small canvas; float32 RGB in 0..255."""
    s = float(min(cw, ch))
    xs = ((np.arange(cw, dtype=np.float32) + 0.5) - cw / 2) / s
    ys = ((np.arange(ch, dtype=np.float32) + 0.5) - ch / 2) / s
    x, y = xs[None, :], ys[:, None]
    # skin with low-frequency shading and blotchy erythema
    skin = np.array(task.skin, dtype=np.float32)
    shading = 1 + 0.05 * _smooth_field(rng, x, y, 4, 6.0)
    red = np.clip(_smooth_field(rng, x, y, 5, 9.0), 0, None) * np.float32(rng.uniform(0, 0.06))
    img = skin[None, None, :] * shading[..., None]
    img[..., 1] *= 1 - red
    img[..., 2] *= 1 - 0.7 * red
    img *= 1 + np.float32(0.025) * rng.standard_normal((ch, cw, 1), dtype=np.float32)

    frame = _lesion_frame(task, x, y)
    u, v, _, alpha, rel = frame
    density, overlays = _lesion_density(task.lesion, u, v, rel)
    les = skin[None, None, :] * shading[..., None] * np.exp(-density[..., None] * _ABSORB)
    for colour_rgb, g in overlays:
        g = np.clip(g, 0, 0.9)[..., None]
        les = les * (1 - g) + colour_rgb * g
    a = alpha[..., None]
    img = img * (1 - a) + les * a
    return _nuisances(task, rng, img, frame, (x, y, s, cw))


def _draw_hairs(img: Image.Image, rng: np.random.Generator, n: int) -> None:
    w, h = img.size
    short = min(w, h)
    draw = ImageDraw.Draw(img)
    for _ in range(n):
        x0, y0 = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
        ang = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.15, 0.8) * short
        x2, y2 = x0 + length * math.cos(ang), y0 + length * math.sin(ang)
        bend = rng.normal(0, 0.18) * length
        cx, cy = (x0 + x2) / 2 - bend * math.sin(ang), (y0 + y2) / 2 + bend * math.cos(ang)
        t = np.linspace(0, 1, 24)
        px = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t**2 * x2
        py = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t**2 * y2
        width = max(1, int(round(short / 700 * rng.uniform(0.8, 2.6))))
        tone = int(rng.integers(15, 70))
        colour = (tone + 10, tone, max(0, tone - 8))
        draw.line(list(zip(px.tolist(), py.tolist(), strict=True)), fill=colour, width=width, joint="curve")


def _draw_ruler(img: Image.Image, rng: np.random.Generator) -> None:
    w, h = img.size
    short = min(w, h)
    draw = ImageDraw.Draw(img)
    step = short / rng.uniform(30, 45)
    width = max(1, short // 400)
    colour = (30, 30, 34)
    if rng.random() < 0.5:  # along the bottom edge
        yb = h * rng.uniform(0.86, 0.94)
        x = w * 0.3
        for i in range(int(w * 0.4 / step)):
            length = short * (0.05 if i % 10 == 0 else 0.03 if i % 5 == 0 else 0.018)
            draw.line([(x, yb), (x, yb - length)], fill=colour, width=width)
            x += step
    else:  # along the left edge
        xb = w * rng.uniform(0.06, 0.14)
        y = h * 0.3
        for i in range(int(h * 0.4 / step)):
            length = short * (0.05 if i % 10 == 0 else 0.03 if i % 5 == 0 else 0.018)
            draw.line([(xb, y), (xb + length, y)], fill=colour, width=width)
            y += step


def render_image(task: RenderTask) -> bytes:
    """Return the JPEG bytes of one image (uncorrupted)."""
    rng = np.random.default_rng([task.seed, task.index])
    w, h = task.width, task.height
    scale = min(1.0, CANVAS / min(w, h))
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = render_canvas(task, rng, cw, ch)
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    if (cw, ch) != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    n_hairs = int(rng.poisson(task.hair))
    if n_hairs:
        _draw_hairs(img, rng, n_hairs)
    if task.ruler:
        _draw_ruler(img, rng)
    # sensor grain at full resolution (triangular noise, SD ~ 3.2 levels)
    grain = rng.integers(0, 8, size=(h, w), dtype=np.uint8)
    grain += rng.integers(0, 8, size=(h, w), dtype=np.uint8)
    grain += 121
    g = Image.fromarray(grain, "L")
    img = ImageChops.add(img, Image.merge("RGB", (g, g, g)), 1.0, -128)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=task.quality)
    return buf.getvalue()


def corrupt_bytes(data: bytes, mode: str, rng: np.random.Generator) -> bytes:
    """A truncated JPEG, or garbage that never starts with a valid image signature."""
    if mode == "truncate":
        return data[: int(len(data) * rng.uniform(0.4, 0.6))]
    garbage = rng.integers(0, 256, size=int(rng.integers(2_000, 60_000)), dtype=np.uint8).tobytes()
    return b"\x00GARBAGE" + garbage


def write_image(task: RenderTask, images_dir: Path) -> int:
    """Render (and corrupt, if planned) one image into ``images_dir``; returns its size in bytes."""
    data = render_image(task)
    if task.corrupt:
        data = corrupt_bytes(data, task.corrupt, np.random.default_rng([task.seed, task.index, 1]))
    atomic.write_bytes(Path(images_dir) / task.file_name, data)
    return len(data)
