"""The look of one lesion: ABCD features read out of a latent malignancy score (pure, seeded).

Each lesion draws a latent malignancy score ``z`` (melanoma ~ N(DELTA, 1), benign ~ N(0, 1),
look-alikes in between). The ABCD features are noisy read-outs of ``z``::

    feature = rho * z + sqrt(1 - rho**2) * noise

with a high ``rho`` for the shape features (Asymmetry: radial harmonics k=1..3 of the outline and
an off-centre colour distribution; Border: harmonics k=5..16 and edge sharpness) and a low ``rho``
for Colour variegation and Diameter. So a classifier that sees only colour statistics does clearly
worse than one that sees shape, and no classifier can beat the latent score itself (the classes
overlap). The order of the random draws is part of the sample (see ``plan.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DELTA = 2.8  # latent separation melanoma vs benign (in units of the latent's SD)

_PALETTE_BENIGN = (("dark", 0.55), ("light", 0.30), ("blue_grey", 0.08), ("black", 0.07))
_PALETTE_MELANOMA = (("dark", 0.30), ("black", 0.20), ("blue_grey", 0.18), ("white", 0.12), ("red", 0.10),
                     ("light", 0.10))  # fmt: skip


@dataclass(frozen=True)
class Lesion:
    """The look of one lesion, shared by all its images."""

    kind: str  # melanoma, nevus, blue_nevus, sk, lentigo, bcc, indeterminate
    radius: float  # mean outline radius, in units of the canvas short side
    harmonics: tuple[tuple[int, float, float], ...]  # (k, amplitude, phase) of the outline r(theta)
    edge: float  # width of the soft edge, in units of the radius
    density: float  # base melanin density
    centre_dark: float  # radial density profile: >0 darker centre, <0 darker rim
    net_freqs: tuple[tuple[float, float, float], ...]  # pigment network (fx, fy, phase)
    net_strength: float
    net_width: float
    blobs: tuple[tuple[float, float, float, str, float], ...]  # (u, v, sigma, colour, strength)
    vessels: int  # arborizing vessels (BCC)


def choice(rng: np.random.Generator, options: tuple[tuple[Any, float], ...]) -> Any:
    """One of the options, drawn with the given weights."""
    weights = np.array([w for _, w in options], dtype=float)
    return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _read_out(rng: np.random.Generator, z: float, rho: float) -> float:
    """A noisy standardised read-out of the latent score, shifted so that 0 is the class midpoint."""
    return rho * z + math.sqrt(1 - rho * rho) * float(rng.standard_normal()) - rho * DELTA / 2


def _outline(rng: np.random.Generator, a: float, b: float) -> tuple[list[tuple[int, float, float]], float]:
    """Outline harmonics (asymmetry ``a`` in the low orders, border ``b`` in the high ones) and edge width."""
    harmonics: list[tuple[int, float, float]] = []
    # elongation (k=2) is symmetric and does not depend on the class
    harmonics.append((2, float(rng.uniform(0.0, 0.12)), float(rng.uniform(0, 2 * math.pi))))
    # asymmetry: odd and mixed low orders with random phases leave no mirror axis
    low = 0.02 + 0.30 * a * a
    w_low = rng.dirichlet([1.5, 2.0, 1.5])
    for k, w in zip((1, 3, 4), w_low, strict=True):
        harmonics.append((k, float(low * w), float(rng.uniform(0, 2 * math.pi))))
    # border irregularity: many higher orders
    high = 0.012 + 0.20 * b * b
    ks = np.arange(5, 17)
    w_high = rng.gamma(1.0, 1.0, size=ks.size) / ks**0.5
    w_high = w_high / w_high.sum()
    for k, w in zip(ks, w_high, strict=True):
        harmonics.append((int(k), float(high * w), float(rng.uniform(0, 2 * math.pi))))
    edge = float(np.clip(0.16 - 0.12 * b + 0.03 * rng.standard_normal(), 0.02, 0.22))
    return harmonics, edge


def _network(
    rng: np.random.Generator, n: float
) -> tuple[tuple[tuple[float, float, float], ...], float, float]:
    """Pigment network: a band-limited random field whose zero set looks reticular; atypia ``n``."""
    n_freq = 16
    f0 = rng.uniform(22.0, 32.0)
    spread = 0.08 + 0.45 * n
    freqs = f0 * np.exp(spread * rng.standard_normal(n_freq))
    angles = rng.uniform(0, math.pi, n_freq)
    net_freqs = tuple(
        (float(f * math.cos(t)), float(f * math.sin(t)), float(rng.uniform(0, 2 * math.pi)))
        for f, t in zip(freqs, angles, strict=True)
    )
    return net_freqs, float(rng.uniform(0.15, 0.35) + 0.25 * n), float(0.25 + 0.25 * n)


def _blobs(rng: np.random.Generator, a: float, c: float) -> tuple[list[tuple], float, float]:
    """Colour blotches (their centroid moves off-centre with asymmetry ``a``) and that shift."""
    blobs: list[tuple[float, float, float, str, float]] = []
    shift_dir = rng.uniform(0, 2 * math.pi)
    shift = 0.05 + 0.5 * a
    sx, sy = shift * math.cos(shift_dir), shift * math.sin(shift_dir)
    n_blobs = int(rng.integers(1, 3) + round(3 * c * rng.uniform(0.4, 1.2)))
    p_mel_colours = 0.1 + 0.7 * c
    for _ in range(n_blobs):
        palette = _PALETTE_MELANOMA if rng.random() < p_mel_colours else _PALETTE_BENIGN
        colour = choice(rng, palette)
        r = rng.uniform(0.0, 0.55)
        t = rng.uniform(0, 2 * math.pi)
        u, v = r * math.cos(t) + sx * rng.uniform(0.5, 1.2), r * math.sin(t) + sy * rng.uniform(0.5, 1.2)
        sigma = rng.uniform(0.12, 0.35)
        strength = rng.uniform(0.4, 0.9)
        blobs.append((float(u), float(v), float(sigma), colour, float(strength)))
    return blobs, sx, sy


def _kind_look(rng: np.random.Generator, kind: str, look: dict[str, Any], sx: float, sy: float) -> None:
    """What sets each kind apart (hypopigmented melanoma, blue nevus, SK, lentigo, BCC), in place."""
    if kind == "melanoma" and rng.random() < 0.1:  # hypopigmented melanoma
        look["density"] *= 0.45
        look["blobs"].append((float(sx), float(sy), 0.4, "pink", 0.5))
    elif kind == "blue_nevus":
        look["density"] = float(rng.uniform(0.5, 0.9))
        look["blobs"] = [(0.0, 0.0, 0.55, "steel_blue", float(rng.uniform(0.65, 0.85)))]
        look["net_strength"] = 0.0
        look["edge"] = float(rng.uniform(0.08, 0.2))
    elif kind == "sk":
        look["edge"] = min(look["edge"], 0.05)
        look["density"] = float(rng.uniform(0.45, 1.2))
        look["net_strength"] = 0.0
        for _ in range(int(rng.integers(4, 12))):  # milia-like cysts and comedo-like openings
            colour = "white" if rng.random() < 0.6 else "black"
            look["blobs"].append(
                (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.6, 0.6)), 0.035, colour, 0.8)
            )
    elif kind == "lentigo":
        look["density"] = float(rng.uniform(0.25, 0.55))
        look["net_strength"] *= 0.5
        look["blobs"] = [bl for bl in look["blobs"] if bl[3] in ("dark", "light")]
    elif kind == "bcc":
        look["density"] = float(rng.uniform(0.05, 0.2))
        look["net_strength"] = 0.0
        look["blobs"] = [(0.0, 0.0, 0.6, "pink", 0.6)]
        for _ in range(int(rng.integers(2, 6))):
            look["blobs"].append(
                (float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5)), 0.08, "blue_grey", 0.85)
            )
        look["vessels"] = int(rng.integers(2, 6))


def plan_lesion(rng: np.random.Generator, kind: str) -> Lesion:
    """One lesion of ``kind``: ABCD features read out of a latent malignancy score, then its look."""
    mu = {"melanoma": DELTA, "indeterminate": 0.5 * DELTA, "sk": 0.4 * DELTA, "bcc": 0.5 * DELTA}
    z = float(rng.normal(mu.get(kind, 0.0), 1.0))
    a = _sigmoid(1.6 * _read_out(rng, z, 0.9))  # asymmetry in (0, 1)
    b = _sigmoid(1.6 * _read_out(rng, z, 0.9))  # border irregularity
    c = _sigmoid(1.2 * _read_out(rng, z, 0.39))  # colour variegation
    d = _read_out(rng, z, 0.26)  # diameter
    n = _sigmoid(1.2 * _read_out(rng, z, 0.43))  # network atypia
    if kind == "blue_nevus":
        a, b = a * 0.5, b * 0.5
    radius = float(np.clip(0.21 * math.exp(0.16 * d + 0.12 * rng.standard_normal()), 0.09, 0.31))
    if kind in ("blue_nevus", "bcc"):
        radius *= 0.8
    harmonics, edge = _outline(rng, a, b)
    density = float(rng.uniform(0.35, 1.15))
    centre_dark = float(rng.uniform(-0.2, 0.5))
    net_freqs, net_strength, net_width = _network(rng, n)
    blobs, sx, sy = _blobs(rng, a, c)
    look: dict[str, Any] = {"density": density, "blobs": blobs, "net_strength": net_strength, "edge": edge,
                            "vessels": 0}  # fmt: skip
    _kind_look(rng, kind, look, sx, sy)
    return Lesion(
        kind=kind,
        radius=radius,
        harmonics=tuple(harmonics),
        edge=look["edge"],
        density=look["density"],
        centre_dark=centre_dark,
        net_freqs=net_freqs,
        net_strength=look["net_strength"],
        net_width=net_width,
        blobs=tuple(look["blobs"]),
        vessels=look["vessels"],
    )


def outline_max(lesion: Lesion) -> float:
    """The largest outline radius, in units of the mean radius."""
    return 1.0 + sum(abs(amp) for _, amp, _ in lesion.harmonics)
