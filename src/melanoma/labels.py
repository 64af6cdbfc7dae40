"""Melanoma / not-melanoma / unlabeled from ISIC metadata of any era.

The ISIC Archive has described diagnoses in three ways over time (see the ISIC API reference,
section 5):

* current era (since 2024-10): hierarchical ``diagnosis_1..5``, e.g. ``Malignant`` /
  ``Malignant melanocytic proliferations (Melanoma)`` / ``Melanoma in situ``;
* legacy flat ``diagnosis`` (lower-case, e.g. ``melanoma``, ``nevus``, ``AIMP``);
* legacy ``benign_malignant`` (``benign``, ``malignant``, ``indeterminate[/benign|/malignant]``),
  removed from the archive in 2025-06 but still in old dumps and the 2020 challenge CSV.

The target is melanoma (1) versus everything else (0). Rows whose diagnosis cannot say either
(``Indeterminate``, AIMP, ``indeterminate*``, no label field at all) are unlabeled (None) and are
dropped by the caller. The current-era fields win whenever they decide; the legacy fields are
consulted only when the hierarchical ones are absent or say nothing usable.

Choices beyond what ISIC states explicitly:

* ``Malignant`` / ``Collision - At least one malignant proliferation`` counts as melanoma,
  because ISIC's own ``DiagnosisEnum.is_melanoma`` counts it (a collision lesion containing a
  malignancy is treated as the positive class).
* Legacy ``benign_malignant == "malignant"`` with no diagnosis is melanoma: the ~2019 study
  this pipeline reproduces labelled benign vs malignant, and in the 2020 challenge data
  ``malignant`` is exactly ``diagnosis == "melanoma"``. With a known non-melanoma diagnosis
  (e.g. basal cell carcinoma) it is 0.
* A legacy diagnosis that names nothing specific (``other``, ``unknown``) or that is not in
  ISIC's legacy vocabulary decides nothing on its own: alone it is unlabeled, with
  ``benign`` it is 0, and with ``malignant`` it is unlabeled (a malignancy that may or may not
  be a melanoma).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from melanoma.errors import DataError

MELANOMA, BENIGN = 1, 0

_HIERARCHICAL = tuple(f"diagnosis_{i}" for i in range(1, 6))
LABEL_COLUMNS: tuple[str, ...] = (*_HIERARCHICAL, "benign_malignant", "diagnosis")

# Hierarchical values, compared case-folded.
_MELANOMA_D2 = "malignant melanocytic proliferations (melanoma)"
_COLLISION_MALIGNANT_D2 = "collision - at least one malignant proliferation"

# Legacy flat diagnosis (isic-metadata LegacyDxEnum, case-folded) plus the 2020 challenge's
# "unknown".
_LEGACY_MELANOMA = frozenset({"melanoma", "melanoma metastasis"})
_LEGACY_INDETERMINATE = frozenset({"aimp", "atypical melanocytic proliferation"})
_LEGACY_VAGUE = frozenset({"other", "unknown"})
_LEGACY_NON_MELANOMA = frozenset(
    {
        "actinic keratosis",
        "adnexal tumor",
        "angiokeratoma",
        "angioma",
        "basal cell carcinoma",
        "cafe-au-lait macule",
        "dermatofibroma",
        "ephelis",
        "lentigo nos",
        "lentigo simplex",
        "lichenoid keratosis",
        "merkel cell carcinoma",
        "mucosal melanosis",
        "nevus",
        "nevus spilus",
        "seborrheic keratosis",
        "solar lentigo",
        "squamous cell carcinoma",
        "clear cell acanthoma",
        "atypical spitz tumor",
        "acrochordon",
        "angiofibroma or fibrous papule",
        "neurofibroma",
        "pyogenic granuloma",
        "scar",
        "sebaceous adenoma",
        "sebaceous hyperplasia",
        "verruca",
        "epidermal nevus",
        "pigmented benign keratosis",
        "vascular lesion",
    }
)

_Decision = tuple[int | None, str, str]  # (label, diagnosis text, label_source)


def _clean(value: object) -> str | None:
    """Stripped text of a cell, or None when missing (absent, None, NaN/NA, empty or blank)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    missing = pd.isna(value)
    # pd.isna returns an array for list-like cells; only a scalar True means missing.
    if isinstance(missing, bool | np.bool_) and missing:
        return None
    return str(value).strip() or None


def _decide(values: tuple[str | None, ...]) -> _Decision:
    """Apply the rules to cleaned values in LABEL_COLUMNS order."""
    d1, d2, d3, d4, d5, bm_raw, dx_raw = values
    # The most specific text available, for reports and error analysis.
    diagnosis = next((v for v in (d5, d4, d3, d2, d1, dx_raw, bm_raw) if v), "")

    # Current era first: it is what the archive serves today and it is authoritative.
    if d1 or d2 or d3 or d4 or d5:
        l1, l2, l3 = (v.casefold() if v else "" for v in (d1, d2, d3))
        if l2 == _MELANOMA_D2 or l3.startswith("melanoma"):
            return MELANOMA, diagnosis, "hierarchical"
        # ISIC's DiagnosisEnum.is_melanoma also counts this collision class; follow ISIC.
        if l1 == "malignant" and l2 == _COLLISION_MALIGNANT_D2:
            return MELANOMA, diagnosis, "hierarchical"
        if l1 == "indeterminate":
            return None, diagnosis, "hierarchical"
        if l1 in ("benign", "malignant"):
            # Malignant but not melanoma (BCC, SCC, ...) is the negative class: melanoma vs rest.
            return BENIGN, diagnosis, "hierarchical"
        # diagnosis_1 missing or unrecognised: let the legacy fields decide if present.

    dx = dx_raw.casefold() if dx_raw else None
    bm = bm_raw.casefold() if bm_raw else None
    if dx in _LEGACY_MELANOMA:
        return MELANOMA, diagnosis, "legacy_diagnosis"
    if dx in _LEGACY_INDETERMINATE:
        return None, diagnosis, "legacy_diagnosis"
    if bm is not None:
        if bm.startswith("indeterminate"):
            return None, diagnosis, "benign_malignant"
        if bm == "malignant":
            if dx is None:
                return MELANOMA, diagnosis, "benign_malignant"
            if dx in _LEGACY_NON_MELANOMA:
                return BENIGN, diagnosis, "benign_malignant"
            # "other", "unknown" or an unrecognised diagnosis: malignant, but melanoma?
            return None, diagnosis, "none"
        if bm == "benign":
            return BENIGN, diagnosis, "benign_malignant"
    if dx in _LEGACY_NON_MELANOMA:
        return BENIGN, diagnosis, "legacy_diagnosis"
    return None, diagnosis, "none"


def derive_label(row: Mapping[str, object]) -> tuple[int | None, str]:
    """(label, diagnosis) for one metadata row; label None means unlabeled.

    A field is missing when its key is absent or its value is None, NaN or blank. ``diagnosis`` is
    the most specific diagnosis text available (deepest ``diagnosis_N``, else legacy
    ``diagnosis``, else ``benign_malignant``, else '').
    """
    label, diagnosis, _ = _decide(tuple(_clean(row.get(c)) for c in LABEL_COLUMNS))
    return label, diagnosis


def derive_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Labels for every row of a metadata frame, index preserved.

    Columns: ``label`` (nullable Int8, <NA> = unlabeled), ``diagnosis`` (str) and
    ``label_source``: the field family whose value decided the outcome ('hierarchical',
    'legacy_diagnosis', 'benign_malignant'; an Indeterminate row is 'hierarchical' with <NA>), or
    'none' when no field decided anything. Raises DataError if df has none of LABEL_COLUMNS.
    """
    present = [c for c in LABEL_COLUMNS if c in df.columns]
    if not present:
        raise DataError(
            "metadata has no label column: expected at least one of "
            f"{', '.join(LABEL_COLUMNS)}; got columns {', '.join(map(str, df.columns)) or '(none)'}"
        )
    columns = [
        df[c].to_numpy(dtype=object) if c in df.columns else np.full(len(df), None, dtype=object)
        for c in LABEL_COLUMNS
    ]
    # Metadata repeats a few dozen value combinations, so decide each combination once.
    cache: dict[tuple[str | None, ...], _Decision] = {}
    labels: list[int | None] = []
    diagnoses: list[str] = []
    sources: list[str] = []
    for raw in zip(*columns, strict=True):
        key = tuple(_clean(v) for v in raw)
        decision = cache.get(key)
        if decision is None:
            decision = cache[key] = _decide(key)
        labels.append(decision[0])
        diagnoses.append(decision[1])
        sources.append(decision[2])
    return pd.DataFrame(
        {
            "label": pd.array(labels, dtype="Int8"),
            # Plain arrays, not Series: a Series would be re-aligned to df.index.
            "diagnosis": np.array(diagnoses, dtype=object),
            "label_source": np.array(sources, dtype=object),
        },
        index=df.index,
    )
