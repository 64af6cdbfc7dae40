"""The report stage on ONE hand-made study, for the edge cases a tiny real run does not produce: no external
set at all, metrics without bootstrap intervals. Everything else about the report is checked on a real
tiny pipeline run's outputs in tests/integration/test_report_outputs.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from melanoma import atomic, contracts, raw_layout
from melanoma.report import ReportPaths, write_report
from report_checks import ci, fmt3, md_tables, table_with, untraced

MODELS = ["baseline", "cnn"]
LIMITS = (30, 5)  # the small-group limits passed to write_report


# ------------------------------------------------------------------------------ inputs
def _raw(root: Path) -> None:
    records = [
        {"isic_id": f"ISIC_{9000000 + i:07d}", "copyright_license": lic, "attribution": who}
        for i, (lic, who) in enumerate(
            [("CC-0", "Anonymous")] * 6 + [("CC-BY", "Clinic Alpha")] * 3 + [("CC-BY-NC", "Clinic Beta")] * 3
        )
    ]
    texts = {"CC-0": "CC0 (test)", "CC-BY": "CC BY 4.0 (test)", "CC-BY-NC": "CC BY-NC 4.0 (test)"}
    report = {"source": "synthetic", "n_images": 12, "counts": {"copyright_license": {"CC-0": 6, "CC-BY": 3}}}
    raw_layout.write_raw_metadata(root / "data/raw", records, texts, report)


def _prepared_and_splits(root: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0])
    images = rng.integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8)
    index = pd.DataFrame(
        {
            "row": range(len(labels)),
            "isic_id": [f"ISIC_{9000000 + i:07d}" for i in range(len(labels))],
            "label": labels,
            "patient_id": [f"IP_{i // 2}" for i in range(len(labels))],
            "sex": ["female", "male"] * 5,
        }
    )
    prep = {"n_metadata_rows": 17, "n_kept": 10, "n_melanoma": 3, "n_not_melanoma": 7, "melanoma_fraction": 0.3,
            "n_unlabeled": 2, "n_manipulated": 1, "n_missing_image": 0, "n_corrupt": 3, "n_duplicates": 1,
            "n_orphan_images": 0}  # fmt: skip
    contracts.write_prepared(root / "data/prepared", images, index, prep)
    raw_layout.write_provenance(root / "data/raw", root / "data/prepared")  # as prepare does
    part = {"train": [0, 1, 2, 3, 4, 5], "val": [6, 7], "test": [8, 9]}
    frames = {k: index.iloc[v] for k, v in part.items()}

    def rep(n: int, mel: int, groups: int) -> dict[str, Any]:
        return {"n": n, "n_melanoma": mel, "n_benign": n - mel, "melanoma_fraction": round(mel / n, 6),
                "n_groups": groups}  # fmt: skip

    split = {"train": rep(6, 2, 3), "val": rep(2, 1, 1), "test": rep(2, 0, 1), "overall": rep(10, 3, 5)}
    contracts.write_splits(root / "data/splits", frames, {**split, "group_overlap": 0})


def _draws(seed: int) -> Any:
    """Seeded 6-decimal values: no two numbers of the fixture agree to 3 decimals by construction
    (values derived from each other would, and would let a computed number pass as a traced one)."""
    rng = np.random.default_rng(seed)
    return lambda lo, hi: round(float(rng.uniform(lo, hi)), 6)


def _test_metrics(seed: int) -> dict[str, Any]:
    d = _draws(seed)
    auc, pr, pauc = d(0.75, 0.9), d(0.4, 0.6), d(0.05, 0.15)
    return {"n": 211, "n_melanoma": 37, "prevalence": 0.175355, "roc_auc": auc, "roc_auc_ci_low": auc - d(0.05, 0.1),
            "roc_auc_ci_high": auc + d(0.02, 0.06), "pr_auc": pr, "pr_auc_ci_low": pr - d(0.1, 0.2),
            "pr_auc_ci_high": pr + d(0.1, 0.2), "pauc_80": pauc, "pauc_80_ci_low": pauc - d(0.01, 0.04),
            "pauc_80_ci_high": pauc + d(0.01, 0.04), "threshold": d(0.1, 0.4), "sensitivity": d(0.85, 0.95),
            "specificity": d(0.5, 0.7), "tn": 107, "fp": 67, "fn": 4, "tp": 33, "brier": d(0.1, 0.2),
            "ece": d(0.02, 0.08), "spec_at_sens_90": d(0.4, 0.6), "brier_uncalibrated": d(0.2, 0.3),
            "ece_uncalibrated": d(0.1, 0.2)}  # fmt: skip


def _model(
    root: Path,
    name: str,
    seed: int,
    info: dict[str, Any],
    history: list[dict[str, Any]] | None,
    with_ci: bool = True,
) -> float:
    """Write one model's folder, metrics and plot series (no external set); return its test ROC AUC."""
    model_dir, test, d = root / "models" / name, _test_metrics(seed), _draws(seed + 100)
    if not with_ci:  # evaluate.bootstrap: 0 writes no interval at all
        test = {k: (None if "_ci_" in k else v) for k, v in test.items()}
    base = {"name": name, "image_size": 8, "fit": "crop", "threshold": test["threshold"],
            "threshold_rule": "sensitivity>=0.9", "n_train": 6, "n_val": 2,
            "val": {"val_roc_auc": d(0.7, 0.9), "val_sensitivity": d(0.9, 1.0), "val_specificity": d(0.4, 0.6)}}  # fmt: skip
    contracts.write_model_json(model_dir, {**base, **info})
    if history is not None:
        contracts.write_history(model_dir, history)
    contracts.write_metrics(root / f"reports/metrics/{name}.json", {"model": name, "test": test})
    plots = root / "reports/plots" / name  # no external_*.json: evaluate writes none without an external set
    atomic.write_json(
        plots / "roc.json", [{"fpr": 0.0, "tpr": 0.0}, {"fpr": 0.3, "tpr": 0.8}, {"fpr": 1.0, "tpr": 1.0}]
    )
    atomic.write_json(
        plots / "prc.json", [{"recall": 1.0, "precision": 0.18}, {"recall": 0.5, "precision": 0.6}]
    )
    atomic.write_json(plots / "calibration.json", [{"bin": 1, "predicted": 0.12, "observed": 0.1, "n": 150},
                                                   {"bin": 7, "predicted": 0.74, "observed": 0.61, "n": 61}])  # fmt: skip
    atomic.write_json(plots / "subgroups.json", [
        {"attribute": "sex", "value": "female", "n": 140, "n_melanoma": 25, "roc_auc": d(0.7, 0.9),
         "sensitivity": d(0.8, 1.0), "specificity": d(0.5, 0.7)},
        {"attribute": "age_band", "value": "<40", "n": 12, "n_melanoma": 1, "roc_auc": None,
         "sensitivity": 1.0, "specificity": d(0.3, 0.5)},
    ])  # fmt: skip
    return test["roc_auc"]


def _registry(root: Path, champion_auc: float, cand_auc: float) -> None:
    """A realistic 'keep' decision: the cnn is the candidate, the baseline stays champion."""
    diff = round(cand_auc - champion_auc, 6)
    record = {
        "action": "keep", "promoted": False, "margin": 0.005, "registered_model": "melanoma-classifier",
        "reason": f"test ROC AUC {cand_auc} does not beat champion v2's {champion_auc} by 0.005 (difference {diff})",
        "selection": "highest validation ROC AUC (test metrics never choose)",
        "candidate": {"name": "cnn", "version": 3, "val_roc_auc": 0.864211, "test_roc_auc": cand_auc,
                      "weights": "none (trained from scratch)"},
        "candidates": [{"name": "baseline", "val_roc_auc": 0.851377, "test_roc_auc": champion_auc, "weights": "none"},
                       {"name": "cnn", "val_roc_auc": 0.864211, "test_roc_auc": cand_auc, "weights": "none"}],
        "champion_before": {"version": 2, "model_name": "baseline", "test_roc_auc": champion_auc, "score": "recorded"},
        "champion_after": 2, "improvement": diff, "test_split_hash": "ab" * 32,
    }  # fmt: skip
    atomic.write_json(root / "reports/registry.json", record)


def build_inputs(root: Path) -> Path:
    """Every file the report reads, small and by hand: no external set, and the cnn's metrics without
    bootstrap intervals (the baseline has no history.json)."""
    _raw(root)
    _prepared_and_splits(root)
    champion = _model(root, "baseline", 1, {"family": "baseline", "candidate": "random_forest",
                                      "candidate_val_auc": {"logistic_regression": 0.7013, "random_forest": 0.8589},
                                      "calibration": {"method": "platt", "slope": 0.812345, "intercept": -0.204567}},
           None)  # fmt: skip
    history = [{"epoch": e, "phase": "train", "auc": 0.6 + 0.05 * e, "val_auc": 0.58 + 0.04 * e,
                "loss": 0.7 - 0.04 * e, "val_loss": 0.71 - 0.03 * e} for e in range(4)]  # fmt: skip
    challenger = _model(root, "cnn", 2, {"family": "keras", "n_params": 81201, "epochs_run": 4, "best_epoch": 3,
                                 "class_balance": "class_weight", "tta": True,
                                 "calibration": {"method": "temperature", "temperature": 1.537215}}, history,
                        with_ci=False)  # fmt: skip
    _registry(root, champion, challenger)
    return root


def run_report(root: Path) -> list[Path]:
    return write_report(ReportPaths.under(root), MODELS, seed=7, samples_per_class=3,
                        small_group_n=LIMITS[0], small_group_melanoma=LIMITS[1])  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_inputs(tmp_path_factory.mktemp("study"))
    run_report(root)
    return root


# ------------------------------------------------------------------------------- tests
def _test(root: Path, name: str) -> dict[str, Any]:
    return json.loads((root / f"reports/metrics/{name}.json").read_text())["test"]


def test_without_an_external_set_the_report_says_so(built: Path) -> None:
    readme = (built / "reports/README.md").read_text()
    card = (built / "reports/model_card.md").read_text()
    for doc in (readme, card):
        assert "No external set was scored (`external.source: none` in params.yaml)" in doc
        assert "external: " not in doc
    assert not list((built / "reports/figures").glob("external_*"))
    assert (built / "reports/figures/roc.png").is_file()  # the internal test's figures are still there
    assert untraced(readme, built, MODELS, LIMITS) == set()


def test_metrics_without_intervals_print_the_value_alone(built: Path) -> None:
    readme = (built / "reports/README.md").read_text()
    rows = {r["model"]: r for r in table_with(readme, "ROC AUC [CI]")}
    cnn, baseline = _test(built, "cnn"), _test(built, "baseline")
    assert cnn["roc_auc_ci_low"] is None and baseline["roc_auc_ci_low"] is not None
    assert rows["cnn"]["ROC AUC [CI]"] == fmt3(cnn["roc_auc"])  # no "[n/a, n/a]" made up around it
    assert rows["baseline"]["ROC AUC [CI]"] == ci(baseline, "roc_auc")
    # a subgroup with one class has no ROC AUC (None): printed n/a, and still flagged as small
    small = [r for t in md_tables(readme) if t and "note" in t[0] for r in t if r["group"] == "<40"]
    assert [r["ROC AUC"] for r in small] == ["n/a"] * len(MODELS)
    assert all("n<30" in r["note"] and "melanoma<5" in r["note"] for r in small)


def test_a_temperature_calibrator_is_named_with_its_value(built: Path) -> None:
    """The tiny real run calibrates every model with Platt scaling; temperature scaling is shown here."""
    rows = {r["model"]: r for r in table_with((built / "reports/README.md").read_text(), "calibrator")}
    cal = json.loads((built / "models/cnn/model.json").read_text())["calibration"]
    assert cal["method"] == "temperature"
    assert rows["cnn"]["calibrator"] == f"temperature, T = {fmt3(cal['temperature'])}"
    assert (
        rows["cnn"]["TTA (8 flips/rotations)"] == "on"
        and rows["baseline"]["TTA (8 flips/rotations)"] == "off"
    )
