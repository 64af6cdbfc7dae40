"""Anonymous access to a public S3 bucket: where it is, listing it, downloading an object.

Why botocore and not boto3: boto3 is not installed here. ``dvc[s3]`` brings s3fs -> aiobotocore ->
botocore (pinned in constraints.txt), and a boto3 client *is* a botocore client, so botocore gives
the same ListObjectsV2 paginator, GetObject and retry modes without a new dependency. What boto3
would add is s3transfer's managed download; in its place ``download_object`` resumes a body that
breaks mid-way with a ``Range`` request pinned to the listed ETag (``If-Match``), the one thing
botocore's retries do not do (they cover the request, not the body).

Nothing here reads the environment or AWS config for what matters: requests are unsigned (no
credential lookup, so no instance-metadata call), the region and the retry policy are explicit,
``ignore_configured_endpoint_urls`` keeps ``AWS_ENDPOINT_URL`` from redirecting us, and checksums
are only computed/validated when an operation requires them (S3-compatible servers other than
AWS, such as SeaweedFS or the test fake, do not all send AWS's checksum headers).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    PaginationError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.session import Session

from melanoma import atomic
from melanoma.errors import DataError
from melanoma.urls import url_problem

DEFAULT_REGION = "us-east-1"  # the ISIC bucket's region; S3-compatible servers accept any
USER_AGENT_EXTRA = "melanoma-pipeline (challenge importer)"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3 bucket naming rules
# https://<bucket>.s3[.<region>|-<region>].amazonaws.com (virtual-hosted style)
_AWS_VHOST_RE = re.compile(
    r"^(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])\.s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com$"
)
# https://s3[.<region>].amazonaws.com/<bucket> (path style)
_AWS_PATH_RE = re.compile(r"^s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com$")
_BODY_ERRORS = (IncompleteReadError, ResponseStreamingError, ReadTimeoutError, ConnectionClosedError,
                EndpointConnectionError)  # fmt: skip


@dataclass(frozen=True)
class BucketAddress:
    """Where a bucket is: its name, the endpoint (None = AWS's own) and the region."""

    bucket: str
    endpoint_url: str | None
    region: str
    cache_name: str  # a relative folder name for downloads from it (host, plus the bucket if path style)


def parse_bucket_url(url: str) -> BucketAddress:
    """A bucket URL: ``https://<bucket>.s3.amazonaws.com`` (AWS) or ``http(s)://host[:port]/<bucket>``.

    Plain http is accepted only on loopback (a local S3-compatible server); DataError otherwise.
    """
    url = url.strip()
    if why := url_problem(url):
        raise DataError(f"ingest.challenge.bucket_url {url!r}: {why}")
    parts = urlsplit(url)
    host = parts.hostname or ""
    path = parts.path.strip("/")
    netloc = parts.netloc.replace(":", "_")
    if (m := _AWS_VHOST_RE.match(host)) and not path:
        return BucketAddress(m["bucket"], None, m["region"] or DEFAULT_REGION, netloc)
    if not path or "/" in path or not _BUCKET_RE.match(path):
        raise DataError(
            f"ingest.challenge.bucket_url {url!r}: name the bucket as https://<bucket>.s3.amazonaws.com "
            "or as the only path segment (http(s)://host[:port]/<bucket>)"
        )
    if m := _AWS_PATH_RE.match(host):
        return BucketAddress(path, None, m["region"] or DEFAULT_REGION, f"{netloc}/{path}")
    return BucketAddress(path, f"{parts.scheme}://{parts.netloc}", DEFAULT_REGION, f"{netloc}/{path}")


def make_client(address: BucketAddress, max_attempts: int = 8, read_timeout: float = 60.0) -> Any:
    """An anonymous botocore S3 client for ``address`` (path-style addressing on custom endpoints)."""
    config = Config(
        signature_version=UNSIGNED,  # public bucket: no credentials, so none are looked up
        region_name=address.region,
        defaults_mode="standard",  # "auto" would ask instance metadata for the region
        retries={"mode": "standard", "max_attempts": max_attempts},  # backoff with jitter on 5xx/429
        s3={"addressing_style": "path" if address.endpoint_url else "auto"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        ignore_configured_endpoint_urls=True,
        connect_timeout=10,
        read_timeout=read_timeout,
        user_agent_extra=USER_AGENT_EXTRA,
    )
    return Session().create_client(
        "s3", region_name=address.region, endpoint_url=address.endpoint_url, config=config
    )


def _client_error(exc: ClientError | BotoCoreError) -> str:
    """``Code: message`` of an S3 error response, or the botocore error text."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": ")
    return str(exc)


# ---------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class S3Object:
    """One ``Contents`` entry of a listing."""

    key: str
    size: int
    etag: str  # without quotes; a plain MD5 hex for single-part uploads, "<md5>-<parts>" otherwise

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name


def list_objects(client: Any, bucket: str, prefix: str, page_size: int = 1000) -> tuple[list[S3Object], int]:
    """All objects under ``prefix`` (ListObjectsV2, every page) and the number of pages read."""
    objects: list[S3Object] = []
    seen_tokens: set[str] = set()
    pages = 0
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
        ):
            pages += 1
            for entry in page.get("Contents", []):
                etag = str(entry.get("ETag", "")).strip().strip('"')
                objects.append(S3Object(key=entry["Key"], size=int(entry["Size"]), etag=etag))
            token = page.get("NextContinuationToken")
            # A server bug must neither end the listing early nor loop forever.
            if page.get("IsTruncated") and (not token or token in seen_tokens):
                raise DataError(
                    f"bucket listing of {bucket} is truncated but gives no new continuation token"
                )
            if token:
                seen_tokens.add(token)
    except PaginationError as exc:
        raise DataError(f"bucket listing of {bucket} does not advance: {exc}") from exc
    except (ClientError, BotoCoreError) as exc:
        raise DataError(
            f"cannot list bucket {bucket} (prefix {prefix!r}): {_client_error(exc)}. If the bucket does not "
            "allow listing, download the files by hand and import them with download: false"
        ) from exc
    return objects, pages


# --------------------------------------------------------------------------------------- download


def file_md5(path: Path) -> str:
    """MD5 hex of a file (the ETag of a single-part S3 upload)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_md5_etag(etag: str) -> bool:
    """Whether an ETag is the MD5 of the body (single-part upload), i.e. a free end-to-end check."""
    return re.fullmatch(r"[0-9a-f]{32}", etag) is not None


def _fetch_body(
    client: Any, bucket: str, obj: S3Object, out: Any, have: int, on_bytes: Callable[[int], Any]
) -> int:
    """Append the object's bytes from offset ``have`` to ``out``; returns the new offset."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": obj.key}
    if obj.etag:
        kwargs["IfMatch"] = f'"{obj.etag}"'  # the version that was listed, or 412: never mix two
    if have:
        kwargs["Range"] = f"bytes={have}-"
    response = client.get_object(**kwargs)
    if have and response["ResponseMetadata"]["HTTPStatusCode"] != 206:  # Range ignored: start over
        out.seek(0)
        out.truncate()
        have = 0
    body = response["Body"]
    try:
        for chunk in body.iter_chunks(1 << 20):
            out.write(chunk)
            have += len(chunk)
            on_bytes(len(chunk))
    finally:
        body.close()
    return have


def download_object(
    client: Any,
    bucket: str,
    obj: S3Object,
    dest: Path,
    on_bytes: Callable[[int], Any] = lambda n: None,
    resumes: int = 5,
) -> None:
    """Download ``obj`` to ``dest`` atomically: exact size, and MD5 when the ETag is one; DataError if not.

    A body that breaks off is resumed where it stopped, up to ``resumes`` times.
    """
    with atomic.atomic_path(dest) as tmp, open(tmp, "wb") as out:
        have = 0
        for attempt in range(resumes + 1):
            try:
                have = _fetch_body(client, bucket, obj, out, have, on_bytes)
                break
            except _BODY_ERRORS as exc:
                out.flush()
                have = out.tell()  # what really reached the file
                if attempt == resumes:
                    raise DataError(f"download of {obj.key} broke off {attempt + 1} times: {exc}") from exc
            except ClientError as exc:
                raise DataError(f"download of {obj.key} failed: {_client_error(exc)}") from exc
            except BotoCoreError as exc:
                raise DataError(f"download of {obj.key} failed: {exc}") from exc
        out.flush()
        if have != obj.size:
            raise DataError(f"download of {obj.key}: got {have} bytes, the listing says {obj.size}")
        if is_md5_etag(obj.etag) and file_md5(tmp) != obj.etag:
            raise DataError(
                f"download of {obj.key}: MD5 differs from the bucket's ETag {obj.etag}; rerun to fetch it again"
            )
