"""The report stage: linked figures exist, every README number traces to a file, bytes are stable."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melanoma import atomic, contracts, raw_layout
from melanoma.errors import DataError
from melanoma.report import ReportPaths, write_report

MODELS = ["baseline", "cnn"]
SMALL_N, SMALL_MEL = 30, 5  # the small-group limits passed to write_report: the only free numbers
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


EXTERNAL_NAME = "ISIC 2019 test"  # a name with a number: numbers inside source strings trace too


def _external_metrics(seed: int, threshold: float) -> dict[str, Any]:
    """The external block evaluate writes: the test's keys on another set, at the same threshold."""
    counts = {"n": 157, "n_melanoma": 23, "prevalence": 0.146497, "tn": 96, "fp": 38, "fn": 5, "tp": 18}
    return {"name": EXTERNAL_NAME, "source": "challenge", "n_dropped_in_training": 4,
            **_test_metrics(seed + 50), **counts, "threshold": threshold}  # fmt: skip


def _model(
    root: Path, name: str, seed: int, info: dict[str, Any], history: list[dict[str, Any]] | None
) -> float:
    """Write one model's folder, metrics and plot series; return its test ROC AUC."""
    model_dir, test, d = root / "models" / name, _test_metrics(seed), _draws(seed + 100)
    external = _external_metrics(seed, test["threshold"])
    base = {"name": name, "image_size": 8, "fit": "crop", "threshold": test["threshold"],
            "threshold_rule": "sensitivity>=0.9", "n_train": 6, "n_val": 2,
            "val": {"val_roc_auc": d(0.7, 0.9), "val_sensitivity": d(0.9, 1.0), "val_specificity": d(0.4, 0.6)}}  # fmt: skip
    contracts.write_model_json(model_dir, {**base, **info})
    if history is not None:
        contracts.write_history(model_dir, history)
    contracts.write_metrics(
        root / f"reports/metrics/{name}.json", {"model": name, "test": test, "external": external}
    )
    plots = root / "reports/plots" / name
    atomic.write_json(plots / "external_roc.json", [{"fpr": 0.0, "tpr": 0.0}, {"fpr": 0.41, "tpr": 0.73},
                                                    {"fpr": 1.0, "tpr": 1.0}])  # fmt: skip
    atomic.write_json(
        plots / "external_prc.json",
        [{"recall": 1.0, "precision": 0.146}, {"recall": 0.43, "precision": 0.52}],
    )
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
    """Every file the report reads, small and by hand (the baseline has no history.json)."""
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
                                 "calibration": {"method": "temperature", "temperature": 1.537215}}, history)  # fmt: skip
    _registry(root, champion, challenger)
    return root


def run_report(root: Path) -> list[Path]:
    return write_report(ReportPaths.under(root), MODELS, seed=7, samples_per_class=3,
                        small_group_n=SMALL_N, small_group_melanoma=SMALL_MEL)  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_inputs(tmp_path_factory.mktemp("study"))
    run_report(root)
    return root


# ------------------------------------------------------------------- tracing numbers
NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")


def fmt3(value: Any) -> str | None:
    """The report's number format, written out again here: ints as is, other numbers to 3 decimals."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return None


def _leaves(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _leaves(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _leaves(v)]
    return [obj]


def source_numbers(root: Path) -> set[str]:
    """Every number the README may print: each numeric value of every source JSON, formatted as the
    report formats it, and numbers quoted inside their strings (the registry's reason, '<40')."""
    files = [root / "data/prepared/provenance/ingest_report.json", root / "data/prepared/prepare_report.json",
             root / "data/splits/split_report.json", root / "reports/registry.json"]  # fmt: skip
    for name in MODELS:
        files += [root / f"models/{name}/model.json", root / f"reports/metrics/{name}.json"]
        files += sorted((root / "reports/plots" / name).glob("*.json"))
    out = {str(SMALL_N), str(SMALL_MEL)}
    for path in files:
        for leaf in _leaves(json.loads(path.read_text())):
            if isinstance(leaf, str):
                out |= set(NUMBER_RE.findall(leaf))
            elif (text := fmt3(leaf)) is not None:
                out.add(text)
    return out


def report_numbers(markdown: str) -> list[str]:
    """Numbers a reader sees: table bodies and prose; not headings, table headers, code or links."""
    lines = markdown.splitlines()
    found = []
    for i, line in enumerate(lines):
        is_header = i + 1 < len(lines) and lines[i + 1].startswith("|---")
        if line.startswith("#") or line.startswith("|---") or is_header:
            continue
        text = re.sub(r"`[^`]*`", "", line)
        text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
        found += NUMBER_RE.findall(text)
    return found


def untraced(markdown: str, root: Path) -> set[str]:
    return set(report_numbers(markdown)) - source_numbers(root)


def md_tables(markdown: str) -> list[list[dict[str, str]]]:
    """Every Markdown table as a list of {header: cell} rows."""
    tables, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") and i > 0:
            head = [c.strip() for c in lines[i - 1].strip("|").split(" | ")]
            rows, j = [], i + 1
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(
                    dict(
                        zip(head, [c.strip() for c in lines[j].strip().strip("|").split(" | ")], strict=True)
                    )
                )
                j += 1
            tables.append(rows)
    return tables


def _test(root: Path, name: str) -> dict[str, Any]:
    return json.loads((root / f"reports/metrics/{name}.json").read_text())["test"]


def _external(root: Path, name: str) -> dict[str, Any]:
    return json.loads((root / f"reports/metrics/{name}.json").read_text())["external"]


def _prepare(root: Path) -> dict[str, Any]:
    return json.loads((root / "data/prepared/prepare_report.json").read_text())


def table_with(markdown: str, column: str) -> list[dict[str, str]]:
    return next(t for t in md_tables(markdown) if t and column in t[0])


# ------------------------------------------------------------------------------- tests
def test_every_linked_figure_exists_and_is_a_png(built: Path) -> None:
    linked = set()
    for doc in ("README.md", "model_card.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (built / "reports" / doc).read_text()):
            path = built / "reports" / target
            assert path.read_bytes()[:8] == PNG_MAGIC, target
            with Image.open(path) as img:
                img.verify()
            linked.add(path.name)
    on_disk = {p.name for p in (built / "reports/figures").iterdir()}
    assert linked == on_disk  # no orphan figure, no dangling link
    assert {
        "samples.png",
        "roc.png",
        "prc.png",
        "confusion.png",
        "calibration.png",
        "training_cnn.png",
        "external_roc.png",
        "external_prc.png",
    } <= linked


def test_every_readme_number_traces_to_a_source_file(built: Path) -> None:
    readme = (built / "reports/README.md").read_text()
    assert len(report_numbers(readme)) > 100  # the check sees the tables, not an empty page
    assert untraced(readme, built) == set()


def test_the_trace_check_fails_on_a_number_that_is_in_no_file(built: Path) -> None:
    readme = (built / "reports/README.md").read_text()
    cell = f"| {fmt3(_test(built, 'baseline')['roc_auc'])} ["  # baseline ROC AUC as in its metrics file
    assert cell in readme
    assert untraced(readme.replace(cell, "| 0.999 ["), built) == {"0.999"}  # a typo'd or stale value
    assert untraced(readme + "\nTraining took 412 s.\n", built) == {"412"}  # a number from nowhere
    derived = f"{1 - _prepare(built)['melanoma_fraction']:.3f}"  # computed by the report, not read
    assert untraced(readme + f"\nNot melanoma: {derived} of the images.\n", built) == {derived}


def test_tables_match_their_source_rows(built: Path) -> None:
    readme = (built / "reports/README.md").read_text()
    split = json.loads((built / "data/splits/split_report.json").read_text())
    for row in table_with(readme, "patients"):
        src = split[row["split"]]
        assert (row["images"], row["melanoma"], row["patients"]) == (
            fmt3(src["n"]), fmt3(src["n_melanoma"]), fmt3(src["n_groups"])
        )  # fmt: skip
    for row in table_with(readme, "ROC AUC [CI]"):
        t = _test(built, row["model"])
        assert (
            row["ROC AUC [CI]"]
            == f"{fmt3(t['roc_auc'])} [{fmt3(t['roc_auc_ci_low'])}, {fmt3(t['roc_auc_ci_high'])}]"
        )
        assert row["pAUC (TPR≥0.8) [CI]"].startswith(fmt3(t["pauc_80"]))
        assert (row["sensitivity"], row["specificity"]) == (fmt3(t["sensitivity"]), fmt3(t["specificity"]))
    prep = _prepare(built)
    cleaning = {r["step"]: r["images"] for r in table_with(readme, "step")}
    assert cleaning["metadata rows (before)"] == "17" and cleaning["kept (after)"] == str(prep["n_kept"])
    assert cleaning["dropped: corrupt (cannot be decoded)"] == str(prep["n_corrupt"])


def test_calibration_table_shows_ece_and_brier_before_and_after(built: Path) -> None:
    readme = (built / "reports/README.md").read_text()
    rows = {r["model"]: r for r in table_with(readme, "calibrator")}
    for name, t in ((n, _test(built, n)) for n in MODELS):
        assert rows[name]["ECE"] == f"{fmt3(t['ece_uncalibrated'])} → {fmt3(t['ece'])}"
        assert rows[name]["Brier"] == f"{fmt3(t['brier_uncalibrated'])} → {fmt3(t['brier'])}"
    assert (
        rows["cnn"]["calibrator"] == "temperature, T = 1.537"
        and rows["cnn"]["TTA (8 flips/rotations)"] == "on"
    )
    assert rows["baseline"]["calibrator"] == "Platt, slope 0.812, intercept -0.205"


def _ci(t: dict[str, Any], key: str) -> str:
    return f"{fmt3(t[key])} [{fmt3(t[f'{key}_ci_low'])}, {fmt3(t[f'{key}_ci_high'])}]"


def test_internal_test_and_external_set_side_by_side(built: Path) -> None:
    readme = (built / "reports/README.md").read_text()
    card = (built / "reports/model_card.md").read_text()
    for doc in (readme, card):
        rows = table_with(doc.split("## External validation")[1], "data")
        assert [(r["model"], r["data"]) for r in rows] == [
            (m, d) for m in MODELS for d in ("internal test", f"external: {EXTERNAL_NAME}")
        ]
        for r in rows:
            t = _test(built, r["model"]) if r["data"] == "internal test" else _external(built, r["model"])
            assert (r["images"], r["melanoma"]) == (fmt3(t["n"]), fmt3(t["n_melanoma"]))
            assert (r["ROC AUC [CI]"], r["PR AUC [CI]"]) == (_ci(t, "roc_auc"), _ci(t, "pr_auc"))
            assert (r["sensitivity"], r["specificity"]) == (fmt3(t["sensitivity"]), fmt3(t["specificity"]))
            assert r["threshold"] == fmt3(_test(built, r["model"])["threshold"])  # the same operating point
    e = _external(built, "baseline")
    assert (
        f"External set **{EXTERNAL_NAME}** (source `challenge`): {e['n']} images, {e['n_melanoma']} melanoma"
        in readme
    )
    assert f"{e['n_dropped_in_training']} images also in the training data" in readme
    # a stale or typo'd external number is caught by the trace check like any other
    cell = _ci(e, "roc_auc")
    assert cell in readme and untraced(readme.replace(cell, "0.998 [0.9, 1.0]"), built) >= {"0.998"}


def test_without_an_external_set_the_report_says_so(tmp_path: Path) -> None:
    root = build_inputs(tmp_path)
    for name in MODELS:
        path = root / f"reports/metrics/{name}.json"
        metrics = json.loads(path.read_text())
        del metrics["external"]
        path.write_text(json.dumps(metrics))
        for f in (root / "reports/plots" / name).glob("external_*"):
            f.unlink()  # as evaluate writes them: absent when there is no external set
    run_report(root)
    readme = (root / "reports/README.md").read_text()
    card = (root / "reports/model_card.md").read_text()
    for doc in (readme, card):
        assert "No external set was scored (`external.source: none` in params.yaml)" in doc
        assert "external: " not in doc
    assert not list((root / "reports/figures").glob("external_*"))
    assert untraced(readme, root) == set()


def test_small_subgroups_are_flagged_not_hidden(built: Path) -> None:
    readme = (built / "reports/README.md").read_text()
    rows = [r for t in md_tables(readme) if t and "note" in t[0] for r in t]
    assert len(rows) == 2 * len(MODELS)  # every row of every subgroups.json
    by_group = {r["group"]: r for r in rows}
    assert by_group["female"]["note"] == ""
    assert "n<30" in by_group["<40"]["note"] and "melanoma<5" in by_group["<40"]["note"]


def test_champion_and_why_come_from_registry_json(built: Path) -> None:
    readme = (built / "reports/README.md").read_text()
    assert "**Champion:** `melanoma-classifier` v2 (`baseline`)." in readme
    reason = json.loads((built / "reports/registry.json").read_text())["reason"]
    assert "Decision: **keep**" in readme and f"> {reason}" in readme
    card = (built / "reports/model_card.md").read_text()
    assert "champion: v2 (`baseline`)" in card


def test_model_card_has_use_licences_attribution_and_limitations(built: Path) -> None:
    card = (built / "reports/model_card.md").read_text()
    assert "**Not a medical device.**" in card
    lic = {r["licence"]: r["images"] for r in table_with(card, "licence")}
    assert lic == {"CC-0": "6", "CC-BY": "3", "CC-BY-NC": "3"}
    assert "- Clinic Alpha (3)" in card and "- Clinic Beta (3)" in card and "Anonymous (" not in card
    for needle in ("0.010", "Rulers", "ink", "colour-calibration patches", "Dataset shift", "Skin types"):
        assert needle in card
    t = _test(built, "cnn")
    assert (
        f"{fmt3(t['roc_auc'])} [{fmt3(t['roc_auc_ci_low'])}, {fmt3(t['roc_auc_ci_high'])}]" in card
    )  # with CIs


def test_baseline_without_history_has_no_training_curve(built: Path) -> None:
    readme = (built / "reports/README.md").read_text()
    baseline = readme.split("### baseline")[1].split("### cnn")[0]
    assert "not iterative (no history.json)" in baseline and "training_" not in baseline
    assert not (built / "reports/figures/training_baseline.png").exists()
    assert "figures/training_cnn.png" in readme
    assert "train_seconds" in baseline  # training time: where to find it, not a number


def _digests(root: Path) -> dict[str, str]:
    out = root / "reports"
    files = [out / "README.md", out / "model_card.md", *sorted((out / "figures").iterdir())]
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_inputs_give_identical_bytes_anywhere(built: Path, tmp_path: Path) -> None:
    first = _digests(built)
    run_report(built)
    assert _digests(built) == first
    moved = tmp_path / "elsewhere"  # e.g. a `dvc exp run --temp` copy
    shutil.copytree(built, moved)
    shutil.rmtree(moved / "reports/figures")
    run_report(moved)
    assert _digests(moved) == first


@pytest.mark.parametrize(
    "missing",
    ["data/prepared/prepare_report.json", "data/splits/split_report.json", "data/prepared/provenance/ingest_report.json",
     "data/prepared/provenance/attribution.txt", "data/prepared/provenance/licences.json", "reports/registry.json", "models/cnn/model.json", "reports/metrics/baseline.json",
     "reports/plots/cnn/subgroups.json", "data/prepared/images.npy", "reports/plots/cnn/external_roc.json"],
)  # fmt: skip
def test_a_missing_input_is_a_data_error_naming_it(tmp_path: Path, missing: str) -> None:
    root = build_inputs(tmp_path)
    (root / missing).unlink()
    with pytest.raises(DataError, match=re.escape(str(root / missing))):
        run_report(root)
    assert not (root / "reports/README.md").exists()  # nothing half-written
