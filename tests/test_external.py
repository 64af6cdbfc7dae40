"""The external stage: any ingest source, prepared like the training data, minus what training holds.

Runs ``melanoma external`` for real (synthetic, folder, none) on tiny sets; the training data is a
hand-made raw layout prepared by the real prepare code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import jpeg_bytes, lesion_image, make_raw
from melanoma.cli import main
from melanoma.config import PrepareParams
from melanoma.contracts import EXTERNAL_REPORT, load_external, load_prepared
from melanoma.errors import DataError
from melanoma.external import leakage_guard
from melanoma.prepare import prepare

SIZE = 16
TINY_SYNTHETIC = {"n_images": 30, "melanoma_fraction": 0.3, "min_width": 96, "max_width": 128,
                  "corrupt_count": 1, "duplicate_count": 1}  # fmt: skip


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training data's raw layout and prepared folder (ids ISIC_0000000 .. ISIC_0000023)."""
    root = tmp_path_factory.mktemp("training")
    make_raw(root / "raw", n=24, seed=0, pos_every=3)
    prepare(root / "raw", root / "prepared", PrepareParams(image_size=SIZE, workers=1))
    return root


def write_params(path: Path, external: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"prepare": {"image_size": SIZE, "workers": 1}, "external": external}))
    return path


def run_external(tmp_path: Path, training: Path, external: dict[str, Any], out: str = "external") -> int:
    params = write_params(tmp_path / "params.yaml", external)
    return main(["--params", str(params), "external", "--prepared", str(training / "prepared"),
                 "--out", str(tmp_path / out)])  # fmt: skip


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_synthetic_external_set_is_prepared_like_training_and_reproducible(
    tmp_path: Path, training: Path
) -> None:
    ext = {"source": "synthetic", "name": "tiny synthetic", "seed": 5, "synthetic": TINY_SYNTHETIC}
    assert run_external(tmp_path, training, ext, "a") == 0
    assert run_external(tmp_path, training, ext, "b") == 0
    assert digests(tmp_path / "a") == digests(tmp_path / "b")  # a tracked output: byte-identical
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "params.yaml"]  # scratch folders gone

    got = load_external(tmp_path / "a")
    assert got is not None and got.name == "tiny synthetic"
    assert got.images.shape[1:] == (SIZE, SIZE, 3) and got.images.dtype == np.uint8
    assert got.index["row"].tolist() == list(range(len(got.index)))
    r = got.report
    assert r["source"] == "synthetic" and r["ingest"]["seed"] == 5
    assert r["n"] == len(got.index) == r["n_prepared"] - r["n_dropped_in_training"]
    assert r["n_melanoma"] == int(got.index["label"].sum()) > 0 and r["n_not_melanoma"] > 0
    # prepared by the prepare code: the generator's corrupt file and duplicate are dropped there
    prep = json.loads((tmp_path / "a/prepare_report.json").read_text())
    assert prep["n_corrupt"] == 1 and prep["n_duplicates"] == 1 and prep["params"]["image_size"] == SIZE
    assert prep["raw_dir"] == "external set (synthetic)"  # not the scratch path


def _folder_set(folder: Path, training: Path) -> dict[str, str]:
    """Class folders of new images, plus a copy of a training file and a training id with new pixels."""
    rng = np.random.default_rng(9)
    for cls, mel in (("melanoma", True), ("benign", False)):
        (folder / cls).mkdir(parents=True)
        for i in range(6):
            (folder / cls / f"lesion_{cls}_{i}.jpg").write_bytes(jpeg_bytes(lesion_image(rng, mel, 64, 48)))
    shutil.copyfile(
        training / "raw/images/ISIC_0000003.jpg", folder / "melanoma" / "copied_from_training.jpg"
    )
    (folder / "benign" / "ISIC_0000004.jpg").write_bytes(jpeg_bytes(lesion_image(rng, False, 64, 48)))
    return {"copied_from_training.jpg": "ISIC_0000003", "ISIC_0000004.jpg": "ISIC_0000004"}


def test_folder_source_and_the_leakage_guard(tmp_path: Path, training: Path) -> None:
    _folder_set(tmp_path / "incoming", training)
    ext = {"source": "folder", "name": "clinic X", "folder": {"path": str(tmp_path / "incoming")}}
    assert run_external(tmp_path, training, ext) == 0
    got = load_external(tmp_path / "external")
    assert got is not None
    r = got.report
    assert r["n_prepared"] == 14 and r["n"] == 12 and r["n_dropped_in_training"] == 2
    assert (r["n_dropped_same_file"], r["n_dropped_same_isic_id"]) == (1, 1)
    assert {d["training_isic_id"] for d in r["dropped_in_training"]} == {"ISIC_0000003", "ISIC_0000004"}
    assert (r["n_melanoma"], r["n_not_melanoma"]) == (6, 6)
    _, train = load_prepared(training / "prepared")
    assert not set(got.index["sha1"]) & set(train["sha1"])
    assert not set(got.index["isic_id"]) & set(train["isic_id"])
    # the images the folder importer named itself (ISIC_9xxxxxx) stay: those ids mean nothing
    assert got.index["isic_id"].str.startswith("ISIC_9").sum() == 12


def test_ids_an_importer_made_up_never_match_by_id() -> None:
    train = pd.DataFrame({"isic_id": ["ISIC_9000000", "ISIC_0000001"], "sha1": ["aa", "bb"]})
    ext = pd.DataFrame(
        {"isic_id": ["ISIC_9000000", "ISIC_0000001", "ISIC_9000001"], "sha1": ["cc", "dd", "bb"]}
    )
    keep, dropped = leakage_guard(ext, train, made_up_ids={"ISIC_9000000", "ISIC_9000001"})
    assert keep.tolist() == [True, False, False]  # made-up id: kept; real id: dropped; same file: dropped
    assert [d["reason"] for d in dropped] == ["same ISIC id", "same file"]
    with pytest.raises(DataError, match="external index has no sha1 column"):
        leakage_guard(ext.drop(columns="sha1"), train)


def test_none_writes_only_a_report_that_says_so(tmp_path: Path, training: Path) -> None:
    assert run_external(tmp_path, training, {"source": "none"}) == 0
    assert [p.name for p in (tmp_path / "external").iterdir()] == [EXTERNAL_REPORT]
    report = json.loads((tmp_path / "external" / EXTERNAL_REPORT).read_text())
    assert report["present"] is False and report["source"] == "none"
    assert load_external(tmp_path / "external") is None


def test_a_missing_external_output_names_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"external_report.json: missing; run the external stage first"):
        load_external(tmp_path / "nowhere")


def test_an_external_set_that_is_all_training_data_is_refused(tmp_path: Path, training: Path, caplog) -> None:
    for i, path in enumerate(sorted((training / "raw/images").iterdir())):  # the training files, relabelled
        (tmp_path / "again" / ("melanoma" if i % 2 else "benign")).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, tmp_path / "again" / ("melanoma" if i % 2 else "benign") / path.name)
    ext = {"source": "folder", "folder": {"path": str(tmp_path / "again")}, "name": "training again"}
    with caplog.at_level(logging.ERROR):
        assert run_external(tmp_path, training, ext) == 2
    assert "external set 'training again': after dropping" in caplog.text
    assert "also in the training data" in caplog.text
    assert not (tmp_path / "external").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "params.yaml"]  # no scratch left


@pytest.mark.parametrize(
    ("external", "message"),
    [
        ({"source": "folder"}, "external.folder.path: must be set"),
        ({"source": "folder", "folder": {"path": "no/such/folder"}}, "external.folder.path no/such/folder: folder not found"),
        ({"source": "challenge"}, "external.challenge.ground_truth: must be set"),
        ({"source": "synthetic", "synthetic": {"n_images": 0}}, "external.synthetic.n_images: must be >= 1 (got 0)"),
    ],
)  # fmt: skip
def test_bad_external_config_fails_clearly_and_writes_nothing(
    tmp_path: Path, training: Path, caplog, external: dict[str, Any], message: str
) -> None:
    with caplog.at_level(logging.ERROR):
        assert run_external(tmp_path, training, external) == 2
    assert message in caplog.text
    assert not (tmp_path / "external").exists()
