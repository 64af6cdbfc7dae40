"""A fake public S3 bucket on 127.0.0.1: ListObjectsV2 XML with real pagination, and object GETs.

``GET /?list-type=2&prefix=P&max-keys=N&continuation-token=T`` answers a ``ListBucketResult`` in the
``http://s3.amazonaws.com/doc/2006-03-01/`` namespace (keys in byte order, ``KeyCount``, ``MaxKeys``,
``IsTruncated``, an opaque ``NextContinuationToken``; ``max-keys`` capped at ``page_max``, 1000 like
S3). ``GET /<key>`` serves the bytes with ``Content-Length`` and a quoted MD5 ``ETag`` (``<md5>-2``
for objects put with ``multipart=True``). Unknown keys get S3's ``NoSuchKey`` XML with 404, a bad
continuation token ``InvalidArgument`` with 400.

Knobs: ``corrupt`` (keys served with the same length but flipped bytes, for checksum checks).
Counters: ``gets`` (Counter of object keys fetched), ``list_calls`` (the query of every listing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from fakes import LoopbackHTTPServer

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
LAST_MODIFIED = "2020-08-18T12:00:00.000Z"


def _x(text: str) -> str:
    return escape(text, {'"': "&quot;"})


class FakeS3Bucket(LoopbackHTTPServer):
    """A bucket of in-memory objects served over real HTTP; use as a context manager."""

    def __init__(
        self, objects: dict[str, bytes] | None = None, name: str = "isic-archive", page_max: int = 1000
    ):
        self.name = name
        self.page_max = page_max
        self.objects: dict[str, bytes] = {}
        self.multipart: set[str] = set()
        self.corrupt: set[str] = set()
        self.gets: Counter[str] = Counter()
        self.list_calls: list[dict[str, str]] = []
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

    # ------------------------------------------------------------------------------------- server

    @property
    def url(self) -> str:
        return self.origin

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
        if parts.path == "/":
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            self._list(h, query)
            return
        key = unquote(parts.path[1:])
        with self._lock:
            data = self.objects.get(key)
            self.gets[key] += 1
        if data is None:
            self._error(h, 404, "NoSuchKey", "The specified key does not exist.", key)
            return
        if key in self.corrupt:
            data = bytes(b ^ 0xFF for b in data)
        self._send(h, 200, data, "application/octet-stream",
                   {"ETag": f'"{self.etag(key)}"', "Last-Modified": "Tue, 18 Aug 2020 12:00:00 GMT"})  # fmt: skip

    def _list(self, h: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        with self._lock:
            self.list_calls.append(query)
            keys = sorted(self.objects, key=lambda k: k.encode("utf-8"))
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
        truncated = bool(rest)
        lines = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<ListBucketResult xmlns="{S3_NS}">',
            f"<Name>{_x(self.name)}</Name><Prefix>{_x(prefix)}</Prefix>",
            f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
        ]
        if token is not None:
            lines.append(f"<ContinuationToken>{_x(token)}</ContinuationToken>")
        lines.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        for key in page:
            lines.append(
                f"<Contents><Key>{_x(key)}</Key><LastModified>{LAST_MODIFIED}</LastModified>"
                f"<ETag>{_x(chr(34) + self.etag(key) + chr(34))}</ETag><Size>{len(self.objects[key])}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
        if truncated:
            next_token = base64.urlsafe_b64encode(page[-1].encode("utf-8")).decode()
            lines.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
        lines.append("</ListBucketResult>")
        self._send(h, 200, "\n".join(lines).encode("utf-8"), "application/xml")
