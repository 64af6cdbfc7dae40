"""Scaling with TensorFlow's own engine, on the CPU: MirroredStrategy over two logical CPU devices,
and MultiWorkerMirroredStrategy with two local worker processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers import make_raw
from integration.conftest import raise_if_port_taken
from melanoma.config import PrepareParams, SplitParams
from melanoma.contracts import load_prepared, write_splits
from melanoma.prepare import prepare
from melanoma.split import split_frame, split_report
from melanoma.stack import retry_on_taken_port

pytestmark = pytest.mark.integration

MIRRORED = """
import sys
import numpy as np
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
from helpers import lesion_image
from melanoma.config import CnnParams, TrainParams
from melanoma.models.cnn import fit_cnn
from melanoma.models.deep.loop import LoopSettings, make_strategy
strategy = make_strategy("mirrored", ("/cpu:0", "/cpu:1"))
assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
rng = np.random.default_rng(0)
y = (np.arange(64) % 2).astype(int)
x = np.stack([np.asarray(lesion_image(rng, bool(v), 32, 32)) for v in y])
loop = LoopSettings.from_params(TrainParams(epochs=1, batch_size=8), seed=0)
model, info = fit_cnn(x, y, x, y, CnnParams(filters=(4, 8), dense=8), loop,
                      image_size=32, fit="crop", strategy=strategy)
assert info["epochs_run"] == 1 and model.predict_proba(x).shape == (64,)
print("REPLICAS", strategy.num_replicas_in_sync)
"""


def test_mirrored_over_two_logical_cpus() -> None:
    tests_dir = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED, tests_dir], capture_output=True, text=True, timeout=300,
        env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REPLICAS 2" in proc.stdout


def test_multi_worker_with_two_local_processes(tmp_path: Path) -> None:
    # A third positive, and class_balance=oversample: the custom loop must really oversample
    # (it used to fall back to class weights silently).
    make_raw(tmp_path / "raw", n=48, pos_every=3)
    prepare(tmp_path / "raw", tmp_path / "prepared", PrepareParams(image_size=32, workers=1))
    _, index = load_prepared(tmp_path / "prepared")
    frames = split_frame(index, SplitParams(test_fraction=0.25, val_fraction=0.25), 0)
    write_splits(tmp_path / "splits", frames, split_report(frames))
    params = {
        "prepare": {"image_size": 32},
        "train": {"strategy": "multi_worker", "epochs": 1, "batch_size": 8, "class_balance": "oversample"},
        "cnn": {"filters": [4, 8], "dense": 8},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def start(ports: list[int]) -> tuple[Path, list[int | None]]:
        """Both workers on ``ports``, run to their end (their folder, their exit statuses); PortTaken
        when one could not bind its port."""
        run = tmp_path / f"ports-{ports[0]}-{ports[1]}"  # outputs and MLflow store of this start only
        run.mkdir()
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        procs = []
        for i in range(2):
            env = {
                **os.environ,
                "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                "MLFLOW_TRACKING_URI": f"sqlite:///{run / 'mlflow.db'}",
                "KERAS_BACKEND": "tensorflow",
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
            cmd = [
                sys.executable, "-m", "melanoma", "--params", str(tmp_path / "params.yaml"), "train", "cnn",
                "--prepared", str(tmp_path / "prepared"), "--splits", str(tmp_path / "splits"),
                "--out", str(run / f"out{i}"),
            ]  # fmt: skip
            log = run / f"worker{i}.log"
            with open(log, "w") as out:
                procs.append(
                    (subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT), log)
                )
        try:
            deadline = time.monotonic() + 300
            while any(proc.poll() is None for proc, _ in procs) and time.monotonic() < deadline:
                for proc, log in procs:
                    raise_if_port_taken(proc, log)  # the other worker would wait for it until the deadline
                time.sleep(1)
            for proc, log in procs:
                raise_if_port_taken(proc, log)
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return run, [proc.returncode for proc, _ in procs]

    run, codes = retry_on_taken_port(start, 2)
    logs = [(run / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(s[-3000:] for s in logs)
    chief = json.loads((run / "out0" / "model.json").read_text())
    worker = json.loads((run / "out1" / "model.json").read_text())
    assert chief["n_train"] == worker["n_train"]
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1  # only the chief logs
    assert chief["class_balance"] == "oversample" and "class_weights" not in chief
    (row,) = json.loads((run / "out0" / "history.json").read_text())
    global_batch = 2 * 8  # two workers, one replica each
    drawn = -(-chief["n_train"] // global_batch) * global_batch  # ceil(n / batch) full batches
    assert row["seen_pos"] + row["seen_neg"] == drawn  # the natural stream would give n // batch
    assert (row["weight_pos"], row["weight_neg"]) == (row["seen_pos"], row["seen_neg"])  # no class weights
    # The tallies are all-reduced: every worker logs the same counts. (The weights may differ: each
    # worker keeps its own batch-norm statistics; only the chief's model is kept.)
    (other,) = json.loads((run / "out1" / "history.json").read_text())
    assert [other[k] for k in ("seen_pos", "seen_neg")] == [row[k] for k in ("seen_pos", "seen_neg")]
