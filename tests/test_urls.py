"""The one URL rule (https, or plain http only on loopback), and that every place that checks a URL
applies it: the params schema, the ISIC client, the bucket addresses of the challenge importer and the
HTTP guard."""

import re

import pytest

from melanoma.config import IsicParams
from melanoma.errors import ConfigError, DataError
from melanoma.sources.http import UrlGuard
from melanoma.sources.isic.client import normalise_base_url
from melanoma.sources.s3 import parse_bucket_url
from melanoma.urls import is_loopback_http, url_problem

# (url, accepted): each URL names a bucket path so that the S3 parser sees a complete address.
CASES = [
    ("https://example.org/bucket", True),
    ("http://127.0.0.1:9000/bucket", True),
    ("http://localhost/bucket", True),
    ("http://[::1]:8123/bucket", True),
    ("HTTP://LOCALHOST/bucket", True),  # scheme and host are case-insensitive
    ("http://example.org/bucket", False),
    ("http://127.0.0.2/bucket", False),  # loopback means these three names, not the whole 127/8
    ("ftp://127.0.0.1/bucket", False),
    ("example.org/bucket", False),
    ("http://[::1/bucket", False),  # unparsable: refused, never a ValueError
]


@pytest.mark.parametrize(("url", "accepted"), CASES)
def test_the_rule(url: str, accepted: bool) -> None:
    problem = url_problem(url)
    assert (problem is None) is accepted
    if not accepted:
        assert problem in (
            "must be an http(s) URL",
            "must use https (plain http only on loopback: 127.0.0.1, localhost, ::1)",
        )


@pytest.mark.parametrize(("url", "accepted"), CASES)
def test_every_checker_applies_it(url: str, accepted: bool) -> None:
    problem = url_problem(url)
    if accepted:
        IsicParams(base_url=url)
        parse_bucket_url(url)
        assert normalise_base_url(url) == url + "/"
    else:
        with pytest.raises(ConfigError, match=re.escape(f"base_url: {problem} (got {url!r})")):
            IsicParams(base_url=url)
        with pytest.raises(ConfigError, match=re.escape(f"base_url {url!r}: {problem}")):
            normalise_base_url(url)
        with pytest.raises(DataError, match=re.escape(f"{url!r}: {problem}")):
            parse_bucket_url(url)
    # The guard admits https only on its allowed hosts, and loopback when the caller's API is local.
    guard = UrlGuard(frozenset({"example.org"}), allow_loopback_http=True)
    assert (guard(url) is None) is accepted


def test_is_loopback_http() -> None:
    assert is_loopback_http("http://127.0.0.1:5000/api") and is_loopback_http("https://localhost/")
    assert not is_loopback_http("http://example.org/") and not is_loopback_http("ftp://127.0.0.1/")
    assert not is_loopback_http("http://[::1/")
