"""``register``: choose the candidate on validation, register it, move ``champion`` only by the rule."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma.contracts import model_fingerprint, read_metrics, read_model_json
from melanoma.errors import DataError
from melanoma.metrics import safe_auc
from melanoma.registry import store
from melanoma.registry.store import (
    CHALLENGER,
    CHAMPION,
    DESCRIPTION_MAX,
    MODEL_ARTIFACT,
    TAG_DECISION,
    TAG_DECISION_KEY,
    TAG_ROLLED_BACK,
    TAG_SCORE,
    TAG_SPLIT,
    TEST_TAG_KEYS,
)
from melanoma.tracking import FINGERPRINT_TAG, Tracking, find_model_run

log = logging.getLogger("melanoma.registry")

Scorer = Callable[[str], float]


@dataclass(frozen=True)
class Candidate:
    """One trained and evaluated model: its folder (with model.json) and its metrics JSON."""

    name: str
    model_dir: Path
    metrics_path: Path


@dataclass(frozen=True)
class Decision:
    """What ``register`` decided. ``record`` is JSON-able and byte-reproducible."""

    record: dict[str, Any]
    changed: bool  # whether this call wrote to the registry (for the log; not in the record)
    new_version: bool  # whether this call created the candidate's version

    @property
    def promoted(self) -> bool:
        return bool(self.record["promoted"])

    @property
    def version(self) -> int:
        return int(self.record["candidate"]["version"])


def split_hash_of(data_hashes: Mapping[str, str]) -> str:
    """Identity of a test split: the test rows AND the pixels they index (contracts.data_hashes)."""
    text = f"images:{data_hashes['images_sha256']}\ntest:{data_hashes['test_csv_sha256']}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def make_scorer(
    images: np.ndarray, labels: np.ndarray, metadata: pd.DataFrame | None = None, batch_size: int = 256
) -> Scorer:
    """A scorer: load a model URI as pyfunc, predict today's test images, return its ROC AUC.

    ``metadata`` (the test rows' patient metadata) goes in as the pyfunc's per-image list params, so a
    champion that uses metadata is re-scored as evaluate scored it, not on images alone.
    """

    def params_for(lo: int, hi: int) -> dict[str, list[Any]] | None:
        if metadata is None or metadata.empty:
            return None
        rows = metadata.iloc[lo:hi]
        out: dict[str, list[Any]] = {}
        for column in rows.columns:  # the ParamSchema's types: age a number, the rest strings
            if column == "age_approx":
                ages = pd.to_numeric(rows[column].replace("", None), errors="coerce")
                out[column] = [None if pd.isna(v) else float(v) for v in ages]
            else:
                out[column] = ["" if pd.isna(v) else str(v) for v in rows[column]]
        return out

    def score(model_uri: str) -> float:
        import mlflow

        model = mlflow.pyfunc.load_model(model_uri)
        probs = [
            np.asarray(
                model.predict(np.asarray(images[i : i + batch_size]), params=params_for(i, i + batch_size))
            ).reshape(-1)
            for i in range(0, len(images), batch_size)
        ]
        return store.round6(safe_auc(np.asarray(labels), np.concatenate(probs).astype(np.float64)))

    return score


# ----------------------------------------------------------------------------- candidates
def _load_candidate(c: Candidate, split_hash: str) -> dict[str, Any]:
    info = read_model_json(c.model_dir)
    metrics = read_metrics(c.metrics_path)
    if metrics.get("model") not in (None, c.name):
        raise DataError(f"{c.metrics_path}: metrics of {metrics.get('model')!r}, expected {c.name!r}")
    data = info.get("data") or {}
    if {"images_sha256", "test_csv_sha256"} - set(data):
        raise DataError(f"{c.model_dir}/model.json: no data hashes; retrain {c.name}")
    if split_hash_of(data) != split_hash:
        raise DataError(
            f"candidate {c.name} was trained and evaluated on another test split than today's; "
            f"rerun train and evaluate for {c.name}"
        )
    test = metrics.get("test") or {}
    if store.round6(test.get("roc_auc")) is None:
        raise DataError(f"{c.metrics_path}: no test ROC AUC (one-class test split?)")
    return {
        "name": c.name,
        "family": info.get("family"),
        "model_fingerprint": model_fingerprint(c.model_dir),
        "val_roc_auc": store.round6((info.get("val") or {}).get("val_roc_auc")),
        "test_roc_auc": store.round6(test.get("roc_auc")),
        "threshold": store.round6(info.get("threshold")),
        "threshold_rule": info.get("threshold_rule"),
        "val_images_only_sensitivity": store.round6(
            (info.get("val") or {}).get("val_images_only_sensitivity")
        ),
        "weights": info.get("weights", "none (trained from scratch)"),
        "_info": info,
        "_test": test,
    }


def _select(loaded: list[dict[str, Any]]) -> dict[str, Any]:
    """Best validation ROC AUC; ties go to the first name, so the choice is deterministic."""
    scored = [c for c in loaded if c["val_roc_auc"] is not None]
    if not scored:
        raise DataError("no candidate has a validation ROC AUC in its model.json")
    return sorted(scored, key=lambda c: (-c["val_roc_auc"], c["name"]))[0]


def _version_tags(cand: dict[str, Any], tracking: Tracking, split_hash: str) -> dict[str, str]:
    """Lineage and scores of a new version (tag values are strings)."""
    info, test = cand["_info"], cand["_test"]
    tags = {
        FINGERPRINT_TAG: cand["model_fingerprint"],
        "model_name": cand["name"],
        "model_family": str(cand["family"]),
        "weights": str(cand["weights"]),
        "threshold": json.dumps(cand["threshold"]),
        "threshold_rule": str(cand["threshold_rule"]),
        TAG_SPLIT: split_hash,
        TAG_SCORE + split_hash: json.dumps(cand["test_roc_auc"]),
    }
    if tracking.git_commit:
        tags["git_commit"] = tracking.git_commit
    if tracking.dvc_exp_name:
        tags["dvc_exp_name"] = tracking.dvc_exp_name
    if tracking.dvc_exp_baseline_rev:
        tags["dvc_exp_baseline_rev"] = tracking.dvc_exp_baseline_rev
    tags.update({f"data.{k}": str(v) for k, v in sorted((info.get("data") or {}).items())})
    for k, v in sorted((info.get("val") or {}).items()):
        if store.round6(v) is not None:
            tags[k if k.startswith("val_") else f"val_{k}"] = json.dumps(store.round6(v))
    for k in TEST_TAG_KEYS:
        if store.round6(test.get(k)) is not None:
            tags[f"test_{k}"] = json.dumps(
                store.round6(test[k]) if k not in ("n", "n_melanoma") else int(test[k])
            )
    return tags


# ------------------------------------------------------------------------------- champion
def _champion_score(
    client: Any, name: str, mv: Any, split_hash: str, scorer: Scorer
) -> tuple[float | None, str, str | None]:
    """(test ROC AUC on today's split, how it was obtained, error) for the champion version."""
    recorded = mv.tags.get(TAG_SCORE + split_hash)
    if recorded is not None:
        return store.round6(json.loads(recorded)), "recorded", None
    uri = f"models:/{name}/{mv.version}"
    log.info("register: champion v%s was scored on another split; re-scoring %s on today's", mv.version, uri)
    try:
        score = store.round6(scorer(uri))
    except Exception as exc:  # noqa: BLE001 - any load/predict failure means "cannot be scored"
        log.warning("register: cannot re-score champion %s: %s: %s", uri, type(exc).__name__, exc)
        return None, "unscorable", f"{type(exc).__name__} while loading or scoring {uri}"
    if score is None:
        return None, "unscorable", f"{uri} gave no ROC AUC on today's split"
    # Kept on the version, so the next decision on this split need not load the model again.
    client.set_model_version_tag(name, mv.version, TAG_SCORE + split_hash, json.dumps(score))
    return score, "rescored", None


def _images_only_shortfall(cand: dict[str, Any], minimum: float | None) -> str | None:
    """Why a metadata-reading candidate must not serve (its sensitivity without metadata), else None."""
    sens = cand.get("val_images_only_sensitivity")
    if minimum is None or sens is None or sens >= minimum:
        return None
    return (
        f"{cand['name']} reads patient metadata, and without it (most uploads) its validation "
        f"sensitivity at threshold {cand['threshold']} is {sens} < the target {minimum}: not promoted"
    )


def _judge(
    client: Any,
    name: str,
    cand: dict[str, Any],
    version: int,
    split_hash: str,
    margin: float,
    allow_unscored: bool,
    scorer: Scorer,
    min_images_only_sensitivity: float | None = None,
) -> tuple[str, bool, str, dict[str, Any] | None, float | None]:
    """(action, promote?, reason, champion_before record, improvement) by the promotion rule."""
    champ_version = store.get_aliases(client, name).get(CHAMPION)
    score = cand["test_roc_auc"]
    shortfall = _images_only_shortfall(cand, min_images_only_sensitivity)
    if shortfall is not None and champ_version != version:
        return "keep", False, shortfall, None, None
    if champ_version is None:
        return "promote", True, "there is no champion yet", None, None
    if champ_version == version:
        return "keep", False, f"v{version} is already the champion", None, None
    mv = client.get_model_version(name, str(champ_version))
    champ_score, source, error = _champion_score(client, name, mv, split_hash, scorer)
    before = {
        "version": champ_version,
        "model_name": mv.tags.get("model_name"),
        "model_fingerprint": mv.tags.get(FINGERPRINT_TAG),
        "test_split_hash": mv.tags.get(TAG_SPLIT),
        "test_roc_auc": champ_score,
        "score": source,
        "error": error,
    }
    if store.has_tag(client, name, version, TAG_ROLLED_BACK):
        # Someone demoted it for a reason the metrics do not show: the next repro must not undo that.
        why = f"v{version} was rolled back by hand; only a manual promote restores it"
        return "keep", False, why, before, None
    if champ_score is None:
        if allow_unscored:
            why = f"champion v{champ_version} cannot be scored on today's test split ({error}); "
            return "promote", True, why + "allow_unscored_champion is set", before, None
        why = f"champion v{champ_version} cannot be scored on today's test split ({error}); "
        return "keep", False, why + "nothing promoted (allow_unscored_champion is not set)", before, None
    improvement = store.round6(score - champ_score)
    if improvement is not None and improvement > 0 and improvement >= margin:
        why = f"test ROC AUC {score} beats champion v{champ_version}'s {champ_score} by {improvement} >= {margin}"
        return "promote", True, why, before, improvement
    why = f"test ROC AUC {score} does not beat champion v{champ_version}'s {champ_score} by {margin}"
    return "keep", False, why + f" (difference {improvement})", before, improvement


def _describe(record: dict[str, Any]) -> str:
    head = f"{record['action']}: {record['reason']}\n\nDecision (reports/registry.json):\n"
    return (head + store.canonical(record))[:DESCRIPTION_MAX]


# ------------------------------------------------------------------------------- register
def register(
    candidates: list[Candidate],
    registered_model: str,
    tracking: Tracking,
    *,
    margin: float,
    allow_unscored_champion: bool,
    test_split_hash: str,
    scorer: Scorer,
    min_images_only_sensitivity: float | None = None,
) -> Decision:
    """Register the best candidate (by validation ROC AUC) and move ``champion`` only by the rule.

    ``test_split_hash`` is ``split_hash_of(data_hashes(prepared, splits))`` for today's data;
    every candidate must have been trained and evaluated on it. ``scorer`` returns the test ROC AUC
    of a model URI on today's split (``make_scorer(images, labels)``); it is only called when
    the champion was scored on another split. Lineage (git commit, DVC experiment) comes from
    ``tracking``. A rerun with nothing new writes nothing and returns the same record.
    ``min_images_only_sensitivity``: a candidate that reads metadata is not promoted when its
    validation sensitivity without metadata (model.json) is below it.
    """
    if not candidates:
        raise DataError("register: no candidates given")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    loaded = [_load_candidate(c, test_split_hash) for c in sorted(candidates, key=lambda c: c.name)]
    cand = _select(loaded)
    table = [{k: v for k, v in c.items() if not k.startswith("_")} for c in loaded]
    key = hashlib.sha256(
        store.canonical(
            {
                "registered_model": registered_model,
                "margin": margin,
                "allow_unscored_champion": allow_unscored_champion,
                "min_images_only_sensitivity": min_images_only_sensitivity,
                "test_split_hash": test_split_hash,
                "candidates": table,
            }
        ).encode()
    ).hexdigest()

    client = store.connect(tracking.uri)
    store.ensure_registered_model(client, registered_model)
    fp_filter = f" and tags.{FINGERPRINT_TAG}='{cand['model_fingerprint']}'"
    existing = store.versions(client, registered_model, fp_filter)
    if existing:
        mv = existing[0]  # the first registration of this content is the version that stands for it
        version, new_version = int(mv.version), False
        stored = mv.tags.get(TAG_DECISION)
        aliases = store.get_aliases(client, registered_model)
        if stored and mv.tags.get(TAG_DECISION_KEY) == key and aliases.get(CHALLENGER) == version:
            record = json.loads(stored)
            if aliases.get(CHAMPION) == record["champion_after"]:
                log.info(
                    "register: %s v%d already judged on these inputs; nothing to do",
                    registered_model,
                    version,
                )
                return Decision(record, changed=False, new_version=False)
        log.info("register: %s is already v%d of %s (same content)", cand["name"], version, registered_model)
    else:
        run_id = find_model_run(tracking, cand["model_fingerprint"])
        if run_id is None:
            raise DataError(
                f"no MLflow run in {tracking.uri} (experiment {tracking.experiment!r}) logged model "
                f"{cand['name']} (fingerprint {cand['model_fingerprint'][:12]}); rerun train@{cand['name']}"
            )
        import mlflow

        mv = mlflow.register_model(
            f"runs:/{run_id}/{MODEL_ARTIFACT}",
            registered_model,
            tags=_version_tags(cand, tracking, test_split_hash),
        )
        version, new_version = int(mv.version), True
        log.info("register: %s registered as %s v%d", cand["name"], registered_model, version)

    action, promote, reason, before, improvement = _judge(
        client,
        registered_model,
        cand,
        version,
        test_split_hash,
        margin,
        allow_unscored_champion,
        scorer,
        min_images_only_sensitivity,
    )
    client.set_registered_model_alias(registered_model, CHALLENGER, str(version))
    if promote:
        store.set_champion(client, registered_model, version)
        client.set_model_version_tag(registered_model, str(version), "promoted_by", "register")
        client.set_model_version_tag(registered_model, str(version), "promotion_reason", reason)
    after = store.get_aliases(client, registered_model).get(CHAMPION)
    mv = client.get_model_version(registered_model, str(version))
    # The git commit stays on the version's tags only: in this tracked file it would change with
    # every commit, although the same code, params and data gave the same decision.
    lineage = {"dvc_exp_name": mv.tags.get("dvc_exp_name")}  # as first registered
    record = {
        "registered_model": registered_model,
        "action": action,
        "promoted": promote,
        "reason": reason,
        "margin": margin,
        "allow_unscored_champion": allow_unscored_champion,
        "test_split_hash": test_split_hash,
        "selection": "highest validation ROC AUC (test metrics never choose)",
        "candidate": {
            **{k: v for k, v in cand.items() if not k.startswith("_")},
            **lineage,
            "version": version,
            "model_uri": f"models:/{registered_model}/{version}",
        },
        "candidates": table,
        "champion_before": before,
        "improvement": improvement,
        "champion_after": after,
    }
    record = json.loads(store.canonical(record))  # the same key order whether fresh or read back
    client.set_model_version_tag(registered_model, str(version), TAG_DECISION, store.canonical(record))
    client.set_model_version_tag(registered_model, str(version), TAG_DECISION_KEY, key)
    client.update_model_version(registered_model, str(version), description=_describe(record))
    log.info("register: %s v%d: %s (%s); champion is v%s", registered_model, version, action, reason, after)
    return Decision(record, changed=True, new_version=new_version)
