"""The ensemble candidate: trained models' probabilities combined on the validation split.

Members are saved model folders read back with ``melanoma.models.load_model``, so each comes with
whatever calibration or test-time augmentation its folder records. Two ways to combine them:

- ``stack``: a logistic regression on the members' logits, fitted on validation;
- ``rank_mean``: the mean over members of each probability's rank among that member's validation
  probabilities (sorted references kept, looked up with ``searchsorted``), so a single image gets a
  score on the same scale as a batch.

The saved folder is self-contained: ``members/<name>/`` (a copy of each member's folder) plus
``ensemble.json`` (method, member order, coefficients or references), so the registry, the pyfunc
and the app need only this folder.

The combination is fitted on validation, so its in-sample validation AUC flatters it, and the
registry chooses on validation AUC: ``fit_ensemble`` also returns out-of-fold validation
probabilities (stratified folds over the validation split) for the training driver to score instead.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from melanoma import atomic
from melanoma.config import EnsembleParams
from melanoma.contracts import MODEL_JSON, read_model_json
from melanoma.errors import DataError
from melanoma.images import resize_batch
from melanoma.metrics import safe_auc
from melanoma.models import ImageClassifier, load_model, metadata_columns
from melanoma.models.calibration import logit, sigmoid

log = logging.getLogger(__name__)
# Images per prediction chunk: a multiple of the deep models' (128) and the features' (256) batches.
CHUNK = 2048

ENSEMBLE_JSON = "ensemble.json"
MEMBERS_DIR = "members"
OOF_FOLDS = 5


def mid_ranks(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Fraction of ``reference`` (sorted) below each value, ties counting half: in [0, 1]."""
    lo = np.searchsorted(reference, values, side="left")
    hi = np.searchsorted(reference, values, side="right")
    return (lo + hi) / (2.0 * len(reference))


@dataclass
class EnsembleModel:
    """Members (name -> loaded model, in order) and how their probabilities are combined."""

    members: dict[str, ImageClassifier]
    member_dirs: dict[str, Path]  # where each member's folder is copied from on save
    method: str  # stack | rank_mean
    image_size: int
    fit: str = "crop"
    coef: np.ndarray | None = None  # stack: one weight per member logit
    intercept: float = 0.0
    references: dict[str, np.ndarray] | None = None  # rank_mean: sorted validation probabilities
    family: str = field(default="ensemble", init=False)

    @property
    def metadata_columns(self) -> tuple[str, ...]:
        """The patient metadata any member uses (empty: the ensemble reads images only)."""
        return tuple(sorted({c for m in self.members.values() for c in metadata_columns(m)}))

    def member_probas(self, images: np.ndarray, metadata: pd.DataFrame | None = None) -> np.ndarray:
        """(N, n_members) float64: each member's P(melanoma), on images resized to its input size.

        In chunks of ``CHUNK`` images (a multiple of every member's own batch), so a split read
        from disk is never held whole, and each member sees the batches it would see at once.
        """
        if len(images) == 0:
            return np.zeros((0, len(self.members)))
        parts = []
        for i in range(0, len(images), CHUNK):
            x = np.asarray(images[i : i + CHUNK])
            meta = None if metadata is None else metadata.iloc[i : i + CHUNK]
            cols = []
            for model in self.members.values():
                xm = x
                if x.shape[1:3] != (model.image_size, model.image_size):
                    xm = resize_batch(x, model.image_size, model.fit)
                cols.append(np.asarray(model.predict_proba(xm, meta), dtype=np.float64).reshape(-1))
            parts.append(np.stack(cols, axis=1))
        return np.concatenate(parts)

    def combine(self, probas: np.ndarray) -> np.ndarray:
        """Members' probabilities (N, n_members) -> the ensemble's score (N,) in [0, 1]."""
        if self.method == "stack":
            assert self.coef is not None
            return sigmoid(logit(probas) @ self.coef + self.intercept)
        assert self.references is not None
        ranks = [mid_ranks(self.references[n], probas[:, i]) for i, n in enumerate(self.members)]
        return np.mean(ranks, axis=0)

    def predict_proba(self, images: np.ndarray, metadata: pd.DataFrame | None = None) -> np.ndarray:
        """uint8 (N, S, S, 3) (+ optional metadata rows, passed to every member) -> float32 (N,)."""
        if len(images) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.combine(self.member_probas(images, metadata)).astype(np.float32)

    def description(self) -> dict[str, Any]:
        """What ``ensemble.json`` holds: enough to rebuild the combination exactly."""
        out: dict[str, Any] = {
            "method": self.method,
            "members": list(self.members),
            "image_size": self.image_size,
            "fit": self.fit,
        }
        if self.method == "stack":
            assert self.coef is not None
            # Python floats round-trip exactly through JSON, so a reloaded model predicts the same bits.
            out["coefficients"] = {n: float(c) for n, c in zip(self.members, self.coef, strict=True)}
            out["intercept"] = float(self.intercept)
        else:
            assert self.references is not None
            out["references"] = {n: [float(v) for v in self.references[n]] for n in self.members}
        return out

    def save(self, out_dir: Path) -> None:
        """Copy every member's folder to ``members/<name>/`` and write ``ensemble.json``."""
        out_dir = Path(out_dir)
        for name, src in self.member_dirs.items():
            dst = out_dir / MEMBERS_DIR / name
            if Path(src).resolve() != dst.resolve():
                if dst.exists():
                    shutil.rmtree(dst)
                shutil.copytree(src, dst)
        atomic.write_json(out_dir / ENSEMBLE_JSON, self.description())

    @staticmethod
    def load(model_dir: Path) -> EnsembleModel:
        """Read a saved ensemble folder (its members from ``members/<name>/``)."""
        model_dir = Path(model_dir)
        path = model_dir / ENSEMBLE_JSON
        if not path.is_file():
            raise DataError(f"{path}: missing; retrain the ensemble")
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            names = [str(n) for n in spec["members"]]
            method = str(spec["method"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not a valid ensemble description ({exc})") from exc
        dirs = {n: model_dir / MEMBERS_DIR / n for n in names}
        model = EnsembleModel(
            members=load_members(dirs),
            member_dirs=dirs,
            method=method,
            image_size=int(spec["image_size"]),
            fit=str(spec.get("fit", "crop")),
        )
        if method == "stack":
            model.coef = np.array([spec["coefficients"][n] for n in names], dtype=np.float64)
            model.intercept = float(spec["intercept"])
        elif method == "rank_mean":
            model.references = {n: np.array(spec["references"][n], dtype=np.float64) for n in names}
        else:
            raise DataError(f"{path}: unknown ensemble method {method!r}")
        return model


def load_members(member_dirs: Mapping[str, Path]) -> dict[str, ImageClassifier]:
    """Load each member folder; a missing one is an error naming the member and the folder."""
    out: dict[str, ImageClassifier] = {}
    for name, folder in member_dirs.items():
        if not (Path(folder) / MODEL_JSON).is_file():
            raise DataError(
                f"ensemble member {name!r}: no trained model in {folder} ({MODEL_JSON} missing); "
                f"train it first (dvc repro train@{name})"
            )
        out[name] = load_model(Path(folder))
    return out


def _folds(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds over the validation split (as many as the rarer class allows, up to OOF_FOLDS)."""
    n_min = int(np.bincount(y, minlength=2).min())
    if n_min < 2:
        raise DataError(
            f"ensemble: the validation split has {n_min} image(s) of one class; out-of-fold "
            "validation needs at least 2 of each (more data, or a larger split.val_fraction)"
        )
    k = min(OOF_FOLDS, n_min)
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _fit_stack(probas: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    # lbfgs on a convex problem: deterministic; the default L2 keeps it stable on small validation sets.
    head = LogisticRegression(C=1.0, max_iter=1000).fit(logit(probas), y)
    return head.coef_[0].astype(np.float64), float(head.intercept_[0])


def _references(probas: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    return {n: np.sort(probas[:, i]) for i, n in enumerate(names)}


def fit_ensemble(
    member_dirs: Mapping[str, Path],
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: EnsembleParams,
    seed: int,
    image_size: int,
    fit: str = "crop",
    *,
    meta_val: pd.DataFrame | None = None,
    expected_data: Mapping[str, str] | None = None,
) -> tuple[EnsembleModel, dict[str, Any]]:
    """Combine the members ``params.members`` (folders in ``member_dirs``) on the validation split.

    ``expected_data``: today's data hashes; a member trained on other data (whose training split may
    overlap today's validation split) is refused. Returns the model and what to record, including
    ``val_proba_oof``: out-of-fold validation scores (same order as ``y_val``) for honest validation.
    """
    names = list(params.members)
    missing = [n for n in names if n not in member_dirs]
    if missing:
        raise DataError(f"ensemble: no folder given for member(s) {', '.join(missing)}")
    dirs = {n: Path(member_dirs[n]) for n in names}
    members = load_members(dirs)
    infos = {n: read_model_json(d) for n, d in dirs.items()}
    if expected_data is not None:
        stale = [n for n in names if infos[n].get("data") != dict(expected_data)]
        if stale:
            raise DataError(
                f"ensemble: member(s) {', '.join(stale)} were trained on other data than today's "
                f"prepared images and splits; retrain them first (dvc repro train@{stale[0]})"
            )
    y = np.asarray(y_val).astype(int)
    model = EnsembleModel(members, dirs, params.method, image_size, fit)
    probas = model.member_probas(x_val, meta_val)
    member_auc = {n: round(safe_auc(y, probas[:, i]), 6) for i, n in enumerate(names)}
    log.info("ensemble: members' validation AUC %s", member_auc)

    # A member that reads metadata scores lower without it; fitted on both conditions, the combiner
    # weighs it for uploads that come without age, sex and site as well as for those with them.
    alone = model.member_probas(x_val, None) if model.metadata_columns and meta_val is not None else None

    def rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if alone is None:
            return probas[idx], y[idx]
        return np.vstack([probas[idx], alone[idx]]), np.concatenate([y[idx], y[idx]])

    folds = _folds(y, seed)
    oof = np.empty(len(y), dtype=np.float64)
    for fit_idx, held_idx in folds:
        part = EnsembleModel(members, dirs, params.method, image_size, fit)
        if params.method == "stack":
            part.coef, part.intercept = _fit_stack(*rows(fit_idx))
        else:
            part.references = _references(rows(fit_idx)[0], names)
        oof[held_idx] = part.combine(probas[held_idx])

    every = np.arange(len(y))
    info: dict[str, Any] = {
        "members": names,
        "method": params.method,
        "member_val_auc": member_auc,
        "combiner_fit_on": "validation, with and without metadata" if alone is not None else "validation",
    }
    if params.method == "stack":
        model.coef, model.intercept = _fit_stack(*rows(every))
        info["coefficients"] = {n: round(float(c), 6) for n, c in zip(names, model.coef, strict=True)}
        info["intercept"] = round(model.intercept, 6)
    else:
        model.references = _references(rows(every)[0], names)
    in_sample = model.combine(probas)
    info.update(
        {
            "member_image_sizes": {n: int(m.image_size) for n, m in members.items()},
            # what the registry and the report show as this model's weights source
            "weights": "members' weights: "
            + "; ".join(f"{n} {infos[n].get('weights', 'none (trained from scratch)')}" for n in names),
            "oof_folds": len(folds),
            "val_roc_auc_in_sample": round(safe_auc(y, in_sample), 6),
            "val_roc_auc_oof": round(safe_auc(y, oof), 6),
            "val_proba_oof": oof.astype(np.float32),
        }
    )
    log.info(
        "ensemble (%s): validation AUC %.4f out-of-fold (%d folds), %.4f in-sample",
        params.method, info["val_roc_auc_oof"], len(folds), info["val_roc_auc_in_sample"],
    )  # fmt: skip
    return model, info
