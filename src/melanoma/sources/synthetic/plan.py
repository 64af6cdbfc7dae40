"""Planning the synthetic sample: which images, labels, patients, lesions and metadata (pure, seeded).

Everything random about the sample except the pixels is decided here, in the main process, from
one generator ``np.random.default_rng([seed, 0x5EED])``; the result is a list of ``RenderTask``
(what ``render.py`` draws) and the metadata records. The order of the random draws IS the
sample: reordering two draws changes every image and the committed ``dvc.lock``.

The look of each lesion (how the images carry the label) is planned in ``lesion.py``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from melanoma.config import SyntheticParams
from melanoma.sources.common.vocabulary import ANATOM_SITES_1
from melanoma.sources.synthetic.lesion import Lesion, choice, outline_max, plan_lesion

COMMON_WIDTHS = (600, 640, 1024, 1280, 1504, 2048)
ASPECTS = ((4 / 3, 0.75), (3 / 2, 0.15), (1.0, 0.10))
SITES = tuple(zip(ANATOM_SITES_1, (0.42, 0.22, 0.18, 0.18), strict=True))  # (site, share)
MISSING_RATE = 0.03

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
_CONFIRM_TYPES = (
    ("histopathology", 0.45),
    ("serial imaging showing no change", 0.25),
    ("single image expert consensus", 0.30),
)


@dataclass(frozen=True)
class RenderTask:
    """Everything ``render.render_image`` needs for one image (its own RNG is ``[seed, index]``)."""

    index: int
    seed: int
    file_name: str
    width: int
    height: int
    quality: int
    lesion: Lesion
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


@dataclass
class Plan:
    """The planned sample: render tasks, metadata records and the facts the report states."""

    tasks: list[RenderTask]
    records: list[dict[str, Any]]
    n_patients: int
    n_lesions: int
    corrupt_ids: list[str]
    corrupt_modes: dict[str, str]
    duplicates: list[dict[str, str]]  # [{"isic_id", "duplicate_of"}], sorted
    kinds: Counter[str]  # lesions per kind


# ------------------------------------------------------------------------------------------ helpers
def _ids(rng: np.random.Generator, n: int, prefix: str) -> list[str]:
    """n distinct, sparse, 7-digit ids in random order."""
    base = int(rng.integers(0, 10**7 - 4 * n - 1))
    numbers = base + np.sort(rng.choice(4 * n, size=n, replace=False))
    return [f"{prefix}_{int(x):07d}" for x in rng.permutation(numbers)]


# --------------------------------------------------------------------------- patients, lesions, labels


def _lesion_sizes(
    rng: np.random.Generator, p: SyntheticParams, n_base: int
) -> tuple[list[int], list[int], int]:
    """Images per lesion and each lesion's patient, until ``n_base`` images; and the patient count."""
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
    return lesion_sizes, lesion_patient, n_patients


def _lesion_kinds(
    rng: np.random.Generator, p: SyntheticParams, sizes: list[int], n_base: int, min_each: int
) -> list[str]:
    """Kind per lesion: melanoma and unlabelled image quotas filled greedily over a shuffled order."""
    n_lesions = len(sizes)
    kinds = [""] * n_lesions
    order = rng.permutation(n_lesions)
    mel_target = max(int(round(p.melanoma_fraction * n_base)), min_each)
    unl_target = int(round(p.unlabeled_fraction * n_base))
    mel = unl = 0
    for i in order:
        if mel < mel_target and mel + sizes[i] <= mel_target:
            kinds[i], mel = "melanoma", mel + sizes[i]
    for i in order:
        if not kinds[i] and unl < unl_target and unl + sizes[i] <= unl_target:
            kinds[i], unl = "indeterminate", unl + sizes[i]
    for i in range(n_lesions):
        if not kinds[i]:
            kinds[i] = "bcc" if rng.random() < _BCC_SHARE else choice(rng, _BENIGN_KINDS)
    benign_images = sum(s for s, k in zip(sizes, kinds, strict=True) if k in dict(_BENIGN_KINDS))
    if benign_images < min_each:
        kinds = ["nevus" if k == "bcc" else k for k in kinds]
    return kinds


def _patients(rng: np.random.Generator, n_patients: int, has_mel: list[bool]) -> list[dict[str, Any]]:
    """Cohort (attribution, licence), age, sex, skin colour and hairiness of each patient."""
    patient_ids = _ids(rng, n_patients, "IP")
    patients = []
    for i in range(n_patients):
        attribution, lic = choice(rng, tuple(((a, lc), w) for a, lc, w in _COHORTS))
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
                "hair": float(choice(rng, ((0.0, 0.35), (3.0, 0.3), (10.0, 0.2), (25.0, 0.15)))),
            }
        )
    return patients


def _diagnosis_fields(rng: np.random.Generator, kind: str) -> dict[str, Any]:
    """ISIC's hierarchical diagnosis, confirmation type and ``melanocytic`` for a lesion of ``kind``."""
    if kind == "melanoma":
        dx3 = "Melanoma Invasive" if rng.random() < 0.6 else "Melanoma in situ"
        return {"diagnosis_1": "Malignant", "diagnosis_2": MELANOMA_DX2, "diagnosis_3": dx3,
                "diagnosis_confirm_type": "histopathology", "melanocytic": True}  # fmt: skip
    if kind == "indeterminate" and rng.random() < 0.5:
        return {}  # no diagnosis at all
    dx1, dx2, dx3, melanocytic = _DIAGNOSES[kind]
    fields: dict[str, Any] = {"diagnosis_1": dx1}
    if dx2:
        fields["diagnosis_2"] = dx2
    if dx3:
        fields["diagnosis_3"] = dx3
    if kind in ("nevus", "blue_nevus", "sk", "lentigo"):
        fields["diagnosis_confirm_type"] = choice(rng, _CONFIRM_TYPES)
    elif kind == "bcc":
        fields["diagnosis_confirm_type"] = "histopathology"
    if rng.random() > 0.1:
        fields["melanocytic"] = melanocytic
    return fields


def _lesion_record(
    rng: np.random.Generator, kind: str, pat: dict[str, Any], lesion_id: str
) -> dict[str, Any]:
    """The metadata every image of one lesion shares (the site is drawn here, after the lesion)."""
    site = None if rng.random() < MISSING_RATE else choice(rng, SITES)
    record: dict[str, Any] = {
        "attribution": pat["attribution"],
        "copyright_license": pat["copyright_license"],
        "image_type": "dermoscopic",
        "patient_id": pat["patient_id"],
        "lesion_id": lesion_id,
    }
    for key in ("age_approx", "sex"):
        if pat[key] is not None:
            record[key] = pat[key]
    if site is not None:
        record["anatom_site_1"] = site
    record.update(_diagnosis_fields(rng, kind))
    return record


def _image_size(rng: np.random.Generator, p: SyntheticParams) -> tuple[int, int]:
    common = [w for w in COMMON_WIDTHS if p.min_width <= w <= p.max_width]
    if common and rng.random() < 0.65:
        width = int(common[int(rng.integers(len(common)))])
    else:
        width = int(rng.integers(p.min_width, p.max_width + 1))
    aspect = choice(rng, ASPECTS)
    height = max(1, int(round(width / aspect)))
    if aspect != 1.0 and rng.random() < 0.05:  # the odd portrait photo
        width, height = height, width
    return width, height


def _image_view(
    rng: np.random.Generator, p: SyntheticParams, lesion: Lesion, pat: dict[str, Any]
) -> dict[str, Any]:
    """Size, framing, lighting and nuisances of one photo of ``lesion`` (RenderTask fields)."""
    limit = 0.46 / (lesion.radius * outline_max(lesion))
    width, height = _image_size(rng, p)
    zoom = float(np.clip(rng.uniform(0.82, 1.18), 0.5, limit * 0.92))
    room = max(0.0, 0.46 - lesion.radius * outline_max(lesion) * zoom)
    off = rng.uniform(-1, 1, size=2) * min(room, 0.07)
    shade = rng.normal(1.0, 0.04)
    return {
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


# ---------------------------------------------------------------------------------------- the plan


def _faults(
    rng: np.random.Generator, p: SyntheticParams, base: list[dict[str, Any]], min_each: int
) -> tuple[dict[int, str], list[int]]:
    """Corrupt images ({index: mode}) and the sources of exact duplicates.

    Never the first ``min_each`` melanoma / benign images, so some clean labels survive.
    """
    n_base = len(base)
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
    return corrupt_mode, dup_src


def _base_images(
    rng: np.random.Generator, p: SyntheticParams, n_base: int, min_each: int
) -> tuple[list[dict], list[str], int]:
    """One {"record", "view"} per rendered image, lesion by lesion; the lesion kinds; the patient count."""
    lesion_sizes, lesion_patient, n_patients = _lesion_sizes(rng, p, n_base)
    kinds = _lesion_kinds(rng, p, lesion_sizes, n_base, min_each)
    has_mel = [False] * n_patients
    for pat, kind in zip(lesion_patient, kinds, strict=True):
        has_mel[pat] = has_mel[pat] or kind == "melanoma"
    patients = _patients(rng, n_patients, has_mel)
    lesion_ids = _ids(rng, len(kinds), "IL")
    base: list[dict[str, Any]] = []
    for li, kind in enumerate(kinds):
        pat = patients[lesion_patient[li]]
        lesion = plan_lesion(rng, kind)
        record = _lesion_record(rng, kind, pat, lesion_ids[li])
        for _ in range(lesion_sizes[li]):
            view = _image_view(rng, p, lesion, pat)
            base.append(
                {"record": dict(record, pixels_x=view["width"], pixels_y=view["height"]), "view": view}
            )
    return base, kinds, n_patients


def plan_sample(params: SyntheticParams, seed: int) -> Plan:
    """Plan every record and render task of the sample; ValueError if no clean image would be left."""
    p = params
    n_total = p.n_images
    if n_total < p.corrupt_count + p.duplicate_count + 1:
        raise ValueError(
            f"n_images={n_total} leaves no clean image beside {p.corrupt_count} corrupt "
            f"and {p.duplicate_count} duplicate records"
        )
    rng = np.random.default_rng([seed, 0x5EED])
    n_base = n_total - p.duplicate_count
    min_each = 2 if n_total >= 10 else 1
    base, kinds, n_patients = _base_images(rng, p, n_base, min_each)
    corrupt_mode, dup_src = _faults(rng, p, base, min_each)
    isic_ids = _ids(rng, n_total, "ISIC")
    tasks: list[RenderTask] = []
    records: list[dict[str, Any]] = []
    for i, b in enumerate(base):
        records.append({"isic_id": isic_ids[i], **b["record"]})
        tasks.append(RenderTask(index=i, seed=seed, file_name=f"{isic_ids[i]}.jpg", quality=p.jpeg_quality,
                                corrupt=corrupt_mode.get(i), **b["view"]))  # fmt: skip
    duplicates = []
    for j, src in enumerate(dup_src):
        new_id = isic_ids[n_base + j]
        records.append({**records[src], "isic_id": new_id})
        duplicates.append({"isic_id": new_id, "duplicate_of": isic_ids[src]})
    return Plan(
        tasks=tasks,
        records=records,
        n_patients=n_patients,
        n_lesions=len(kinds),
        corrupt_ids=sorted(isic_ids[i] for i in corrupt_mode),
        corrupt_modes=dict(sorted((isic_ids[i], m) for i, m in corrupt_mode.items())),
        duplicates=sorted(duplicates, key=lambda d: d["isic_id"]),
        kinds=Counter(kinds),
    )
