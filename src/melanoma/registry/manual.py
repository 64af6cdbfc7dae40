"""Manual operations for ``melanoma registry``: list versions, promote with a reason, roll back."""

from __future__ import annotations

import json
import logging
from typing import Any

from melanoma.registry import store
from melanoma.registry.store import CHAMPION, TAG_HISTORY, TAG_ROLLED_BACK, TAG_SPLIT, RegistryError

log = logging.getLogger("melanoma.registry")


def list_versions(name: str, uri: str) -> list[dict[str, Any]]:
    """Every version of ``name``, oldest first: aliases, scores, lineage and all tags."""
    client = store.connect(uri)
    try:
        aliases = store.get_aliases(client, name)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its generic exception for a missing model
        raise RegistryError(f"no registered model {name!r} at {uri}") from exc
    by_version: dict[int, list[str]] = {}
    for alias, v in sorted(aliases.items()):
        by_version.setdefault(v, []).append(alias)
    rows = []
    for mv in store.versions(client, name):
        t = mv.tags
        rows.append(
            {
                "version": int(mv.version),
                "aliases": by_version.get(int(mv.version), []),
                "model_name": t.get("model_name"),
                "val_roc_auc": _float_tag(t.get("val_roc_auc")),
                "test_roc_auc": _float_tag(t.get("test_roc_auc")),
                "test_split_hash": t.get(TAG_SPLIT),
                "threshold": _float_tag(t.get("threshold")),
                "git_commit": t.get("git_commit"),
                "dvc_exp_name": t.get("dvc_exp_name"),
                "promotion_reason": t.get("promotion_reason"),
                "rolled_back": t.get(TAG_ROLLED_BACK),
                "run_id": mv.run_id,
                "tags": dict(sorted(t.items())),
            }
        )
    return rows


def _float_tag(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def promote(name: str, version: int, reason: str, uri: str) -> dict[str, Any]:
    """Make ``version`` the champion by hand; ``reason`` is required and recorded on the version."""
    if not reason or not reason.strip():
        raise RegistryError("a reason is required to promote by hand")
    client = store.connect(uri)
    try:
        client.get_model_version(name, str(version))
    except Exception as exc:  # noqa: BLE001
        raise RegistryError(f"{name} has no version {version}") from exc
    previous = store.get_aliases(client, name).get(CHAMPION)
    if previous == version:
        return {"registered_model": name, "champion": version, "previous": previous, "changed": False}
    store.set_champion(client, name, version)
    client.set_model_version_tag(name, str(version), "promoted_by", "manual")
    client.set_model_version_tag(name, str(version), "promotion_reason", reason.strip())
    client.set_model_version_tag(name, str(version), "previous_champion", str(previous or ""))
    if store.has_tag(client, name, version, TAG_ROLLED_BACK):
        client.delete_model_version_tag(name, str(version), TAG_ROLLED_BACK)
    store.append_description(
        client, name, version, f"Promoted to champion by hand (was v{previous}): {reason.strip()}"
    )
    log.info("registry: %s champion v%s -> v%d by hand: %s", name, previous, version, reason.strip())
    return {"registered_model": name, "champion": version, "previous": previous, "changed": True}


def rollback(name: str, uri: str, reason: str | None = None) -> dict[str, Any]:
    """Move ``champion`` back to the champion before it; the demoted version is never auto-promoted."""
    client = store.connect(uri)
    current = store.get_aliases(client, name).get(CHAMPION)
    history = store.get_history(client, name)
    while history and history[-1] == current:
        history.pop()
    existing = {int(mv.version) for mv in store.versions(client, name)}
    while history and history[-1] not in existing:
        history.pop()  # a deleted version cannot be champion again
    if current is None or not history:
        raise RegistryError(f"{name}: no previous champion to roll back to (champion: {current})")
    target = history[-1]
    client.set_registered_model_alias(name, CHAMPION, str(target))
    client.set_registered_model_tag(name, TAG_HISTORY, json.dumps(history))
    why = (reason or "").strip() or "no reason given"
    client.set_model_version_tag(name, str(current), TAG_ROLLED_BACK, f"to v{target}: {why}")
    store.append_description(client, name, current, f"Rolled back: champion returned to v{target} ({why})")
    log.info("registry: %s champion rolled back v%d -> v%d (%s)", name, current, target, why)
    return {"registered_model": name, "champion": target, "previous": current, "changed": True}
