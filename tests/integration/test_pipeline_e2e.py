"""End to end: `dvc repro` in a temporary git copy of the repository, on a tiny synthetic set,
logging to a real MLflow server; then a second `dvc repro` must have nothing to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pytest
import yaml

from integration.stage_deps import lock_deps, missing_deps, read_traces
from integration.test_mlflow_ui import check_models_page
from integration.worktree import copy_repo

if TYPE_CHECKING:
    from integration.conftest import LoopbackBrowser
from melanoma.contracts import model_fingerprint

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TRACE = Path(__file__).parent / "trace"

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
    # a tiny external set (params.yaml's synthetic seed 1), so evaluate and the report score it too
    "external": {
        "synthetic": {
            "n_images": 60,
            "melanoma_fraction": 0.25,
            "min_width": 200,
            "max_width": 320,
            "corrupt_count": 1,
            "duplicate_count": 1,
        }
    },
    "train": {"epochs": 3},
    "transfer": {"head_epochs": 3},
    "split": {"test_fraction": 0.25, "val_fraction": 0.25},
    "baseline": {"candidates": ["logistic_regression", "gradient_boosting"], "n_estimators": 20},
    "evaluate": {"bootstrap": 50},
    # its own registered model: the session's MLflow server is shared with the registry tests
    "mlflow": {"registered_model": "e2e-melanoma"},
}


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def wait_queue(repo: Path, env: dict[str, str], names: list[str], timeout: float = 900) -> None:
    """Wait until DVC's queue has no queued or running experiment; fail on a failed one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run([str(BIN / "dvc"), "queue", "status"], repo, env).stdout
        if "Failed" in status:
            logs = [
                subprocess.run(
                    [str(BIN / "dvc"), "queue", "logs", n], cwd=repo, env=env, capture_output=True, text=True
                ).stdout
                for n in names
            ]
            pytest.fail(f"a queued experiment failed:\n{status}\n" + "\n".join(x[-3000:] for x in logs))
        if "Queued" not in status and "Running" not in status:
            return
        time.sleep(3)
    pytest.fail(f"the DVC queue did not finish in {timeout}s:\n{status}")


def assert_experiment_runs(repo: Path, expected: dict[str, int]) -> None:
    """Each experiment's baseline run is in the repository's mlflow.db, tagged and with a loadable model."""
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    (exp,) = client.search_experiments(filter_string="name = 'melanoma-classification'")
    for name, n_estimators in expected.items():
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.dvc_exp_name = '{name}' and tags.stage = 'train@baseline'",
        )
        assert len(runs) == 1, f"experiment {name}: {len(runs)} baseline runs in {repo / 'mlflow.db'}"
        (r,) = runs
        assert r.data.params["baseline.n_estimators"] == str(n_estimators)
        assert r.data.tags["dvc_exp_baseline_rev"]
        assert "test_roc_auc" in r.data.metrics, f"experiment {name}: evaluate did not find its run"
        mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
        model = mlflow.pyfunc.load_model(f"runs:/{r.info.run_id}/model")
        prob = model.predict(np.zeros((1, 40, 50, 3), np.uint8))
        assert np.all((np.asarray(prob) >= 0) & (np.asarray(prob) <= 1))


def deep_update(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        base[k] = deep_update(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def tiny_repo(tmp_path: Path, tracking_uri: str | None) -> tuple[Path, dict[str, str]]:
    """A git copy of the repository with TINY params, and the environment to run DVC in it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(deep_update(params, TINY), sort_keys=False))
    env = {
        **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost",
    }  # fmt: skip
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        run(cmd, repo, env)
    return repo, env


def test_experiments_land_in_the_repository_store(tmp_path: Path) -> None:
    repo, local = tiny_repo(tmp_path, None)
    run([str(BIN / "dvc"), "repro"], repo, local)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "pipeline results"]):
        run(cmd, repo, local)

    # With no MLFLOW_TRACKING_URI: a --temp run and two queued jobs at once all log to
    # the repository's own store (not to DVC's throwaway copies), tagged with their experiment name.
    run(
        [str(BIN / "dvc"), "exp", "run", "--temp", "-n", "tmpexp", "-S", "baseline.n_estimators=11"],
        repo,
        local,
    )
    for name, n in (("queued1", 12), ("queued2", 13)):
        run(
            [str(BIN / "dvc"), "exp", "run", "--queue", "-n", name, "-S", f"baseline.n_estimators={n}"],
            repo,
            local,
        )
    run([str(BIN / "dvc"), "queue", "start", "-j", "2"], repo, local)
    wait_queue(repo, local, ["queued1", "queued2"])
    assert_experiment_runs(repo, {"tmpexp": 11, "queued1": 12, "queued2": 13})


def test_dvc_repro_end_to_end(tmp_path: Path, mlflow_server: str, browser: LoopbackBrowser) -> None:
    repo, env = tiny_repo(tmp_path, mlflow_server)

    # Every stage's process records the project modules it loads (trace/sitecustomize.py).
    traces = tmp_path / "traces"
    traced_env = {**env, "PYTHONPATH": str(TRACE), "MELANOMA_TRACE_DIR": str(traces)}
    first = run([str(BIN / "dvc"), "repro"], repo, traced_env)
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
        "models/ensemble/ensemble.json",
        "reports/metrics/ensemble.json",
    ):
        assert (repo / path).is_file(), f"{path} missing after dvc repro:\n{first.stdout[-2000:]}"

    prep = json.loads((repo / "data/prepared/prepare_report.json").read_text())
    assert prep["n_corrupt"] == 2 and prep["n_duplicates"] == 1
    metrics = json.loads((repo / "reports/metrics/baseline.json").read_text())
    assert 0.0 <= metrics["test"]["roc_auc"] <= 1.0
    assert metrics["test"]["tp"] + metrics["test"]["fn"] == metrics["test"]["n_melanoma"]

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {
        "ingest",
        "prepare",
        "split",
        "train@baseline",
        "evaluate@baseline",
        "ensemble",
        "evaluate@ensemble",
    } <= set(lock["stages"])
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

    # Bytecode caches that running from a checkout writes into the source folders change no dep.
    pycache = repo / "src/melanoma/models/deep/__pycache__"
    pycache.mkdir(exist_ok=True)
    (pycache / "loop.cpython-311.pyc").write_bytes(b"\0" * 16)
    second = run([str(BIN / "dvc"), "repro"], repo, env)
    assert "Data and pipelines are up to date" in second.stdout + second.stderr
    status = run([str(BIN / "dvc"), "status"], repo, env)
    assert "up to date" in status.stdout

    # dvc.yaml deps cover every project file each stage's command really loaded.
    deps = lock_deps(lock)
    loaded = read_traces(traces, REPO)
    assert set(loaded) == set(deps), f"stages traced {sorted(loaded)} vs locked {sorted(deps)}"
    assert missing_deps(deps, loaded) == []
    # ... and the check does catch a dep removed from dvc.yaml.
    deps["train@cnn"] = [d for d in deps["train@cnn"] if d != "src/melanoma/models/cnn.py"]
    assert "src/melanoma/models/cnn.py" in loaded["train@cnn"]
    assert missing_deps(deps, loaded) == ["train@cnn: src/melanoma/models/cnn.py"]

    # Byte-reproducible outputs: re-running ingest gives the same data/raw, so nothing downstream reruns.
    run([str(BIN / "dvc"), "repro", "-f", "ingest"], repo, env)
    relock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert relock["stages"]["ingest"]["outs"] == lock["stages"]["ingest"]["outs"]
    third = run([str(BIN / "dvc"), "repro"], repo, env)
    assert "Data and pipelines are up to date" in third.stdout + third.stderr, third.stdout[-3000:]

    # register: the model chosen on validation is the champion; the report says so.
    decision = json.loads((repo / "reports/registry.json").read_text())
    val_auc = {
        m: json.loads((repo / f"models/{m}/model.json").read_text())["val"]["val_roc_auc"]
        for m in ("baseline", "cnn", "transfer", "ensemble")
    }
    best = sorted(val_auc, key=lambda m: (-val_auc[m], m))[0]  # ties go to the first name, as in register
    assert {c["name"] for c in decision["candidates"]} == set(val_auc)
    assert decision["candidate"]["name"] == best and decision["champion_after"] == 1
    # registry_uri too: an earlier test in this process may have set a global registry URI
    server = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    champion = server.get_model_version_by_alias("e2e-melanoma", "champion")
    assert champion.version == "1" and champion.tags["model_name"] == best
    report = (repo / "reports/README.md").read_text()
    assert best in report and "champion" in report
    assert (repo / "reports/model_card.md").is_file() and (repo / "reports/figures/roc.png").is_file()
    # The registry by hand, through the CLI.
    listed = run([str(BIN / "melanoma"), "registry", "list"], repo, env).stdout
    assert '"champion"' in listed and '"version": 1' in listed
    same = run([str(BIN / "melanoma"), "registry", "promote", "1", "--reason", "e2e check"], repo, env)
    assert json.loads(same.stdout)["changed"] is False  # already the champion: nothing to do
    missing = subprocess.run(
        [str(BIN / "melanoma"), "registry", "promote", "9", "--reason", "x"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no version 9" in missing.stderr
    no_previous = subprocess.run(
        [str(BIN / "melanoma"), "registry", "rollback"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert no_previous.returncode == 2 and "previous" in no_previous.stderr
    # The MLflow UI as a user sees it: the pipeline's registered model with its champion alias.
    check_models_page(browser, mlflow_server, "e2e-melanoma", 1, tmp_path)


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
    assert "prepare.image_size: must be an integer (got 'large')" in proc.stderr
    assert not (repo / "data").exists()
