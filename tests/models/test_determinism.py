"""Byte-reproducible model folders: the same seed and data give the same bytes, file by file.

A model folder is a DVC output; a stage trains one model in a fresh process. So the training runs
here in two fresh processes, each writing every family's folder the way ``train`` does (the model's
own files, history.json, model.json), and the folders are compared byte for byte; each process also
reads its folders back (``load_model`` and the MLflow pyfunc) and saves the predictions.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from melanoma.models.deep.classifier import KERAS_FILE, ZIP_EPOCH, KerasClassifier, reproducible_keras_zip

FAMILIES = ("baseline", "cnn", "transfer", "cnn_residual")

TRAIN_TWICE = r"""
import sys, types
from pathlib import Path
if len(sys.argv) > 3 and sys.argv[3] != "-":  # the CPU numerics as every stage sets them (cli.main)
    from melanoma.cli import pin_numerics
    pin_numerics(sys.argv[3], 0)
import numpy as np
sys.path.insert(0, sys.argv[1])
from helpers import lesion_image
from melanoma.config import (
    AugmentParams, BaselineParams, BaseParams, CnnParams, Params, PrepareParams, TrainParams, TransferParams,
)
from melanoma.contracts import write_history, write_model_json
from melanoma.models import load_model
from melanoma.pyfunc import MODEL_DIR_ARTIFACT, MelanomaPyfunc
from melanoma.train import fit_model

out = Path(sys.argv[2])
def tiny(n, size, seed):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    return np.stack([np.asarray(lesion_image(rng, bool(v), size, size)) for v in y]), y

# cnn_residual: the residual CNN with mixup and cutmix (both on: the per-batch coin too) and class
# weights mixed in the stream.
RESIDUAL = dict(cnn=CnnParams(architecture="residual", filters=(4, 8), dense=8),
                train=TrainParams(epochs=2, batch_size=8, early_stopping_start=0, class_balance="class_weight",
                                  augment=AugmentParams(mixup=0.4, cutmix=1.0)))
for folder_name, name, size, changes in (
    ("baseline", "baseline", 32, {}), ("cnn", "cnn", 16, {}), ("transfer", "transfer", 32, {}),
    ("cnn_residual", "cnn", 16, RESIDUAL),
):
    if len(sys.argv) > 4 and folder_name not in sys.argv[4].split(","):
        continue
    x, y = tiny(48, size, 0)
    xv, yv = tiny(18, size, 1)
    params = Params(**{
        "base": BaseParams(seed=3),
        "prepare": PrepareParams(image_size=size),
        "train": TrainParams(epochs=2, batch_size=8, early_stopping_start=0, class_balance="oversample"),
        "baseline": BaselineParams(n_estimators=8),
        "cnn": CnnParams(filters=(4, 8), dense=8),
        "transfer": TransferParams(weights="random", head_units=8, head_epochs=2, fine_tune_layers=1,
                                   fine_tune_epochs=1),
        **changes,
    })
    model, info = fit_model(name, x, y, xv, yv, params, keras_home=out / "no-keras-home")
    folder = out / folder_name
    folder.mkdir(parents=True)
    history = info.pop("history", None)
    model.save(folder)
    if history is not None:
        write_history(folder, history)
    write_model_json(folder, {"name": name, "family": model.family, "image_size": model.image_size,
                              "fit": model.fit, **info})
    again = load_model(folder)
    pyfunc = MelanomaPyfunc()
    context = types.SimpleNamespace(artifacts={MODEL_DIR_ARTIFACT: str(folder)})
    pyfunc.load_context(context)
    np.save(out / f"{folder_name}.trained.npy", model.predict_proba(xv))
    np.save(out / f"{folder_name}.loaded.npy", again.predict_proba(xv))
    np.save(out / f"{folder_name}.pyfunc.npy", pyfunc.predict(context, xv))
print("TRAINED", *sorted(p.name for p in out.iterdir()))
"""


def train_in_fresh_process(
    out: Path, pin: str = "-", families: tuple[str, ...] = FAMILIES, machine_isa: str | None = None
) -> None:
    """Train ``families`` in a fresh process; ``pin``: ``train.cpu_isa`` as the stages apply it
    ("-": none); ``machine_isa``: ONEDNN_MAX_CPU_ISA in the environment (stands for a CPU with that
    instruction set at most)."""
    tests_dir = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if machine_isa:
        env["ONEDNN_MAX_CPU_ISA"] = machine_isa
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN_TWICE, tests_dir, str(out), pin, ",".join(families)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    runs = tmp_path_factory.mktemp("run1"), tmp_path_factory.mktemp("run2")
    for run in runs:
        train_in_fresh_process(run)
    return runs


@pytest.mark.parametrize("family", FAMILIES)
def test_two_trainings_write_byte_identical_folders(two_runs: tuple[Path, Path], family: str) -> None:
    a, b = (files_of(run / family) for run in two_runs)
    expected = {"baseline": {"model.joblib", "model.json"}}.get(
        family, {KERAS_FILE, "history.json", "model.json"}
    )
    assert set(a) == expected
    assert list(a) == list(b)
    differ = [name for name in a if a[name] != b[name]]
    assert not differ, f"{family}: files differ between two runs with the same seed: {differ}"
    info = json.loads(a["model.json"])
    if family == "cnn_residual":
        assert info["class_balance"] == "class_weight"
        assert info["n_params"] > 0 and b'"melanoma_resnet"' in zipfile.ZipFile(
            io.BytesIO(a[KERAS_FILE])
        ).read("config.json")
        seen = [row["seen_pos"] for row in json.loads(a["history.json"])]
        assert any(v != round(v) for v in seen)  # soft targets: the batches were mixed
    elif family != "baseline":
        assert info["class_balance"] == "oversample"


@pytest.mark.parametrize("family", FAMILIES)
def test_predictions_are_equal_and_survive_loading(two_runs: tuple[Path, Path], family: str) -> None:
    first, second = two_runs
    trained = np.load(first / f"{family}.trained.npy")
    assert np.array_equal(trained, np.load(second / f"{family}.trained.npy"))
    assert np.array_equal(trained, np.load(first / f"{family}.loaded.npy"))  # load_model
    assert np.allclose(trained, np.load(first / f"{family}.pyfunc.npy"), atol=1e-6)  # the MLflow pyfunc


def test_keras_zip_has_no_save_time_and_loads(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="out")], name="m")
    KerasClassifier(model, image_size=1).save(tmp_path)
    raw = tmp_path / "raw.keras"
    model.save(raw)  # Keras' own: date_saved and the time of writing
    data = (tmp_path / KERAS_FILE).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as z, zipfile.ZipFile(raw) as original:
        assert z.namelist() == original.namelist()
        assert {i.date_time for i in z.infolist()} == {ZIP_EPOCH}
        assert "date_saved" not in json.loads(z.read("metadata.json"))
        assert "date_saved" in json.loads(original.read("metadata.json"))
        assert z.read("model.weights.h5") == original.read("model.weights.h5")
    assert reproducible_keras_zip(raw.read_bytes()) == data  # idempotent, whatever the save time
    loaded = keras.saving.load_model(tmp_path / KERAS_FILE, compile=False)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_shared_object_ids_become_ranks(tmp_path: Path) -> None:
    reg = keras.regularizers.L2(1e-3)  # one regularizer object shared by two layers
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, kernel_regularizer=reg, name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, kernel_regularizer=reg, name="b")(x))
    raw = tmp_path / "raw.keras"
    model.save(raw)
    KerasClassifier(model, image_size=1).save(tmp_path)
    with zipfile.ZipFile(raw) as z:
        original = json.loads(z.read("config.json"))
    with zipfile.ZipFile(tmp_path / KERAS_FILE) as z:
        saved = json.loads(z.read("config.json"))

    def ids(node: object) -> list[int]:
        if isinstance(node, dict):
            own = [node["shared_object_id"]] if "shared_object_id" in node else []
            return own + [i for v in node.values() for i in ids(v)]
        return [i for v in node for i in ids(v)] if isinstance(node, list) else []

    before, after = ids(original), ids(saved)
    assert before and max(before) > 10_000  # Keras writes memory addresses
    rank = {old: new for old, new in zip(before, after, strict=True)}
    assert sorted(set(after)) == list(range(1, len(set(before)) + 1))  # ranks of first appearance
    assert len(rank) == len(set(before)) and len(set(rank.values())) == len(rank)  # one-to-one: sharing kept
    loaded = keras.saving.load_model(tmp_path / KERAS_FILE, compile=False)
    assert loaded.get_layer("b").kernel_regularizer.l2 == pytest.approx(1e-3)


# --- the same bytes on another CPU -------------------------------------------------------------------------
DEEP = ("cnn", "transfer")


@pytest.fixture(scope="module")
def isa_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """This machine with the stages' pin (train.cpu_isa AVX2, the default), an AVX2-only CPU (the
    environment's cap) without any pin, and this machine without the pin (train.cpu_isa native)."""
    runs = {
        "pinned": ("AVX2", None),
        "avx2_cpu": ("-", "AVX2"),
        "native": ("native", None),
    }
    out = {}
    for name, (pin, machine) in runs.items():
        out[name] = tmp_path_factory.mktemp(name)
        train_in_fresh_process(out[name], pin, DEEP, machine)
    return out


@pytest.mark.parametrize("family", DEEP)
def test_the_pinned_isa_trains_what_an_avx2_cpu_trains(isa_runs: dict[str, Path], family: str) -> None:
    pinned, avx2_cpu = files_of(isa_runs["pinned"] / family), files_of(isa_runs["avx2_cpu"] / family)
    assert pinned == avx2_cpu, f"{family}: {[n for n in pinned if pinned[n] != avx2_cpu.get(n)]} differ"
    # The check can fail: unpinned, an AVX-512 CPU's own kernels train other weights (on a CPU whose
    # best is AVX2 the two runs are the same by construction, and there is nothing to tell apart).
    native = files_of(isa_runs["native"] / family)
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
    if "avx512f" in flags:
        assert native[KERAS_FILE] != pinned[KERAS_FILE], "the pin changed nothing on an AVX-512 CPU"
