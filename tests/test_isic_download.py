"""The ISIC downloader against a real local HTTP server speaking the ISIC API v2 (tests/fakes).

Nothing here reaches beyond 127.0.0.1: an autouse fixture refuses (and records) any name lookup
or connection to another host, which also proves that a redirect to a foreign host is rejected
before anything connects to it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from fakes.isic_server import LICENSES, FakeIsicServer, parse_query
from melanoma.cli import main as cli_main
from melanoma.config import IsicParams, Params
from melanoma.errors import ConfigError, DataError
from melanoma.sources import http as mhttp
from melanoma.sources.isic import IsicApi, download_isic, file_suffix, validate_query

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
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
    "n_removed_stale",
    "failures",
    "retries",
    "seconds",
}


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def foreign_hosts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse and record every lookup of a non-loopback host (tests must stay on 127.0.0.1)."""
    attempts: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in LOOPBACK:
            attempts.append(name)
            raise OSError(f"test guard: refusing to resolve {name}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return attempts


@pytest.fixture
def server() -> Iterator[FakeIsicServer]:
    with FakeIsicServer(30) as srv:
        yield srv


@pytest.fixture(scope="module")
def big_server() -> Iterator[FakeIsicServer]:
    """250 images: three pages of the default size (read-only tests only)."""
    with FakeIsicServer(250, seed=1) as srv:
        yield srv


def isic_params(srv: FakeIsicServer, **overrides: Any) -> IsicParams:
    base: dict[str, Any] = {
        "base_url": srv.base_url,
        "concurrency": 4,
        "retries": 3,
        "backoff_seconds": 0.01,
        "max_backoff_seconds": 0.05,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
    }
    base.update(overrides)
    return IsicParams(**base)


def api_for(srv: FakeIsicServer, **overrides: Any) -> IsicApi:
    p = isic_params(srv, **overrides)
    policy = mhttp.RetryPolicy(retries=p.retries, backoff_seconds=p.backoff_seconds, max_backoff_seconds=0.05)
    return IsicApi(p.base_url, policy, p.allowed_hosts)


def visible_ids(srv: FakeIsicServer) -> list[str]:
    return sorted(im.isic_id for im in srv.images if im.public)


def image_files(raw: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((raw / "images").iterdir())}


def read_report(raw: Path) -> dict[str, Any]:
    return json.loads((raw / "ingest_report.json").read_text(encoding="utf-8"))


def expected_metadata_csv(images: list[dict[str, Any]]) -> str:
    """isic-cli's metadata.csv, written independently of melanoma.ingest.layout."""
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


# ------------------------------------------------------------------------------------------- protocol


def test_fake_speaks_the_protocol(big_server: FakeIsicServer) -> None:
    base = big_server.base_url
    first = requests.get(base + "images/search/", params={"limit": 0}, timeout=5).json()
    assert set(first) == {"results", "count", "next", "previous"}
    assert len(first["results"]) == 100 and first["count"] == 250 and first["previous"] is None
    assert first["next"].startswith(base + "images/search/?cursor=")
    second = requests.get(first["next"], timeout=5).json()
    assert second["count"] is None and len(second["results"]) == 100
    assert (
        requests.get(base + "images/search/", params={"limit": 500}, timeout=5).json()["results"].__len__()
        == 100
    )
    # Absent, never null: no metadata value is None.
    for im in first["results"]:
        for section in im["metadata"].values():
            assert None not in section.values()
    bad = requests.get(base + "images/search/", params={"cursor": "not-a-cursor"}, timeout=5)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "cursor"]
    assert bad.json()["detail"][0]["msg"] == "Value error, Invalid cursor."
    parse = requests.get(base + "images/search/", params={"query": "diagnosis:melanoma"}, timeout=5)
    assert parse.status_code == 400 and parse.json() == {"message": "Could not parse search query."}
    size = requests.get(base + "images/search/size/", timeout=5).json()["size"]
    assert size == sum(len(im.full) for im in big_server.images)
    im = first["results"][0]
    body = requests.get(im["files"]["full"]["url"], timeout=5).content
    assert len(body) == im["files"]["full"]["size"]
    assert requests.get(base + "collections/999/", timeout=5).status_code == 404
    assert requests.get(base + "zip-download/license-file/CC-BY/", timeout=5).text == LICENSES["CC-BY"]


def test_fake_dsl_subset() -> None:
    values = {"diagnosis_3": "Melanoma Invasive", "age_approx": 45, "sex": "male", "melanocytic": True}
    assert parse_query('diagnosis_3:"Melanoma Invasive" AND age_approx:[40 TO 50]')(values)
    assert parse_query("diagnosis_3:Melanoma* sex:male")(values)
    assert not parse_query("age_approx:{45 TO 50}")(values)
    assert parse_query("sex:female OR (melanocytic:true AND -diagnosis_1:*)")(values)
    with pytest.raises(Exception, match="benign_malignant"):
        parse_query("benign_malignant:malignant")


def test_pagination_lists_everything_and_ignores_null_count(big_server: FakeIsicServer) -> None:
    big_server.reset_counters()
    with api_for(big_server) as api:
        ids = [im["isic_id"] for im in api.iter_images()]
    assert sorted(ids) == visible_ids(big_server) and len(set(ids)) == 250
    assert big_server.requests["search"] == 3  # 100 + 100 + 50; count is null on pages 2 and 3
    assert all(ua.startswith("melanoma/") for ua in big_server.user_agents)
    assert set(big_server.accepts) == {"application/json"}


def test_pagination_with_limit(big_server: FakeIsicServer) -> None:
    with api_for(big_server) as api:
        big_server.reset_counters()
        assert len(list(api.iter_images(limit=150))) == 150
        assert big_server.requests["search"] == 2
        big_server.reset_counters()
        assert len(list(api.iter_images(limit=5))) == 5
        assert big_server.requests["search"] == 1 and "limit=5" in big_server.paths[0]


def test_query_reaches_the_server_intact_on_every_page(big_server: FakeIsicServer) -> None:
    # '&', '+', '=', '#', quotes and spaces: isic-cli's hand-built URL would break this query.
    query = '-diagnosis_3:"A & B + C=D #1" AND -sex:"x y"'
    big_server.reset_counters()
    with api_for(big_server) as api:
        assert len(list(api.iter_images(query))) == 250
    assert big_server.queries == [query, query, query]


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


def test_parse_error_carries_the_server_message(server: FakeIsicServer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"HTTP 400: Could not parse search query\."):
        download_isic(tmp_path, isic_params(server, query="benign_malignant:malignant"))
    assert server.file_requests.total() == 0


def test_diagnosis_query_rejected_client_side(server: FakeIsicServer, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="diagnosis_1"):
        download_isic(tmp_path, isic_params(server, query='diagnosis:"melanoma" AND sex:male'))
    assert server.requests.total() == 0
    validate_query('diagnosis_3:"Melanoma Invasive"')  # the current fields are fine
    validate_query("-diagnosis_1:Benign")


def test_collections(server: FakeIsicServer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="collection 12345 does not exist or is not public"):
        download_isic(tmp_path / "a", isic_params(server, collections=(70, 12345)))
    with pytest.raises(DataError, match="collection 999"):  # private: invisible to anonymous callers
        download_isic(tmp_path / "a", isic_params(server, collections=(999,)))
    report = download_isic(tmp_path / "b", isic_params(server, collections=(70,)))
    assert report["n_images"] == len(server.collections[70]["ids"]) == 15
    assert any("collections=70" in p for p in server.paths)


def test_listing_errors_after_retries(server: FakeIsicServer, tmp_path: Path) -> None:
    server.inject("search", "503", times=None)
    with pytest.raises(DataError, match="HTTP 503") as info:
        download_isic(tmp_path, isic_params(server, retries=2))
    assert "after 3 attempts" in str(info.value)
    assert server.requests["search"] == 3


def test_bad_cursor_is_an_http_error_with_the_message(server: FakeIsicServer) -> None:
    session = mhttp.make_session("melanoma/test")
    with pytest.raises(mhttp.HttpError, match="Invalid cursor") as info:
        mhttp.get_json(session, server.base_url + "images/search/", {"cursor": "not-a-cursor"})
    assert info.value.status == 422


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


def test_retry_after_http_date_and_backoff() -> None:
    now = 1_700_000_000.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 7))
    assert mhttp.parse_retry_after(date, now=now) == pytest.approx(7)
    assert mhttp.parse_retry_after("3") == 3.0
    assert mhttp.parse_retry_after("soon") is None and mhttp.parse_retry_after(None) is None
    policy = mhttp.RetryPolicy(backoff_seconds=1, max_backoff_seconds=5)
    rng = policy.rng("u")
    delays = [policy.backoff(n, rng) for n in range(1, 8)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2 and all(d <= 5 for d in delays)


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


def test_persistent_size_mismatch_is_recorded(server: FakeIsicServer, tmp_path: Path) -> None:
    ids = visible_ids(server)
    server.inject(ids[0], "wrong_size", times=None, delta=5)  # the listing lies about the size
    server.inject(ids[1], "size_mismatch", times=None)  # the file server sends extra bytes
    report = download_isic(tmp_path, isic_params(server, retries=2))
    by_id = {f["isic_id"]: f for f in report["failures"]}
    assert set(by_id) == {ids[0], ids[1]}
    assert "got" in by_id[ids[0]]["reason"] and "expected" in by_id[ids[0]]["reason"]
    assert by_id[ids[0]]["attempts"] == 3 and by_id[ids[0]]["url"].endswith(f"{ids[0]}.jpg")
    assert report["n_images"] == 28 and report["n_failed"] == 2
    assert not (tmp_path / "images" / f"{ids[0]}.jpg").exists()
    meta = (tmp_path / "metadata.csv").read_text(encoding="utf-8")
    assert ids[0] not in meta and ids[1] not in meta and ids[2] in meta


def test_slow_responses(server: FakeIsicServer, tmp_path: Path) -> None:
    ids = visible_ids(server)
    server.inject(ids[0], "slow", seconds=1.0)  # once: the retry gets a fast answer
    server.inject(ids[1], "slow", times=None, seconds=1.0)  # always beyond the read timeout
    report = download_isic(tmp_path, isic_params(server, read_timeout=0.3, retries=1))
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


def test_url_guard_and_suffixes() -> None:
    guard = mhttp.UrlGuard(frozenset({"isic-archive.s3.amazonaws.com"}))
    assert guard("https://isic-archive.s3.amazonaws.com/images/ISIC_0000000.jpg") is None
    assert guard("https://ISIC-ARCHIVE.s3.amazonaws.com/images/a.jpg") is None
    assert "https only" in (guard("http://isic-archive.s3.amazonaws.com/a.jpg") or "")
    assert "not in the allowed hosts" in (guard("https://isic-archive.s3.amazonaws.com.evil.com/a") or "")
    assert guard("https://isic-archive.s3.amazonaws.com@evil.com/a.jpg") is not None
    assert guard("http://127.0.0.1:8000/a.jpg") is not None
    assert mhttp.UrlGuard(frozenset(), allow_loopback_http=True)("http://127.0.0.1:8000/a.jpg") is None
    assert file_suffix("https://h/images/ISIC_0000000.JPG") == ".jpg"
    assert file_suffix("https://h/images/ISIC_0000000") == ".jpg"
    assert file_suffix("https://h/tiles/ISIC_0000000.png?sig=1.exe") == ".png"
    assert file_suffix("https://h/images/ISIC_0000000.exe") is None
    with pytest.raises(ConfigError, match="https"):
        IsicApi("http://api.isic-archive.com/api/v2/")


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

    assert set(report) >= REPORT_KEYS and read_report(tmp_path) == report
    assert report["source"] == "isic" and report["base_url"] == server.base_url
    assert report["n_images"] == report["n_listed"] == report["n_downloaded"] == 30
    assert report["bytes_downloaded"] == sum(len(im.full) for im in server.images)
    assert report["license_fallbacks"] == {} and report["retries"] == {}
    for name, data in image_files(tmp_path).items():
        assert data == server.by_id[name[:-4]].full


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
    assert report["n_removed_stale"] == 2 and report["n_removed_partial"] == 1
    assert sorted(server.file_requests) == sorted(ids[:3])
    assert image_files(tmp_path) == {f"{i}.jpg": server.by_id[i].full for i in ids}


def test_smaller_limit_shrinks_the_folder(server: FakeIsicServer, tmp_path: Path) -> None:
    download_isic(tmp_path, isic_params(server))
    server.reset_counters()
    report = download_isic(tmp_path, isic_params(server, limit=10))
    assert report["n_images"] == 10 and report["n_removed_stale"] == 20
    assert len(image_files(tmp_path)) == 10 and server.file_bytes == 0
    assert len((tmp_path / "metadata.csv").read_text().splitlines()) == 11


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


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "ingest_report.json"
    }


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    n = 48
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with FakeIsicServer(n, seed=3) as srv:
        params = write_params(tmp_path / "params.yaml", srv)
        killed = tmp_path / "killed" / "raw"
        srv.latency = 0.1  # ~1.2 s of downloads at concurrency 4: time to kill it half way
        with open(tmp_path / "killed.log", "wb") as log:
            proc = subprocess.Popen(_cli(params, killed), cwd=tmp_path, stdout=log, stderr=log, env=env)
            deadline = time.monotonic() + 60
            try:
                while True:
                    on_disk = (
                        [p for p in (killed / "images").glob("ISIC_*")]
                        if (killed / "images").is_dir()
                        else []
                    )
                    if len(on_disk) >= n // 2:
                        break
                    assert proc.poll() is None, "the download finished before it could be killed"
                    assert time.monotonic() < deadline, "the download did not progress"
                    time.sleep(0.005)
            finally:
                proc.kill()
                proc.wait()
        # Right after SIGKILL: every file under a final name is complete; no metadata yet.
        at_kill = sorted((killed / "images").glob("ISIC_*"))
        assert n // 2 <= len(at_kill) < n
        for p in at_kill:
            assert p.read_bytes() == srv.by_id[p.stem].full
        assert not (killed / "metadata.csv").exists()

        srv.latency = 0.0
        resumed = subprocess.run(_cli(params, killed), cwd=tmp_path, capture_output=True, env=env, timeout=60)
        assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
        report = read_report(killed)
        assert report["n_skipped_complete"] >= len(at_kill) and report["n_images"] == n

        fresh = tmp_path / "fresh" / "raw"
        clean = subprocess.run(_cli(params, fresh), cwd=tmp_path, capture_output=True, env=env, timeout=60)
        assert clean.returncode == 0, clean.stderr.decode()[-2000:]

    a, b = _tree(killed), _tree(fresh)
    assert a == b
    assert len([k for k in a if k.startswith("images/")]) == n
    assert not [k for k in a if Path(k).name.startswith(".")]
    assert {"metadata.csv", "attribution.txt"} <= set(a) and any(k.startswith("licenses/") for k in a)
