"""What every command shares: the workspace's default paths, the process environment each command
runs in (telemetry off, the CPU numerics of the stages) and the MLflow tracking settings."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import get_args, get_type_hints

from melanoma.config import Params, TrainParams

log = logging.getLogger("melanoma")

RAW_DIR = Path("data/raw")
PREPARED_DIR = Path("data/prepared")
SPLITS_DIR = Path("data/splits")
EXTERNAL_DIR = Path("data/external")
MODELS_DIR = Path("models")
METRICS_DIR = Path("reports/metrics")
PLOTS_DIR = Path("reports/plots")
REGISTRY_JSON = Path("reports/registry.json")


def quiet_third_parties() -> None:
    """Offline by design: no telemetry from MLflow, DVC or anything honouring DO_NOT_TRACK."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    for name in ("mlflow", "alembic", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)


def pin_numerics(cpu_isa: str, threads: int) -> None:
    """Set the CPU numerics every TensorFlow stage runs with, before TensorFlow is imported.

    ``cpu_isa`` (``train.cpu_isa``) caps oneDNN's instruction set, ``threads`` (``train.threads``)
    fixes TensorFlow's intra-op thread count: both decide the order of float sums, so both decide
    the trained bytes. The stages set them themselves (not the user), so a fresh clone on another
    CPU trains the same bytes.
    """
    if "tensorflow" in sys.modules:  # too late to change oneDNN's ISA in this process
        log.warning("numerics: TensorFlow is already loaded; train.cpu_isa/threads may not apply")
    if cpu_isa != "native":
        # oneDNN's levels as train.cpu_isa lists them, lowest first: the cap never raises what the
        # environment already caps lower (a machine or a user that cannot run more).
        levels = [i for i in get_args(get_type_hints(TrainParams)["cpu_isa"]) if i != "native"]
        given = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
        if given in levels and levels.index(given) < levels.index(cpu_isa):
            log.warning("numerics: ONEDNN_MAX_CPU_ISA=%s is below train.cpu_isa=%s: kept, and the trained "
                        "bytes will differ from a %s run", given, cpu_isa, cpu_isa)  # fmt: skip
        else:
            os.environ["ONEDNN_MAX_CPU_ISA"] = cpu_isa
    if threads > 0:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)


def repo_root() -> Path:
    """The user's repository: DVC's ``DVC_ROOT`` when a stage runs under DVC, else the current folder.

    ``dvc exp run --temp`` and ``dvc queue`` run stages in a throwaway copy under ``.dvc/tmp/exps``
    but point ``DVC_ROOT`` at the parent repository, so runs land in the store ``mlflow ui`` reads.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking(params: Params):  # no return annotation: it would import mlflow at startup
    """Where and how the stages log to MLflow: ``MLFLOW_TRACKING_URI``, else the repository's sqlite file."""
    from melanoma.tracking import Tracking, default_artifact_location, default_tracking_uri, git_commit

    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    root = repo_root()
    return Tracking(
        uri=env_uri or default_tracking_uri(root),
        experiment=params.mlflow.experiment,
        # Only a local sqlite store needs an explicit artifact folder; a server decides its own.
        artifact_location=None if env_uri else default_artifact_location(root),
        # The code that ran is the workspace's (an experiment's temp copy has its own commit).
        git_commit=git_commit(Path.cwd()),
        dvc_exp_name=os.environ.get("DVC_EXP_NAME"),
        dvc_exp_baseline_rev=os.environ.get("DVC_EXP_BASELINE_REV"),
    )
