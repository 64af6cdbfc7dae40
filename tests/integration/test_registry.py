"""registry.register and the manual operations against a real ``mlflow server`` (and one sqlite store).

Most cases use tiny toy pyfunc models (a quality knob q mixes a label-bearing pixel with a noise
pixel) logged by real MLflow runs tagged with their folder's fingerprint, exactly as train.py does,
so register, re-scoring and aliases go through the real code path in seconds. The sqlite case
trains, evaluates and registers the real baseline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from melanoma import registry
from melanoma.contracts import model_fingerprint, write_metrics, write_model_json
from melanoma.errors import DataError
from melanoma.metrics import safe_auc
from melanoma.registry import Candidate, RegistryError, make_scorer, register, split_hash_of
from melanoma.tracking import FINGERPRINT_TAG, Tracking

EXPERIMENT = "registry-test"


class ToyModel(mlflow.pyfunc.PythonModel):
    """P = q * label pixel + (1 - q) * noise pixel: higher q, higher ROC AUC."""

    def load_context(self, context: Any) -> None:
        self.q = json.loads((Path(context.artifacts["model_dir"]) / "toy.json").read_text())["q"]

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - hints trip MLflow
        return toy_predict(self.q, np.asarray(model_input))


def toy_predict(q: float, images: np.ndarray) -> np.ndarray:
    x = images[:, 0, 0, :2].astype(np.float64) / 255
    return q * x[:, 0] + (1 - q) * x[:, 1]


def make_split(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Test images (label in pixel [0,0,0], noise in [0,0,1]), labels and their data hashes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.clip(100 + 60 * y + rng.normal(0, 40, n), 0, 255).astype(np.uint8)
    hashes = {
        "images_sha256": hashlib.sha256(images.tobytes()).hexdigest(),
        "train_csv_sha256": "0" * 64,
        "val_csv_sha256": "1" * 64,
        "test_csv_sha256": hashlib.sha256(y.tobytes()).hexdigest(),
    }
    return images, y, hashes


class Toys:
    """Makes, logs (once per content) and describes toy candidates on one tracking store."""

    def __init__(self, root: Path, uri: str) -> None:
        self.root, self.uri, self.logged = root, uri, set()
        self.splits = {"A": make_split(0), "B": make_split(1)}
        self.tracking = Tracking(
            uri=uri, experiment=EXPERIMENT, git_commit="c0ffee" * 6 + "beef", dvc_exp_name="exp-1"
        )

    def auc(self, q: float, split: str = "A") -> float:
        images, y, _ = self.splits[split]
        return round(safe_auc(y, toy_predict(q, images)), 6)

    def split_id(self, split: str) -> str:
        return split_hash_of(self.splits[split][2])

    def candidate(
        self,
        name: str,
        q: float,
        val: float,
        split: str = "A",
        claimed_test: float | None = None,
        data: dict[str, str] | None = None,
        val_extra: dict[str, float] | None = None,
    ) -> Candidate:
        """A model folder + metrics file; its run is logged the first time this content is seen."""
        key = f"{name}-{q}-{val}-{split}-{claimed_test}-{sorted((val_extra or {}).items())}"
        model_dir, metrics = self.root / key / "model", self.root / key / "metrics.json"
        if not model_dir.exists():
            model_dir.mkdir(parents=True)
            (model_dir / "toy.json").write_text(json.dumps({"q": q}))
            info = {
                "name": name, "family": "toy", "image_size": 4, "fit": "crop", "threshold": 0.5,
                "threshold_rule": "sensitivity>=0.9", "val": {"val_roc_auc": val, **(val_extra or {})},
                "data": data or self.splits[split][2],
            }  # fmt: skip
            write_model_json(model_dir, info)
            test_auc = self.auc(q, split) if claimed_test is None else claimed_test
            write_metrics(
                metrics, {"model": name, "test": {"roc_auc": test_auc, "n": 200}, "val": info["val"]}
            )
        fp = model_fingerprint(model_dir)
        if fp not in self.logged:
            mlflow.set_tracking_uri(self.uri)
            # An explicit experiment id, not mlflow.set_experiment: no global state leaks to later tests.
            client = mlflow.MlflowClient(self.uri)
            exp = client.get_experiment_by_name(EXPERIMENT)
            exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
            with mlflow.start_run(experiment_id=exp_id, tags={FINGERPRINT_TAG: fp}):
                mlflow.pyfunc.log_model(
                    name="model",
                    python_model=ToyModel(),
                    artifacts={"model_dir": str(model_dir)},
                    pip_requirements=["mlflow"],  # skips requirement inference (a slow subprocess)
                )
            self.logged.add(fp)
        return Candidate(name, model_dir, metrics)

    def register(self, name: str, cands: list[Candidate], split: str = "A", **kw: Any) -> registry.Decision:
        images, y, _ = self.splits[split]
        kw = {"margin": 0.01, "allow_unscored_champion": False, **kw}
        return register(
            cands,
            name,
            self.tracking,
            test_split_hash=self.split_id(split),
            scorer=make_scorer(images, y),
            **kw,
        )


@pytest.fixture(scope="module")
def toys(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Toys:
    return Toys(tmp_path_factory.mktemp("toys"), mlflow_server)


def aliases(uri: str, name: str) -> dict[str, str]:
    return dict(mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model(name).aliases)


def n_versions(uri: str, name: str) -> int:
    return len(
        mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(f"name='{name}'")
    )


def test_first_candidate_chosen_on_validation_becomes_champion_and_a_rerun_writes_nothing(toys: Toys) -> None:
    # "good_test" has the better test AUC but the worse validation AUC: validation chooses.
    chosen = toys.candidate("by_val", q=0.6, val=0.9)
    other = toys.candidate("good_test", q=0.95, val=0.8)
    assert toys.auc(0.95) > toys.auc(0.6)
    first = toys.register("m-first", [other, chosen])
    rec = first.record
    assert first.changed and first.new_version and first.promoted
    assert rec["candidate"]["name"] == "by_val" and rec["candidate"]["version"] == 1
    assert rec["action"] == "promote" and rec["champion_before"] is None and rec["champion_after"] == 1
    assert aliases(toys.uri, "m-first") == {"champion": "1", "challenger": "1"}

    mv = mlflow.MlflowClient(tracking_uri=toys.uri, registry_uri=toys.uri).get_model_version("m-first", "1")
    assert mv.tags[FINGERPRINT_TAG] == model_fingerprint(chosen.model_dir)
    assert mv.tags["git_commit"] == toys.tracking.git_commit and mv.tags["dvc_exp_name"] == "exp-1"
    assert "git_commit" not in rec["candidate"]  # tracked file: byte-identical across commits
    assert mv.tags["data.test_csv_sha256"] == toys.splits["A"][2]["test_csv_sha256"]
    assert float(mv.tags["test_roc_auc"]) == toys.auc(0.6) and float(mv.tags["val_roc_auc"]) == 0.9
    assert float(mv.tags["threshold"]) == 0.5 and mv.tags["weights"]
    assert mv.run_id and mv.run_id not in json.dumps(rec)  # run ids stay out of the tracked record
    assert json.loads(mv.description.split("\n", 3)[3]) == rec

    # Rerun with nothing new: no version, nothing written, byte-identical record. The same content
    # logged by a new run (a retrain giving identical files) is still recognised.
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name(EXPERIMENT).experiment_id,
                          tags={FINGERPRINT_TAG: model_fingerprint(chosen.model_dir)}):  # fmt: skip
        mlflow.pyfunc.log_model(name="model", python_model=ToyModel(),
                                artifacts={"model_dir": str(chosen.model_dir)}, pip_requirements=["mlflow"])  # fmt: skip
    again = toys.register("m-first", [other, chosen])
    assert not again.changed and not again.new_version
    assert json.dumps(again.record) == json.dumps(rec)
    assert n_versions(toys.uri, "m-first") == 1


def test_worse_and_within_margin_keep_the_champion_and_better_promotes(toys: Toys) -> None:
    name, margin = "m-margin", 0.02
    qs = {"champ": 0.5, "worse": 0.3, "close": 0.52, "better": 0.8}
    auc = {k: toys.auc(q) for k, q in qs.items()}
    assert auc["worse"] < auc["champ"] < auc["close"] < auc["champ"] + margin < auc["better"]
    assert toys.register(name, [toys.candidate("champ", qs["champ"], 0.7)], margin=margin).promoted

    worse = toys.register(name, [toys.candidate("worse", qs["worse"], 0.7)], margin=margin)
    assert worse.record["action"] == "keep" and not worse.promoted
    assert worse.record["champion_before"]["test_roc_auc"] == auc["champ"]
    assert worse.record["champion_before"]["score"] == "recorded"
    assert worse.record["improvement"] == pytest.approx(auc["worse"] - auc["champ"], abs=1e-6)
    assert aliases(toys.uri, name) == {"champion": "1", "challenger": "2"}

    close = toys.register(name, [toys.candidate("close", qs["close"], 0.7)], margin=margin)
    assert not close.promoted and 0 < close.record["improvement"] < margin
    assert f"by {margin}" in close.record["reason"]
    assert aliases(toys.uri, name) == {"champion": "1", "challenger": "3"}

    better = toys.register(name, [toys.candidate("better", qs["better"], 0.7)], margin=margin)
    assert better.promoted and better.record["champion_before"]["version"] == 1
    assert better.record["improvement"] == pytest.approx(auc["better"] - auc["champ"], abs=1e-6)
    assert better.record["champion_after"] == 4
    assert aliases(toys.uri, name) == {"champion": "4", "challenger": "4"}

    # The old champion and worse models again: the better champion is never demoted.
    again = toys.register(name, [toys.candidate("champ", qs["champ"], 0.7)], margin=0.0)
    assert not again.promoted and not again.new_version and again.record["candidate"]["version"] == 1
    assert aliases(toys.uri, name) == {"champion": "4", "challenger": "1"}
    assert n_versions(toys.uri, name) == 4


def test_a_model_that_loses_its_sensitivity_without_metadata_is_not_promoted(toys: Toys) -> None:
    """model.json's images-only validation sensitivity below the target: kept out, and why."""
    name = "m-images-only"
    weak = toys.candidate("weak", 0.5, 0.7, val_extra={"val_images_only_sensitivity": 0.6})
    refused = toys.register(name, [weak], min_images_only_sensitivity=0.9)
    assert not refused.promoted and aliases(toys.uri, name).get("champion") is None
    assert "without it (most uploads)" in refused.record["reason"]
    assert "is 0.6 < the target 0.9" in refused.record["reason"]
    fine = toys.candidate("fine", 0.5, 0.7, val_extra={"val_images_only_sensitivity": 0.92})
    assert toys.register(name, [fine], min_images_only_sensitivity=0.9).promoted
    # an image-only model (no such figure) is judged as before
    assert toys.register(
        "m-no-meta", [toys.candidate("plain", 0.5, 0.7)], min_images_only_sensitivity=0.9
    ).promoted


def test_changed_split_rescores_the_champion_on_todays_split(toys: Toys) -> None:
    name = "m-split"
    # The champion's record on split A claims 0.99; on split B it really scores far lower.
    champ = toys.candidate("champ", 0.4, 0.8, split="A", claimed_test=0.99)
    assert toys.register(name, [champ]).promoted
    cand = toys.candidate("new", 0.9, 0.8, split="B")
    assert toys.auc(0.4, "B") + 0.01 < toys.auc(0.9, "B") < 0.99

    d = toys.register(name, [cand], split="B")
    before = d.record["champion_before"]
    assert before["score"] == "rescored" and before["test_roc_auc"] == toys.auc(0.4, "B")
    assert before["test_split_hash"] == toys.split_id("A") != d.record["test_split_hash"]
    assert d.promoted and aliases(toys.uri, name)["champion"] == "2"
    tags = mlflow.MlflowClient(tracking_uri=toys.uri, registry_uri=toys.uri).get_model_version(name, "1").tags
    assert float(tags[registry.TAG_SCORE + toys.split_id("B")]) == toys.auc(0.4, "B")

    # A candidate evaluated on another split than today's is refused.
    with pytest.raises(DataError, match="another test split"):
        toys.register(name, [champ], split="B")


def test_champion_with_missing_artifacts_blocks_promotion_unless_allowed(toys: Toys) -> None:
    name = "m-gone"
    assert toys.register(name, [toys.candidate("lost", 0.45, 0.8, split="A")]).promoted
    client = mlflow.MlflowClient(tracking_uri=toys.uri, registry_uri=toys.uri)
    get_artifact_repository(client.get_model_version_download_uri(name, "1")).delete_artifacts()
    cand = toys.candidate("fresh", 0.85, 0.8, split="B")

    blocked = toys.register(name, [cand], split="B")
    assert not blocked.promoted and blocked.record["champion_before"]["score"] == "unscorable"
    assert (
        "cannot be scored" in blocked.record["reason"]
        and "allow_unscored_champion" in blocked.record["reason"]
    )
    assert aliases(toys.uri, name) == {"champion": "1", "challenger": "2"}

    allowed = toys.register(name, [cand], split="B", allow_unscored_champion=True)
    assert allowed.promoted and not allowed.new_version
    assert aliases(toys.uri, name) == {"champion": "2", "challenger": "2"}


def test_manual_promote_needs_a_reason_and_rollback_sticks(toys: Toys) -> None:
    name, uri = "m-manual", toys.uri
    assert toys.register(name, [toys.candidate("champ", 0.5, 0.7)]).promoted
    better = toys.candidate("better", 0.8, 0.7)
    assert toys.register(name, [better]).promoted
    assert aliases(uri, name)["champion"] == "2"

    out = registry.rollback(name, uri, reason="bad calibration in clinic")
    assert out["champion"] == 1 and aliases(uri, name)["champion"] == "1"
    # The next repro does not undo the rollback, though v2 scores higher.
    again = toys.register(name, [better])
    assert not again.promoted and "rolled back" in again.record["reason"]
    assert aliases(uri, name)["champion"] == "1"

    with pytest.raises(RegistryError, match="reason"):
        registry.promote(name, 2, "  ", uri)
    with pytest.raises(RegistryError, match="no version"):
        registry.promote(name, 9, "typo", uri)
    registry.promote(name, 2, "recalibrated; reviewed by the lead", uri)
    rows = {r["version"]: r for r in registry.list_versions(name, uri)}
    assert rows[2]["aliases"] == ["challenger", "champion"] and rows[1]["aliases"] == []
    assert (
        rows[2]["promotion_reason"] == "recalibrated; reviewed by the lead" and rows[2]["rolled_back"] is None
    )
    assert rows[2]["tags"]["previous_champion"] == "1" and rows[1]["test_roc_auc"] == toys.auc(0.5)
    assert (
        "by hand"
        in mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(name, "2").description
    )

    assert registry.rollback(name, uri)["champion"] == 1
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(name, uri)


def test_real_baseline_on_sqlite_store_registers_and_is_rescored(tmp_path: Path) -> None:
    """train -> evaluate -> register the real baseline on a sqlite store; re-scored on a new split."""
    from helpers import local_tracking, make_raw, tiny_params
    from melanoma.contracts import data_hashes, load_prepared, load_splits, split_arrays, write_splits
    from melanoma.evaluate import evaluate_model
    from melanoma.models import load_model
    from melanoma.prepare import prepare
    from melanoma.split import split_frame, split_report
    from melanoma.train import train_model

    params = tiny_params(test_fraction=0.25, val_fraction=0.25, bootstrap=0)
    tracking = local_tracking(tmp_path, EXPERIMENT)
    uri = tracking.uri
    make_raw(tmp_path / "raw", n=48, pos_every=3)
    prepared = tmp_path / "prepared"
    prepare(tmp_path / "raw", prepared, params.prepare)
    images, index = load_prepared(prepared)
    splits = {}
    for tag, seed in (("a", 1), ("b", 2)):
        splits[tag] = tmp_path / f"splits-{tag}"
        frames = split_frame(index, params.split, seed)
        write_splits(splits[tag], frames, split_report(frames))
    test = {tag: split_arrays(images, load_splits(path)["test"]) for tag, path in splits.items()}

    def decide(cands: list[Candidate], tag: str) -> registry.Decision:
        return register(
            cands, "melanoma-classifier", tracking, margin=0.0, allow_unscored_champion=False,
            test_split_hash=split_hash_of(data_hashes(prepared, splits[tag])), scorer=make_scorer(*test[tag]),
        )  # fmt: skip

    model_dir, metrics = tmp_path / "model", tmp_path / "metrics.json"
    train_model("baseline", prepared, splits["a"], model_dir, params, tracking)
    evaluate_model(
        "baseline", model_dir, prepared, splits["a"], metrics, tmp_path / "plots", params.evaluate, 0
    )
    first = decide([Candidate("baseline", model_dir, metrics)], "a")
    assert first.promoted and first.version == 1
    # The registered model, loaded by URI, scores as evaluate did.
    evaluated = json.loads(metrics.read_text())["test"]["roc_auc"]
    assert make_scorer(*test["a"])("models:/melanoma-classifier/1") == pytest.approx(evaluated, abs=1e-6)

    # Tomorrow's split: the champion (the real baseline pyfunc) is re-scored on it.
    toys = Toys(tmp_path / "toys", uri)
    cand = toys.candidate("cnn", 0.9, 0.9, claimed_test=1.0, data=data_hashes(prepared, splits["b"]))
    second = decide([cand], "b")
    before = second.record["champion_before"]
    x, y = test["b"]
    direct = round(safe_auc(y, load_model(model_dir).predict_proba(x).astype(np.float64)), 6)
    assert before["score"] == "rescored" and before["test_roc_auc"] == pytest.approx(direct, abs=1e-6)
    assert second.record["improvement"] == pytest.approx(1.0 - direct, abs=1e-6)
    assert second.promoted == (direct < 1.0)  # the easy synthetic set may give the champion a perfect AUC
    assert second.version == 2 and n_versions(uri, "melanoma-classifier") == 2


def test_the_ensemble_is_chosen_on_validation_like_any_other_model(tmp_path: Path) -> None:
    """train the baseline, then an ensemble over it; evaluate both; register chooses on validation among
    them, and the ensemble's logged pyfunc (loaded by URI) scores as evaluate did.

    The ensemble does not care which family a member is (tests/models/test_ensemble.py uses a real
    CNN): here a second baseline folder stands in for the cnn member, which keeps this test off
    TensorFlow and saves one logged model.
    """
    from helpers import local_tracking, prepared_and_split, tiny_params
    from melanoma.config import BaselineParams, EnsembleParams
    from melanoma.contracts import data_hashes, load_prepared, load_splits, split_arrays, write_model_json
    from melanoma.evaluate import evaluate_model
    from melanoma.models.baseline import fit_baseline
    from melanoma.train import train_model

    params = tiny_params(
        test_fraction=0.25, val_fraction=0.35, bootstrap=0,
        ensemble=EnsembleParams(members=("baseline", "cnn"), method="stack"),
    )  # fmt: skip
    tracking = local_tracking(tmp_path, EXPERIMENT)
    uri = tracking.uri
    prepared, splits = prepared_and_split(tmp_path, params, n=64, pos_every=3)
    images, _ = load_prepared(prepared)
    frames = load_splits(splits)
    models = tmp_path / "models"
    train_model("baseline", prepared, splits, models / "baseline", params, tracking)
    stand_in, _ = fit_baseline(
        *split_arrays(images, frames["train"]), *split_arrays(images, frames["val"]),
        BaselineParams(candidates=("random_forest",), n_estimators=10), 0, 24,
    )  # fmt: skip
    (models / "cnn").mkdir()
    stand_in.save(models / "cnn")
    write_model_json(models / "cnn", {"name": "cnn", "family": "baseline", "image_size": 24, "fit": "crop",
                                      "data": data_hashes(prepared, splits)})  # fmt: skip
    members = {n: models / n for n in params.ensemble.members}
    ens = train_model("ensemble", prepared, splits, models / "ensemble", params, tracking, None, members)
    assert ens["family"] == "ensemble" and "val_proba_oof" not in ens
    assert set(ens["member_val_auc"]) == {"baseline", "cnn"} and set(ens["coefficients"]) == {
        "baseline",
        "cnn",
    }
    logged = mlflow.MlflowClient(uri).get_run(ens["mlflow"]["run_id"]).data
    assert {"member_val_roc_auc.baseline", "member_val_roc_auc.cnn", "val_roc_auc_in_sample"} <= set(
        logged.metrics
    )
    assert (
        logged.params["ensemble.method"] == "stack" and "train.epochs" not in logged.params
    )  # its own params
    assert logged.tags["weights"].startswith("members' weights: baseline")
    cands = []
    for name in ("baseline", "ensemble"):
        metrics = tmp_path / "metrics" / f"{name}.json"
        evaluate_model(
            name, models / name, prepared, splits, metrics, tmp_path / "plots" / name, params.evaluate, 0
        )
        cands.append(Candidate(name, models / name, metrics))

    test = split_arrays(images, frames["test"])
    decision = register(
        cands, "melanoma-classifier", tracking, margin=0.0, allow_unscored_champion=False,
        test_split_hash=split_hash_of(data_hashes(prepared, splits)), scorer=make_scorer(*test),
    )  # fmt: skip
    table = {c["name"]: c for c in decision.record["candidates"]}
    assert set(table) == {"baseline", "ensemble"} and table["ensemble"]["family"] == "ensemble"
    chosen = sorted(table, key=lambda n: (-table[n]["val_roc_auc"], n))[0]
    assert decision.record["candidate"]["name"] == chosen
    # whichever was chosen, the ensemble's logged model is a pyfunc that scores as evaluate did
    evaluated = json.loads((tmp_path / "metrics" / "ensemble.json").read_text())["test"]["roc_auc"]
    assert make_scorer(*test)(ens["mlflow"]["model_uri"]) == pytest.approx(evaluated, abs=1e-6)
