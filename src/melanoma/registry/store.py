"""The registry's shared pieces: tag names, the MLflow client, aliases and the champion history."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from melanoma.errors import MelanomaError

log = logging.getLogger("melanoma.registry")

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_ARTIFACT = "model"  # train.py logs the pyfunc under this name: runs:/<run_id>/model
TAG_SPLIT = "test_split_hash"  # the split the version's test metrics were computed on
TAG_SCORE = "test_roc_auc:"  # + split hash: the version's test ROC AUC on that split (re-scores too)
TAG_DECISION = "registry.decision"  # the decision record that registered or last judged the version
TAG_DECISION_KEY = "registry.decision_key"  # hash of that decision's inputs
TAG_ROLLED_BACK = "rolled_back"  # set when rollback demoted it: never auto-promoted again
TAG_HISTORY = "champion_history"  # registered-model tag: JSON list of champion versions, oldest first
HISTORY_LEN = 100  # keeps the tag short; older entries are not needed to roll back a few steps
TEST_TAG_KEYS = (
    "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "pr_auc", "pr_auc_ci_low", "pr_auc_ci_high",
    "pauc_80", "pauc_80_ci_low", "pauc_80_ci_high", "sensitivity", "specificity", "n", "n_melanoma",
)  # fmt: skip
DESCRIPTION_MAX = 5000  # MLflow's SQL column size for descriptions


class RegistryError(MelanomaError):
    """A registry operation that cannot be done as asked (unknown version, nothing to roll back)."""


def round6(x: Any) -> float | None:
    """6 decimals, as in the metrics files, so scores compare and serialise identically."""
    if x is None:
        return None
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def canonical(obj: Any) -> str:
    """Sorted, compact JSON: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def connect(uri: str) -> Any:
    """An MlflowClient on ``uri`` (sqlite file or server), with the global URIs pointed there too."""
    import mlflow

    # pyfunc.load_model("models:/...") and register_model use the global URIs, not a client's.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def get_aliases(client: Any, name: str) -> dict[str, int]:
    """Alias -> version number of a registered model."""
    return {a: int(v) for a, v in client.get_registered_model(name).aliases.items()}


def ensure_registered_model(client: Any, name: str) -> None:
    """Create the registered model unless it exists (a concurrent creator is fine)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="Melanoma classifiers (see `melanoma registry`).")
    except MlflowException as exc:
        if "ALREADY_EXISTS" not in str(exc.error_code):
            raise


def versions(client: Any, name: str, filter_extra: str = "") -> list[Any]:
    """Versions of ``name`` (optionally also matching a filter), oldest first."""
    found = client.search_model_versions(f"name='{name}'{filter_extra}")
    return sorted(found, key=lambda mv: int(mv.version))


def get_history(client: Any, name: str) -> list[int]:
    """Champion versions in the order they held the alias (the rollback stack)."""
    raw = client.get_registered_model(name).tags.get(TAG_HISTORY)
    try:
        return [int(v) for v in json.loads(raw)] if raw else []
    except (ValueError, TypeError):
        log.warning(
            "registered model %s: unreadable %s tag %r; starting a new history", name, TAG_HISTORY, raw
        )
        return []


def set_champion(client: Any, name: str, version: int) -> int | None:
    """Move ``champion`` to ``version``; append it to the history; return the previous champion."""
    previous = get_aliases(client, name).get(CHAMPION)
    history = get_history(client, name)
    if previous is not None and (not history or history[-1] != previous):
        history.append(previous)  # a champion set outside this module (UI) still rolls back
    history.append(version)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_registered_model_tag(name, TAG_HISTORY, json.dumps(history[-HISTORY_LEN:]))
    return previous


def has_tag(client: Any, name: str, version: int, key: str) -> bool:
    """Whether a model version carries tag ``key``."""
    return key in client.get_model_version(name, str(version)).tags


def append_description(client: Any, name: str, version: int, line: str) -> None:
    """Put ``line`` on top of a version's description (newest first, cut to the column size)."""
    old = client.get_model_version(name, str(version)).description or ""
    text = f"{line}\n\n{old}" if old else line
    client.update_model_version(name, str(version), description=text[:DESCRIPTION_MAX])
