"""sources/common/: ids, vocabularies, the CSV row loop, parsing, scanning, id assignment, licences."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from source_helpers import put, tiny_jpeg

from melanoma.errors import DataError
from melanoma.sources.challenge.formats import CLASS_CODES
from melanoma.sources.common.ids import assign_ids, isic_id_from_name
from melanoma.sources.common.items import ImportItem
from melanoma.sources.common.licenses import (
    CC_LICENSES,
    license_text,
    license_texts_for,
    safe_license_id,
)
from melanoma.sources.common.scan import hash_items, scan_images
from melanoma.sources.common.table import age_cell, csv_rows, parse_flag, read_csv_table
from melanoma.sources.common.vocabulary import (
    CLASS_FOLDERS,
    UNKNOWN_CLASS,
    label_fields,
    normalise_class,
    site_general,
)
from melanoma.sources.common.write import report_counts


def test_isic_ids_and_class_names() -> None:
    assert isic_id_from_name("isic_0012345") == "ISIC_0012345"
    assert isic_id_from_name(" ISIC_0012345_downsampled ") == "ISIC_0012345"
    for bad in ("ISIC_123456", "ISIC_12345678", "ISIC_0012345_superpixels", "IMG_0012345", ""):
        assert isic_id_from_name(bad) is None
    assert normalise_class(" Basal_Cell-carcinoma ") == "basal cell carcinoma"
    assert CLASS_FOLDERS[normalise_class("MEL")] == ("malignant", "melanoma")
    assert label_fields(("malignant", "melanoma")) == {
        "benign_malignant": "malignant",
        "diagnosis": "melanoma",
    }
    assert label_fields((None, "actinic keratosis")) == {"diagnosis": "actinic keratosis"}
    assert site_general("Back") == "posterior torso" and site_general("unknown") == ""
    assert site_general("anterior torso") == "anterior torso"


def test_one_class_vocabulary() -> None:
    """The challenge's one-hot codes are the folder vocabulary's entries (plus UNK), not a copy."""
    for code, entry in CLASS_CODES.items():
        assert entry == (CLASS_FOLDERS[code] if code != "unk" else UNKNOWN_CLASS)


def test_parse_flag_and_age() -> None:
    assert [parse_flag(v) for v in ("0", "1", "0.0", "1.0", "true", "No")] == [0, 1, 0, 1, 1, 0]
    for bad in ("2", "0.5", "maybe", ""):
        with pytest.raises(ValueError, match="not 0 or 1"):
            parse_flag(bad)
    # metadata.parse_age's rule, written as metadata.csv wants it: None if missing, int if whole
    assert age_cell("") is None and age_cell("unknown") is None and age_cell("nan") is None
    assert age_cell("42") == 42 and isinstance(age_cell("42"), int) and age_cell("42", 5) == 40
    assert age_cell("43.5") == 43.5 and age_cell("77.0", round_to=5) == 75 and age_cell("42.5", 5) == 40
    for bad in ("old", "-1", "121", "inf"):
        with pytest.raises(ValueError, match=rf"^age '{bad}' is not a number of years between 0 and 120"):
            age_cell(bad)


def test_read_csv_table_and_row_loop(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        '\ufeffa,b\n1,2\n\n"x\ny",3\n4\n5,6\n', encoding="utf-8"
    )  # BOM, blank line, quoted newline
    header, rows = read_csv_table(path)
    assert header == ["a", "b"]
    assert rows == [(2, ["1", "2"]), (5, ["x\ny", "3"]), (6, ["4"]), (7, ["5", "6"])]  # editor line numbers
    failures: list[dict] = []
    got = list(csv_rows("t.csv", len(header), rows, failures))
    assert [(w["row"], cells) for w, cells in got] == [(2, ["1", "2"]), (5, ["x\ny", "3"]), (7, ["5", "6"])]
    assert failures == [{"file": "t.csv", "row": 6, "reason": "has 1 fields, the header has 2"}]
    with pytest.raises(DataError, match="CSV file not found"):
        read_csv_table(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        read_csv_table(tmp_path / "empty.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(DataError, match="UTF-8"):
        read_csv_table(tmp_path / "bin.csv")


def test_scan_images(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for rel in ("b/2.JPG", "a/1.png", ".hidden/3.jpg", "__MACOSX/4.jpg", "a/.5.jpg"):
        put(root / rel)
    (root / "a/1.json").write_text("{}")
    (root / "notes.txt").write_text("x")
    os.symlink(root / "a", root / "b/loop")  # a folder linked twice: scanned once
    os.symlink(root, root / "b/up")  # a symlink loop
    scan = scan_images(root)
    assert [rel for rel, _ in scan.images] == ["a/1.png", "b/2.JPG"]
    assert set(scan.sidecars) == {"a/1"} and scan.n_ignored == 1 and scan.failures == []


def test_hash_and_assign_ids(tmp_path: Path) -> None:
    same = tiny_jpeg()
    files = {"z/ISIC_0000001.jpg": same, "a/ISIC_0000001.jpg": same, "b/ISIC_0000002.jpg": tiny_jpeg(),
             "c/ISIC_0000002.jpg": tiny_jpeg(), "d/x.jpg": tiny_jpeg(), "e/y.jpg": tiny_jpeg(), "f/empty.jpg": b""}  # fmt: skip
    items = []
    for rel, data in files.items():
        path = put(tmp_path / rel, data)
        real = isic_id_from_name(path.stem)
        items.append(ImportItem(rel=rel, path=path, fields={}, real_id=real))
    failures: list[dict] = []
    good, hashes = hash_items(items, failures, "test")
    assert failures == [{"path": "f/empty.jpg", "reason": "empty file (0 bytes)"}]
    assigned, copies = assign_ids(good, hashes, failures)
    assert [(i, it.rel) for i, it in assigned] == [
        ("ISIC_0000001", "a/ISIC_0000001.jpg"),
        ("ISIC_0000002", "b/ISIC_0000002.jpg"),
        ("ISIC_9000000", "d/x.jpg"),
        ("ISIC_9000001", "e/y.jpg"),
    ]
    assert copies == [
        {"path": "z/ISIC_0000001.jpg", "isic_id": "ISIC_0000001", "same_file_as": "a/ISIC_0000001.jpg"}
    ]
    assert "already used by b/ISIC_0000002.jpg" in failures[-1]["reason"]
    assert assigned[2][1].fields["id_assigned"] is True


def test_licences(tmp_path: Path) -> None:
    name, url = CC_LICENSES["CC-BY"]
    assert license_text("CC-BY", "src") == (
        f"CC-BY: {name}\n{url}\n\nThe images (src) are released under the licence named above.\n"
    )
    assert "did not state a licence" in license_text("unknown")
    assert "not supplied" in license_text("Some-Lic")
    assert safe_license_id(" ../CC BY/x ") == "CC-BY-x" and safe_license_id("..") == "custom"
    (tmp_path / "licenses").mkdir()
    (tmp_path / "licenses/Own.txt").write_text("own text")
    records = [{"copyright_license": lic} for lic in ("Own", "CC-0", "Known", None)]
    texts = license_texts_for(records, {"Known": "given"}, search=tmp_path)
    assert texts == {"CC-0": license_text("CC-0"), "Known": "given", "Own": "own text"}


def test_report_counts() -> None:
    records = [
        {"benign_malignant": "malignant", "diagnosis": "melanoma"},
        {"benign_malignant": "benign"},
        {"diagnosis": "unknown"},
    ]
    assert report_counts(records, ("diagnosis",)) == {
        "labels": {"melanoma": 1, "not_melanoma": 1, "unlabeled": 1},
        "diagnosis": {"melanoma": 1, "": 1, "unknown": 1},
    }
