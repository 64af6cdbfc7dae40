"""sources/s3.py: bucket URLs, the anonymous botocore client, listing (pagination, broken servers) and
downloads (resume, size, MD5, changed objects) against a fake S3 bucket on 127.0.0.1."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from botocore import UNSIGNED

from fakes.s3_bucket import FakeS3Bucket
from melanoma.errors import DataError
from melanoma.sources.s3 import (
    BucketAddress,
    S3Object,
    download_object,
    list_objects,
    make_client,
    parse_bucket_url,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://isic-archive.s3.amazonaws.com",
         BucketAddress("isic-archive", None, "us-east-1", "isic-archive.s3.amazonaws.com")),
        ("https://my.bucket.s3.eu-west-1.amazonaws.com/",
         BucketAddress("my.bucket", None, "eu-west-1", "my.bucket.s3.eu-west-1.amazonaws.com")),
        ("https://s3.us-west-2.amazonaws.com/isic-archive",
         BucketAddress("isic-archive", None, "us-west-2", "s3.us-west-2.amazonaws.com/isic-archive")),
        ("http://127.0.0.1:8333/isic-archive",
         BucketAddress("isic-archive", "http://127.0.0.1:8333", "us-east-1", "127.0.0.1_8333/isic-archive")),
        ("https://minio.example.org/data-2020/",
         BucketAddress("data-2020", "https://minio.example.org", "us-east-1", "minio.example.org/data-2020")),
    ],
)  # fmt: skip
def test_parse_bucket_url(url: str, expected: BucketAddress) -> None:
    assert parse_bucket_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/bucket", r"must use https \(plain http only on loopback"),
        ("ftp://127.0.0.1/bucket", r"must be an http\(s\) URL"),
        ("https://example.com", "name the bucket"),
        ("https://example.com/a/b", "name the bucket"),
        ("https://example.com/../x", "name the bucket"),
        ("https://example.com/UPPER", "name the bucket"),
    ],
)
def test_parse_bucket_url_refuses(url: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_bucket_url(url)


def test_client_is_anonymous_with_explicit_region_and_checksums_when_required() -> None:
    client = make_client(parse_bucket_url("http://127.0.0.1:9/isic-archive"))
    try:
        config = client.meta.config
        assert config.signature_version is UNSIGNED  # no credential lookup, no instance metadata
        assert client.meta.region_name == "us-east-1"
        assert config.s3["addressing_style"] == "path"
        assert config.request_checksum_calculation == "when_required"
        assert config.response_checksum_validation == "when_required"
        assert client.meta.endpoint_url == "http://127.0.0.1:9"
    finally:
        client.close()


def test_client_ignores_the_aws_environment(
    monkeypatch: pytest.MonkeyPatch, foreign_hosts: list[str]
) -> None:
    """What the environment says about endpoints, defaults mode and region changes nothing."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.0.0.1:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://10.0.0.1:9000")
    monkeypatch.setenv("AWS_DEFAULTS_MODE", "auto")  # "auto" would ask instance metadata for the region
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    client = make_client(parse_bucket_url("https://isic-archive.s3.amazonaws.com"))
    try:
        assert client.meta.region_name == "us-east-1"
        assert "10.0.0.1" not in client.meta.endpoint_url and "amazonaws.com" in client.meta.endpoint_url
    finally:
        client.close()
    assert foreign_hosts == []


@pytest.fixture
def bucket() -> FakeS3Bucket:
    objects = {f"challenges/2020/file_{i:02d}.bin": bytes(i + 1) for i in range(7)}
    objects["challenges/2020/odd name+ü&.csv"] = b"needs URL encoding in the listing"
    objects["challenges/2019/other.csv"] = b"x"
    objects["zzz/outside.csv"] = b"y"
    with FakeS3Bucket(objects) as srv:
        yield srv


def _client(bucket: FakeS3Bucket):
    return make_client(parse_bucket_url(bucket.url))


def test_list_objects_follows_continuation_tokens(bucket: FakeS3Bucket, foreign_hosts: list[str]) -> None:
    client = _client(bucket)
    found, pages = list_objects(client, bucket.name, "challenges/2020/", page_size=2)
    assert pages == 4 and len(bucket.list_calls) == 4
    expected = sorted((k for k in bucket.objects if k.startswith("challenges/2020/")), key=str.encode)
    assert [o.key for o in found] == expected  # keys decoded exactly, special characters included
    assert [o.size for o in found] == [len(bucket.objects[k]) for k in expected]
    assert all(o.etag == bucket.etag(o.key) for o in found)
    assert "continuation-token" not in bucket.list_calls[0]
    assert all("continuation-token" in call and call["max-keys"] == "2" for call in bucket.list_calls[1:])
    assert all(
        call["encoding-type"] == "url" and call["prefix"] == "challenges/2020/" for call in bucket.list_calls
    )
    assert foreign_hosts == []


def test_list_objects_errors_are_data_errors(bucket: FakeS3Bucket) -> None:
    client = make_client(parse_bucket_url(bucket.url), max_attempts=1)  # broken XML would be retried
    bucket.deny_listing = True
    with pytest.raises(DataError, match=r"AccessDenied.*download the files by hand"):
        list_objects(client, bucket.name, "challenges/")
    bucket.deny_listing = False
    with pytest.raises(DataError, match="NoSuchBucket"):
        list_objects(client, "other-bucket", "challenges/")
    bucket.garbage_listing = True
    with pytest.raises(DataError, match="cannot list bucket isic-archive"):
        list_objects(client, bucket.name, "challenges/")
    bucket.garbage_listing = False
    bucket.loop_token = True  # a broken server that repeats its continuation token forever
    before = len(bucket.list_calls)
    with pytest.raises(DataError, match="no new continuation token|does not advance"):
        list_objects(client, bucket.name, "challenges/", page_size=1)
    assert len(bucket.list_calls) - before == 2


def _obj(bucket: FakeS3Bucket, key: str) -> S3Object:
    return S3Object(key=key, size=len(bucket.objects[key]), etag=bucket.etag(key))


def test_download_resumes_a_broken_body(bucket: FakeS3Bucket, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4000  # ~1 MB
    bucket.put("big.zip", data)
    bucket.break_after["big.zip"] = 300_000
    seen: list[int] = []
    download_object(_client(bucket), bucket.name, _obj(bucket, "big.zip"), tmp_path / "big.zip", seen.append)
    assert (tmp_path / "big.zip").read_bytes() == data
    assert bucket.gets["big.zip"] == 2 and bucket.ranges == ["bytes=300000-"]
    assert sum(seen) == len(data)
    assert list(tmp_path.iterdir()) == [tmp_path / "big.zip"]  # no temp file left behind


def test_download_checks_md5_size_and_version(bucket: FakeS3Bucket, tmp_path: Path) -> None:
    client = _client(bucket)
    key = "challenges/2020/file_06.bin"
    obj = _obj(bucket, key)
    bucket.corrupt.add(key)  # same length, other bytes: only the ETag's MD5 sees it
    with pytest.raises(DataError, match="MD5 differs"):
        download_object(client, bucket.name, obj, tmp_path / "a.bin")
    assert not list(tmp_path.iterdir())  # nothing half-written under any name
    bucket.corrupt.clear()
    bucket.put(key, b"changed on the bucket since the listing")
    with pytest.raises(DataError, match="PreconditionFailed"):
        download_object(client, bucket.name, obj, tmp_path / "a.bin")
    with pytest.raises(DataError, match="the listing says 99"):
        download_object(client, bucket.name, S3Object(key, 99, ""), tmp_path / "a.bin")
    with pytest.raises(DataError, match="NoSuchKey"):
        download_object(client, bucket.name, S3Object("nope.bin", 1, ""), tmp_path / "a.bin")
    assert not list(tmp_path.iterdir())


def test_download_multipart_etag_and_too_many_breaks(bucket: FakeS3Bucket, tmp_path: Path) -> None:
    client = _client(bucket)
    bucket.put("multi.zip", b"m" * 5000, multipart=True)  # ETag "<md5>-2": not an MD5 of the body
    obj = _obj(bucket, "multi.zip")
    assert obj.etag.endswith("-2")
    download_object(client, bucket.name, obj, tmp_path / "multi.zip")
    assert (
        hashlib.sha256((tmp_path / "multi.zip").read_bytes()).digest() == hashlib.sha256(b"m" * 5000).digest()
    )

    class Breaks(dict):  # every GET of the key breaks after 10 bytes
        def pop(self, key, default=None):
            return 10 if key == "multi.zip" else default

    bucket.break_after = Breaks()
    with pytest.raises(DataError, match="broke off 3 times"):
        download_object(client, bucket.name, obj, tmp_path / "again.zip", resumes=2)
    assert not (tmp_path / "again.zip").exists()
