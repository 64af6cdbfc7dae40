"""End to end: `dvc repro` in a temporary git copy of the repository, on a tiny synthetic set,
logging to a real MLflow server; then a second `dvc repro` must have nothing to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from melanoma.contracts import model_fingerprint

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

TINY = {
    "ingest": {
        "synthetic": {
            "n_images": 120,
            "melanoma_fraction": 0.25,
            "min_width": 200,
            "max_width": 320,
            "corrupt_count": 2,
            "duplicate_count": 1,
        }
    },
    "prepare": {"image_size": 32},
    "split": {"test_fraction": 0.25, "val_fraction": 0.25},
    "baseline": {"candidates": ["logistic_regression", "gradient_boosting"], "n_estimators": 20},
    "evaluate": {"bootstrap": 50},
}


def copy_repo(dest: Path) -> None:
    """Copy the tracked and untracked-but-not-ignored files (what a clone would have, plus work in progress)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file() and not name.startswith((b"data/", b"models/", b"reports/")):
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def deep_update(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        base[k] = deep_update(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def test_dvc_repro_end_to_end(tmp_path: Path, mlflow_server: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(deep_update(params, TINY), sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": mlflow_server,
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost",
    }  # fmt: skip
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        run(cmd, repo, env)

    first = run([str(BIN / "dvc"), "repro"], repo, env)
    for path in (
        "data/raw/metadata.csv",
        "data/raw/ingest_report.json",
        "data/prepared/images.npy",
        "data/prepared/index.csv",
        "data/splits/test.csv",
        "models/baseline/model.json",
        "reports/metrics/baseline.json",
        "reports/plots/baseline/roc.json",
        "reports/plots/baseline/confusion.json",
    ):
        assert (repo / path).is_file(), f"{path} missing after dvc repro:\n{first.stdout[-2000:]}"

    prep = json.loads((repo / "data/prepared/prepare_report.json").read_text())
    assert prep["n_corrupt"] == 2 and prep["n_duplicates"] == 1
    metrics = json.loads((repo / "reports/metrics/baseline.json").read_text())
    assert 0.0 <= metrics["test"]["roc_auc"] <= 1.0
    assert metrics["test"]["tp"] + metrics["test"]["fn"] == metrics["test"]["n_melanoma"]

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"ingest", "prepare", "split", "train@baseline", "evaluate@baseline"} <= set(lock["stages"])
    assert lock["stages"]["train@baseline"]["params"]["params.yaml"]["base.seed"] == 42

    fingerprint = model_fingerprint(repo / "models/baseline")
    (run_,) = mlflow.MlflowClient(mlflow_server).search_runs(
        [mlflow.MlflowClient(mlflow_server).get_experiment_by_name("melanoma-classification").experiment_id],
        filter_string=f"tags.model_fingerprint = '{fingerprint}'",
    )
    assert run_.data.tags["stage"] == "train@baseline"
    assert run_.data.tags["git_commit"] == run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()
    assert run_.data.metrics["test_roc_auc"] == pytest.approx(metrics["test"]["roc_auc"], abs=1e-5)

    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], repo, env).stdout)
    assert "roc_auc" in json.dumps(shown)
    run([str(BIN / "dvc"), "plots", "show", "-o", str(tmp_path / "plots")], repo, env)
    assert (tmp_path / "plots" / "index.html").is_file()

    second = run([str(BIN / "dvc"), "repro"], repo, env)
    assert "Data and pipelines are up to date" in second.stdout + second.stderr
    status = run([str(BIN / "dvc"), "status"], repo, env)
    assert "up to date" in status.stdout


def test_bad_params_stop_the_pipeline_before_any_work(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["image_size"] = "large"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [str(BIN / "melanoma"), "ingest"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "'prepare.image_size' must be int, got str 'large'" in proc.stderr
    assert not (repo / "data").exists()
