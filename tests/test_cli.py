"""The command line: exit codes, clear errors, where MLflow runs go (DVC_ROOT), stage commands."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from helpers import make_raw
from melanoma.cli import main, repo_root
from melanoma.cli.common import tracking as _tracking
from melanoma.config import Params

REPO = Path(__file__).resolve().parents[1]


def small_params(tmp_path: Path) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"]["image_size"] = 24
    params["prepare"]["workers"] = 1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_prepare_and_split_commands_run_and_report_missing_input(tmp_path: Path, caplog) -> None:
    p = small_params(tmp_path)
    make_raw(tmp_path / "raw", n=40)
    assert (
        main(["--params", str(p), "prepare", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "prep")])
        == 0
    )
    assert (tmp_path / "prep" / "images.npy").is_file()
    assert (
        main(
            ["--params", str(p), "split", "--prepared", str(tmp_path / "prep"), "--out", str(tmp_path / "sp")]
        )
        == 0
    )
    assert {f.name for f in (tmp_path / "sp").iterdir()} >= {
        "train.csv",
        "val.csv",
        "test.csv",
        "split_report.json",
    }

    assert (
        main(
            ["--params", str(p), "prepare", "--raw", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "metadata.csv: missing; run the ingest stage first" in caplog.text
    assert not (tmp_path / "x").exists()


def test_check_accepts_the_committed_params_and_rejects_a_bad_file(tmp_path: Path, capsys) -> None:
    assert main(["--params", str(REPO / "params.yaml"), "check"]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare:\n  image_sise: 64\n")
    assert main(["--params", str(bad), "check"]) == 2


def test_runs_go_to_the_repository_that_dvc_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # DVC runs a --temp or queued experiment in a copy under .dvc/tmp/exps and sets DVC_ROOT to the
    # user's repository: the default store must be that repository's, not the throwaway copy's.
    user_repo = tmp_path / "repo"
    copy = user_repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(user_repo))
    monkeypatch.setenv("DVC_EXP_NAME", "sweep-7")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    assert repo_root() == user_repo.resolve()
    t = _tracking(Params())
    assert t.uri == f"sqlite:///{user_repo.resolve() / 'mlflow.db'}"
    assert t.artifact_location == (user_repo.resolve() / "mlartifacts").as_uri()
    assert (t.dvc_exp_name, t.dvc_exp_baseline_rev) == ("sweep-7", "a" * 40)

    monkeypatch.delenv("DVC_ROOT")
    assert repo_root() == copy.resolve()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    t = _tracking(Params())
    assert t.uri == "http://127.0.0.1:5000" and t.artifact_location is None


def test_pin_numerics_caps_the_isa_keeps_a_lower_cap_and_sets_threads(monkeypatch) -> None:  # noqa: ANN001
    from melanoma.cli import pin_numerics

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    pin_numerics("AVX2", 0)
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2" and "TF_NUM_INTRAOP_THREADS" not in os.environ
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # a user's higher cap: the stage's wins
    pin_numerics("AVX2", 3)
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2" and os.environ["TF_NUM_INTRAOP_THREADS"] == "3"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX")  # a CPU (or user) that cannot run AVX2: kept
    pin_numerics("AVX2", 0)
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    pin_numerics("native", 0)
    assert "ONEDNN_MAX_CPU_ISA" not in os.environ
