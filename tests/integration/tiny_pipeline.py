"""One real tiny pipeline run, shared by the app tests and the report tests.

``dvc repro`` in a git copy of the project with tiny params (seconds per stage), logging to the session's
real MLflow server: ingest -> ... -> train@{baseline,cnn,transfer,ensemble} -> evaluate -> register -> report.
Then a second real ``melanoma register`` over one other candidate (``--models``, written beside the tracked
``reports/registry.json``), so the registry holds two versions that the project's own register stage wrote:
the app's load test moves the champion between them.

A uniquely named module (not a conftest: tests/sources/conftest.py already shadows that name).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from integration.test_pipeline_e2e import BIN, deep_update, run, tiny_repo

REGISTERED_MODEL = "shared-melanoma"  # its own name: the session's MLflow server is shared with other tests
MODELS = ("baseline", "cnn", "transfer", "ensemble")  # what the register and report stages read (dvc.yaml)
SECOND_DECISION = "reports/registry_second.json"  # the second register's record (not a DVC output)

# Smaller than the end-to-end test's TINY: this run only has to produce real files, not exercise every knob.
SMALL = {
    "ingest": {"synthetic": {"n_images": 96, "melanoma_fraction": 0.3, "corrupt_count": 1, "duplicate_count": 1}},
    "external": {"synthetic": {"n_images": 40, "melanoma_fraction": 0.3, "corrupt_count": 0, "duplicate_count": 0}},
    "train": {"epochs": 2, "batch_size": 32},
    "transfer": {"weights": "random", "head_epochs": 2, "head_units": 16},
    "cnn": {"filters": [8, 16], "convs_per_block": 1, "dense": 16},
    "baseline": {"candidates": ["logistic_regression"], "n_estimators": 10},
    "evaluate": {"bootstrap": 20},
    "mlflow": {"registered_model": REGISTERED_MODEL},
}  # fmt: skip


@dataclass(frozen=True)
class TinyPipeline:
    """A finished tiny pipeline: the repository, its MLflow server and what register wrote."""

    repo: Path
    tracking_uri: str
    registered_model: str
    first: dict[str, Any]  # reports/registry.json: the pipeline's own register decision
    second: dict[str, Any]  # the second register's decision (another candidate judged against the champion)
    seconds: float  # what building it cost (reported by the tests' -s output)

    def metrics(self, name: str) -> dict[str, Any]:
        return json.loads((self.repo / f"reports/metrics/{name}.json").read_text())

    def model_json(self, name: str) -> dict[str, Any]:
        return json.loads((self.repo / f"models/{name}/model.json").read_text())

    def versions(self) -> dict[str, str]:
        """Model name -> registry version, as the two register decisions recorded them."""
        return {d["candidate"]["name"]: str(d["candidate"]["version"]) for d in (self.first, self.second)}

    def candidate(self, name: str) -> dict[str, Any]:
        """The ``candidate`` block of the register decision that registered ``name``."""
        return next(d["candidate"] for d in (self.first, self.second) if d["candidate"]["name"] == name)

    @property
    def champion(self) -> str:
        """The model name of the champion register left (the second decision's ``champion_after``)."""
        after = str(self.second["champion_after"])
        return next(name for name, v in self.versions().items() if v == after)


def second_candidate(repo: Path, first: dict[str, Any]) -> str:
    """A model the first register did not pick, with another operating threshold (so the app's answers
    tell the two versions apart); the baseline first, as it is the cheapest to load."""
    taken = first["candidate"]
    for name in ("baseline", "cnn", "ensemble", "transfer"):
        info = json.loads((repo / f"models/{name}/model.json").read_text())
        if name != taken["name"] and round(float(info["threshold"]), 6) != taken["threshold"]:
            return name
    raise AssertionError(f"every other model has {taken['name']}'s threshold {taken['threshold']}")


def build(tmp_path: Path, tracking_uri: str) -> TinyPipeline:
    t0 = time.monotonic()
    repo, env = tiny_repo(tmp_path, tracking_uri)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(deep_update(params, SMALL), sort_keys=False))
    run(["git", "commit", "-qam", "small params"], repo, env)
    run([str(BIN / "dvc"), "repro"], repo, env, timeout=1200)
    first = json.loads((repo / "reports/registry.json").read_text())
    other = second_candidate(repo, first)
    run([str(BIN / "melanoma"), "register", "--models", other, "--out", SECOND_DECISION], repo, env)
    second = json.loads((repo / SECOND_DECISION).read_text())
    return TinyPipeline(repo, tracking_uri, REGISTERED_MODEL, first, second, time.monotonic() - t0)
