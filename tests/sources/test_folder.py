"""sources/folder: class folders, metadata CSVs, sidecars, ids, duplicates, licences, reproducibility."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from source_helpers import digest, labels, put, read_meta, reasons, tiny_jpeg

from melanoma.config import FolderParams, PrepareParams
from melanoma.errors import DataError
from melanoma.prepare import prepare
from melanoma.sources.folder import import_folder

# ------------------------------------------------------------------------------------ folder import


def test_folder_class_folders_at_several_depths(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = [
        "benign/a.jpg",
        "malignant/b.jpg",
        "train/Benign/c.jpg",
        "test/MALIGNANT/d.PNG",
        "part1/train/melanoma/e.jpg",
        "part1/train/Nevus/f.jpeg",
        "x/0/h.jpg",
        "x/1/g.jpg",
        "train/benign/ISIC_0001234.jpg",  # a real id is kept
    ]
    for rel in files:
        put(src / rel)
    (src / "README.txt").write_text("not an image")
    report = import_folder(tmp_path / "raw", FolderParams(path=str(src)), seed=1)
    assert report["failures"] == [] and report["n_images"] == 9 and report["n_ignored_files"] == 1
    meta = read_meta(tmp_path / "raw")
    # Synthetic ids follow the sorted relative paths; the real ISIC id is skipped over.
    expected_ids = {
        "benign/a.jpg": "ISIC_9000000",
        "malignant/b.jpg": "ISIC_9000001",
        "part1/train/Nevus/f.jpeg": "ISIC_9000002",  # code-point order: upper case first
        "part1/train/melanoma/e.jpg": "ISIC_9000003",
        "test/MALIGNANT/d.PNG": "ISIC_9000004",
        "train/Benign/c.jpg": "ISIC_9000005",
        "train/benign/ISIC_0001234.jpg": "ISIC_0001234",
        "x/0/h.jpg": "ISIC_9000006",
        "x/1/g.jpg": "ISIC_9000007",
    }
    assert dict(zip(meta["source_path"], meta["isic_id"], strict=True)) == expected_ids
    assert meta.loc["ISIC_9000003", "source_split"] == "part1/train"
    assert meta.loc["ISIC_9000004", "source_split"] == "test"
    assert meta.loc["ISIC_9000000", "source_split"] == ""
    assert (
        meta.loc["ISIC_0001234", "id_assigned"] == "False"
        and meta.loc["ISIC_9000000", "id_assigned"] == "True"
    )
    assert meta.loc["ISIC_9000003", "diagnosis"] == "melanoma"
    assert meta.loc["ISIC_9000002", "diagnosis"] == "nevus"
    assert meta.loc["ISIC_9000001", "benign_malignant"] == "malignant"
    assert labels(tmp_path / "raw") == {
        "ISIC_9000000": 0, "ISIC_9000001": 1, "ISIC_9000002": 0, "ISIC_9000003": 1, "ISIC_9000004": 1,
        "ISIC_9000005": 0, "ISIC_0001234": 0, "ISIC_9000006": 0, "ISIC_9000007": 1,
    }  # fmt: skip
    images = tmp_path / "raw" / "images"
    assert (images / "ISIC_9000004.png").is_file() and (images / "ISIC_9000002.jpeg").is_file()
    # Hardlinked on one filesystem: no copy of the bytes.
    assert os.stat(images / "ISIC_9000000.jpg").st_ino == os.stat(src / "benign/a.jpg").st_ino
    assert report["n_linked"] == 9
    # Licence not stated: 'unknown' with an explanatory text.
    assert set(meta["copyright_license"]) == {"unknown"}
    assert "did not state a licence" in (tmp_path / "raw/licenses/unknown.txt").read_text()
    on_disk = json.loads((tmp_path / "raw/ingest_report.json").read_text())
    assert on_disk["n_images"] == 9 and on_disk["mode"] == "class_folders"

    # Deterministic: another import (another seed) gives byte-identical metadata.
    import_folder(tmp_path / "raw2", FolderParams(path=str(src)), seed=99)
    assert (tmp_path / "raw2/metadata.csv").read_bytes() == (tmp_path / "raw/metadata.csv").read_bytes()


def test_folder_duplicates_are_kept_and_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    data = tiny_jpeg()
    put(src / "train/malignant/768.jpg", data)
    put(src / "train/malignant/769.jpg", data)
    put(src / "test/benign/1.jpg", data)  # same bytes, other label
    put(src / "test/benign/2.jpg")
    report = import_folder(tmp_path / "raw", FolderParams(path=str(src)), 0)
    assert report["n_images"] == 4 and report["failures"] == []
    assert report["n_duplicate_files"] == 2
    (dup,) = report["duplicates"]
    assert sorted(dup["source_paths"]) == [
        "test/benign/1.jpg",
        "train/malignant/768.jpg",
        "train/malignant/769.jpg",
    ]
    assert dup["conflicting_labels"] is True


def test_folder_repeated_real_ids(tmp_path: Path) -> None:
    src = tmp_path / "src"
    same = tiny_jpeg()
    put(src / "test/benign/ISIC_0000001.jpg", same)
    put(src / "train/benign/ISIC_0000001.jpg", same)  # the same file twice: one copy is enough
    put(src / "test/malignant/ISIC_0000002.jpg")
    put(src / "train/malignant/isic_0000002.png")  # same id (any case), other content: a failure
    report = import_folder(tmp_path / "raw", FolderParams(path=str(src)), 0)
    assert report["n_images"] == 2 and report["n_synthetic_ids"] == 0
    assert report["same_id_copies_skipped"] == [
        {
            "path": "train/benign/ISIC_0000001.jpg",
            "isic_id": "ISIC_0000001",
            "same_file_as": "test/benign/ISIC_0000001.jpg",
        }
    ]
    (failure,) = report["failures"]
    assert (
        failure["path"] == "train/malignant/isic_0000002.png"
        and "already used by test/malignant" in failure["reason"]
    )


def test_folder_unknown_class_unlabeled_unreadable(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "train/benign/a.jpg")
    put(src / "train/malignant/b.jpg")
    put(src / "train/weird/c.jpg")
    put(src / "train/weird/d.jpg")
    put(src / "loose.jpg")
    (src / "train/benign/broken.jpg").symlink_to(src / "does-not-exist.jpg")
    (src / "train/benign/empty.jpg").write_bytes(b"")
    report = import_folder(tmp_path / "raw", FolderParams(path=str(src)), 0)
    assert report["n_images"] == 2
    text = reasons(report)
    assert "unknown class folder 'weird': 2 image(s)" in text
    assert "top level are in no class folder, e.g. loose.jpg" in text
    assert "train/benign/broken.jpg" in text and "unreadable file" in text
    assert "empty file" in text
    assert len(report["failures"]) == 4
    assert set(read_meta(tmp_path / "raw")["source_path"]) == {"train/benign/a.jpg", "train/malignant/b.jpg"}


def test_folder_unreadable_subfolder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    put(src / "train/benign/a.jpg")
    put(src / "train/malignant/b.jpg")
    put(src / "test/malignant/c.jpg")
    real_scandir = os.scandir

    def scandir(path):  # permissions cannot stop root, so fail the listing the way the OS would
        if Path(path).name == "test":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = import_folder(tmp_path / "raw", FolderParams(path=str(src)), 0)
    assert report["n_images"] == 2
    assert report["failures"] == [{"path": "test", "reason": "cannot list folder: Permission denied"}]


def test_folder_missing_empty_or_useless_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder not found"):
        import_folder(tmp_path / "raw", FolderParams(path=str(tmp_path / "nope")), 0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/notes.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        import_folder(tmp_path / "raw", FolderParams(path=str(tmp_path / "empty")), 0)
    put(tmp_path / "odd/other/a.jpg")
    with pytest.raises(DataError, match="none of 1 image"):
        import_folder(tmp_path / "raw", FolderParams(path=str(tmp_path / "odd")), 0)
    with pytest.raises(DataError, match="path is empty"):
        import_folder(tmp_path / "raw", FolderParams(path=""), 0)


def test_folder_with_metadata_csv(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel in ("a.jpg", "sub/b.jpg", "ISIC_0000007.jpg", "c.jpg", "d.jpg", "e.jpg"):
        put(src / rel)
    (src / "labels.csv").write_text(
        "image_name,target,benign_malignant,diagnosis,diagnosis_1,diagnosis_3,patient,age,label\n"
        "a,1,,,,,P1,42,\n"  # line 2: stem; target -> malignant; age rounded to 5
        "sub/b.jpg,,benign,nevus,,,P2,,\n"  # line 3: a relative path
        "ISIC_0000007,,,,Malignant,Melanoma in situ,P3,,\n"  # line 4: hierarchical labels
        "missing_one,0,,,,,P4,,\n"  # line 5: no such image
        "a.jpg,0,,,,,P1,,\n"  # line 6: second row for a.jpg
        "d,maybe,,,,,P5,,\n"  # line 7: bad target
        "e.jpg,,,,,,P6,,MEL\n",  # line 8: a class column
        encoding="utf-8",
    )
    report = import_folder(tmp_path / "raw", FolderParams(path=str(src), metadata_csv="labels.csv"), 0)
    assert report["mode"] == "metadata_csv"
    by_row = {f.get("row"): f for f in report["failures"]}
    assert "no image file matches" in by_row[5]["reason"]
    assert "second row for a.jpg (first at row 2)" in by_row[6]["reason"]
    assert "'maybe' is not 0 or 1" in by_row[7]["reason"]
    assert any(f.get("path") == "c.jpg" and "no row" in f["reason"] for f in report["failures"])
    assert any(f.get("path") == "d.jpg" and "no row" in f["reason"] for f in report["failures"])
    meta = read_meta(tmp_path / "raw")
    ids = dict(zip(meta["source_path"], meta["isic_id"], strict=True))
    assert ids == {"ISIC_0000007.jpg": "ISIC_0000007", "a.jpg": "ISIC_9000000", "e.jpg": "ISIC_9000001",
                   "sub/b.jpg": "ISIC_9000002"}  # fmt: skip
    assert meta.loc["ISIC_9000000", "patient_id"] == "P1" and meta.loc["ISIC_9000000", "age_approx"] == "40"
    assert meta.loc["ISIC_9000002", "source_split"] == "sub"
    assert "label" not in meta.columns and "target" not in meta.columns
    assert labels(tmp_path / "raw") == {
        "ISIC_0000007": 1,
        "ISIC_9000000": 1,
        "ISIC_9000001": 1,
        "ISIC_9000002": 0,
    }


def test_folder_metadata_csv_without_usable_columns(tmp_path: Path) -> None:
    put(tmp_path / "src/a.jpg")
    (tmp_path / "meta.csv").write_text("foo,bar\na,1\n")
    with pytest.raises(DataError, match="no image column"):
        import_folder(
            tmp_path / "raw",
            FolderParams(path=str(tmp_path / "src"), metadata_csv=str(tmp_path / "meta.csv")),
            0,
        )
    (tmp_path / "meta.csv").write_text("image,age\na,1\n")
    with pytest.raises(DataError, match="no label column"):
        import_folder(
            tmp_path / "raw",
            FolderParams(path=str(tmp_path / "src"), metadata_csv=str(tmp_path / "meta.csv")),
            0,
        )


def test_folder_isic_v1_sidecars_and_license(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "ISIC_0000028.jpg")
    (src / "ISIC_0000028.json").write_text(json.dumps({
        "_id": "x", "name": "ISIC_0000028",
        "meta": {"clinical": {"benign_malignant": "malignant", "diagnosis": "melanoma", "age_approx": 60,
                              "sex": "male", "diagnosis_confirm_type": None},
                 "acquisition": {"image_type": "dermoscopic", "pixelsX": 1504, "pixelsY": 1129}},
    }))  # fmt: skip
    put(src / "ISIC_0000029.jpg")
    (src / "ISIC_0000029.json").write_text("{not json")
    (src / "LICENSE.txt").write_text("Creative Commons Legal Code\n\nCC0 1.0 Universal\n")
    (src / "ATTRIBUTION.txt").write_text("UDA-1 by Anonymous\n\nmore text\n")
    report = import_folder(tmp_path / "raw", FolderParams(path=str(src)), 0)
    assert report["n_images"] == 1 and "unreadable sidecar" in reasons(report)
    row = read_meta(tmp_path / "raw").loc["ISIC_0000028"]
    assert (row["diagnosis"], row["age_approx"], row["pixels_x"], row["image_type"]) == (
        "melanoma",
        "60",
        "1504",
        "dermoscopic",
    )
    assert row["copyright_license"] == "CC-0" and row["attribution"] == "UDA-1 by Anonymous"
    assert "CC0 1.0 Universal" in (tmp_path / "raw/licenses/CC-0.txt").read_text()


def test_folder_import_then_prepare(tmp_path: Path) -> None:
    src = tmp_path / "src"
    n = 0
    for split, count in (("train", 8), ("test", 4)):
        for cls in ("benign", "malignant"):
            for i in range(count):
                put(src / split / cls / f"{i}.jpg", tiny_jpeg(32))
                n += 1
    # One exact duplicate, as in the real Kaggle set: imported, then dropped by prepare.
    put(src / "train/malignant/dup.jpg", (src / "train/malignant/0.jpg").read_bytes())
    report = import_folder(tmp_path / "raw", FolderParams(path=str(src)), 42)
    assert report["n_images"] == n + 1 and report["n_duplicate_files"] == 1
    prep = prepare(tmp_path / "raw", tmp_path / "prepared", PrepareParams(image_size=16, workers=1))
    assert prep["n_kept"] == n and prep["n_duplicates"] == 1
    assert prep["n_melanoma"] == n // 2 and prep["n_not_melanoma"] == n // 2
    index = pd.read_csv(tmp_path / "prepared/index.csv")
    assert set(index["label_source"]) == {"benign_malignant"}


def test_folder_import_with_diagnosis_then_prepare(tmp_path: Path) -> None:
    """melanoma/nevus folders (and every challenge format) write the legacy ``diagnosis`` column."""
    for cls in ("melanoma", "nevus"):
        for i in range(6):
            put(tmp_path / "src" / cls / f"{i}.jpg", tiny_jpeg(32))
    import_folder(tmp_path / "raw", FolderParams(path=str(tmp_path / "src")), 0)
    prep = prepare(tmp_path / "raw", tmp_path / "prepared", PrepareParams(image_size=16, workers=1))
    assert (prep["n_melanoma"], prep["n_not_melanoma"]) == (6, 6)


def test_folder_import_twice_is_byte_identical(tmp_path: Path) -> None:
    """Every output file, ingest_report.json included, is the same on a rerun (no timings inside)."""
    src = tmp_path / "src"
    for rel in ("train/benign/a.jpg", "train/malignant/b.jpg", "test/nevus/ISIC_0000042.jpg", "odd/c.jpg"):
        put(src / rel)
    (src / "train/benign/empty.jpg").write_bytes(b"")  # a failure, so the report's failures are compared too
    first = import_folder(tmp_path / "raw1", FolderParams(path=str(src)), seed=1)
    second = import_folder(tmp_path / "raw2", FolderParams(path=str(src)), seed=2)
    assert first == second and first["n_failures"] == 2
    assert digest(tmp_path / "raw1") == digest(tmp_path / "raw2")
    assert "seconds" not in json.dumps(first)
