"""The champion: which registered model holds the alias after register's decision, and why."""

from __future__ import annotations

from typing import Any

from melanoma.report import fmt


def champion_name(registry: dict[str, Any]) -> str | None:
    """The model name behind the champion alias after the decision, when the record says it."""
    after, cand, before = (
        registry.get("champion_after"),
        registry.get("candidate") or {},
        registry.get("champion_before"),
    )
    if after is not None and after == cand.get("version"):
        return cand.get("name")
    if isinstance(before, dict) and after is not None and after == before.get("version"):
        return before.get("model_name")
    return None


def champion_section(registry: dict[str, Any]) -> list[str]:
    """Which model is champion and why, from reports/registry.json."""
    cand = registry.get("candidate") or {}
    after = registry.get("champion_after")
    who = f"`{champion_name(registry) or 'a model not in this run'}`"
    head = (
        f"**Champion:** `{registry.get('registered_model')}` v{after} ({who})." if after is not None else
        "**Champion:** none."
    )  # fmt: skip
    rows = [
        [c.get("name"), fmt.num(c.get("val_roc_auc")), fmt.num(c.get("test_roc_auc")), c.get("weights")]
        for c in registry.get("candidates") or []
    ]
    return [
        "## Champion",
        "",
        head,
        "",
        f"Candidate: `{cand.get('name')}` (v{cand.get('version')}), chosen by {registry.get('selection')}. "
        f"Decision: **{registry.get('action')}** (promoted: {registry.get('promoted')}), with a margin of "
        f"{fmt.num(registry.get('margin'))} test ROC AUC.",
        "",
        f"> {registry.get('reason')}",
        "",
        fmt.table(["candidate", "val ROC AUC", "test ROC AUC", "weights"], rows),
        "",
        "Full decision, with split hashes: `reports/registry.json`.",
    ]
