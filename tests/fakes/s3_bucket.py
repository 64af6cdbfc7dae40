"""A fake public S3 bucket on 127.0.0.1 that answers what botocore sends (path-style addressing).

``GET /<bucket>?list-type=2&prefix=P&max-keys=N&continuation-token=T[&encoding-type=url]`` answers
a ``ListBucketResult`` in the ``http://s3.amazonaws.com/doc/2006-03-01/`` namespace (keys in byte
order, ``KeyCount``, ``MaxKeys``, ``IsTruncated``, an opaque ``NextContinuationToken``; ``max-keys``
capped at ``page_max``, 1000 like S3; with ``encoding-type=url`` keys and prefix URL-encoded as S3
does). ``GET``/``HEAD /<bucket>/<key>`` serve the bytes with ``Content-Length``, ``Accept-Ranges``
and a quoted MD5 ``ETag`` (``<md5>-2`` for objects put with ``multipart=True``); ``Range:
bytes=a-[b]`` gives 206 with ``Content-Range``; ``If-Match`` with another ETag gives 412. Errors
are S3's XML: ``NoSuchKey`` / ``NoSuchBucket`` 404, ``InvalidArgument`` 400, ``AccessDenied`` 403.

Knobs: ``corrupt`` (keys served with the same length but flipped bytes, for checksum checks),
``break_after`` ({key: n}: the next GET of the key sends all headers but only n body bytes, then
closes the connection), ``deny_listing`` (listings answer AccessDenied), ``garbage_listing``
(listings answer 200 with broken XML), ``loop_token`` (every
page says it is truncated and repeats one continuation token: a broken server).
Counters: ``gets`` (Counter of object keys fetched), ``list_calls`` (the query of every listing),
``ranges`` (the Range header of every ranged GET).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

from fakes import LoopbackHTTPServer

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
LAST_MODIFIED = "2020-08-18T12:00:00.000Z"


def _x(text: str) -> str:
    return escape(text, {'"': "&quot;"})


class FakeS3Bucket(LoopbackHTTPServer):
    """A bucket of in-memory objects served over real HTTP; use as a context manager."""

    thread_name = "fake-s3"

    def __init__(
        self, objects: dict[str, bytes] | None = None, name: str = "isic-archive", page_max: int = 1000
    ):
        self.name = name
        self.page_max = page_max
        self.objects: dict[str, bytes] = {}
        self.multipart: set[str] = set()
        self.corrupt: set[str] = set()
        self.break_after: dict[str, int] = {}
        self.deny_listing = False
        self.garbage_listing = False
        self.loop_token = False
        self.gets: Counter[str] = Counter()
        self.list_calls: list[dict[str, str]] = []
        self.ranges: list[str] = []
        self._lock = threading.Lock()
        super().__init__()
        for key, data in (objects or {}).items():
            self.put(key, data)

    # ------------------------------------------------------------------------------------ objects

    def put(self, key: str, data: bytes, multipart: bool = False) -> None:
        with self._lock:
            self.objects[key] = data
            if multipart:
                self.multipart.add(key)
            else:
                self.multipart.discard(key)

    def etag(self, key: str) -> str:
        md5 = hashlib.md5(self.objects[key]).hexdigest()
        return f"{md5}-2" if key in self.multipart else md5

    @property
    def url(self) -> str:
        """The bucket URL, path style: ``http://127.0.0.1:<port>/<bucket>``."""
        return f"{self.origin}/{self.name}"

    # ----------------------------------------------------------------------------------- handlers

    def _send(
        self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, headers: dict | None = None
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str, resource: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{_x(code)}</Code><Message>{_x(message)}</Message>"
            f"<Resource>{_x(resource)}</Resource><RequestId>FAKE</RequestId></Error>"
        ).encode()
        self._send(h, status, body, "application/xml")

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        bucket, _, raw_key = parts.path.lstrip("/").partition("/")
        if unquote(bucket) != self.name:
            self._error(h, 404, "NoSuchBucket", "The specified bucket does not exist", unquote(bucket))
            return
        if not raw_key:
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            self._list(h, query)
            return
        self._object(h, unquote(raw_key))

    def _object(self, h: BaseHTTPRequestHandler, key: str) -> None:
        with self._lock:
            data = self.objects.get(key)
            if h.command == "GET":
                self.gets[key] += 1
            cut = self.break_after.pop(key, None) if h.command == "GET" else None
        if data is None:
            self._error(h, 404, "NoSuchKey", "The specified key does not exist.", key)
            return
        etag = self.etag(key)
        want = h.headers.get("If-Match")
        if want is not None and want.strip().strip('"') != etag:
            self._error(
                h,
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
                key,
            )
            return
        if key in self.corrupt:
            data = bytes(b ^ 0xFF for b in data)
        headers = {
            "ETag": f'"{etag}"',
            "Last-Modified": "Tue, 18 Aug 2020 12:00:00 GMT",
            "Accept-Ranges": "bytes",
        }
        status, total = 200, len(data)
        if (rng := h.headers.get("Range")) is not None:
            self.ranges.append(rng)
            first_s, _, last_s = rng.removeprefix("bytes=").partition("-")
            first, last = int(first_s), int(last_s) if last_s else total - 1
            data, status = data[first : last + 1], 206
            headers["Content-Range"] = f"bytes {first}-{first + len(data) - 1}/{total}"
        if cut is None:
            self._send(h, status, data, "application/octet-stream", headers)
            return
        h.send_response(status)  # all headers, a part of the body, then the connection closes
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data[:cut])
        h.wfile.flush()
        h.close_connection = True

    def _list(self, h: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        with self._lock:
            self.list_calls.append(query)
            keys = sorted(self.objects, key=lambda k: k.encode("utf-8"))
        if self.deny_listing:
            self._error(h, 403, "AccessDenied", "Access Denied", f"/{self.name}")
            return
        if self.garbage_listing:
            self._send(h, 200, b"<ListBucketResult", "application/xml")
            return
        if query.get("list-type") != "2":
            self._error(h, 400, "InvalidArgument", "this fake bucket answers ListObjectsV2 only", "/")
            return
        prefix = query.get("prefix", "")
        try:
            max_keys = min(int(query.get("max-keys", "1000")), self.page_max)
        except ValueError:
            self._error(
                h, 400, "InvalidArgument", "Provided max-keys not an integer or within integer range", "/"
            )
            return
        token = query.get("continuation-token")
        after = ""
        if token is not None:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                self._error(h, 400, "InvalidArgument", "The continuation token provided is incorrect", "/")
                return
        matching = [k for k in keys if k.startswith(prefix) and k.encode() > after.encode()]
        page, rest = matching[:max_keys], matching[max_keys:]
        next_token = base64.urlsafe_b64encode(page[-1].encode("utf-8")).decode() if rest else None
        if self.loop_token:
            page, next_token = page[:1], "bG9vcA=="
        self._send(h, 200, self._listing_xml(query, prefix, max_keys, page, next_token), "application/xml")

    def _listing_xml(
        self, query: dict[str, str], prefix: str, max_keys: int, page: list[str], next_token: str | None
    ) -> bytes:
        encode = query.get("encoding-type") == "url"

        def enc(text: str) -> str:
            return _x(quote(text, safe="/") if encode else text)

        lines = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<ListBucketResult xmlns="{S3_NS}">',
            f"<Name>{_x(self.name)}</Name><Prefix>{enc(prefix)}</Prefix>",
            f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
        ]
        if encode:
            lines.append("<EncodingType>url</EncodingType>")
        if "continuation-token" in query:
            lines.append(f"<ContinuationToken>{_x(query['continuation-token'])}</ContinuationToken>")
        lines.append(f"<IsTruncated>{'true' if next_token else 'false'}</IsTruncated>")
        for key in page:
            lines.append(
                f"<Contents><Key>{enc(key)}</Key><LastModified>{LAST_MODIFIED}</LastModified>"
                f"<ETag>{_x(chr(34) + self.etag(key) + chr(34))}</ETag><Size>{len(self.objects[key])}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
        if next_token:
            lines.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
        lines.append("</ListBucketResult>")
        return "\n".join(lines).encode("utf-8")
