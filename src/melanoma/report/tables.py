"""Result tables shared by reports/README.md and reports/model_card.md: test metrics, calibration,
confusion, subgroups, and the external set.

Every number is a value read from a file and printed with ``fmt.num``.
"""

from __future__ import annotations

from typing import Any

from melanoma.report import fmt
from melanoma.report.inputs import ModelResult


def nums(record: dict[str, Any], *keys: str) -> list[str]:
    """``fmt.num`` of each key's value in ``record``, in order (a table row's plain numbers)."""
    return [fmt.num(record.get(k)) for k in keys]


def metrics_table(models: list[ModelResult]) -> str:
    """Test metrics of every model, with bootstrap CIs where evaluate computed them."""
    header = ["model", "ROC AUC [CI]", "PR AUC [CI]", "pAUC (TPR≥0.8) [CI]", "sensitivity", "specificity",
              "threshold", "Brier", "ECE"]  # fmt: skip
    rows = [
        [
            m.name,
            *(fmt.with_ci(t, k) for k in ("roc_auc", "pr_auc", "pauc_80")),
            *nums(t, "sensitivity", "specificity", "threshold", "brier", "ece"),
        ]
        for m in models
        for t in [m.test]
    ]
    return fmt.table(header, rows)


def _calibrator(info: dict[str, Any]) -> str:
    """The fitted calibrator in words, with its fitted values (from model.json)."""
    cal = info.get("calibration")
    if not isinstance(cal, dict):
        return "none recorded"
    method = cal.get("method")
    if method == "temperature":
        return f"temperature, T = {fmt.num(cal.get('temperature'))}"
    if method == "platt":
        return f"Platt, slope {fmt.num(cal.get('slope'))}, intercept {fmt.num(cal.get('intercept'))}"
    return str(method)


def calibration_table(models: list[ModelResult]) -> str:
    """Per model: TTA, the calibrator, and test ECE and Brier before → after calibration."""
    rows = [
        [
            m.name,
            "on" if m.info.get("tta") else "off",
            _calibrator(m.info),
            f"{fmt.num(t.get('ece_uncalibrated'))} → {fmt.num(t.get('ece'))}",
            f"{fmt.num(t.get('brier_uncalibrated'))} → {fmt.num(t.get('brier'))}",
        ]
        for m in models
        for t in [m.test]
    ]
    return fmt.table(["model", "TTA (8 flips/rotations)", "calibrator", "ECE", "Brier"], rows)


def confusion_table(models: list[ModelResult]) -> str:
    """TN/FP/FN/TP at each model's operating threshold."""
    rows = [[m.name, *nums(t, "threshold", "tn", "fp", "fn", "tp")] for m in models for t in [m.test]]
    return fmt.table(["model", "threshold", "TN", "FP", "FN", "TP"], rows)


def subgroup_table(m: ModelResult, min_n: int, min_melanoma: int) -> str:
    """Subgroups of one model's test predictions; small groups flagged, never dropped."""
    rows = [
        [
            r.get("attribute"),
            r.get("value"),
            *nums(r, "n", "n_melanoma", "roc_auc", "sensitivity", "specificity"),
            fmt.small_group_flag(int(r.get("n") or 0), int(r.get("n_melanoma") or 0), min_n, min_melanoma),
        ]  # fmt: skip
        for r in m.series["subgroups"]
    ]
    return fmt.table(
        ["attribute", "group", "n", "melanoma", "ROC AUC", "sensitivity", "specificity", "note"], rows
    )


def external_models(models: list[ModelResult]) -> list[ModelResult]:
    """The models that evaluate scored on an external set (all of them, or none, in a pipeline run)."""
    return [m for m in models if m.external]


def external_table(models: list[ModelResult]) -> str:
    """Every scored condition side by side (internal test, external set, each also without patient
    metadata for a model that reads it): one row each per model, the same validation threshold,
    and the ROC AUC's change from the internal test (the generalisation gap)."""
    rows = []
    for m in models:
        conditions = m.conditions()
        for where, t in conditions:
            gap = t.get("roc_auc_change_from_internal")  # evaluate's figure (None for the internal test)
            rows.append([
                m.name, where, *nums(t, "n", "n_melanoma"), fmt.with_ci(t, "roc_auc"),
                fmt.NA if gap is None else f"{gap:+.3f}",
                fmt.with_ci(t, "pr_auc"), *nums(t, "sensitivity", "specificity", "threshold"),
            ])  # fmt: skip
    header = ["model", "data", "images", "melanoma", "ROC AUC [CI]", "Δ AUC vs internal", "PR AUC [CI]",
              "sensitivity", "specificity", "threshold"]  # fmt: skip
    return fmt.table(header, rows)


def external_summary(models: list[ModelResult]) -> str:
    """What the external set is, from the first scored model's metrics (the set is the same for all)."""
    scored = external_models(models)
    if not scored:
        return (
            "No external set was scored (`external.source: none` in params.yaml). Point `external` at a "
            "labelled set the models never saw (e.g. an ISIC challenge test set) to measure generalisation."
        )
    e = scored[0].external
    text = (
        f"External set **{e.get('name')}** (source `{e.get('source')}`): {fmt.num(e.get('n'))} images, "
        f"{fmt.num(e.get('n_melanoma'))} melanoma (prevalence {fmt.num(e.get('prevalence'))}), prepared "
        f"exactly as the training data; {fmt.num(e.get('n_dropped_in_training'))} images also in the training "
        "data (same file or ISIC id) were dropped before scoring. Each model keeps the threshold it chose "
        "on validation. CIs: bootstrap grouped by patient (else lesion, else image)."
    )
    if e.get("source") == "synthetic":
        text += " The built-in synthetic external set tests the pipeline, not generalisation to real lesions."
    return text
