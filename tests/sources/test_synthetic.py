"""sources/synthetic: determinism (bytes, report included), plan purity, layout, labels, corrupt/duplicate
files, signal."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from melanoma.config import SyntheticParams
from melanoma.raw_layout import FIRST_COLUMNS
from melanoma.sources.common.licenses import CC_LICENSES
from melanoma.sources.common.vocabulary import ANATOM_SITES_1
from melanoma.sources.synthetic import MELANOMA_DX2, generate_synthetic, license_texts
from melanoma.sources.synthetic.plan import plan_sample

SMALL = SyntheticParams(n_images=40, min_width=128, max_width=320)
MEDIUM = SyntheticParams(n_images=300, min_width=96, max_width=160)


def _rows(raw: Path) -> list[dict[str, str]]:
    with (raw / "metadata.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _digest(raw: Path) -> dict[str, str]:
    """sha256 of every output file, ingest_report.json included (it holds no timings)."""
    return {
        str(p.relative_to(raw)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(raw.rglob("*"))
        if p.is_file()
    }


def _loads(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    raw = tmp_path_factory.mktemp("small") / "raw"
    report = generate_synthetic(raw, SMALL, seed=11, workers=1)
    return raw, report


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> tuple[Path, dict]:
    raw = tmp_path_factory.mktemp("medium") / "raw"
    report = generate_synthetic(raw, MEDIUM, seed=5, workers=2)
    return raw, report


def test_same_seed_is_byte_identical_whatever_the_workers(small, tmp_path):
    raw, report = small
    again = tmp_path / "again"
    assert generate_synthetic(again, SMALL, seed=11, workers=2) == report
    first, second = _digest(raw), _digest(again)
    assert first == second
    assert "ingest_report.json" in first and any(k.startswith("images/") for k in first)


def test_generate_twice_is_byte_identical(tmp_path):
    """Two runs into two folders: every file, ingest_report.json included, has the same bytes."""
    params = SyntheticParams(n_images=16, min_width=96, max_width=128)
    generate_synthetic(tmp_path / "a", params, seed=3, workers=1)
    generate_synthetic(tmp_path / "b", params, seed=3, workers=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    report = json.loads((tmp_path / "a/ingest_report.json").read_text())
    assert not {"seconds", "seconds_per_image", "workers"} & set(report)


def test_plan_is_pure_and_seeded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = plan_sample(SMALL, seed=11), plan_sample(SMALL, seed=11)
    assert first == second and list(tmp_path.iterdir()) == []  # no file written
    assert plan_sample(SMALL, seed=12).records != first.records
    assert len(first.tasks) == SMALL.n_images - SMALL.duplicate_count
    assert {t.file_name for t in first.tasks} <= {f"{r['isic_id']}.jpg" for r in first.records}


def test_vocabularies_come_from_common(small):
    raw, _ = small
    texts = license_texts()
    assert set(texts) == set(CC_LICENSES)
    for lic, (name, url) in CC_LICENSES.items():
        assert texts[lic].startswith(f"{lic}: {name}\n{url}\n")
    sites = {r["anatom_site_1"] for r in _rows(raw)} - {""}
    assert sites and sites <= set(ANATOM_SITES_1)


def test_other_seed_differs(small, tmp_path):
    raw, _ = small
    other = tmp_path / "other"
    generate_synthetic(other, SMALL, seed=12, workers=1)
    assert (raw / "metadata.csv").read_bytes() != (other / "metadata.csv").read_bytes()
    images = [{h for k, h in _digest(d).items() if k.startswith("images/")} for d in (raw, other)]
    assert images[0].isdisjoint(images[1])


def test_rerun_into_the_same_dir_removes_stale_images(tmp_path):
    raw = tmp_path / "raw"
    generate_synthetic(raw, SyntheticParams(n_images=12, min_width=96, max_width=128), seed=1, workers=1)
    generate_synthetic(raw, SyntheticParams(n_images=10, min_width=96, max_width=128), seed=2, workers=1)
    ids = {r["isic_id"] for r in _rows(raw)}
    assert {p.stem for p in (raw / "images").iterdir()} == ids


def test_layout(small):
    raw, report = small
    rows = _rows(raw)
    assert len(rows) == SMALL.n_images == report["n_images"]
    header = next(csv.reader((raw / "metadata.csv").open(encoding="utf-8")))
    assert tuple(header[:3]) == FIRST_COLUMNS
    assert header[3:] == sorted(header[3:])
    ids = [r["isic_id"] for r in rows]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert all(re.fullmatch(r"ISIC_\d{7}", i) for i in ids)
    assert {p.name for p in (raw / "images").iterdir()} == {f"{i}.jpg" for i in ids}
    corrupt = set(report["corrupt_ids"])
    for r in rows:
        assert re.fullmatch(r"IP_\d{7}", r["patient_id"]) and re.fullmatch(r"IL_\d{7}", r["lesion_id"])
        assert r["image_type"] == "dermoscopic"
        assert r["copyright_license"] in {"CC-0", "CC-BY", "CC-BY-NC"}
        w, h = int(r["pixels_x"]), int(r["pixels_y"])
        assert SMALL.min_width <= max(w, h) <= SMALL.max_width  # the long side (portraits are rare)
        if r["isic_id"] not in corrupt:
            with Image.open(raw / "images" / f"{r['isic_id']}.jpg") as im:
                assert im.format == "JPEG" and im.size == (w, h)
    for lic in {r["copyright_license"] for r in rows}:
        text = (raw / "licenses" / f"{lic}.txt").read_text(encoding="utf-8")
        assert "creativecommons.org" in text and "synthetic" in text
    attributions = (raw / "attribution.txt").read_text(encoding="utf-8").split("\n\n")
    assert set(attributions) == {r["attribution"] for r in rows}
    saved = json.loads((raw / "ingest_report.json").read_text(encoding="utf-8"))
    assert saved["source"] == "synthetic" and saved["seed"] == 11
    assert saved["n_patients"] == len({r["patient_id"] for r in rows})
    assert saved["n_lesions"] == len({r["lesion_id"] for r in rows})


def test_labels_are_not_sorted_by_id(medium):
    raw, _ = medium
    mel = [r["diagnosis_2"] == MELANOMA_DX2 for r in _rows(raw)]
    first_half = sum(mel[: len(mel) // 2])
    assert 0.25 < first_half / max(1, sum(mel)) < 0.75


def test_label_balance_and_vocabularies(medium):
    raw, report = medium
    rows = _rows(raw)
    assert len(rows) == MEDIUM.n_images
    kinds = Counter(
        "melanoma"
        if r["diagnosis_2"] == MELANOMA_DX2
        else "benign"
        if r["diagnosis_1"] == "Benign"
        else "other_malignant"
        if r["diagnosis_1"] == "Malignant"
        else "unlabeled"
        for r in rows
    )
    assert kinds == Counter(report["counts"]["label"])
    assert abs(kinds["melanoma"] / len(rows) - 0.10) <= 0.05
    assert kinds["unlabeled"] <= 0.05 * len(rows)
    for r in rows:
        assert r["diagnosis_1"] in {"", "Benign", "Malignant", "Indeterminate"}
        if r["diagnosis_2"] == MELANOMA_DX2:
            assert r["diagnosis_1"] == "Malignant"
            assert r["diagnosis_3"] in {"Melanoma Invasive", "Melanoma in situ"}
        if r["age_approx"]:
            assert int(r["age_approx"]) % 5 == 0 and 0 <= int(r["age_approx"]) <= 85
        assert r["sex"] in {"", "male", "female"}
        assert r["anatom_site_1"] in {"", "Head and neck", "Trunk", "Upper extremity", "Lower extremity"}
        assert r["melanocytic"] in {"", "True", "False"}
    mel_age = [int(r["age_approx"]) for r in rows if r["diagnosis_2"] == MELANOMA_DX2 and r["age_approx"]]
    ben_age = [int(r["age_approx"]) for r in rows if r["diagnosis_1"] == "Benign" and r["age_approx"]]
    assert np.mean(mel_age) > np.mean(ben_age)


def test_missing_values_are_empty_cells(medium):
    raw, _ = medium
    rows = _rows(raw)
    assert not any(v in ("None", "nan", "NaN", "null") for r in rows for v in r.values())
    for col in ("age_approx", "sex", "anatom_site_1"):
        assert any(r[col] == "" for r in rows), col
        assert sum(r[col] == "" for r in rows) < 0.15 * len(rows), col
    assert any(r["diagnosis_1"] == "" for r in rows) or any(r["diagnosis_1"] == "Indeterminate" for r in rows)


def test_exact_corrupt_and_duplicate_counts(medium):
    raw, report = medium
    p = MEDIUM
    rows = {r["isic_id"]: r for r in _rows(raw)}
    images = raw / "images"
    bad = {i for i in rows if not _loads(images / f"{i}.jpg")}
    assert bad == set(report["corrupt_ids"]) and len(bad) == p.corrupt_count == report["n_corrupt"]
    assert report["n_duplicates"] == p.duplicate_count == len(report["duplicates"])
    by_hash = defaultdict(list)
    for i in rows:
        by_hash[hashlib.sha256((images / f"{i}.jpg").read_bytes()).hexdigest()].append(i)
    groups = [sorted(g) for g in by_hash.values() if len(g) > 1]
    assert sum(len(g) - 1 for g in groups) == p.duplicate_count
    for dup in report["duplicates"]:
        a, b = rows[dup["isic_id"]], rows[dup["duplicate_of"]]
        assert (images / f"{a['isic_id']}.jpg").read_bytes() == (images / f"{b['isic_id']}.jpg").read_bytes()
        assert {k: v for k, v in a.items() if k != "isic_id"} == {
            k: v for k, v in b.items() if k != "isic_id"
        }
        assert dup["isic_id"] not in bad


def test_several_images_per_lesion_and_lesions_per_patient(medium):
    raw, _ = medium
    rows = _rows(raw)
    per_lesion = Counter(r["lesion_id"] for r in rows)
    lesions_per_patient = defaultdict(set)
    for r in rows:
        lesions_per_patient[r["patient_id"]].add(r["lesion_id"])
    assert max(per_lesion.values()) >= 2 and max(per_lesion.values()) <= MEDIUM.max_images_per_lesion + 1
    assert max(len(s) for s in lesions_per_patient.values()) >= 2
    for lesion in per_lesion:  # a lesion never changes patient, diagnosis or site
        same = [r for r in rows if r["lesion_id"] == lesion]
        keys = ("patient_id", "diagnosis_1", "diagnosis_3", "anatom_site_1", "age_approx", "sex")
        assert len({tuple(r[k] for k in keys) for r in same}) == 1


def test_tiny_sample_keeps_both_classes(tmp_path):
    raw = tmp_path / "tiny"
    report = generate_synthetic(
        raw, SyntheticParams(n_images=20, min_width=96, max_width=128), seed=0, workers=1
    )
    rows = _rows(raw)
    assert len(rows) == 20 and report["n_corrupt"] == 4 and report["n_duplicates"] == 3
    ok = [r for r in rows if r["isic_id"] not in set(report["corrupt_ids"])]
    assert sum(r["diagnosis_2"] == MELANOMA_DX2 for r in ok) >= 2
    assert sum(r["diagnosis_1"] == "Benign" for r in ok) >= 2


def test_too_small_sample_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no clean image"):
        generate_synthetic(tmp_path / "x", SyntheticParams(n_images=7), seed=0, workers=1)


def _compactness(path: Path) -> float:
    """perimeter^2 / area of the dark blob in the 100x100 centre crop (hairs removed by a median)."""
    with Image.open(path) as im:
        w, h = im.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        g = im.convert("L").crop(box).resize((100, 100)).filter(ImageFilter.MedianFilter(5))
    g = np.asarray(g, dtype=float)
    yy, xx = np.mgrid[:100, :100]
    rr = np.hypot(yy - 49.5, xx - 49.5)
    skin = np.median(g[(rr > 44) & (rr < 50)])
    core = np.percentile(g[rr < 20], 10)
    mask = (g < (skin + core) / 2) & (rr < 48)
    perimeter = (mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum()
    return float(perimeter**2 / (mask.sum() + 1))


def test_border_irregularity_separates_the_classes(tmp_path):
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    params = SyntheticParams(n_images=300, melanoma_fraction=0.3, min_width=150, max_width=200)
    raw = tmp_path / "signal"
    report = generate_synthetic(raw, params, seed=2, workers=2)
    y, score = [], []
    for r in _rows(raw):
        if r["isic_id"] in report["corrupt_ids"] or r["diagnosis_1"] not in ("Benign", "Malignant"):
            continue
        y.append(r["diagnosis_2"] == MELANOMA_DX2)
        score.append(_compactness(raw / "images" / f"{r['isic_id']}.jpg"))
    auc = roc_auc_score(y, score)
    assert auc > 0.6, auc
