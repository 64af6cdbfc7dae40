"""prepare: cleaning (unlabeled, corrupt, duplicate, missing) and the compact output."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import LICENSES, make_raw
from melanoma.config import PrepareParams
from melanoma.contracts import load_prepared
from melanoma.errors import DataError
from melanoma.prepare import prepare
from melanoma.raw_layout import write_raw_metadata

PARAMS = PrepareParams(image_size=32, workers=2)


def test_clean_input_gives_array_and_index(raw_dir: Path, tmp_path: Path) -> None:
    report = prepare(raw_dir, tmp_path / "prep", PARAMS)
    images, index = load_prepared(tmp_path / "prep")
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert list(index["row"]) == list(range(40))
    assert index["label"].sum() == 10 and report["n_melanoma"] == 10
    assert {"patient_id", "lesion_id", "sex", "age_approx", "site", "sha1"} <= set(index.columns)
    assert index.loc[0, "site"] == "Trunk"
    on_disk = json.loads((tmp_path / "prep" / "prepare_report.json").read_text())
    assert on_disk["n_kept"] == 40 and on_disk["n_corrupt"] == 0


def test_bad_rows_are_dropped_counted_and_never_crash(raw_dir: Path, tmp_path: Path) -> None:
    records = pd.read_csv(raw_dir / "metadata.csv", dtype=str, keep_default_na=False).to_dict("records")
    img = raw_dir / "images"
    # corrupt: truncated and garbage
    data = (img / "ISIC_0000001.jpg").read_bytes()
    (img / "ISIC_0000001.jpg").write_bytes(data[: len(data) // 2])
    (img / "ISIC_0000002.jpg").write_bytes(b"garbage")
    # duplicate file under another id
    shutil.copy(img / "ISIC_0000005.jpg", img / "ISIC_0000006.jpg")
    # missing image file
    (img / "ISIC_0000007.jpg").unlink()
    # unlabeled rows: Indeterminate and no diagnosis at all
    records[9]["diagnosis_1"] = "Indeterminate"
    for k in ("diagnosis_1", "diagnosis_2", "diagnosis_3"):
        records[10][k] = ""
    write_raw_metadata(raw_dir, records, LICENSES, {"source": "test"})

    report = prepare(raw_dir, tmp_path / "prep", PARAMS)
    assert report["n_corrupt"] == 2
    assert {c["isic_id"] for c in report["corrupt"]} == {"ISIC_0000001", "ISIC_0000002"}
    assert report["duplicates"] == [{"isic_id": "ISIC_0000006", "duplicate_of": "ISIC_0000005"}]
    assert report["missing_image"] == ["ISIC_0000007"]
    assert set(report["unlabeled"]) == {"ISIC_0000009", "ISIC_0000010"}
    assert report["n_kept"] == 40 - 2 - 1 - 1 - 2
    _, index = load_prepared(tmp_path / "prep")
    assert not {"ISIC_0000001", "ISIC_0000006", "ISIC_0000007", "ISIC_0000009"} & set(index["isic_id"])


def test_errors_name_files_from_the_raw_folder_never_by_the_path_they_were_read_from(
    raw_dir: Path, tmp_path: Path
) -> None:
    # The external stage prepares from a scratch folder with a random name: a message quoting it would
    # make the tracked report change on every run (issue 18). Two copies of the same raw folder under
    # different (absolute, temporary) paths give the same report bytes.
    (raw_dir / "images" / "ISIC_0000002.jpg").write_bytes(b"garbage")
    elsewhere = tmp_path / ".scratch-x7q" / "raw"
    shutil.copytree(raw_dir, elsewhere)
    a = prepare(raw_dir, tmp_path / "a", PARAMS)
    prepare(elsewhere.resolve(), tmp_path / "b", PARAMS)
    (error,) = [c["error"] for c in a["corrupt"]]
    assert "raw/images/ISIC_0000002.jpg" in error and str(tmp_path) not in error, error
    reports = [json.loads((tmp_path / d / "prepare_report.json").read_text()) for d in "ab"]
    for r in reports:
        r.pop("raw_dir")  # the folder it was given (the external stage names its set instead)
    assert reports[0] == reports[1]


def test_png_and_odd_extensions_are_read(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_raw(raw, n=8, pos_every=2)
    from PIL import Image

    src = raw / "images" / "ISIC_0000003.jpg"
    Image.open(src).convert("RGBA").save(raw / "images" / "ISIC_0000003.png")
    src.unlink()
    report = prepare(raw, tmp_path / "prep", PARAMS)
    assert report["n_kept"] == 8


def test_empty_class_is_a_clear_error(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_raw(raw, n=6, pos_every=100)  # only image 0 is melanoma
    (raw / "images" / "ISIC_0000000.jpg").write_bytes(b"broken")
    with pytest.raises(DataError, match="melanoma class is empty"):
        prepare(raw, tmp_path / "prep", PARAMS)
    assert not (tmp_path / "prep").exists()  # nothing half-written


def test_missing_inputs_are_clear_errors(tmp_path: Path, raw_dir: Path) -> None:
    with pytest.raises(DataError, match="metadata.csv: missing"):
        prepare(tmp_path / "nowhere", tmp_path / "prep", PARAMS)
    (raw_dir / "metadata.csv").write_text("name,diagnosis\nx,melanoma\n")
    with pytest.raises(DataError, match="required column 'isic_id'"):
        prepare(raw_dir, tmp_path / "prep", PARAMS)
    (raw_dir / "metadata.csv").write_text("isic_id,sex\nISIC_0000000,male\n")
    with pytest.raises(DataError, match="diagnosis"):
        prepare(raw_dir, tmp_path / "prep", PARAMS)
    shutil.rmtree(raw_dir / "images")
    (raw_dir / "metadata.csv").write_text("isic_id,diagnosis\nISIC_0000000,melanoma\n")
    with pytest.raises(DataError, match="image folder is missing"):
        prepare(raw_dir, tmp_path / "prep", PARAMS)


def test_output_is_deterministic_across_worker_counts(raw_dir: Path, tmp_path: Path) -> None:
    prepare(raw_dir, tmp_path / "a", PrepareParams(image_size=24, workers=1))
    prepare(raw_dir, tmp_path / "b", PrepareParams(image_size=24, workers=2))
    assert (tmp_path / "a" / "images.npy").read_bytes() == (tmp_path / "b" / "images.npy").read_bytes()
    assert (tmp_path / "a" / "index.csv").read_text() == (tmp_path / "b" / "index.csv").read_text()


def test_a_second_run_writes_byte_identical_files(raw_dir: Path, tmp_path: Path) -> None:
    # The prepared folder is a DVC output: identical bytes on rerun keep every later stage up to date.
    prepare(raw_dir, tmp_path / "a", PARAMS)
    prepare(raw_dir, tmp_path / "b", PARAMS)
    names = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert names[:3] == ["images.npy", "index.csv", "prepare_report.json"]
    assert {"provenance/ingest_report.json", "provenance/attribution.txt", "provenance/licences.json"} <= set(
        names
    )
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_the_raw_layouts_small_files_travel_with_the_prepared_set(raw_dir: Path, tmp_path: Path) -> None:
    # The report reads them from data/prepared: a box that pulled only data/prepared has them.
    from melanoma import raw_layout

    prepare(raw_dir, tmp_path / "p", PARAMS)
    prov = tmp_path / "p" / raw_layout.PROVENANCE_DIR
    for name in ("ingest_report.json", "attribution.txt"):
        assert (prov / name).read_bytes() == (raw_dir / name).read_bytes()
    assert raw_layout.read_license_texts(prov) == raw_layout.read_license_texts(raw_dir)
    counts, cc_by = raw_layout.read_licence_summary(prov)
    meta = raw_layout.read_metadata(raw_dir)  # every row, kept or dropped
    assert counts == meta["copyright_license"].replace("", "unknown").value_counts().to_dict()
    assert sum(counts.values()) == len(meta)


def test_draft_margin_reaches_the_workers_and_the_report(raw_dir: Path, tmp_path: Path) -> None:
    # The raw JPEGs are 160x120: at 24 px, margin 1.0 decodes them at 1/4 (30 px short side), 2.0
    # at 1/2 (60 px); both cover the target, so the arrays differ a little, not a lot.
    near = prepare(raw_dir, tmp_path / "m1", PrepareParams(image_size=24, workers=1, draft_margin=1.0))
    prepare(raw_dir, tmp_path / "m2", PrepareParams(image_size=24, workers=1, draft_margin=2.0))
    assert near["params"]["draft_margin"] == 1.0
    a, _ = load_prepared(tmp_path / "m1")
    b, _ = load_prepared(tmp_path / "m2")
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() > 0 and diff.mean() < 4.0


def test_decoding_keeps_a_bounded_window_of_chunks_in_flight(raw_dir: Path) -> None:
    """Chunks are built as the pool takes them (Executor.map would submit all N at once)."""
    from concurrent.futures import ProcessPoolExecutor

    from melanoma.prepare import _decode_one, _decoded_in_order

    paths = sorted((raw_dir / "images").iterdir())
    pulled = 0

    def chunks():  # noqa: ANN202
        nonlocal pulled
        for p in paths:
            pulled += 1
            yield [(str(p), p.name, 16, "pad", True, 1.0, "none", 6.0)]

    got = []
    with ProcessPoolExecutor(max_workers=2) as pool:
        for res in _decoded_in_order(pool, chunks(), ahead=3):
            assert pulled <= len(got) + 3, f"{pulled} chunks taken with {len(got)} results consumed"
            got.append(res)
    expected = [_decode_one((str(p), p.name, 16, "pad", True, 1.0, "none", 6.0)) for p in paths]
    assert [r.sha1 for r in got] == [r.sha1 for r in expected]
    assert all(np.array_equal(a.array, b.array) for a, b in zip(got, expected, strict=True))


WORKER_PROBE = """
import json, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from melanoma.config import PrepareParams
from melanoma.prepare import prepare

peaks, done = {}, threading.Event()
def hwm(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
def sample():  # the pool's workers are this process's children
    while not done.is_set():
        for task in Path("/proc/self/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    peaks[pid] = max(peaks.get(pid, 0), hwm(pid))
                except (OSError, TypeError):
                    pass
        time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
base = hwm("self")  # imports done, nothing read yet
prepare(Path(sys.argv[2]), Path(sys.argv[3]), PrepareParams(image_size=16, workers=2))
done.set()
print(json.dumps({"base": base, "parent": hwm("self"), "workers": max(peaks.values(), default=None)}))
"""


def test_pool_workers_do_not_carry_the_metadata_table(tmp_path: Path) -> None:
    """Workers start before the metadata is read: a large table is in the parent's RSS only.

    Forked after the read, each worker would count the table in its own RSS (and every pool
    worker of the stage would grow with N). ~100 MB of metadata: 300 images + 25K rows with no file.
    """
    import subprocess
    import sys

    raw_dir = tmp_path / "raw"
    make_raw(raw_dir, n=300)  # enough decoding for the sampler to see the workers

    records = pd.read_csv(raw_dir / "metadata.csv", dtype=str, keep_default_na=False).to_dict("records")
    pad = "x" * 2000
    records = [{**r, "notes": pad} for r in records]
    records += [{**records[0], "isic_id": f"ISIC_9{i:06d}", "notes": f"{i}{pad}"} for i in range(25_000)]
    write_raw_metadata(raw_dir, records, LICENSES, {"source": "test"})
    src = Path(__file__).resolve().parents[1] / "src"
    out = subprocess.run(
        [sys.executable, "-c", WORKER_PROBE, str(src), str(raw_dir), str(tmp_path / "prep")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    assert peaks["workers"] is not None, "no pool worker was seen"
    assert peaks["parent"] > peaks["base"] + 100, f"the table did not load: {peaks}"
    assert peaks["workers"] < peaks["base"] + 40, f"workers carry the parent's table: {peaks}"
