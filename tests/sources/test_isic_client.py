"""The ISIC API v2 client (``melanoma.sources.isic.client``) against the fake ISIC server (tests/fakes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from isic_helpers import api_for, isic_params, visible_ids

from fakes.isic_server import LICENSES, FakeIsicServer, parse_query
from melanoma.errors import ConfigError, DataError
from melanoma.sources.isic import IsicApi, download_isic, file_suffix, validate_query
from melanoma.sources.isic.client import search_params

pytestmark = pytest.mark.usefixtures("foreign_hosts")  # loopback only, see conftest.py


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
        big_server.reset_counters()
        assert [len(p) for p in api.iter_pages(limit=200)] == [100, 100]
        assert big_server.requests["search"] == 2  # no third request once the limit is reached


def test_query_reaches_the_server_intact_on_every_page(big_server: FakeIsicServer) -> None:
    # '&', '+', '=', '#', quotes and spaces: isic-cli's hand-built URL would break this query.
    query = '-diagnosis_3:"A & B + C=D #1" AND -sex:"x y"'
    big_server.reset_counters()
    with api_for(big_server) as api:
        assert len(list(api.iter_images(query))) == 250
    assert big_server.queries == [query, query, query]


def test_search_params() -> None:
    assert search_params("", ()) == {}
    assert search_params("sex:male", (70, 3), 500) == {
        "query": "sex:male",
        "collections": "70,3",
        "limit": 100,
    }
    with pytest.raises(ConfigError, match="non-negative integers"):
        search_params("", (-1,))


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


def test_license_text_and_suffixes(server: FakeIsicServer) -> None:
    with api_for(server) as api:
        assert api.license_text("CC-BY") == LICENSES["CC-BY"]
    assert file_suffix("https://h/images/ISIC_0000000.JPG") == ".jpg"
    assert file_suffix("https://h/images/ISIC_0000000") == ".jpg"
    assert file_suffix("https://h/tiles/ISIC_0000000.png?sig=1.exe") == ".png"
    assert file_suffix("https://h/images/ISIC_0000000.exe") is None
    with pytest.raises(ConfigError, match="https"):
        IsicApi("http://api.isic-archive.com/api/v2/")
