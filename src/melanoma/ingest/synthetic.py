"""A deterministic generator of ISIC-like dermoscopy images in the raw ISIC download layout.

The sample exists so that every later stage (cleaning, resizing, the scikit-learn baseline, the CNN)
does real work and gets honest, imperfect results without a download. It writes exactly what
``isic image download`` writes (see ``melanoma.ingest.layout``)::

    raw_dir/images/ISIC_xxxxxxx.jpg, metadata.csv, attribution.txt, licenses/<lic>.txt,
    ingest_report.json

How the images carry the label
------------------------------
Each lesion draws a latent malignancy score ``z`` (melanoma ~ N(DELTA, 1), benign ~ N(0, 1),
look-alikes in between). The ABCD features are noisy read-outs of ``z``::

    feature = rho * z + sqrt(1 - rho**2) * noise

with a high ``rho`` for the shape features (Asymmetry: radial harmonics k=1..3 of the outline and an
off-centre colour distribution; Border: harmonics k=5..16 and edge sharpness) and a low ``rho`` for
Colour variegation and Diameter. So a classifier that sees only colour statistics does clearly worse
than one that sees shape, and no classifier can beat the latent score itself (the classes overlap).
Benign look-alikes (blue nevi, seborrheic keratoses, dark nevi) and hypopigmented melanomas add
colour overlap; hairs, vignetting, gel bubbles, ruler marks, zoom, rotation and lighting add nuisance.

Speed: the lesion and skin are rendered on a small canvas (short side ``CANVAS``), upscaled with
Pillow, then hairs, ruler marks and sensor noise are added at full resolution.

Determinism: all patient, lesion and image parameters are planned in the main process from one seeded
generator; each image is rendered from its own ``np.random.default_rng([seed, index])``; the output
bytes do not depend on ``workers``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from melanoma import atomic
from melanoma.config import SyntheticParams
from melanoma.contracts import IMAGES_DIR, write_raw_metadata

CANVAS = 256  # short side of the canvas the lesion is rendered on
DELTA = 2.8  # latent separation melanoma vs benign (in units of the latent's SD)
COMMON_WIDTHS = (600, 640, 1024, 1280, 1504, 2048)
ASPECTS = ((4 / 3, 0.75), (3 / 2, 0.15), (1.0, 0.10))
SITES = (("Trunk", 0.42), ("Lower extremity", 0.22), ("Upper extremity", 0.18), ("Head and neck", 0.18))

MELANOMA_DX2 = "Malignant melanocytic proliferations (Melanoma)"
# kind -> (diagnosis_1, diagnosis_2, diagnosis_3, melanocytic)
_DIAGNOSES: dict[str, tuple[str, str | None, str | None, bool]] = {
    "nevus": ("Benign", "Benign melanocytic proliferations", "Nevus", True),
    "blue_nevus": ("Benign", "Benign melanocytic proliferations", "Nevus", True),
    "sk": ("Benign", "Benign epidermal proliferations", "Seborrheic keratosis", False),
    "lentigo": ("Benign", "Benign epidermal proliferations", "Solar lentigo", False),
    "bcc": (
        "Malignant",
        "Malignant adnexal epithelial proliferations - Follicular",
        "Basal cell carcinoma",
        False,
    ),
    "indeterminate": ("Indeterminate", "Indeterminate melanocytic proliferations", None, True),
}
# benign kinds and their shares among benign lesions
_BENIGN_KINDS = (("nevus", 0.74), ("sk", 0.12), ("lentigo", 0.08), ("blue_nevus", 0.06))
_BCC_SHARE = 0.02  # of the not-melanoma, labelled lesions

# (attribution, licence, share of patients)
_COHORTS = (
    ("Anonymous", "CC-0", 0.50),
    ("Synthetic Dermoscopy Consortium", "CC-0", 0.18),
    ("Synthetic Clinic A", "CC-BY", 0.20),
    ("Synthetic Clinic B", "CC-BY-NC", 0.12),
)
_LICENSE_URLS = {
    "CC-0": ("CC0 1.0 Universal (CC0 1.0) Public Domain Dedication",
             "https://creativecommons.org/publicdomain/zero/1.0/"),
    "CC-BY": ("Creative Commons Attribution 4.0 International (CC BY 4.0)",
              "https://creativecommons.org/licenses/by/4.0/"),
    "CC-BY-NC": ("Creative Commons Attribution-NonCommercial 4.0 International (CC BY-NC 4.0)",
                 "https://creativecommons.org/licenses/by-nc/4.0/"),
}  # fmt: skip
MISSING_RATE = 0.03

# Beer-Lambert absorption of melanin per RGB channel: density d turns skin into brown/black.
_ABSORB = np.array([0.80, 1.10, 1.30], dtype=np.float32)
_COLOURS = {  # overlay colours (RGB 0-255)
    "blue_grey": (96, 110, 138),
    "steel_blue": (70, 86, 120),
    "white": (226, 214, 212),
    "red": (196, 96, 104),
    "pink": (214, 142, 146),
}


def license_texts() -> dict[str, str]:
    """Short licence files, as ``licenses/<lic>.txt`` of an ISIC download (here: synthetic images)."""
    out = {}
    for lic, (name, url) in _LICENSE_URLS.items():
        out[lic] = (
            f"{lic}: {name}\n{url}\n\n"
            "The images in this collection are synthetic: they were generated by a program "
            "(melanoma.ingest.synthetic) and show no real patient. They are released under the "
            f"licence named above; see {url} for its full text.\n"
        )
    return out


@dataclass(frozen=True)
class _Lesion:
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


@dataclass(frozen=True)
class _Task:
    index: int
    seed: int
    path: str
    width: int
    height: int
    quality: int
    lesion: _Lesion
    rotation: float
    zoom: float
    offset: tuple[float, float]
    skin: tuple[float, float, float]
    gain: tuple[float, float, float]
    hair: float  # expected number of hairs
    vignette: str  # "mild" or "aperture"
    bubbles: int
    ruler: bool
    corrupt: str | None  # None, "truncate" or "garbage"


# --------------------------------------------------------------------------------------------- planning


def _choice(rng: np.random.Generator, options: tuple[tuple[Any, float], ...]) -> Any:
    weights = np.array([w for _, w in options], dtype=float)
    return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _read_out(rng: np.random.Generator, z: float, rho: float) -> float:
    """A noisy standardised read-out of the latent score, shifted so that 0 is the class midpoint."""
    return rho * z + math.sqrt(1 - rho * rho) * float(rng.standard_normal()) - rho * DELTA / 2


def _plan_lesion(rng: np.random.Generator, kind: str) -> _Lesion:
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

    density = float(rng.uniform(0.35, 1.15))
    centre_dark = float(rng.uniform(-0.2, 0.5))
    # pigment network: a band-limited random field; its zero set looks like a reticular network
    n_freq = 16
    f0 = rng.uniform(22.0, 32.0)
    spread = 0.08 + 0.45 * n
    freqs = f0 * np.exp(spread * rng.standard_normal(n_freq))
    angles = rng.uniform(0, math.pi, n_freq)
    net_freqs = tuple(
        (float(f * math.cos(t)), float(f * math.sin(t)), float(rng.uniform(0, 2 * math.pi)))
        for f, t in zip(freqs, angles, strict=True)
    )
    net_strength = float(rng.uniform(0.15, 0.35) + 0.25 * n)
    net_width = float(0.25 + 0.25 * n)

    # colour blotches; their centroid moves off-centre with asymmetry
    blobs: list[tuple[float, float, float, str, float]] = []
    shift_dir = rng.uniform(0, 2 * math.pi)
    shift = 0.05 + 0.5 * a
    sx, sy = shift * math.cos(shift_dir), shift * math.sin(shift_dir)
    n_blobs = int(rng.integers(1, 3) + round(3 * c * rng.uniform(0.4, 1.2)))
    palette_benign = (("dark", 0.55), ("light", 0.30), ("blue_grey", 0.08), ("black", 0.07))
    palette_mel = (
        ("dark", 0.30),
        ("black", 0.20),
        ("blue_grey", 0.18),
        ("white", 0.12),
        ("red", 0.10),
        ("light", 0.10),
    )
    p_mel_colours = 0.1 + 0.7 * c
    for _ in range(n_blobs):
        palette = palette_mel if rng.random() < p_mel_colours else palette_benign
        colour = _choice(rng, palette)
        r = rng.uniform(0.0, 0.55)
        t = rng.uniform(0, 2 * math.pi)
        u, v = r * math.cos(t) + sx * rng.uniform(0.5, 1.2), r * math.sin(t) + sy * rng.uniform(0.5, 1.2)
        sigma = rng.uniform(0.12, 0.35)
        strength = rng.uniform(0.4, 0.9)
        blobs.append((float(u), float(v), float(sigma), colour, float(strength)))

    vessels = 0
    if kind == "melanoma" and rng.random() < 0.1:  # hypopigmented melanoma
        density *= 0.45
        blobs.append((float(sx), float(sy), 0.4, "pink", 0.5))
    elif kind == "blue_nevus":
        density = float(rng.uniform(0.5, 0.9))
        blobs = [(0.0, 0.0, 0.55, "steel_blue", float(rng.uniform(0.65, 0.85)))]
        net_strength = 0.0
        edge = float(rng.uniform(0.08, 0.2))
    elif kind == "sk":
        edge = min(edge, 0.05)
        density = float(rng.uniform(0.45, 1.2))
        net_strength = 0.0
        for _ in range(int(rng.integers(4, 12))):  # milia-like cysts and comedo-like openings
            colour = "white" if rng.random() < 0.6 else "black"
            blobs.append((float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.6, 0.6)), 0.035, colour, 0.8))
    elif kind == "lentigo":
        density = float(rng.uniform(0.25, 0.55))
        net_strength *= 0.5
        blobs = [bl for bl in blobs if bl[3] in ("dark", "light")]
    elif kind == "bcc":
        density = float(rng.uniform(0.05, 0.2))
        net_strength = 0.0
        blobs = [(0.0, 0.0, 0.6, "pink", 0.6)]
        for _ in range(int(rng.integers(2, 6))):
            blobs.append(
                (float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5)), 0.08, "blue_grey", 0.85)
            )
        vessels = int(rng.integers(2, 6))

    return _Lesion(
        kind=kind,
        radius=radius,
        harmonics=tuple(harmonics),
        edge=edge,
        density=density,
        centre_dark=centre_dark,
        net_freqs=net_freqs,
        net_strength=net_strength,
        net_width=net_width,
        blobs=tuple(blobs),
        vessels=vessels,
    )


def _outline_max(lesion: _Lesion) -> float:
    return 1.0 + sum(abs(amp) for _, amp, _ in lesion.harmonics)


def _image_size(rng: np.random.Generator, p: SyntheticParams) -> tuple[int, int]:
    common = [w for w in COMMON_WIDTHS if p.min_width <= w <= p.max_width]
    if common and rng.random() < 0.65:
        width = int(common[int(rng.integers(len(common)))])
    else:
        width = int(rng.integers(p.min_width, p.max_width + 1))
    aspect = _choice(rng, ASPECTS)
    height = max(1, int(round(width / aspect)))
    if aspect != 1.0 and rng.random() < 0.05:  # the odd portrait photo
        width, height = height, width
    return width, height


def _ids(rng: np.random.Generator, n: int, prefix: str) -> list[str]:
    """n distinct, sparse, 7-digit ids in random order."""
    base = int(rng.integers(0, 10**7 - 4 * n - 1))
    numbers = base + np.sort(rng.choice(4 * n, size=n, replace=False))
    return [f"{prefix}_{int(x):07d}" for x in rng.permutation(numbers)]


def _plan(raw_dir: Path, params: SyntheticParams, seed: int) -> tuple[list[_Task], list[dict], dict]:
    """Plan every record and render task; returns (tasks, records, report extras)."""
    p = params
    n_total = p.n_images
    if n_total < p.corrupt_count + p.duplicate_count + 1:
        raise ValueError(
            f"n_images={n_total} leaves no clean image beside {p.corrupt_count} corrupt "
            f"and {p.duplicate_count} duplicate records"
        )
    rng = np.random.default_rng([seed, 0x5EED])
    n_base = n_total - p.duplicate_count

    # patients -> lesions -> images
    lesion_sizes: list[int] = []
    lesion_patient: list[int] = []
    n_patients = 0
    planned = 0
    while planned < n_base:
        n_les = min(int(rng.geometric(0.55)), p.max_lesions_per_patient)
        for _ in range(n_les):
            if planned >= n_base:
                break
            k = min(int(rng.geometric(0.5)), p.max_images_per_lesion, n_base - planned)
            lesion_sizes.append(k)
            lesion_patient.append(n_patients)
            planned += k
        n_patients += 1
    n_lesions = len(lesion_sizes)

    # labels per lesion: fill melanoma and unlabelled image quotas greedily over a shuffled order
    kinds = [""] * n_lesions
    order = rng.permutation(n_lesions)
    min_each = 2 if n_total >= 10 else 1
    mel_target = max(int(round(p.melanoma_fraction * n_base)), min_each)
    unl_target = int(round(p.unlabeled_fraction * n_base))
    mel = unl = 0
    for i in order:
        size = lesion_sizes[i]
        if mel < mel_target and mel + size <= mel_target:
            kinds[i], mel = "melanoma", mel + size
    for i in order:
        size = lesion_sizes[i]
        if not kinds[i] and unl < unl_target and unl + size <= unl_target:
            kinds[i], unl = "indeterminate", unl + size
    for i in range(n_lesions):
        if not kinds[i]:
            kinds[i] = "bcc" if rng.random() < _BCC_SHARE else _choice(rng, _BENIGN_KINDS)
    benign_images = sum(s for s, k in zip(lesion_sizes, kinds, strict=True) if k in dict(_BENIGN_KINDS))
    if benign_images < min_each:
        for i in range(n_lesions):
            if kinds[i] == "bcc":
                kinds[i] = "nevus"

    # patients: cohort, skin, age, sex, hairiness
    has_mel = [False] * n_patients
    for pat, kind in zip(lesion_patient, kinds, strict=True):
        has_mel[pat] = has_mel[pat] or kind == "melanoma"
    patient_ids = _ids(rng, n_patients, "IP")
    patients = []
    for i in range(n_patients):
        attribution, lic = _choice(rng, tuple(((a, lc), w) for a, lc, w in _COHORTS))
        age = rng.normal(61, 14) if has_mel[i] else rng.normal(44, 16)
        age_approx = int(round(float(np.clip(age, 3, 87)) / 5) * 5)
        tone = rng.uniform(0, 1)  # light .. darker skin
        skin = (
            float(236 - 70 * tone + rng.normal(0, 5)),
            float(196 - 75 * tone + rng.normal(0, 6)),
            float(178 - 80 * tone + rng.normal(0, 6)),
        )
        patients.append(
            {
                "patient_id": patient_ids[i],
                "attribution": attribution,
                "copyright_license": lic,
                "age_approx": None if rng.random() < MISSING_RATE else age_approx,
                "sex": None if rng.random() < MISSING_RATE else ("male" if rng.random() < 0.52 else "female"),
                "skin": skin,
                "hair": float(_choice(rng, ((0.0, 0.35), (3.0, 0.3), (10.0, 0.2), (25.0, 0.15)))),
            }
        )

    # lesions and their images
    lesion_ids = _ids(rng, n_lesions, "IL")
    base: list[dict[str, Any]] = []  # one per rendered image: {"record", "task_kwargs"}
    for li in range(n_lesions):
        kind = kinds[li]
        pat = patients[lesion_patient[li]]
        lesion = _plan_lesion(rng, kind)
        site = None if rng.random() < MISSING_RATE else _choice(rng, SITES)
        record: dict[str, Any] = {
            "attribution": pat["attribution"],
            "copyright_license": pat["copyright_license"],
            "image_type": "dermoscopic",
            "patient_id": pat["patient_id"],
            "lesion_id": lesion_ids[li],
        }
        for key in ("age_approx", "sex"):
            if pat[key] is not None:
                record[key] = pat[key]
        if site is not None:
            record["anatom_site_1"] = site
        if kind == "melanoma":
            dx3 = "Melanoma Invasive" if rng.random() < 0.6 else "Melanoma in situ"
            record.update(diagnosis_1="Malignant", diagnosis_2=MELANOMA_DX2, diagnosis_3=dx3)
            record.update(diagnosis_confirm_type="histopathology", melanocytic=True)
        elif kind == "indeterminate" and rng.random() < 0.5:
            pass  # no diagnosis at all
        else:
            dx1, dx2, dx3, melanocytic = _DIAGNOSES[kind]
            record["diagnosis_1"] = dx1
            if dx2:
                record["diagnosis_2"] = dx2
            if dx3:
                record["diagnosis_3"] = dx3
            if kind in ("nevus", "blue_nevus", "sk", "lentigo"):
                record["diagnosis_confirm_type"] = _choice(
                    rng,
                    (
                        ("histopathology", 0.45),
                        ("serial imaging showing no change", 0.25),
                        ("single image expert consensus", 0.30),
                    ),
                )
            elif kind == "bcc":
                record["diagnosis_confirm_type"] = "histopathology"
            if rng.random() > 0.1:
                record["melanocytic"] = melanocytic
        limit = 0.46 / (lesion.radius * _outline_max(lesion))
        for _ in range(lesion_sizes[li]):
            width, height = _image_size(rng, p)
            zoom = float(np.clip(rng.uniform(0.82, 1.18), 0.5, limit * 0.92))
            room = max(0.0, 0.46 - lesion.radius * _outline_max(lesion) * zoom)
            off = rng.uniform(-1, 1, size=2) * min(room, 0.07)
            shade = rng.normal(1.0, 0.04)
            kwargs = {
                "width": width,
                "height": height,
                "lesion": lesion,
                "rotation": float(rng.uniform(0, 2 * math.pi)),
                "zoom": zoom,
                "offset": (float(off[0]), float(off[1])),
                "skin": pat["skin"],
                "gain": tuple(float(shade * g) for g in rng.normal(1.0, 0.035, size=3)),
                "hair": pat["hair"] * float(rng.uniform(0.5, 1.5)),
                "vignette": "aperture" if rng.random() < 0.3 else "mild",
                "bubbles": int(rng.integers(1, 5)) if rng.random() < 0.12 else 0,
                "ruler": bool(rng.random() < 0.07),
            }
            base.append({"record": dict(record, pixels_x=width, pixels_y=height), "kwargs": kwargs})

    # corrupt images: never the first two melanoma / benign images, so some clean labels survive
    protected: set[int] = set()
    for want in ("Malignant", "Benign"):
        hits = [
            i
            for i, b in enumerate(base)
            if b["record"].get("diagnosis_1") == want
            and (want == "Benign" or b["record"].get("diagnosis_2") == MELANOMA_DX2)
        ]
        protected.update(hits[:min_each])
    candidates = [i for i in range(n_base) if i not in protected]
    if len(candidates) < p.corrupt_count:
        candidates = list(range(n_base))
    corrupt_idx = {int(i) for i in rng.choice(candidates, size=p.corrupt_count, replace=False)}
    corrupt_mode = {i: ("truncate" if rng.random() < 0.6 else "garbage") for i in sorted(corrupt_idx)}
    clean = [i for i in range(n_base) if i not in corrupt_idx]
    dup_src = [
        int(i) for i in rng.choice(clean, size=p.duplicate_count, replace=len(clean) < p.duplicate_count)
    ]

    isic_ids = _ids(rng, n_total, "ISIC")
    images_dir = Path(raw_dir) / IMAGES_DIR
    tasks: list[_Task] = []
    records: list[dict] = []
    for i, b in enumerate(base):
        rec = {"isic_id": isic_ids[i], **b["record"]}
        records.append(rec)
        tasks.append(
            _Task(
                index=i,
                seed=seed,
                path=str(images_dir / f"{isic_ids[i]}.jpg"),
                quality=p.jpeg_quality,
                corrupt=corrupt_mode.get(i),
                **b["kwargs"],
            )
        )
    duplicates = []
    for j, src in enumerate(dup_src):
        new_id = isic_ids[n_base + j]
        records.append({**records[src], "isic_id": new_id})
        duplicates.append({"isic_id": new_id, "duplicate_of": isic_ids[src]})
    extras = {
        "n_patients": n_patients,
        "n_lesions": n_lesions,
        "corrupt_ids": sorted(isic_ids[i] for i in corrupt_idx),
        "corrupt_modes": dict(sorted((isic_ids[i], m) for i, m in corrupt_mode.items())),
        "duplicates": sorted(duplicates, key=lambda d: d["isic_id"]),
        "kinds": Counter(kinds[li] for li in range(n_lesions)),
    }
    return tasks, records, extras


# -------------------------------------------------------------------------------------------- rendering


def _smooth_field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, n: int, fmax: float) -> np.ndarray:
    """A smooth random field of unit-ish amplitude from a few random low-frequency waves."""
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.float32)
    for _ in range(n):
        f = rng.uniform(0.5, fmax)
        t = rng.uniform(0, 2 * math.pi)
        out += np.cos(np.float32(f * math.cos(t)) * x + np.float32(f * math.sin(t)) * y + rng.uniform(0, 6.3))
    return out / np.float32(math.sqrt(n / 2))


def _render_canvas(task: _Task, rng: np.random.Generator, cw: int, ch: int) -> np.ndarray:
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
    les = skin[None, None, :] * shading[..., None] * np.exp(-density[..., None] * _ABSORB)
    for colour_rgb, g in overlays:
        g = np.clip(g, 0, 0.9)[..., None]
        les = les * (1 - g) + colour_rgb * g
    a = alpha[..., None]
    img = img * (1 - a) + les * a

    for _ in range(lesion.vessels):  # arborizing vessels: thin red curves inside the lesion
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


def render_image(task: _Task) -> bytes:
    """Return the JPEG bytes of one image (uncorrupted)."""
    rng = np.random.default_rng([task.seed, task.index])
    w, h = task.width, task.height
    scale = min(1.0, CANVAS / min(w, h))
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = _render_canvas(task, rng, cw, ch)
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


def _corrupt(data: bytes, mode: str, rng: np.random.Generator) -> bytes:
    if mode == "truncate":
        return data[: int(len(data) * rng.uniform(0.4, 0.6))]
    garbage = rng.integers(0, 256, size=int(rng.integers(2_000, 60_000)), dtype=np.uint8).tobytes()
    return b"\x00GARBAGE" + garbage  # never a valid image signature


def _work(task: _Task) -> tuple[int, float]:
    start = time.perf_counter()
    data = render_image(task)
    if task.corrupt:
        data = _corrupt(data, task.corrupt, np.random.default_rng([task.seed, task.index, 1]))
    atomic.write_bytes(Path(task.path), data)
    return len(data), time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- driver


def _label_kind(record: dict) -> str:
    if record.get("diagnosis_2") == MELANOMA_DX2:
        return "melanoma"
    if record.get("diagnosis_1") == "Benign":
        return "benign"
    if record.get("diagnosis_1") == "Malignant":
        return "other_malignant"
    return "unlabeled"


def generate_synthetic(raw_dir: Path, params: SyntheticParams, seed: int, workers: int = 0) -> dict:
    """Write raw_dir/images/ISIC_xxxxxxx.jpg + metadata.csv, attribution.txt, licenses/, ingest_report.json.

    Returns the report dict (also written to ingest_report.json). The images and metadata depend only on
    ``params`` and ``seed``, not on ``workers`` (0 = all cores). Stale ``ISIC_*.jpg`` files in
    ``raw_dir/images`` that are not part of this sample are removed.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    raw_dir = Path(raw_dir)
    tasks, records, extras = _plan(raw_dir, params, seed)
    images_dir = raw_dir / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    wanted = {f"{r['isic_id']}.jpg" for r in records}
    for stale in images_dir.glob("ISIC_*.jpg"):
        if stale.name not in wanted:
            stale.unlink()

    n_workers = (os.cpu_count() or 1) if workers <= 0 else workers
    n_workers = max(1, min(n_workers, len(tasks)))
    bar = tqdm(total=len(tasks), desc="synthetic images", unit="img", leave=False)
    sizes: list[int] = []
    cpu_seconds = 0.0
    if n_workers == 1:
        results = map(_work, tasks)
    else:
        pool = ProcessPoolExecutor(max_workers=n_workers)
        results = pool.map(_work, tasks, chunksize=max(1, min(16, len(tasks) // (n_workers * 4))))
    try:
        for size, secs in results:
            sizes.append(size)
            cpu_seconds += secs
            bar.update()
    finally:
        if n_workers > 1:
            pool.shutdown(cancel_futures=True)
        bar.close()

    for dup in extras["duplicates"]:
        data = (images_dir / f"{dup['duplicate_of']}.jpg").read_bytes()
        atomic.write_bytes(images_dir / f"{dup['isic_id']}.jpg", data)
        sizes.append(len(data))

    lics = license_texts()
    used = {r["copyright_license"] for r in records}
    seconds = time.perf_counter() - start
    report = {
        "source": "synthetic",
        "seed": seed,
        "params": dataclasses.asdict(params),
        "n_images": len(records),
        "counts": {
            "diagnosis_1": dict(sorted(Counter(r.get("diagnosis_1", "(missing)") for r in records).items())),
            "label": dict(sorted(Counter(_label_kind(r) for r in records).items())),
            "lesion_kind": dict(sorted(extras["kinds"].items())),
            "copyright_license": dict(sorted(Counter(r["copyright_license"] for r in records).items())),
        },
        "n_corrupt": len(extras["corrupt_ids"]),
        "corrupt_ids": extras["corrupt_ids"],
        "corrupt_modes": extras["corrupt_modes"],
        "n_duplicates": len(extras["duplicates"]),
        "duplicates": extras["duplicates"],
        "n_patients": extras["n_patients"],
        "n_lesions": extras["n_lesions"],
        "total_bytes": sum(sizes),
        "workers": n_workers,
        "seconds": round(seconds, 3),
        "seconds_per_image": round(cpu_seconds / max(1, len(tasks)), 4),  # one core, render + write
    }
    write_raw_metadata(raw_dir, records, {k: v for k, v in lics.items() if k in used}, report)
    return report
