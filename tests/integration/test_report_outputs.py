"""The report stage on a real tiny pipeline run (integration/tiny_pipeline.py): linked figures exist, every
README number traces to a file the pipeline wrote, tables match their source rows, bytes are stable.

Every expected value is read from what ingest, prepare, split, train, evaluate and register wrote; none is
typed here. The hand-made edge cases (no external set, missing intervals) are in tests/test_report.py."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest
from PIL import Image

from melanoma.errors import DataError
from melanoma.report import ReportPaths, write_report
from report_checks import (
    PNG_MAGIC,
    ci,
    digests,
    fmt3,
    md_tables,
    report_numbers,
    source_numbers,
    table_with,
    untraced,
)

if TYPE_CHECKING:
    from integration.tiny_pipeline import TinyPipeline

pytestmark = pytest.mark.integration

LIMITS = (30, 5)  # write_report's small-group defaults, which the report stage runs with


@pytest.fixture(scope="module")
def repo(tiny_pipeline: TinyPipeline) -> Path:
    """The tiny pipeline's repository, with the report the `report` stage itself wrote (read only)."""
    return tiny_pipeline.repo


@pytest.fixture(scope="module")
def models() -> list[str]:
    """The models the report stage reports on (all of dvc.yaml's evaluate@ models)."""
    from integration.tiny_pipeline import MODELS

    return list(MODELS)


def copy_inputs(repo: Path, dest: Path) -> Path:
    """What the report reads, copied elsewhere (as `dvc exp run --temp` would): without the model weights."""
    for folder in ("data/prepared", "data/splits", "models", "reports/metrics", "reports/plots"):
        shutil.copytree(
            repo / folder, dest / folder, ignore=shutil.ignore_patterns("*.keras", "*.joblib", "members")
        )
    shutil.copy2(repo / "reports/registry.json", dest / "reports/registry.json")
    return dest


def run_report(root: Path, models: list[str], seed: int, limits: tuple[int, int] = LIMITS) -> list[Path]:
    """What the report stage runs (cli.cmd_report), with the small-group limits made explicit."""
    return write_report(ReportPaths.under(root), models, seed=seed,
                        small_group_n=limits[0], small_group_melanoma=limits[1])  # fmt: skip


def seed_of(repo: Path) -> int:
    import yaml

    return int(yaml.safe_load((repo / "params.yaml").read_text())["base"]["seed"])


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _test(root: Path, name: str) -> dict[str, Any]:
    return _json(root / f"reports/metrics/{name}.json")["test"]


def _external(root: Path, name: str) -> dict[str, Any]:
    return _json(root / f"reports/metrics/{name}.json")["external"]


def _readme(root: Path) -> str:
    return (root / "reports/README.md").read_text()


# ------------------------------------------------------------------------------- tests
def test_every_linked_figure_exists_and_is_a_png(repo: Path, models: list[str]) -> None:
    linked = set()
    for doc in ("README.md", "model_card.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (repo / "reports" / doc).read_text()):
            path = repo / "reports" / target
            assert path.read_bytes()[:8] == PNG_MAGIC, target
            with Image.open(path) as img:
                img.verify()
            linked.add(path.name)
    on_disk = {p.name for p in (repo / "reports/figures").iterdir()}
    assert linked == on_disk  # no orphan figure, no dangling link
    trained = {f"training_{m}.png" for m in models if (repo / f"models/{m}/history.json").is_file()}
    assert trained, "no model wrote a history.json: the training-curve check would be vacuous"
    expected = {"samples.png", "roc.png", "prc.png", "confusion.png", "calibration.png", *trained}
    assert all("external" in _json(repo / f"reports/metrics/{m}.json") for m in models)
    assert expected | {"external_roc.png", "external_prc.png"} <= linked


def test_every_readme_number_traces_to_a_source_file(repo: Path, models: list[str]) -> None:
    readme = _readme(repo)
    assert len(report_numbers(readme)) > 100  # the check sees the tables, not an empty page
    assert untraced(readme, repo, models, LIMITS) == set()


def test_the_trace_check_fails_on_a_number_that_is_in_no_file(repo: Path, models: list[str]) -> None:
    readme, sources = _readme(repo), source_numbers(repo, models, LIMITS)
    cell = f"| {fmt3(_test(repo, 'baseline')['roc_auc'])} ["  # baseline ROC AUC as in its metrics file
    assert cell in readme
    assert "0.999" not in sources and "412" not in sources
    assert untraced(readme.replace(cell, "| 0.999 [", 1), repo, models, LIMITS) == {"0.999"}  # a typo
    assert untraced(readme + "\nTraining took 412 s.\n", repo, models, LIMITS) == {"412"}  # from nowhere
    prep = _json(repo / "data/prepared/prepare_report.json")
    derived = f"{1 - prep['melanoma_fraction']:.3f}"  # computed by the report, not read
    assert derived not in sources
    assert untraced(readme + f"\nNot melanoma: {derived} of the images.\n", repo, models, LIMITS) == {derived}


def test_tables_match_their_source_rows(repo: Path, models: list[str]) -> None:
    readme = _readme(repo)
    split = _json(repo / "data/splits/split_report.json")
    rows = table_with(readme, "patients")
    assert [r["split"] for r in rows] == ["train", "val", "test", "overall"]
    for row in rows:
        src = split[row["split"]]
        assert (row["images"], row["melanoma"], row["patients"]) == (
            fmt3(src["n"]), fmt3(src["n_melanoma"]), fmt3(src["n_groups"])
        )  # fmt: skip
    rows = table_with(readme, "ROC AUC [CI]")
    assert [r["model"] for r in rows] == models
    for row in rows:
        t = _test(repo, row["model"])
        assert row["ROC AUC [CI]"] == ci(t, "roc_auc")
        assert row["pAUC (TPR≥0.8) [CI]"].startswith(fmt3(t["pauc_80"]))
        assert (row["sensitivity"], row["specificity"]) == (fmt3(t["sensitivity"]), fmt3(t["specificity"]))
    prep = _json(repo / "data/prepared/prepare_report.json")
    cleaning = {r["step"]: r["images"] for r in table_with(readme, "step")}
    assert cleaning["metadata rows (before)"] == str(prep["n_metadata_rows"])
    assert cleaning["kept (after)"] == str(prep["n_kept"])
    assert cleaning["dropped: corrupt (cannot be decoded)"] == str(prep["n_corrupt"])
    assert cleaning["dropped: duplicate pixels"] == str(prep["n_duplicates"])
    # the counts ingest really left for prepare to clean (params: one corrupt, one duplicate)
    assert prep["n_corrupt"] >= 1 and prep["n_duplicates"] >= 1
    confusion = {r["model"]: r for r in table_with(readme, "TP")}
    for name in models:
        t = _test(repo, name)
        assert [confusion[name][k] for k in ("TN", "FP", "FN", "TP")] == [
            str(t[k]) for k in ("tn", "fp", "fn", "tp")
        ]
        assert t["tp"] + t["fn"] == t["n_melanoma"] and t["tn"] + t["fp"] == t["n"] - t["n_melanoma"]


def calibrator_words(cal: dict[str, Any]) -> str:
    """How the README names a fitted calibrator (model.json's ``calibration``)."""
    if cal["method"] == "platt":
        return f"Platt, slope {fmt3(cal['slope'])}, intercept {fmt3(cal['intercept'])}"
    if cal["method"] == "temperature":
        return f"temperature, T = {fmt3(cal['temperature'])}"
    return str(cal["method"])


def test_calibration_table_shows_ece_and_brier_before_and_after(repo: Path, models: list[str]) -> None:
    rows = {r["model"]: r for r in table_with(_readme(repo), "calibrator")}
    assert list(rows) == models
    for name in models:
        t, info = _test(repo, name), _json(repo / f"models/{name}/model.json")
        assert rows[name]["ECE"] == f"{fmt3(t['ece_uncalibrated'])} → {fmt3(t['ece'])}"
        assert rows[name]["Brier"] == f"{fmt3(t['brier_uncalibrated'])} → {fmt3(t['brier'])}"
        assert rows[name]["calibrator"] == calibrator_words(info["calibration"])
        assert rows[name]["TTA (8 flips/rotations)"] == ("on" if info["tta"] else "off")


def test_internal_test_and_external_set_side_by_side(repo: Path, models: list[str]) -> None:
    """One row per model and condition: internal test, external set, each also without metadata
    for a model that reads it (the blocks evaluate wrote), with the AUC's change from internal."""
    readme = _readme(repo)
    card = (repo / "reports/model_card.md").read_text()
    e = _external(repo, "baseline")
    blocks = {
        "internal test": "test",
        "internal test, no metadata": "test_images_only",
        f"external: {e['name']}": "external",
        f"external: {e['name']}, no metadata": "external_images_only",
    }
    expected = [
        (m, label)
        for m in models
        for label, key in blocks.items()
        if key in _json(repo / f"reports/metrics/{m}.json")
    ]
    assert ("baseline", "internal test, no metadata") in expected  # the tiny baseline reads metadata
    assert ("cnn", "internal test, no metadata") not in expected  # an image-only model has no such rows
    for doc in (readme, card):
        rows = table_with(doc.split("## External validation")[1], "data")
        assert [(r["model"], r["data"]) for r in rows] == expected
        for r in rows:
            t = _json(repo / f"reports/metrics/{r['model']}.json")[blocks[r["data"]]]
            assert (r["images"], r["melanoma"]) == (fmt3(t["n"]), fmt3(t["n_melanoma"]))
            assert (r["ROC AUC [CI]"], r["PR AUC [CI]"]) == (ci(t, "roc_auc"), ci(t, "pr_auc"))
            assert (r["sensitivity"], r["specificity"]) == (fmt3(t["sensitivity"]), fmt3(t["specificity"]))
            assert r["threshold"] == fmt3(_test(repo, r["model"])["threshold"])  # the same operating point
            gap = "n/a" if r["data"] == "internal test" else f"{t['roc_auc_change_from_internal']:+.3f}"
            assert r["Δ AUC vs internal"] == gap
            if gap != "n/a":  # evaluate's difference, not the report's own arithmetic
                internal = _test(repo, r["model"])["roc_auc"]
                assert t["roc_auc_change_from_internal"] == pytest.approx(t["roc_auc"] - internal, abs=2e-6)
    assert (repo / "reports/figures/generalisation_gap.png").is_file()
    assert (
        f"External set **{e['name']}** (source `{e['source']}`): {e['n']} images, {e['n_melanoma']} melanoma"
        in readme
    )
    assert f"{e['n_dropped_in_training']} images also in the training data" in readme
    # a stale or typo'd external number is caught by the trace check like any other
    cell = ci(e, "roc_auc")
    assert cell in readme
    assert untraced(readme.replace(cell, "0.998 [0.9, 1.0]"), repo, models, LIMITS) >= {"0.998"}


def _subgroup_rows(root: Path, models: list[str]) -> list[dict[str, Any]]:
    return [r for m in models for r in _json(root / f"reports/plots/{m}/subgroups.json")]


def _expected_note(row: dict[str, Any], limits: tuple[int, int]) -> str:
    why = [f"n<{limits[0]}"] * (row["n"] < limits[0]) + [f"melanoma<{limits[1]}"] * (
        row["n_melanoma"] < limits[1]
    )
    return "⚠ small: " + ", ".join(why) if why else ""


def test_small_subgroups_are_flagged_not_hidden(repo: Path, models: list[str], tmp_path: Path) -> None:
    # The stage's own report (limits 30/5): on tiny data every group is small, and says so.
    sources = _subgroup_rows(repo, models)
    shown = [r for t in md_tables(_readme(repo)) if t and "note" in t[0] for r in t]
    assert len(shown) == len(sources) > 0  # every row of every subgroups.json
    for row, src in zip(shown, sources, strict=True):
        assert (row["attribute"], row["group"], row["n"]) == (src["attribute"], src["value"], str(src["n"]))
        assert row["note"] == _expected_note(src, LIMITS) != ""
    # Limits the tiny data can meet (the smallest group's size, one melanoma): some rows stop being flagged.
    low = (min(r["n"] for r in sources), 1)
    root = copy_inputs(repo, tmp_path)
    run_report(root, models, seed_of(repo), low)
    shown = [r for t in md_tables(_readme(root)) if t and "note" in t[0] for r in t]
    notes = [row["note"] for row in shown]
    assert notes == [_expected_note(src, low) for src in sources]
    assert "" in notes and any(notes), notes  # both kinds of row occur, so both branches were checked


def _champion_words(record: dict[str, Any]) -> str:
    """The model name behind ``champion_after``: the candidate, or the champion it was judged against."""
    after, cand, before = record["champion_after"], record["candidate"], record["champion_before"] or {}
    return cand["name"] if after == cand["version"] else before["model_name"]


def _check_champion_section(root: Path) -> dict[str, Any]:
    record = _json(root / "reports/registry.json")
    readme, card = _readme(root), (root / "reports/model_card.md").read_text()
    who, after = _champion_words(record), record["champion_after"]
    assert f"**Champion:** `{record['registered_model']}` v{after} (`{who}`)." in readme
    assert f"Decision: **{record['action']}** (promoted: {record['promoted']})" in readme
    assert f"> {record['reason']}" in readme
    assert f"champion: v{after} (`{who}`)" in card
    rows = table_with(readme.split("## Champion")[1], "candidate")
    assert [(r["candidate"], r["val ROC AUC"], r["test ROC AUC"]) for r in rows] == [
        (c["name"], fmt3(c["val_roc_auc"]), fmt3(c["test_roc_auc"])) for c in record["candidates"]
    ]
    return record


def test_champion_and_why_come_from_registry_json(
    repo: Path, models: list[str], tiny_pipeline: TinyPipeline, tmp_path: Path
) -> None:
    # The pipeline's register: the first version, promoted because there was no champion.
    first = _check_champion_section(repo)
    assert first == tiny_pipeline.first and first["action"] == "promote"
    # The second real register run judged another candidate against that champion: its record as the
    # report's input gives the "judged against the champion" wording, with register's own reason.
    root = copy_inputs(repo, tmp_path)
    shutil.copy2(repo / "reports/registry_second.json", root / "reports/registry.json")
    run_report(root, models, seed_of(repo))
    second = _check_champion_section(root)
    assert second["champion_before"]["version"] == first["candidate"]["version"]
    assert str(second["champion_before"]["test_roc_auc"]) in second["reason"]
    assert untraced(_readme(root), root, models, LIMITS) == set()


def test_model_card_has_use_licences_attribution_and_limitations(repo: Path) -> None:
    card = (repo / "reports/model_card.md").read_text()
    assert "**Not a medical device.**" in card
    raw = pd.read_csv(repo / "data/raw/metadata.csv", dtype=str)  # what ingest wrote, counted here
    lic = {r["licence"]: r["images"] for r in table_with(card, "licence")}
    assert lic == {k: str(v) for k, v in raw["copyright_license"].value_counts().items()}
    needs = raw[raw["copyright_license"] != "CC-0"].groupby("attribution").size()
    assert len(needs) > 0
    for who, n in needs.items():
        assert f"- {who} ({n})" in card
    for who in set(raw["attribution"]) - set(needs.index):  # CC-0 only: no attribution owed
        assert f"- {who} (" not in card
    for needle in ("Rulers", "ink", "colour-calibration patches", "Dataset shift", "Skin types"):
        assert needle in card
    t = _test(repo, "baseline")
    assert ci(t, "roc_auc") in card  # with CIs


def test_models_without_history_have_no_training_curve(repo: Path, models: list[str]) -> None:
    readme = _readme(repo)
    sections = dict(re.findall(r"^### (\w+)\n(.*?)(?=^### |^## )", readme, re.M | re.S))
    assert not (repo / "models/baseline/history.json").exists()  # scikit-learn: not iterative
    for name in models:
        figure = f"figures/training_{name}.png"
        if (repo / f"models/{name}/history.json").is_file():
            assert figure in sections[name] and (repo / "reports" / figure).is_file()
        else:
            assert "not iterative (no history.json)" in sections[name] and figure not in sections[name]
            assert not (repo / "reports" / figure).exists()
    assert "train_seconds" in sections["baseline"]  # training time: where to find it, not a number


def test_same_inputs_give_identical_bytes_anywhere(repo: Path, models: list[str], tmp_path: Path) -> None:
    first = digests(repo)  # what the report stage wrote in the pipeline run
    moved = copy_inputs(repo, tmp_path / "elsewhere")  # e.g. a `dvc exp run --temp` copy
    run_report(moved, models, seed_of(repo))
    assert digests(moved) == first
    run_report(moved, models, seed_of(repo))  # and again over its own output
    assert digests(moved) == first


@pytest.mark.parametrize(
    "missing",
    ["data/prepared/prepare_report.json", "data/splits/split_report.json", "data/prepared/provenance/ingest_report.json",
     "data/prepared/provenance/attribution.txt", "data/prepared/provenance/licences.json", "reports/registry.json",
     "models/cnn/model.json", "reports/metrics/baseline.json", "reports/plots/cnn/subgroups.json",
     "data/prepared/images.npy", "reports/plots/cnn/external_roc.json"],
)  # fmt: skip
def test_a_missing_input_is_a_data_error_naming_it(
    repo: Path, models: list[str], tmp_path: Path, missing: str
) -> None:
    root = copy_inputs(repo, tmp_path)  # complete inputs (the stage wrote its report from them)
    (root / missing).unlink()
    with pytest.raises(DataError, match=re.escape(str(root / missing))):
        run_report(root, models, seed_of(repo))
    assert not (root / "reports/README.md").exists()  # nothing half-written
