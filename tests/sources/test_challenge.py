"""sources/challenge: the six ground-truth formats, bad rows, extra metadata, and the download from a
fake S3 bucket on 127.0.0.1 (choice of objects, zip-slip rejection, cache, byte-identical reruns)."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import pytest
from source_helpers import digest, labels, put, read_meta, reasons, tiny_jpeg

from fakes.s3_bucket import FakeS3Bucket
from melanoma.config import ChallengeParams
from melanoma.errors import DataError
from melanoma.sources.challenge import import_challenge
from melanoma.sources.challenge.fetch import choose_objects
from melanoma.sources.s3 import S3Object

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


@pytest.mark.slow
def test_challenge_download_extracts_safely_and_caches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, foreign_hosts: list[str]
) -> None:
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
        assert tmp_path / "data" / dl["cache_dir"] == cache  # relative: the same report on every machine
        assert report["images"] == dl["cache_dir"] + "/challenges/2020/ISIC_2020_Training_JPEG"
        assert (tmp_path / "data/challenge_cache/.gitignore").read_text().endswith("*\n")
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
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="melanoma.sources.challenge.fetch"):
            again = import_challenge(tmp_path / "data/raw2", params)
        assert dict(bucket.gets) == before
        assert sum("is cached" in r.getMessage() for r in caplog.records) == 2
        assert not any("downloaded" in r.getMessage() for r in caplog.records)
        # How it was fetched is logged, not reported: the rerun's raw folder is byte-identical.
        assert again == report and digest(tmp_path / "data/raw2") == digest(tmp_path / "data/raw")
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
    assert foreign_hosts == []  # botocore looked up no credentials, region or endpoint elsewhere


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
    with pytest.raises(DataError, match=r"allowed hosts|must use https \(plain http"):
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
