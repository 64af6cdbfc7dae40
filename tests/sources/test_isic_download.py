"""The ISIC downloader (``melanoma.sources.isic``) against the fake ISIC server (tests/fakes).

Fault tests, outputs, resume, and the CLI. Nothing reaches beyond 127.0.0.1 (see conftest.py).
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from isic_helpers import image_files, isic_params, read_report, tree, visible_ids, written
from PIL import Image

from fakes.isic_server import LICENSES, THROTTLE_CHUNK, FakeIsicServer, TokenBucket, make_images
from melanoma import atomic
from melanoma.cli import main as cli_main
from melanoma.config import Params
from melanoma.errors import DataError
from melanoma.sources.http import download as http_download
from melanoma.sources.isic import RUN_KEYS, download_isic

REPO = Path(__file__).resolve().parents[2]
REPORT_KEYS = {
    "source",
    "base_url",
    "query",
    "collections",
    "limit",
    "count",
    "n_listed",
    "n_images",
    "n_downloaded",
    "n_skipped_complete",
    "bytes_downloaded",
    "n_set_aside",
    "failures",
    "retries",
    "seconds",
}

pytestmark = pytest.mark.usefixtures("foreign_hosts")  # loopback only, see conftest.py


def expected_metadata_csv(images: list[dict[str, Any]]) -> str:
    """isic-cli's metadata.csv, written independently of melanoma.contracts."""
    rows = []
    for im in images:
        rows.append(
            {
                **im["metadata"]["acquisition"],
                **im["metadata"]["clinical"],
                "isic_id": im["isic_id"],
                "attribution": im["attribution"],
                "copyright_license": im["copyright_license"],
            }
        )
    first = ["isic_id", "attribution", "copyright_license"]
    keys = sorted({k for im in images for sec in ("acquisition", "clinical") for k in im["metadata"][sec]})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=first + keys, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["isic_id"]):
        writer.writerow({k: ("True" if v is True else "False" if v is False else v) for k, v in row.items()})
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- listing


def test_download_with_limit_across_pages(big_server: FakeIsicServer, tmp_path: Path) -> None:
    report = download_isic(tmp_path, isic_params(big_server, limit=130, concurrency=8))
    assert report["n_listed"] == report["n_images"] == report["n_downloaded"] == 130
    assert len(image_files(tmp_path)) == 130
    assert report["count"] == 250 and report["failures"] == []
    rows = (tmp_path / "metadata.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 131


def test_count_differs_from_rows(server: FakeIsicServer, tmp_path: Path) -> None:
    server.count_offset = 3  # the search index counts more than the database lists
    report = download_isic(tmp_path, isic_params(server))
    assert report["count"] == 33 and report["n_listed"] == report["n_images"] == 30


def test_disk_space_checked_before_downloading(
    server: FakeIsicServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(DataError, match="not enough disk space.*30 images"):
        download_isic(tmp_path, isic_params(server))
    assert server.requests["size"] == 1 and server.requests["search"] == 1  # never listed
    with pytest.raises(DataError, match="not enough disk space.*20 images"):  # estimated from the listing
        download_isic(tmp_path, isic_params(server, limit=20))
    assert server.file_requests.total() == 0 and image_files(tmp_path) == {}


# ---------------------------------------------------------------------------------------------- faults


def test_429_and_503_are_retried(server: FakeIsicServer, tmp_path: Path) -> None:
    ids = visible_ids(server)
    server.inject(ids[0], "429", retry_after="1")  # honoured although the backoff is 10 ms
    server.inject(ids[1], "503", times=2)
    server.inject("search", "503")  # a listing page, too
    params = isic_params(server, max_backoff_seconds=2.0)
    start = time.monotonic()
    report = download_isic(tmp_path, params)
    assert time.monotonic() - start >= 0.9
    assert report["failures"] == [] and report["n_images"] == 30
    assert report["retries"] == {"http_429": 1, "http_503": 3}
    assert server.file_requests[ids[0]] == 2 and server.file_requests[ids[1]] == 3


def test_broken_bodies_are_retried(server: FakeIsicServer, tmp_path: Path) -> None:
    ids = visible_ids(server)
    server.inject(ids[0], "reset")
    server.inject(ids[1], "truncate", times=2)
    server.inject(ids[2], "short")  # consistent Content-Length: only the size check can see it
    server.inject(ids[3], "size_mismatch")  # longer than files.full.size
    report = download_isic(tmp_path, isic_params(server))
    assert report["failures"] == [] and report["n_images"] == 30
    retries = report["retries"]
    assert sum(retries.values()) == 5
    assert retries.get("size_mismatch") == 2  # short + longer body
    assert retries.get("broken_body", 0) + retries.get("connection_error", 0) == 3
    for isic_id in ids[:4]:
        assert (tmp_path / "images" / f"{isic_id}.jpg").read_bytes() == server.by_id[isic_id].full
    assert not [p for p in (tmp_path / "images").iterdir() if p.name.startswith(".")]


def test_persistent_size_mismatch_is_recorded_after_one_confirmation(
    server: FakeIsicServer, tmp_path: Path
) -> None:
    ids = visible_ids(server)
    server.inject(ids[0], "wrong_size", times=None, delta=5)  # the listing lies about the size
    server.inject(ids[1], "size_mismatch", times=None)  # the file server sends extra bytes
    for _run in range(2):  # ... on every rerun as well
        server.reset_counters()
        report = download_isic(tmp_path, isic_params(server, retries=8))
        by_id = {f["isic_id"]: f for f in report["failures"]}
        assert set(by_id) == {ids[0], ids[1]}
        assert "got" in by_id[ids[0]]["reason"] and "expected" in by_id[ids[0]]["reason"]
        assert "permanent" in by_id[ids[0]]["reason"] and "permanent" in by_id[ids[1]]["reason"]
        # Two attempts each, not retries + 1: the same self-consistent size twice is the listing's fault.
        assert by_id[ids[0]]["attempts"] == 2 and by_id[ids[1]]["attempts"] == 2
        assert server.file_requests[ids[0]] == 2 and server.file_requests[ids[1]] == 2
        assert by_id[ids[0]]["url"].endswith(f"{ids[0]}.jpg")
        assert report["n_images"] == 28 and report["n_failed"] == 2
        assert not (tmp_path / "images" / f"{ids[0]}.jpg").exists()
        meta = (tmp_path / "metadata.csv").read_text(encoding="utf-8")
        assert ids[0] not in meta and ids[1] not in meta and ids[2] in meta


@pytest.mark.slow
def test_slow_responses(server: FakeIsicServer, tmp_path: Path) -> None:
    # Margins a loaded 2-core machine cannot eat: a normal answer takes milliseconds, the read
    # timeout is 1.5 s, and a slow answer never comes within it (it waits for the test to end).
    never = threading.Event()
    ids = visible_ids(server)
    server.inject(ids[0], "hold", event=never)  # once: the retry gets a fast answer
    server.inject(ids[1], "hold", times=None, event=never)  # always beyond the read timeout
    try:
        report = download_isic(tmp_path, isic_params(server, read_timeout=1.5, retries=1))
    finally:
        never.set()
    assert report["retries"]["read_timeout"] == 2
    assert [f["isic_id"] for f in report["failures"]] == [ids[1]]
    assert "timed out" in report["failures"][0]["reason"].lower()
    assert report["failures"][0]["attempts"] == 2
    assert (tmp_path / "images" / f"{ids[0]}.jpg").exists()


def test_path_traversal_id_is_rejected(server: FakeIsicServer, tmp_path: Path) -> None:
    ids = visible_ids(server)
    server.inject(ids[0], "bad_id", times=None, value="../../x")
    raw = tmp_path / "deep" / "raw"
    report = download_isic(raw, isic_params(server))
    (failure,) = report["failures"]
    assert failure["isic_id"] == "../../x" and "invalid isic_id" in failure["reason"]
    assert failure["attempts"] == 0
    assert server.file_requests[ids[0]] == 0
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith("x")]
    assert report["n_images"] == 29


def test_redirect_to_another_host_is_refused_without_connecting(
    server: FakeIsicServer, tmp_path: Path, foreign_hosts: list[str]
) -> None:
    ids = visible_ids(server)
    server.inject(ids[0], "redirect", times=None, location="https://evil.example.com/x.jpg")
    # A redirect to an allowed host (here: the server itself) is followed.
    server.inject(ids[1], "redirect", location=f"{server.origin}/files/images/{ids[1]}.jpg")
    report = download_isic(tmp_path, isic_params(server))
    (failure,) = report["failures"]
    assert failure["isic_id"] == ids[0]
    assert failure["reason"].startswith("redirect to disallowed host evil.example.com")
    assert failure["attempts"] == 1 and server.file_requests[ids[0]] == 1
    assert foreign_hosts == []  # not even a DNS lookup of evil.example.com
    assert (tmp_path / "images" / f"{ids[1]}.jpg").read_bytes() == server.by_id[ids[1]].full


# --------------------------------------------------------------------------------------------- outputs


def test_outputs_match_isic_cli(server: FakeIsicServer, tmp_path: Path) -> None:
    report = download_isic(tmp_path, isic_params(server))
    served = [server.image_json(im, consume=False) for im in server.images]
    assert (tmp_path / "metadata.csv").read_text(encoding="utf-8") == expected_metadata_csv(served)
    header = (tmp_path / "metadata.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[:3] == ["isic_id", "attribution", "copyright_license"]
    assert header[3:] == sorted(header[3:]) and {"pixels_x", "pixels_y", "diagnosis_1"} <= set(header)
    assert (
        "True" in (tmp_path / "metadata.csv").read_text()
        and "False" in (tmp_path / "metadata.csv").read_text()
    )

    counts = Counter(im["attribution"] for im in served)
    names = sorted((a for a in counts if a != "Anonymous"), key=lambda a: (-counts[a], a))
    expected_attr = "\n\n".join([*names, "Anonymous"] if "Anonymous" in counts else names)
    assert (tmp_path / "attribution.txt").read_text(encoding="utf-8") == expected_attr

    used = {im["copyright_license"] for im in served}
    assert {p.name for p in (tmp_path / "licenses").iterdir()} == {f"{lic}.txt" for lic in used}
    for lic in used:
        assert (tmp_path / "licenses" / f"{lic}.txt").read_text(encoding="utf-8") == LICENSES[lic]

    assert set(report) >= REPORT_KEYS and read_report(tmp_path) == written(report)
    assert not set(RUN_KEYS) & set(read_report(tmp_path))  # no timings or run history in the file
    assert report["source"] == "isic" and report["base_url"] == server.base_url
    assert report["n_images"] == report["n_listed"] == report["n_downloaded"] == 30
    assert report["bytes_downloaded"] == sum(len(im.full) for im in server.images)
    assert report["license_fallbacks"] == {} and report["retries"] == {}
    for name, data in image_files(tmp_path).items():
        assert data == server.by_id[name[:-4]].full


def test_two_downloads_give_byte_identical_folders(server: FakeIsicServer, tmp_path: Path) -> None:
    server.inject(visible_ids(server)[0], "503")  # a retry in one run only: not in the outputs either
    first = download_isic(tmp_path / "a", isic_params(server))
    second = download_isic(tmp_path / "b", isic_params(server, concurrency=2))
    assert first["retries"] == {"http_503": 1} and second["retries"] == {}
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a == b and "ingest_report.json" in a and len([k for k in a if k.startswith("images/")]) == 30


def test_license_fallback(server: FakeIsicServer, tmp_path: Path) -> None:
    server.inject("license", "status", times=None, status=500)
    report = download_isic(tmp_path, isic_params(server, retries=1))
    assert report["failures"] == []
    assert set(report["license_fallbacks"]) == {p.stem for p in (tmp_path / "licenses").iterdir()}
    for p in (tmp_path / "licenses").iterdir():
        assert p.read_text(encoding="utf-8").startswith(p.stem) and "could not be fetched" in p.read_text()


# ---------------------------------------------------------------------------------------------- resume


def test_rerun_moves_no_image_bytes(server: FakeIsicServer, tmp_path: Path) -> None:
    download_isic(tmp_path, isic_params(server))
    first = image_files(tmp_path)
    meta = (tmp_path / "metadata.csv").read_bytes()
    server.reset_counters()
    report = download_isic(tmp_path, isic_params(server))
    assert server.file_bytes == 0 and server.file_requests.total() == 0
    assert report["n_skipped_complete"] == 30 and report["n_downloaded"] == 0
    assert report["bytes_downloaded"] == 0 and report["n_images"] == 30
    assert image_files(tmp_path) == first and (tmp_path / "metadata.csv").read_bytes() == meta


def test_resume_refetches_partial_and_removes_stale(server: FakeIsicServer, tmp_path: Path) -> None:
    download_isic(tmp_path, isic_params(server))
    images = tmp_path / "images"
    ids = visible_ids(server)
    cut = images / f"{ids[0]}.jpg"
    cut.write_bytes(cut.read_bytes()[:100])  # a partial file under the final name
    (images / f"{ids[1]}.jpg").write_bytes(b"x" * 5000)  # wrong size, too long
    (images / f"{ids[2]}.jpg").unlink()
    (images / "ISIC_9999999.jpg").write_bytes(b"stale")  # no longer in the listing
    (images / f"{ids[3]}.JPG").write_bytes(b"old name")  # old extension spelling
    (images / f".{ids[4]}.jpg.abc123.partial").write_bytes(b"left by a killed run")
    server.reset_counters()
    report = download_isic(tmp_path, isic_params(server))
    assert report["n_downloaded"] == 3 and report["n_skipped_complete"] == 27
    assert report["n_replaced_incomplete"] == 2
    assert report["n_set_aside"] == 2 and report["n_removed_partial"] == 1
    assert sorted(server.file_requests) == sorted(ids[:3])
    assert image_files(tmp_path) == {f"{i}.jpg": server.by_id[i].full for i in ids}


def test_smaller_limit_sets_images_aside_and_a_larger_one_restores_them(
    server: FakeIsicServer, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    download_isic(raw, isic_params(server))
    full = tree(raw)
    server.reset_counters()
    report = download_isic(raw, isic_params(server, limit=10))
    assert report["n_images"] == 10 and report["n_set_aside"] == 20
    assert len(image_files(raw)) == 10 and server.file_bytes == 0
    assert len((raw / "metadata.csv").read_text().splitlines()) == 11
    # Kept, not deleted: beside the raw folder (which equals a fresh download of the 10).
    aside = tmp_path / "raw.set-aside"
    kept = image_files(aside)
    assert len(kept) == 20 and all(data == full[f"images/{name}"] for name, data in kept.items())
    assert (aside / ".gitignore").read_text().splitlines()[-1] == "*"
    fresh = tmp_path / "fresh"
    download_isic(fresh, isic_params(server, limit=10))
    assert tree(raw) == tree(fresh)
    # The whole listing again: the set-aside images come back without a download.
    server.reset_counters()
    report = download_isic(raw, isic_params(server))
    assert report["n_restored"] == 20 and report["n_downloaded"] == 0 and server.file_requests.total() == 0
    assert tree(raw) == full and image_files(aside) == {}


# ------------------------------------------------------------------------------------------------- CLI


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def write_params(path: Path, srv: FakeIsicServer, allow_partial: bool = False, **isic: Any) -> Path:
    """A params.yaml built from the config defaults, with ingest.source: isic on the fake."""
    data = _plain(dataclasses.asdict(Params()))
    data["ingest"]["source"] = "isic"
    data["ingest"]["allow_partial"] = allow_partial
    data["ingest"]["isic"].update(
        {
            "base_url": srv.base_url,
            "concurrency": 4,
            "retries": 2,
            "backoff_seconds": 0.01,
            "max_backoff_seconds": 0.05,
            "read_timeout": 5.0,
            **isic,
        }
    )
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_cli_exit_code_with_failures(server: FakeIsicServer, tmp_path: Path) -> None:
    bad = visible_ids(server)[5]
    server.inject(bad, "size_mismatch", times=None)
    strict = write_params(tmp_path / "strict.yaml", server)
    assert cli_main(["--params", str(strict), "ingest", "--out", str(tmp_path / "a")]) == 2
    assert [f["isic_id"] for f in read_report(tmp_path / "a")["failures"]] == [bad]
    lenient = write_params(tmp_path / "lenient.yaml", server, allow_partial=True)
    assert cli_main(["--params", str(lenient), "ingest", "--out", str(tmp_path / "b")]) == 0
    report = read_report(tmp_path / "b")
    assert [f["isic_id"] for f in report["failures"]] == [bad] and report["n_images"] == 29


def _cli(params: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "melanoma", "--params", str(params), "ingest", "--out", str(out)]


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    n = 48
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with FakeIsicServer(n, seed=3) as srv:
        params = write_params(tmp_path / "params.yaml", srv)
        killed = tmp_path / "killed" / "raw"
        # The second half of the listing (creation order) is held by the server until released: the
        # kill comes with half the files on disk and four downloads in flight, however busy the machine.
        release = threading.Event()
        held = [im.isic_id for im in sorted(srv.images, key=lambda im: im.created) if im.public][n // 2 :]
        for isic_id in held:
            srv.inject(isic_id, "hold", times=None, event=release)
        with open(tmp_path / "killed.log", "wb") as log:
            proc = subprocess.Popen(_cli(params, killed), cwd=tmp_path, stdout=log, stderr=log, env=env)
            deadline = time.monotonic() + 120
            try:
                while (
                    len(list((killed / "images").glob("ISIC_*"))) < n // 2
                    or sum(srv.file_requests[i] for i in held) < 4
                ):
                    assert proc.poll() is None, "the download ended before it could be killed"
                    assert time.monotonic() < deadline, "the download did not progress"
                    time.sleep(0.01)
            finally:
                proc.kill()
                proc.wait()
                release.set()
                srv.clear_faults()
        # Right after SIGKILL: every file under a final name is complete; no metadata yet.
        at_kill = sorted((killed / "images").glob("ISIC_*"))
        assert len(at_kill) == n // 2 and {p.stem for p in at_kill}.isdisjoint(held)
        for p in at_kill:
            assert p.read_bytes() == srv.by_id[p.stem].full
        assert not (killed / "metadata.csv").exists()

        resumed = subprocess.run(_cli(params, killed), cwd=tmp_path, capture_output=True, env=env, timeout=60)
        assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
        report = read_report(killed)
        skipped = re.search(
            r"ISIC: \d+ images complete \(\d+ downloaded, (\d+) skipped", resumed.stderr.decode()
        )
        assert skipped and int(skipped.group(1)) >= len(at_kill) and report["n_images"] == n

        fresh = tmp_path / "fresh" / "raw"
        clean = subprocess.run(_cli(params, fresh), cwd=tmp_path, capture_output=True, env=env, timeout=60)
        assert clean.returncode == 0, clean.stderr.decode()[-2000:]

    a, b = tree(killed), tree(fresh)
    assert a == b  # ingest_report.json included: it holds no timings and no run history
    assert len([k for k in a if k.startswith("images/")]) == n
    assert not [k for k in a if Path(k).name.startswith(".")]
    assert {"metadata.csv", "attribution.txt"} <= set(a) and any(k.startswith("licenses/") for k in a)


# ------------------------------------------------------------------------------ robustness (issue 10)


def test_query_matching_nothing_is_an_error_and_changes_nothing(
    server: FakeIsicServer, tmp_path: Path
) -> None:
    download_isic(tmp_path, isic_params(server))
    before = tree(tmp_path)
    with pytest.raises(DataError, match="matched no images.*ingest.isic.query"):
        download_isic(tmp_path, isic_params(server, query='sex:"nobody"'))
    assert tree(tmp_path) == before  # not a single image set aside, metadata untouched
    params = write_params(tmp_path / "p.yaml", server, query='sex:"nobody"')
    assert cli_main(["--params", str(params), "ingest", "--out", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()  # a refused run leaves no empty folders behind


def test_downloads_start_while_the_listing_runs(big_server: FakeIsicServer, tmp_path: Path) -> None:
    big_server.reset_counters()
    report = download_isic(tmp_path, isic_params(big_server, concurrency=2))
    assert report["n_images"] == 250
    paths = list(big_server.paths)
    pages = [i for i, p in enumerate(paths) if p.startswith("/api/v2/images/search/?cursor=")]
    files = [i for i, p in enumerate(paths) if p.startswith("/files/images/")]
    assert len(pages) == 2 and files[0] < pages[0]  # page 1's images were fetched before page 2 was


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(
    server: FakeIsicServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="melanoma.progress")
    download_isic(tmp_path, isic_params(server), progress_interval=0.0)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err  # no bar redraws in a log
    lines = [r.getMessage() for r in caplog.records if r.name == "melanoma.progress"]
    assert "ISIC images: 30/30 img (100.0%)" in [line.split(",")[0] for line in lines]
    assert any(line.startswith("ISIC listing: 30/30 img") for line in lines)


def test_files_honour_the_umask(server: FakeIsicServer, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        download_isic(tmp_path / "raw", isic_params(server))
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in (tmp_path / "raw").rglob("*")}
    assert modes and all(m == (0o750 if (tmp_path / k).is_dir() else 0o640) for k, m in modes.items()), modes


@pytest.mark.slow
def test_ctrl_c_during_the_first_requests_stops_at_once(server: FakeIsicServer, tmp_path: Path) -> None:
    never = threading.Event()
    for route in ("search", "size"):
        server.inject(route, "hold", times=None, event=never)  # no answer: a read timeout of 30 s
    # A read timeout far beyond any wait below: if Ctrl-C waited for the held requests (the bug: read
    # timeout x attempts), the process would still be running when the wait gives up. No wall-clock
    # bound on a fast answer, so a loaded machine cannot fail it.
    params = write_params(tmp_path / "p.yaml", server, read_timeout=3600.0, retries=2)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    # A shell's background job (`pytest ... &`) starts with SIGINT ignored, and Python installs no
    # KeyboardInterrupt handler over an inherited SIG_IGN: give the child the default, as a terminal does.
    proc = subprocess.Popen(
        _cli(params, tmp_path / "raw"), cwd=tmp_path, stderr=subprocess.PIPE, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while server.requests["search"] < 1 or server.requests["size"] < 1:
            assert proc.poll() is None and time.monotonic() < deadline, "the preflight never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail("Ctrl-C did not stop the ingest while its first requests were held")
        still_held = not never.is_set()
    finally:
        never.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130, proc.stderr.read().decode()[-2000:] if proc.stderr else rc
    assert still_held  # it stopped while both requests were still unanswered


def test_a_fatal_answer_stops_the_preflight_at_once(server: FakeIsicServer, tmp_path: Path) -> None:
    server.inject("search", "status", times=None, status=400)  # the count request: fatal
    # the size request: 503 with a 1-minute Retry-After. Waiting for it (the bug: the 400 was reported
    # only after the other request's retries) would make a second size request after that wait.
    server.inject("size", "503", times=None, retry_after="60")
    with pytest.raises(DataError, match="HTTP 400"):
        download_isic(tmp_path, isic_params(server, retries=8, max_backoff_seconds=60.0))
    assert server.requests["size"] <= 1, f"the size request was retried {server.requests['size'] - 1} times"


class _FullDisk:
    """Writes fail with ENOSPC once ``budget`` bytes have been written in all (a filling disk)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.lock = threading.Lock()

    def open(self, path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = open(path, mode, *args, **kwargs)  # noqa: SIM115 - wrapped, closed by the caller
        disk = self

        class Limited:
            def write(self, data: bytes) -> int:
                with disk.lock:
                    if len(data) > disk.budget:
                        raise OSError(errno.ENOSPC, "No space left on device", str(path))
                    disk.budget -= len(data)
                return fh.write(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(fh, name)

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                fh.close()

        return Limited()


def test_disk_full_stops_the_download_and_writes_the_report(
    server: FakeIsicServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = sorted(len(im.full) for im in server.images)
    disk = _FullDisk(sum(sizes[:8]))  # room for some images, far from all
    monkeypatch.setattr(http_download, "open", disk.open, raising=False)  # download_to's image writes
    params = write_params(tmp_path / "p.yaml", server, allow_partial=True, concurrency=2)
    assert cli_main(["--params", str(params), "ingest", "--out", str(tmp_path / "raw")]) == 2
    report = read_report(tmp_path / "raw")
    on_disk = sorted(p.stem for p in (tmp_path / "raw" / "images").glob("ISIC_*"))
    assert 1 <= report["n_images"] == len(on_disk) < 30 and report["n_images"] + report["n_failed"] == 30
    assert any("No space left" in f["reason"] for f in report["failures"])
    meta = (tmp_path / "raw" / "metadata.csv").read_text(encoding="utf-8")
    assert sorted(line.split(",")[0] for line in meta.splitlines()[1:]) == on_disk
    # It stopped at the first full write instead of trying (and failing) every other image.
    assert server.file_requests.total() <= len(on_disk) + 2 * 2


def test_disk_full_while_writing_the_metadata_is_a_clear_error(
    server: FakeIsicServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    download_isic(tmp_path / "raw", isic_params(server, limit=5))
    monkeypatch.setattr(atomic, "write_bytes", full)  # metadata, licences, report; not the images
    params = write_params(tmp_path / "p.yaml", server)
    assert cli_main(["--params", str(params), "ingest", "--out", str(tmp_path / "raw")]) == 2  # no traceback
    with pytest.raises(DataError, match=r"cannot write the metadata.*No space left.*30 complete images"):
        download_isic(tmp_path / "raw", isic_params(server))
    assert len(image_files(tmp_path / "raw")) == 30  # what landed is kept


# --------------------------------------------------- the fake's link and large images (bench_download.py)


class _FrozenClock:
    """A clock that moves only when a test moves it; ``sleep`` records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


class _RecordingBucket(TokenBucket):
    """The fake's throttle on a frozen clock, recording every payment."""

    def __init__(self, rate: float) -> None:
        self.clock = _FrozenClock()
        self.sizes: list[int] = []
        super().__init__(rate, clock=self.clock, sleep=self.clock.sleep)

    def reserve(self, n: int) -> float:
        self.sizes.append(n)
        return super().reserve(n)


def test_token_bucket_serves_callers_in_turn_at_one_rate() -> None:
    clock = _FrozenClock()
    bucket = TokenBucket(1000, burst=100, clock=clock, sleep=clock.sleep)
    assert bucket.reserve(100) == 0  # a full bucket: the burst goes at once
    # Sixteen connections at the same instant share the link: each waits for the ones before it.
    assert [bucket.reserve(50) for _ in range(16)] == pytest.approx([0.05 * (k + 1) for k in range(16)])
    clock.now += 0.8  # the 800 bytes of debt are repaid just now: the bucket is empty, not full
    assert bucket.reserve(10) == pytest.approx(0.01)
    clock.now += 10  # a long idle spell refills up to the burst, no further
    assert bucket.reserve(100) == 0
    assert bucket.reserve(1) == pytest.approx(0.001)
    bucket.take(1000)  # take() sleeps what reserve() answers
    assert clock.slept == [pytest.approx(1.001)]


def test_token_bucket_never_admits_more_than_the_rate_and_loses_none_under_load() -> None:
    rng = random.Random(3)
    clock = _FrozenClock()
    rate, burst = 50e6, 65536
    bucket = TokenBucket(rate, burst=burst, clock=clock, sleep=clock.sleep)
    start, sent, admitted = clock.now, 0, []
    for _ in range(2000):
        n = rng.randint(1, 65536)
        admitted.append((clock.now + bucket.reserve(n), n))
        clock.now += rng.expovariate(10_000.0)  # callers come at random, ~6x faster than the link drains
    for when, n in sorted(admitted):
        sent += n
        assert sent <= burst + rate * (when - start) + 1e-6 * sent  # never above the rate (+ burst)
    # Demand always exceeded the link, so it never idled: the last byte went exactly at the rate.
    assert max(w for w, _ in admitted) - start == pytest.approx((sent - burst) / rate)


def test_large_images_through_the_throttle(tmp_path: Path) -> None:
    with FakeIsicServer(4, seed=2, image_bytes=(150_000, 300_000), bandwidth=50e6) as srv:
        bucket = _RecordingBucket(50e6)
        srv.throttle = bucket  # frozen clock: the waits add up, nothing sleeps
        report = download_isic(tmp_path / "raw", isic_params(srv, concurrency=2))
        served = srv.bytes_served
    assert report["n_images"] == 4 and not report["failures"]
    assert image_files(tmp_path / "raw") == {f"{im.isic_id}.jpg": im.full for im in srv.images}
    # Every body byte (listing, files, licences) paid the one bucket, in chunks of at most THROTTLE_CHUNK.
    assert sum(bucket.sizes) == served and max(bucket.sizes) == THROTTLE_CHUNK
    assert max(bucket.clock.slept) == pytest.approx((served - bucket.burst) / bucket.rate)


def test_large_images_are_valid_jpegs_of_the_drawn_size() -> None:
    plain, padded = make_images(6, seed=4), make_images(6, seed=4, image_bytes=(100_000, 200_000))
    assert make_images(6, seed=4, image_bytes=(100_000, 200_000)) == padded  # deterministic
    for small, big in zip(plain, padded, strict=True):
        assert (small.isic_id, small.clinical, small.acquisition) == (
            big.isic_id,
            big.clinical,
            big.acquisition,
        )
        assert 100_000 <= len(big.full) <= 200_000
        assert len(zlib.compress(big.full)) > 0.99 * len(big.full)  # incompressible, like JPEG data
        with Image.open(io.BytesIO(big.full)) as img:
            assert img.format == "JPEG" and img.size == (
                big.acquisition["pixels_x"],
                big.acquisition["pixels_y"],
            )
            assert np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(small.full))))
    assert len({len(im.full) for im in padded}) == 6
