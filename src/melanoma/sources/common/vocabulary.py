"""The vocabularies every source translates into: class names, anatomic sites, dataset splits.

Each lives here once. Licences have their own module (``licenses``); image suffixes are a
raw-layout rule (``raw_layout.IMAGE_SUFFIXES``).
"""

from __future__ import annotations

import re

# Class folder / class column names (normalised, see ``normalise_class``) ->
# (benign_malignant or None, legacy ISIC diagnosis or None).
CLASS_FOLDERS: dict[str, tuple[str | None, str | None]] = {
    "benign": ("benign", None),
    "0": ("benign", None),
    "malignant": ("malignant", None),
    "1": ("malignant", None),
    "melanoma": ("malignant", "melanoma"),
    "mel": ("malignant", "melanoma"),
    "nevus": ("benign", "nevus"),
    "nevi": ("benign", "nevus"),
    "nv": ("benign", "nevus"),
    "bcc": ("malignant", "basal cell carcinoma"),
    "basal cell carcinoma": ("malignant", "basal cell carcinoma"),
    "scc": ("malignant", "squamous cell carcinoma"),
    "squamous cell carcinoma": ("malignant", "squamous cell carcinoma"),
    "bkl": ("benign", "pigmented benign keratosis"),
    "pigmented benign keratosis": ("benign", "pigmented benign keratosis"),
    "sk": ("benign", "seborrheic keratosis"),
    "seborrheic keratosis": ("benign", "seborrheic keratosis"),
    "df": ("benign", "dermatofibroma"),
    "dermatofibroma": ("benign", "dermatofibroma"),
    "vasc": ("benign", "vascular lesion"),
    "vascular lesion": ("benign", "vascular lesion"),
    # Actinic keratosis (AKIEC includes Bowen's disease) is neither clearly benign nor malignant in
    # ISIC's legacy data; the diagnosis alone already makes it "not melanoma".
    "akiec": (None, "actinic keratosis"),
    "ak": (None, "actinic keratosis"),
    "actinic keratosis": (None, "actinic keratosis"),
}
# The 2019 challenge's UNK class: "unknown" decides nothing in labels.py, so such a row stays
# unlabeled. Not a class folder name: a folder called "unk" is more likely a mistake.
UNKNOWN_CLASS: tuple[str | None, str | None] = (None, "unknown")

# ISIC ``anatom_site_1`` values (current era), in the order the synthetic sample draws them.
ANATOM_SITES_1 = ("Trunk", "Lower extremity", "Upper extremity", "Head and neck")
# HAM10000 localization / 2020 challenge sites -> ISIC ``anatom_site_general``.
SITE_MAP = {
    "scalp": "head/neck",
    "ear": "head/neck",
    "face": "head/neck",
    "neck": "head/neck",
    "back": "posterior torso",
    "chest": "anterior torso",
    "abdomen": "anterior torso",
    "trunk": "torso",
    "hand": "upper extremity",
    "foot": "lower extremity",
    "acral": "palms/soles",
    "genital": "oral/genital",
    "unknown": "",
}

# The split words in ISIC dataset file names (challenge archives on the bucket).
DATASET_SPLITS = ("training", "validation", "test")


def normalise_class(name: str) -> str:
    """Case-folded name with ``_``/``-`` as spaces, for the class vocabulary."""
    return " ".join(re.split(r"[\s_\-]+", name.strip().casefold())).strip()


def label_fields(label: tuple[str | None, str | None]) -> dict[str, str]:
    """The ``benign_malignant`` / ``diagnosis`` fields of a class vocabulary entry."""
    bm, dx = label
    return {**({"benign_malignant": bm} if bm else {}), **({"diagnosis": dx} if dx else {})}


def site_general(value: str) -> str:
    """ISIC ``anatom_site_general`` for a HAM10000/2020 site name (unchanged if already ISIC's)."""
    low = value.strip().casefold()
    return SITE_MAP.get(low, low)
