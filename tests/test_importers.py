"""Folder and ISIC challenge importers, and the challenge download from a fake S3 bucket (127.0.0.1)."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import jpeg_bytes, lesion_image
from fakes.s3_bucket import FakeS3Bucket
from melanoma.config import ChallengeParams, FolderParams, PrepareParams
from melanoma.errors import DataError
from melanoma.ingest import http
from melanoma.ingest.importers import import_challenge, import_folder
from melanoma.ingest.s3list import S3Object, choose_objects, list_bucket, parse_list_page
from melanoma.labels import derive_labels
from melanoma.prepare import prepare

# ------------------------------------------------------------------------------------------- helpers

_counter = iter(range(1, 1_000_000))


def tiny_jpeg(size: int = 8) -> bytes:
    """A small JPEG with unique content (each call a different colour), so no accidental duplicates."""
    i = next(_counter)
    img = Image.new("RGB", (size, size), (i % 251, (i * 7) % 253, (i * 13) % 255))
    img.putpixel((0, 0), (i // 251 % 256, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def put(path: Path, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny_jpeg() if data is None else data)
    return path


def read_meta(raw: Path) -> pd.DataFrame:
    return pd.read_csv(raw / "metadata.csv", dtype=str, keep_default_na=False).set_index(
        "isic_id", drop=False
    )


def labels(raw: Path) -> dict[str, int | None]:
    """isic_id -> label exactly as prepare will derive it (1 melanoma, 0 not, None unlabeled)."""
    meta = read_meta(raw)
    lab = derive_labels(meta)["label"]
    return {i: (None if pd.isna(v) else int(v)) for i, v in lab.items()}


def reasons(report: dict) -> str:
    return "\n".join(json.dumps(f) for f in report["failures"])


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
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    n = 0
    for split, count in (("train", 8), ("test", 4)):
        for cls in ("benign", "malignant"):
            for i in range(count):
                put(src / split / cls / f"{i}.jpg", jpeg_bytes(lesion_image(rng, cls == "malignant", 40, 30)))
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
    rng = np.random.default_rng(1)
    for cls in ("melanoma", "nevus"):
        for i in range(6):
            put(tmp_path / "src" / cls / f"{i}.jpg", jpeg_bytes(lesion_image(rng, cls == "melanoma", 40, 30)))
    import_folder(tmp_path / "raw", FolderParams(path=str(tmp_path / "src")), 0)
    prep = prepare(tmp_path / "raw", tmp_path / "prepared", PrepareParams(image_size=16, workers=1))
    assert (prep["n_melanoma"], prep["n_not_melanoma"]) == (6, 6)


# --------------------------------------------------------------------------------- challenge import

CASES = {
    "2016": (
        "ISIC_0000000,benign\nISIC_0000001,malignant\nISIC_0000002,0.0\nISIC_0000003,1.0\n",
        {"ISIC_0000000": (0, {"benign_malignant": "benign"}), "ISIC_0000001": (1, {"benign_malignant": "malignant"}),
         "ISIC_0000002": (0, {}), "ISIC_0000003": (1, {})},
    ),
    "2017": (
        "image_id,melanoma,seborrheic_keratosis\nISIC_0000000,0.0,0.0\nISIC_0000001,1.0,0.0\nISIC_0000002,0.0,1.0\n",
        {"ISIC_0000000": (0, {"diagnosis": "nevus"}), "ISIC_0000001": (1, {"diagnosis": "melanoma"}),
         "ISIC_0000002": (0, {"diagnosis": "seborrheic keratosis"})},
    ),
    "2018": (
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"
        "ISIC_0024306,0.0,1.0,0.0,0.0,0.0,0.0,0.0\nISIC_0024310,1.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
        "ISIC_0024311,0.0,0.0,1.0,0.0,0.0,0.0,0.0\nISIC_0024312,0.0,0.0,0.0,1.0,0.0,0.0,0.0\n",
        {"ISIC_0024306": (0, {"diagnosis": "nevus"}), "ISIC_0024310": (1, {"diagnosis": "melanoma"}),
         "ISIC_0024311": (0, {"diagnosis": "basal cell carcinoma", "benign_malignant": "malignant"}),
         "ISIC_0024312": (0, {"diagnosis": "actinic keratosis", "benign_malignant": ""})},
    ),
    "2019": (
        "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n"
        "ISIC_0000000,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\nISIC_0000001_downsampled,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
        "ISIC_0000002,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,0.0\nISIC_0000003,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0\n",
        {"ISIC_0000000": (0, {"diagnosis": "nevus"}),
         "ISIC_0000001": (1, {"diagnosis": "melanoma", "source_image": "ISIC_0000001_downsampled"}),
         "ISIC_0000002": (0, {"diagnosis": "squamous cell carcinoma"}), "ISIC_0000003": (None, {"diagnosis": "unknown"})},
    ),
    "2020": (
        "image_name,patient_id,lesion_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target\n"
        "ISIC_2637011,IP_7279968,IL_0000001,male,45.0,head/neck,unknown,benign,0\n"
        "ISIC_0052212,IP_2842074,IL_0000003,female,50.0,lower extremity,nevus,benign,0\n"
        "ISIC_0074268,IP_6890425,IL_0000004,female,55.0,,melanoma,malignant,1\n"
        "ISIC_0074311,IP_2950485,,female,,torso,unknown,benign,0\n",
        {"ISIC_2637011": (0, {"patient_id": "IP_7279968", "lesion_id": "IL_0000001", "age_approx": "45",
                              "sex": "male", "anatom_site_general": "head/neck", "diagnosis": "unknown"}),
         "ISIC_0052212": (0, {"diagnosis": "nevus"}),
         "ISIC_0074268": (1, {"benign_malignant": "malignant", "anatom_site_general": "", "age_approx": "55"}),
         "ISIC_0074311": (0, {"age_approx": "", "lesion_id": "", "anatom_site_general": "torso"})},
    ),
    "ham10000": (
        "lesion_id,image_id,dx,dx_type,age,sex,localization,dataset\n"
        "HAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp,vidir_modern\n"
        "HAM_0002730,ISIC_0026769,mel,histo,77.0,female,back,rosendahl\n"
        "HAM_0001466,ISIC_0031633,nv,follow_up,,unknown,unknown,vidir_molemax\n",
        {"ISIC_0027419": (0, {"lesion_id": "HAM_0000118", "diagnosis": "pigmented benign keratosis",
                              "age_approx": "80", "anatom_site_general": "head/neck",
                              "diagnosis_confirm_type": "histopathology"}),
         "ISIC_0026769": (1, {"age_approx": "75", "anatom_site_general": "posterior torso", "sex": "female"}),
         "ISIC_0031633": (0, {"age_approx": "", "sex": "", "anatom_site_general": "",
                              "diagnosis_confirm_type": "serial imaging showing no change"})},
    ),
}  # fmt: skip


def make_challenge(root: Path, fmt: str) -> tuple[Path, Path]:
    """Ground truth of ``fmt`` plus an image folder (nested, with an orphan and a superpixel mask)."""
    text, expected = CASES[fmt]
    gt = root / f"gt_{fmt}.csv"
    gt.parent.mkdir(parents=True, exist_ok=True)
    gt.write_text(text, encoding="utf-8")
    images = root / "images"
    for line in text.splitlines():
        name = line.split(",")[1 if fmt == "ham10000" else 0]
        if name.startswith("ISIC_"):
            put(images / "nested" / f"{name}.jpg")
    put(images / "ISIC_0999999.jpg")  # an image without a row: ignored
    put(images / "ISIC_0000000_superpixels.png")  # 2016/2017 masks: not an image id
    return gt, images


@pytest.mark.parametrize("fmt", list(CASES))
def test_challenge_formats(tmp_path: Path, fmt: str) -> None:
    gt, images = make_challenge(tmp_path / "src", fmt)
    expected = CASES[fmt][1]
    for given in ("auto", fmt):
        raw = tmp_path / f"raw_{given}"
        report = import_challenge(
            raw, ChallengeParams(format=given, ground_truth=str(gt), images=str(images))
        )
        assert report["format"] == fmt and report["format_detected"] == (given == "auto")
        assert report["failures"] == [], reasons(report)
        assert report["n_images"] == len(expected) and report["n_image_files_without_row"] == 1
        assert report["n_ignored_files"] == 1
        meta = read_meta(raw)
        got = labels(raw)
        assert set(meta.index) == set(expected)
        for isic_id, (label, fields) in expected.items():
            assert got[isic_id] == label, (isic_id, meta.loc[isic_id].to_dict())
            for key, value in fields.items():
                assert meta.loc[isic_id].get(key, "") == value, (isic_id, key)
            assert meta.loc[isic_id, "challenge"] == fmt
            assert (raw / "images" / f"{isic_id}.jpg").is_file()
        assert "source_split" not in meta.columns and "id_assigned" not in meta.columns
        assert set(meta["copyright_license"]) == {"CC-0" if fmt in ("2016", "2017") else "CC-BY-NC"}
        assert (raw / "licenses" / f"{meta['copyright_license'].iloc[0]}.txt").is_file()


def test_challenge_explicit_wrong_format_and_unknown_format(tmp_path: Path) -> None:
    gt, images = make_challenge(tmp_path / "src", "2018")
    with pytest.raises(DataError, match=r"not format '2019'.*missing AK, SCC.*looks like format '2018'"):
        import_challenge(
            tmp_path / "raw", ChallengeParams(format="2019", ground_truth=str(gt), images=str(images))
        )
    with pytest.raises(DataError, match=r"not format '2016': expected no header.*found first row image, MEL"):
        import_challenge(
            tmp_path / "raw", ChallengeParams(format="2016", ground_truth=str(gt), images=str(images))
        )
    odd = tmp_path / "odd.csv"
    odd.write_text("foo,bar,baz\n1,2,3\n")
    with pytest.raises(DataError, match=r"cannot tell which ISIC challenge format.*foo, bar, baz"):
        import_challenge(tmp_path / "raw", ChallengeParams(ground_truth=str(odd), images=str(images)))
    with pytest.raises(DataError, match="CSV file not found"):
        import_challenge(
            tmp_path / "raw", ChallengeParams(ground_truth=str(tmp_path / "x.csv"), images=str(images))
        )
    with pytest.raises(DataError, match="folder not found"):
        import_challenge(
            tmp_path / "raw", ChallengeParams(ground_truth=str(gt), images=str(tmp_path / "none"))
        )


def test_challenge_bad_rows_are_reported_with_row_numbers(tmp_path: Path) -> None:
    src = tmp_path / "src"
    gt = src / "gt.csv"
    gt.parent.mkdir(parents=True)
    gt.write_text(
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"
        "ISIC_0000001,1,0,0,0,0,0,0\n"  # 2 good
        "ISIC_0000002,1,1,0,0,0,0,0\n"  # 3 two 1s
        "ISIC_0000003,0,0,0,0,0,0,0\n"  # 4 no 1
        "ISIC_0000004,0,1,0,0,0,0,0\n"  # 5 no image file
        "IMG_5,0,1,0,0,0,0,0\n"  # 6 not an ISIC id
        "ISIC_0000006,0,x,1,0,0,0,0\n"  # 7 unparsable number
        "ISIC_0000001,0,1,0,0,0,0,0\n"  # 8 repeated id
        "ISIC_0000007,0,1,0,0\n"  # 9 short row
        "ISIC_0000008,0,0,0,0,0,0,1\n"  # 10 good
    )
    for i in (1, 2, 3, 6, 7, 8):
        put(src / "images" / f"ISIC_{i:07d}.jpg")
    report = import_challenge(
        tmp_path / "raw", ChallengeParams(ground_truth=str(gt), images=str(src / "images"))
    )
    by_row = {f["row"]: f["reason"] for f in report["failures"]}
    assert set(by_row) == {3, 4, 5, 6, 7, 8, 9}
    assert "several classes are 1 (MEL, NV)" in by_row[3]
    assert "no class is 1" in by_row[4]
    assert "no image file for ISIC_0000004" in by_row[5]
    assert "not an ISIC id" in by_row[6]
    assert "'x' is not 0 or 1" in by_row[7]
    assert "repeated (first at row 2)" in by_row[8]
    assert "has 5 fields" in by_row[9]
    assert set(read_meta(tmp_path / "raw").index) == {"ISIC_0000001", "ISIC_0000008"}
    assert labels(tmp_path / "raw") == {"ISIC_0000001": 1, "ISIC_0000008": 0}


def test_challenge_unknown_labels_2016_and_ham(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(4):
        put(src / "images" / f"ISIC_{i:07d}.jpg")
    (src / "gt2016.csv").write_text("ISIC_0000000,benign\nISIC_0000001,maybe\n")
    report = import_challenge(
        tmp_path / "raw", ChallengeParams(ground_truth=str(src / "gt2016.csv"), images=str(src / "images"))
    )
    assert [
        (f["row"], "'maybe' is not benign, malignant, 0 or 1" in f["reason"]) for f in report["failures"]
    ] == [(2, True)]
    (src / "ham.csv").write_text(
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_1,ISIC_0000002,xyz,histo,40,male,face\n"
        "HAM_2,ISIC_0000003,nv,histo,old,male,face\n"
        "HAM_3,ISIC_0000000,nv,histo,41,male,face\n"
    )
    report = import_challenge(
        tmp_path / "raw2", ChallengeParams(ground_truth=str(src / "ham.csv"), images=str(src / "images"))
    )
    by_row = {f["row"]: f["reason"] for f in report["failures"]}
    assert "dx 'xyz'" in by_row[2] and "age 'old' is not a number" in by_row[3]
    assert read_meta(tmp_path / "raw2").loc["ISIC_0000000", "age_approx"] == "40"


def test_challenge_metadata_csv_is_merged(tmp_path: Path) -> None:
    gt, images = make_challenge(tmp_path / "src", "2019")
    meta_csv = tmp_path / "src/meta.csv"
    meta_csv.write_text(
        "image,age_approx,anatom_site_general,lesion_id,sex\n"
        "ISIC_0000000,55.0,anterior torso,HAM_0000550,female\n"
        "ISIC_0000001_downsampled,30,,,male\n"
        "ISIC_0000002,abc,,,male\n"  # bad number: reported, not merged
        "ISIC_0123456,40,,,male\n"  # no ground-truth row
    )
    report = import_challenge(
        tmp_path / "raw",
        ChallengeParams(ground_truth=str(gt), images=str(images), metadata_csv=str(meta_csv)),
    )
    assert [(f["file"], f["row"]) for f in report["failures"]] == [("meta.csv", 4)]
    assert report["n_metadata_rows_merged"] == 2 and report["n_metadata_rows_unmatched"] == 1
    meta = read_meta(tmp_path / "raw")
    assert meta.loc["ISIC_0000000", ["age_approx", "anatom_site_general", "lesion_id", "sex"]].tolist() == [
        "55", "anterior torso", "HAM_0000550", "female"]  # fmt: skip
    assert meta.loc["ISIC_0000001", "sex"] == "male" and meta.loc["ISIC_0000002", "age_approx"] == ""


# --------------------------------------------------------------------------------- bucket download


def listing_xml(keys: list[tuple[str, int]], truncated: bool, token: str | None) -> str:
    contents = "".join(
        f"<Contents><Key>{k}</Key><LastModified>2020-01-01T00:00:00.000Z</LastModified>"
        f"<ETag>&quot;{'a' * 32}&quot;</ETag><Size>{s}</Size><StorageClass>STANDARD</StorageClass></Contents>"
        for k, s in keys
    )
    nxt = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>b</Name><Prefix>p/</Prefix><KeyCount>{len(keys)}</KeyCount><MaxKeys>2</MaxKeys>"
        f"<IsTruncated>{str(truncated).lower()}</IsTruncated>{contents}{nxt}</ListBucketResult>"
    )


def test_parse_list_page() -> None:
    objects, truncated, token = parse_list_page(
        listing_xml([("p/a.csv", 10), ("p/b.zip", 20)], True, "tok==")
    )
    assert [(o.key, o.size, o.etag) for o in objects] == [
        ("p/a.csv", 10, "a" * 32),
        ("p/b.zip", 20, "a" * 32),
    ]
    assert truncated and token == "tok=="
    objects, truncated, token = parse_list_page(listing_xml([], False, None))
    assert objects == [] and not truncated and token is None
    with pytest.raises(DataError, match="AccessDenied"):
        parse_list_page("<Error><Code>AccessDenied</Code><Message>no</Message></Error>")
    with pytest.raises(DataError, match="not valid XML"):
        parse_list_page("<ListBucketResult")


def test_list_bucket_follows_continuation_tokens(tmp_path: Path) -> None:
    objects = {f"challenges/2020/file_{i:02d}.bin": bytes(i + 1) for i in range(7)}
    objects["challenges/2019/other.csv"] = b"x"
    objects["zzz/outside.csv"] = b"y"
    with FakeS3Bucket(objects) as bucket:
        session = http.make_session("test", accept="*/*")
        guard = http.UrlGuard(frozenset(), allow_loopback_http=True)
        found, pages = list_bucket(
            session, bucket.url, "challenges/2020/", http.RetryPolicy(retries=0), guard, max_keys=2
        )
        assert pages == 4 and len(bucket.list_calls) == 4
        assert [o.key for o in found] == sorted(k for k in objects if k.startswith("challenges/2020/"))
        assert [o.size for o in found] == list(range(1, 8))
        assert "continuation-token" not in bucket.list_calls[0]
        assert all("continuation-token" in call and call["max-keys"] == "2" for call in bucket.list_calls[1:])
        assert found[0].etag == bucket.etag(found[0].key)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


GT_2020 = "image_name,patient_id,lesion_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target\n"


def bucket_2020() -> dict[str, bytes]:
    ids = ["ISIC_0000100", "ISIC_0000101", "ISIC_0000102", "ISIC_0000103"]
    rows = [f"{i},IP_{n},IL_{n},male,40.0,torso,{'melanoma' if n == 1 else 'nevus'},{'malignant' if n == 1 else 'benign'},{int(n == 1)}"
            for n, i in enumerate(ids)]  # fmt: skip
    p = "challenges/2020/"
    return {
        p + "ISIC_2020_Training_GroundTruth.csv": (
            GT_2020.replace("lesion_id,", "") + "ISIC_0000100,IP_0,male,40.0,torso,nevus,benign,0\n"
        ).encode(),
        p + "ISIC_2020_Training_GroundTruth_v2.csv": (GT_2020 + "\n".join(rows) + "\n").encode(),
        p + "ISIC_2020_Training_Duplicates.csv": b"image_name_1,image_name_2\n",
        p + "ISIC_2020_Training_JPEG.zip": zip_bytes(
            {f"train/{i}.jpg": tiny_jpeg() for i in ids}
            | {
                "../ISIC_0000666.jpg": tiny_jpeg(),
                "train/../../ISIC_0000667.jpg": tiny_jpeg(),
                "/abs/ISIC_0000668.jpg": tiny_jpeg(),
                "LICENSE.txt": b"CC BY-NC",
                "train/": b"",
            }
        ),  # fmt: skip
        p + "ISIC_2020_Training_Dicom.zip": b"not fetched",
        p + "ISIC_2020_Test_JPEG.zip": b"not fetched",
        p + "ISIC_2020_Test_Metadata.csv": b"not fetched",
        "challenges/2019/ISIC_2019_Training_GroundTruth.csv": b"other prefix",
    }


def test_challenge_download_extracts_safely_and_caches(tmp_path: Path) -> None:
    objects = bucket_2020()
    with FakeS3Bucket(objects, page_max=2) as bucket:
        params = ChallengeParams(download=True, bucket_url=bucket.url, prefix="challenges/2020/")
        report = import_challenge(tmp_path / "data/raw", params)
        dl = report["download"]
        assert dl["n_pages"] == 4 and dl["n_listed"] == 7
        assert dl["ground_truth_key"].endswith("ISIC_2020_Training_GroundTruth_v2.csv")  # the newest version
        assert dl["image_archive_key"].endswith("ISIC_2020_Training_JPEG.zip") and dl["metadata_key"] is None
        assert report["format"] == "2020" and report["n_images"] == 4
        assert labels(tmp_path / "data/raw") == {
            "ISIC_0000100": 0,
            "ISIC_0000101": 1,
            "ISIC_0000102": 0,
            "ISIC_0000103": 0,
        }
        assert read_meta(tmp_path / "data/raw").loc["ISIC_0000102", "lesion_id"] == "IL_2"
        # The unsafe members are rejected, reported, and written nowhere.
        rejected = sorted(f["member"] for f in report["failures"])
        assert rejected == ["../ISIC_0000666.jpg", "/abs/ISIC_0000668.jpg", "train/../../ISIC_0000667.jpg"]
        assert not list(tmp_path.rglob("ISIC_000066[678].jpg"))
        cache = tmp_path / "data/challenge_cache" / bucket.url.split("//")[1].replace(":", "_")
        assert Path(dl["cache_dir"]) == cache
        assert (cache.parent / ".gitignore").read_text().endswith("*\n")
        assert (cache / "challenges/2020/ISIC_2020_Training_JPEG/train/ISIC_0000100.jpg").is_file()
        assert not (
            cache / "challenges/2020/ISIC_2020_Training_JPEG.zip"
        ).exists()  # deleted after extraction
        assert not (cache / "challenges/2020/ISIC_2020_Training_JPEG/LICENSE.txt").exists()
        fetched = {k for k, n in bucket.gets.items() if n}
        assert fetched == {
            "challenges/2020/ISIC_2020_Training_GroundTruth_v2.csv",
            "challenges/2020/ISIC_2020_Training_JPEG.zip",
        }

        # A rerun (a fresh raw dir next to the same cache) downloads nothing again.
        before = dict(bucket.gets)
        again = import_challenge(tmp_path / "data/raw2", params)
        assert dict(bucket.gets) == before
        assert {o["action"] for o in again["download"]["objects"]} == {"cached"}
        assert again["n_images"] == 4 and len(again["failures"]) == 3  # still reported
        assert (tmp_path / "data/raw2/metadata.csv").read_bytes() == (
            tmp_path / "data/raw/metadata.csv"
        ).read_bytes()

        # A changed object on the bucket is fetched again.
        key = "challenges/2020/ISIC_2020_Training_GroundTruth_v2.csv"
        bucket.put(key, objects[key].replace(b"IP_2", b"IP_X"))
        third = import_challenge(tmp_path / "data/raw3", params)
        assert (
            bucket.gets[key] == before[key] + 1
            and bucket.gets["challenges/2020/ISIC_2020_Training_JPEG.zip"] == 1
        )
        assert read_meta(tmp_path / "data/raw3").loc["ISIC_0000102", "patient_id"] == "IP_X"
        assert third["n_images"] == 4


def test_challenge_download_ground_truth_zip_and_selection(tmp_path: Path) -> None:
    p = "challenges/2018/"
    gt_csv = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0024306,0,1,0,0,0,0,0\nISIC_0024310,1,0,0,0,0,0,0\n"
    objects = {
        p + "ISIC2018_Task3_Training_GroundTruth.zip": zip_bytes(
            {
                "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv": gt_csv.encode(),
                "ISIC2018_Task3_Training_GroundTruth/LICENSE.txt": b"x",
            }
        ),  # fmt: skip
        p + "ISIC2018_Task3_Training_Input.zip": zip_bytes(
            {f"ISIC2018_Task3_Training_Input/{i}.jpg": tiny_jpeg() for i in ("ISIC_0024306", "ISIC_0024310")}
        ),
        p + "ISIC2018_Task1-2_Training_Input.zip": b"segmentation images: not fetched",
        p + "ISIC2018_Task1_Training_GroundTruth.zip": b"masks: not fetched",
        p + "ISIC2018_Task3_Validation_GroundTruth.zip": b"not fetched",
    }
    with FakeS3Bucket(objects) as bucket:
        report = import_challenge(
            tmp_path / "raw", ChallengeParams(download=True, bucket_url=bucket.url, prefix=p)
        )
        assert report["format"] == "2018" and report["failures"] == []
        assert labels(tmp_path / "raw") == {"ISIC_0024306": 0, "ISIC_0024310": 1}
        assert {k for k, n in bucket.gets.items() if n} == {
            p + "ISIC2018_Task3_Training_GroundTruth.zip", p + "ISIC2018_Task3_Training_Input.zip"}  # fmt: skip
        # A name that is not in the bucket is a clear error.
        with pytest.raises(DataError, match="names 'nope.csv' but the bucket has no such"):
            import_challenge(tmp_path / "raw2", ChallengeParams(download=True, bucket_url=bucket.url, prefix=p,
                                                                ground_truth="data/nope.csv"))  # fmt: skip
        # A corrupted transfer (same size, other bytes) fails the ETag MD5 check.
        bucket.corrupt.add(p + "ISIC2018_Task3_Validation_GroundTruth.zip")
        with pytest.raises(DataError, match="MD5 differs"):
            import_challenge(tmp_path / "raw3", ChallengeParams(download=True, bucket_url=bucket.url, prefix=p,
                                                                ground_truth="ISIC2018_Task3_Validation_GroundTruth.zip",
                                                                images="ISIC2018_Task3_Training_Input.zip"))  # fmt: skip
    with pytest.raises(DataError, match="prefix is empty"):
        import_challenge(
            tmp_path / "raw", ChallengeParams(download=True, bucket_url="http://127.0.0.1:9", prefix="")
        )
    with pytest.raises(DataError, match="not in the allowed hosts|scheme 'http' not allowed"):
        import_challenge(
            tmp_path / "raw", ChallengeParams(download=True, bucket_url="http://example.com", prefix="x/")
        )


def _objs(*names: str) -> list[S3Object]:
    return [S3Object(key=f"challenges/x/{n}", size=1, etag="e") for n in names]


@pytest.mark.parametrize(
    ("names", "gt", "archive", "meta"),
    [
        (("ISBI2016_ISIC_Part1_Training_Data.zip", "ISBI2016_ISIC_Part1_Training_GroundTruth.zip",
          "ISBI2016_ISIC_Part3_Training_Data.zip", "ISBI2016_ISIC_Part3_Training_GroundTruth.csv",
          "ISBI2016_ISIC_Part3_Test_Data.zip", "ISBI2016_ISIC_Part3_Test_GroundTruth.csv"),
         "ISBI2016_ISIC_Part3_Training_GroundTruth.csv", "ISBI2016_ISIC_Part3_Training_Data.zip", None),
        (("ISIC-2017_Training_Data.zip", "ISIC-2017_Training_Part1_GroundTruth.zip",
          "ISIC-2017_Training_Part3_GroundTruth.csv", "ISIC-2017_Validation_Part3_GroundTruth.csv",
          "ISIC-2017_Test_v2_Part3_GroundTruth.csv", "ISIC-2017_Test_v2_Data.zip"),
         "ISIC-2017_Training_Part3_GroundTruth.csv", "ISIC-2017_Training_Data.zip", None),
        (("ISIC_2019_Training_Input.zip", "ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv",
          "ISIC_2019_Test_Input.zip", "ISIC_2019_Test_GroundTruth.csv", "ISIC_2019_Test_Metadata.csv"),
         "ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Input.zip", "ISIC_2019_Training_Metadata.csv"),
        (("ISIC_2020_Training_JPEG.zip", "ISIC_2020_Training_Dicom.zip", "ISIC_2020_Train_DICOM_corrected.zip",
          "ISIC_2020_Training_GroundTruth.csv", "ISIC_2020_Training_GroundTruth_v2.csv",
          "ISIC_2020_Training_Duplicates.csv", "ISIC_2020_Test_JPEG.zip", "ISIC_2020_Test_Metadata.csv"),
         "ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_JPEG.zip", None),
    ],
)  # fmt: skip
def test_choose_objects_for_real_bucket_names(
    names: tuple[str, ...], gt: str, archive: str, meta: str | None
) -> None:
    got = choose_objects(_objs(*names), ChallengeParams(download=True))
    assert (got[0].name, got[1].name, got[2].name if got[2] else None) == (gt, archive, meta)


def test_choose_objects_refuses_to_guess() -> None:
    with pytest.raises(
        DataError, match=r"several image archive.*A_Training_Input.zip.*set ingest.challenge.images"
    ):
        choose_objects(_objs("A_Training_GroundTruth.csv", "A_Training_Input.zip", "A_Training_Images.zip"),
                       ChallengeParams(download=True))  # fmt: skip
    got = choose_objects(
        _objs("A_Training_GroundTruth.csv", "A_Training_Input.zip", "A_Training_Images.zip"),
        ChallengeParams(download=True, images="some/dir/A_Training_Images"),
    )
    assert got[1].name == "A_Training_Images.zip"
