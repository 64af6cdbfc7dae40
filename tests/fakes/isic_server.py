"""A fake ISIC Archive API v2 on 127.0.0.1: the real protocol (isic_api.md §3, §6) plus fault knobs.

Serves, under ``/api/v2/``: ``images/search/`` (+ ``size/``), ``images/``, ``images/{id}/``,
``collections/``, ``collections/{id}/``, ``zip-download/license-file/{lic}/``; and the files that
``files.full.url`` / ``files.thumbnail_256.url`` point at (``/files/images/ISIC_x.jpg``,
``/files/thumbnails/ISIC_x_thumbnail.jpg``, on this same server). ``/_fake/stats`` returns the
counters as JSON (for a server run in another process, see ``python isic_server.py --help``).

Protocol details kept: cursor pagination with the ``results/count/next/previous`` envelope, page
size clamped to 100 (0/missing -> 100), ``count`` only on the first page, absolute ``next`` URLs with
sorted re-encoded query params and an opaque base64 cursor (``p=<created>``), ordering by creation
(which is *not* isic_id order), a small search DSL (``field:value``, quoted values, ``AND``/``OR``,
parentheses, ``-`` negation, ``*`` wildcards, ``[a TO b]`` / ``{a TO b}`` ranges) with 400
``{"message": "Could not parse search query."}`` for unknown fields, 422 ``detail`` lists for bad
cursors/limits/collections, metadata with absent (never null) keys, ``files.full.size`` equal to the
bytes served, private images hidden from (anonymous) callers.

Faults: ``inject(target, kind, times=1, **options)``; ``target`` is an isic_id or a route name
(``search``, ``size``, ``list``, ``image``, ``collections``, ``collection``, ``license``, ``file``,
``thumbnail``). A fault fires on the next ``times`` matching requests (``times=None``: forever),
then the server behaves. Kinds:

=============  ===================================================================================
``status``     answer ``options['status']`` (default 503) with optional ``retry_after`` header
``429``        shorthand: 429 with ``Retry-After: options.get('retry_after', '1')``
``503``        shorthand: 503 (``retry_after`` optional)
``slow``       sleep ``options['seconds']`` (default 2) before answering normally
``hold``       wait until ``options['event']`` (a threading.Event) is set, then answer normally:
               a stall that no load on the machine can shorten or lengthen
``reset``      send headers (full Content-Length) and half the body, then reset the TCP connection
``truncate``   send headers (full Content-Length) and half the body, then close the connection
``short``      send a consistent but shorter body (Content-Length = half): only a size check sees it
``size_mismatch``  serve ``options['extra']`` (default 7) more bytes than ``files.full.size`` says
``redirect``   302 to ``options['location']`` (default ``https://evil.example.com/x.jpg``)
``wrong_size`` (listing) report ``files.full.size`` + ``options['delta']`` (default 5)
``bad_id``     (listing) report ``isic_id`` as ``options['value']`` (default ``../../x``)
=============  ===================================================================================

``latency`` (seconds) is added to every request. ``bandwidth`` (bytes/s, ``None`` = unlimited) is one
link shared by every connection (a ``TokenBucket``): every body is written in ``THROTTLE_CHUNK``
pieces, each paid for from the bucket, so 16 concurrent downloads share the rate as they would share
a real link. ``image_bytes=(lo, hi)`` makes each full image a valid JPEG of a size drawn uniformly
from ``lo..hi`` bytes (the small lesion picture plus incompressible, seeded random bytes in COM
segments), like the archive's 1-4 MB dermoscopy files; by default images are tiny.

Counters: ``requests`` (Counter by route),
``file_requests`` (Counter by isic_id), ``file_bytes`` (full-image body bytes sent),
``bytes_served`` (all body bytes), ``queries`` (every ``query`` param received, decoded),
``paths`` (every request target, raw), ``user_agents`` / ``accepts`` (header values seen),
``first_at`` / ``last_at`` (by route, ``time.time()`` when the body of its first answer started /
of its last answer ended; comparable across processes).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from PIL import Image, ImageDraw

if __package__ in (None, ""):  # run as a script (the download benchmark starts it as a process)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fakes import LoopbackHTTPServer  # noqa: E402

API = "/api/v2/"
PAGE_MAX = 100
PARSE_ERROR = {"message": "Could not parse search query."}
NOT_FOUND = {"detail": "Not Found"}
LICENSES = {
    "CC-0": "CC0 1.0 Universal (fake licence text for tests)\n",
    "CC-BY": "Attribution 4.0 International (CC BY 4.0) (fake licence text for tests)\n",
    "CC-BY-NC": "Attribution-NonCommercial 4.0 International (CC BY-NC 4.0) (fake licence text for tests)\n",
}
ATTRIBUTIONS = (
    ("Anonymous", 3),
    ("Memorial Sloan Kettering Cancer Center", 3),
    ("ViDIR Group, Department of Dermatology, Medical University of Vienna", 2),
    ("Hospital Clínic de Barcelona", 2),
    ("Department of Dermatology, Hôpital Universitaire, Zürich", 1),
)
BOOL_FIELDS = {"personal_hx_mm", "family_hx_mm", "melanocytic", "mel_ulcer", "concomitant_biopsy", "public"}
NUMBER_FIELDS = {"age_approx", "clin_size_long_diam_mm", "mel_thick_mm"}
SEARCHABLE = (
    {"isic_id", "copyright_license", "sex", "diagnosis_confirm_type", "image_type", "dermoscopic_type"}
    | {"tbp_tile_type", "mel_mitotic_index", "anatom_site_special", "patient_id", "lesion_id"}
    | {"rcm_case_id", "image_manipulation", "fitzpatrick_skin_type"}
    | {f"diagnosis_{i}" for i in range(1, 6)}
    | {f"anatom_site_{i}" for i in range(1, 6)}
    | BOOL_FIELDS
    | NUMBER_FIELDS
)
ACQUISITION_KEYS = {"pixels_x", "pixels_y", "image_type", "dermoscopic_type", "image_manipulation"}

# (diagnosis_1, diagnosis_2, diagnosis_3, melanocytic, legacy diagnosis, legacy benign_malignant, weight)
_DX = (
    ("Benign", "Benign melanocytic proliferations", "Nevus", True, "nevus", "benign", 50),
    ("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma Invasive", True, "melanoma", "malignant", 12),
    ("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma in situ", True, "melanoma", "malignant", 6),
    ("Malignant", "Malignant adnexal epithelial proliferations - Follicular", "Basal cell carcinoma", False, "basal cell carcinoma", "malignant", 8),
    ("Benign", "Benign epidermal proliferations", "Seborrheic keratosis", False, "seborrheic keratosis", "benign", 10),
    ("Indeterminate", "Indeterminate epidermal proliferations", "Solar or actinic keratosis", False, "actinic keratosis", "indeterminate", 5),
    ("Benign", None, None, None, "other", None, 3),
)  # fmt: skip
_SITES = (("Trunk", "anterior torso"), ("Head and neck", "head/neck"), ("Upper extremity", "upper extremity"),
          ("Lower extremity", "lower extremity"))  # fmt: skip


class ParseError(Exception):
    """The search query uses syntax or fields this DSL subset does not know."""


# ------------------------------------------------------------------------------------------------- DSL

_TOKEN_RE = re.compile(
    r"""\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<op>AND|OR)(?=[\s()]|$)
        |(?P<term>-?[A-Za-z0-9_]+:(?:"[^"]*"|\[[^\]]*\]|\{[^}]*\}|[A-Za-z0-9*_.\-]+)))""",
    re.VERBOSE,
)
_RANGE_RE = re.compile(r"^([^\s]+) TO ([^\s]+)$")
Predicate = Callable[[dict[str, Any]], bool]


def _tokens(query: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    query = query.strip()
    while pos < len(query):
        m = _TOKEN_RE.match(query, pos)
        if not m or m.end() == pos:
            raise ParseError(query[pos:])
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(query) and query[pos].isspace():
            pos += 1
    return out


def _number(text: str) -> float | None:
    if text == "*":
        return None
    try:
        return float(text)
    except ValueError:
        raise ParseError(text) from None


def _as_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _term(text: str) -> Predicate:
    negate = text.startswith("-")
    name, _, raw = text.lstrip("-").partition(":")
    if name not in SEARCHABLE:
        raise ParseError(name)
    if raw[0] in "[{":
        m = _RANGE_RE.match(raw[1:-1].strip())
        if not m:
            raise ParseError(raw)
        lo, hi, inclusive = _number(m.group(1)), _number(m.group(2)), raw[0] == "["

        def match(v: Any) -> bool:
            try:
                x = float(v)
            except (TypeError, ValueError):
                return False
            if lo is not None and (x < lo if inclusive else x <= lo):
                return False
            return not (hi is not None and (x > hi if inclusive else x >= hi))
    elif raw.startswith('"'):
        want = raw[1:-1]

        def match(v: Any) -> bool:
            return v is not None and _as_text(v) == want
    elif raw == "*":

        def match(v: Any) -> bool:
            return v is not None
    elif raw.endswith("*"):

        def match(v: Any) -> bool:
            return v is not None and _as_text(v).startswith(raw[:-1])
    elif raw.startswith("*"):

        def match(v: Any) -> bool:
            return v is not None and _as_text(v).endswith(raw[1:])
    else:

        def match(v: Any) -> bool:
            if v is None:
                return False
            if name in NUMBER_FIELDS and not isinstance(v, bool):
                try:
                    return float(v) == float(raw)
                except ValueError:
                    return False
            return _as_text(v) == raw

    if negate:
        return lambda values: not match(values.get(name))
    return lambda values: match(values.get(name))


def parse_query(query: str) -> Predicate:
    """Compile a search query into a predicate over an image's flat field values."""
    tokens = _tokens(query)
    if not tokens:
        return lambda values: True
    pos = 0

    def peek() -> tuple[str, str] | None:
        return tokens[pos] if pos < len(tokens) else None

    def atom() -> Predicate:
        nonlocal pos
        tok = peek()
        if tok is None:
            raise ParseError("unexpected end")
        pos += 1
        if tok[0] == "term":
            return _term(tok[1])
        if tok[0] == "lp":
            inner = or_expr()
            if peek() is None or peek()[0] != "rp":
                raise ParseError("missing )")
            pos += 1
            return inner
        raise ParseError(tok[1])

    def and_expr() -> Predicate:
        nonlocal pos
        parts = [atom()]
        while (tok := peek()) is not None and (tok == ("op", "AND") or tok[0] in ("term", "lp")):
            if tok[0] == "op":
                pos += 1
            parts.append(atom())
        return lambda values: all(p(values) for p in parts)

    def or_expr() -> Predicate:
        nonlocal pos
        parts = [and_expr()]
        while peek() == ("op", "OR"):
            pos += 1
            parts.append(and_expr())
        return lambda values: any(p(values) for p in parts)

    pred = or_expr()
    if pos != len(tokens):
        raise ParseError(str(tokens[pos]))
    return pred


# ---------------------------------------------------------------------------------------------- images


@dataclass
class FakeImage:
    """One archive image: its API fields, its file bytes and its place in creation order."""

    isic_id: str
    created: datetime
    copyright_license: str
    attribution: str
    acquisition: dict[str, Any]
    clinical: dict[str, Any]
    full: bytes
    thumbnail: bytes
    ext: str = ".jpg"
    public: bool = True

    def values(self) -> dict[str, Any]:
        """Flat field values the search DSL sees."""
        return {
            "isic_id": self.isic_id,
            "public": self.public,
            "copyright_license": self.copyright_license,
            **self.acquisition,
            **self.clinical,
        }


@dataclass
class Fault:
    kind: str
    times: int | None
    options: dict[str, Any] = field(default_factory=dict)


THROTTLE_CHUNK = 64 * 1024  # bytes written per token-bucket payment


class TokenBucket:
    """A byte rate shared by all callers: ``rate`` bytes/s, bursts of at most ``burst`` bytes.

    ``reserve(n)`` takes ``n`` tokens at once and answers how long the caller must wait before sending
    them: the bucket may go into debt, and a caller waits until its debt is repaid at ``rate``. Calls
    are thus served in order, like packets queued on one link, and the bytes sent by any time ``t``
    are at most ``burst + rate * (t - t0)``, ``t0`` the bucket's start (or any moment it was full). ``clock`` and ``sleep`` are injectable (tests drive a fake
    clock; nothing in the logic reads the real one).
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.burst = float(THROTTLE_CHUNK if burst is None else burst)
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._tokens = self.burst  # starts full
        self._last = clock()

    def reserve(self, n: int) -> float:
        """Take ``n`` tokens now (going into debt if needed); the seconds to wait before sending."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            return max(0.0, -self._tokens / self.rate)

    def take(self, n: int) -> None:
        """Wait until ``n`` bytes may be sent."""
        wait = self.reserve(n)
        if wait > 0:
            self._sleep(wait)


def _padded_jpeg(jpeg: bytes, size: int, rng: random.Random) -> bytes:
    """``jpeg`` grown to exactly ``size`` bytes with random COM (comment) segments: still a valid JPEG.

    Left as it is when it is already longer than ``size - 4`` (a segment takes at least 4 bytes).
    """
    assert jpeg[:2] == b"\xff\xd8", "not a JPEG"
    parts = [jpeg[:2]]
    left = size - len(jpeg)
    while left >= 4:
        n = min(left - 4, 0xFFFF - 2)  # a segment's length field counts itself, at most 65535
        parts.append(b"\xff\xfe" + struct.pack(">H", n + 2) + rng.randbytes(n))
        left -= n + 4
    parts.append(jpeg[2:])
    return b"".join(parts)


def _jpeg(rng: random.Random, w: int, h: int, quality: int = 80) -> bytes:
    skin = (rng.randint(170, 230), rng.randint(130, 180), rng.randint(110, 160))
    img = Image.new("RGB", (w, h), skin)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.2, 0.4) * h
    cx, cy = w / 2 + rng.uniform(-3, 3), h / 2 + rng.uniform(-3, 3)
    dark = (rng.randint(40, 120), rng.randint(30, 80), rng.randint(30, 110))
    draw.ellipse((cx - r * 1.2, cy - r, cx + r * 1.2, cy + r), fill=dark)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _full_file(jpeg: bytes, rng: random.Random | None, image_bytes: tuple[int, int] | None) -> bytes:
    if rng is None or image_bytes is None:
        return jpeg
    return _padded_jpeg(jpeg, rng.randint(*image_bytes), rng)


def make_images(
    n: int,
    seed: int = 0,
    legacy_every: int = 7,
    private: Iterable[int] = (),
    image_bytes: tuple[int, int] | None = None,
) -> list[FakeImage]:
    """``n`` deterministic images with realistic, sparse metadata (every ``legacy_every``-th legacy-era).

    ``image_bytes=(lo, hi)``: each full file padded to a size drawn from ``lo..hi`` (its own random
    stream, so the metadata of a seed is the same with or without it).
    """
    rng = random.Random(seed)
    pad_rng = random.Random(f"pad-{seed}") if image_bytes else None
    private = set(private)
    order = list(range(n))
    rng.shuffle(order)  # creation order differs from isic_id order, as in the archive
    t0 = datetime(2022, 3, 29, 19, 35, 52, tzinfo=UTC)
    names = [a for a, _ in ATTRIBUTIONS]
    weights = [w for _, w in ATTRIBUTIONS]
    out = []
    for i in range(n):
        w = rng.choice((32, 40, 48))
        h = w * 3 // 4
        dx1, dx2, dx3, melanocytic, legacy_dx, bm, _ = rng.choices(_DX, weights=[d[-1] for d in _DX])[0]
        site, site_general = rng.choice(_SITES)
        acq: dict[str, Any] = {"pixels_x": w, "pixels_y": h}
        clin: dict[str, Any] = {
            "patient_id": f"IP_{1000 + i // 3:07d}",
            "lesion_id": f"IL_{2000 + i // 2:07d}",
        }
        if i % 11:
            clin["age_approx"] = rng.randrange(15, 86, 5)
        if i % 13:
            clin["sex"] = rng.choice(("male", "female"))
        if legacy_every and i % legacy_every == legacy_every - 1:
            # Legacy-era record: flat diagnosis / benign_malignant / anatom_site_general.
            clin["diagnosis"] = legacy_dx
            if bm:
                clin["benign_malignant"] = bm
            clin["anatom_site_general"] = site_general
        else:
            acq["image_type"] = "dermoscopic"
            if i % 3 == 0:
                acq["dermoscopic_type"] = rng.choice(("contact polarized", "contact non-polarized"))
            clin["diagnosis_1"] = dx1
            if dx2:
                clin["diagnosis_2"] = dx2
            if dx3:
                clin["diagnosis_3"] = dx3
            if melanocytic is not None:
                clin["melanocytic"] = melanocytic
            clin["anatom_site_1"] = site
            if dx1 != "Indeterminate" and i % 4 == 0:
                clin["diagnosis_confirm_type"] = "histopathology"
            if i % 5 == 0:
                clin["clin_size_long_diam_mm"] = f"{rng.uniform(2, 12):.2f}"  # Decimal -> string
            if i % 6 == 0:
                clin["family_hx_mm"] = rng.random() < 0.2
        out.append(
            FakeImage(
                isic_id=f"ISIC_{24306 + 3 * i:07d}",
                created=t0 + timedelta(seconds=order[i]),
                copyright_license=rng.choices(("CC-0", "CC-BY", "CC-BY-NC"), weights=(5, 3, 2))[0],
                attribution=rng.choices(names, weights=weights)[0],
                acquisition=acq,
                clinical=clin,
                full=_full_file(_jpeg(rng, w, h), pad_rng, image_bytes),
                thumbnail=_jpeg(rng, 8, 6, quality=60),
                public=i not in private,
            )
        )
    out.sort(key=lambda im: im.created)
    return out


# ---------------------------------------------------------------------------------------------- server


class FakeIsicServer(LoopbackHTTPServer):
    thread_name = "fake-isic"

    """The fake API in a background thread on 127.0.0.1 (port 0 = a free one); a context manager."""

    def __init__(
        self,
        n_images: int = 30,
        *,
        seed: int = 0,
        latency: float = 0.0,
        bandwidth: float | None = None,
        image_bytes: tuple[int, int] | None = None,
        legacy_every: int = 7,
        private: Iterable[int] = (),
        port: int = 0,
    ) -> None:
        self.images = make_images(n_images, seed, legacy_every, private, image_bytes)
        self.by_id = {im.isic_id: im for im in self.images}
        public_ids = [im.isic_id for im in sorted(self.images, key=lambda im: im.isic_id)]
        # Collections: 70 = every second image, 66 = the first third, 999 = private (invisible).
        self.collections: dict[int, dict[str, Any]] = {
            70: {"name": "2020 Challenge training set", "public": True, "ids": set(public_ids[::2])},
            66: {"name": "HAM10000", "public": True, "ids": set(public_ids[: max(1, len(public_ids) // 3)])},
            999: {"name": "Private cohort", "public": False, "ids": set(public_ids[1::3])},
        }
        self.latency = latency
        self.throttle = TokenBucket(bandwidth) if bandwidth else None  # one link for every connection
        self.count_offset = 0  # added to the first page's count (ES count vs DB rows)
        self.license_texts = dict(LICENSES)
        self._faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        super().__init__(port)
        self.reset_counters()

    # -- lifecycle

    @property
    def base_url(self) -> str:
        return f"{self.origin}{API}"

    # -- knobs and counters

    def inject(self, target: str, kind: str, times: int | None = 1, **options: Any) -> None:
        """Make the next ``times`` requests for ``target`` (isic_id or route) misbehave as ``kind``."""
        with self._lock:
            self._faults.setdefault(target, []).append(Fault(kind, times, options))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_counters(self) -> None:
        with self._lock:
            self.requests: Counter[str] = Counter()
            self.file_requests: Counter[str] = Counter()
            self.file_bytes = 0
            self.bytes_served = 0
            self.queries: list[str | None] = []
            self.paths: list[str] = []
            self.user_agents: Counter[str] = Counter()
            self.accepts: Counter[str] = Counter()
            self.first_at: dict[str, float] = {}
            self.last_at: dict[str, float] = {}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "file_requests": sum(self.file_requests.values()),
                "file_bytes": self.file_bytes,
                "bytes_served": self.bytes_served,
                "first_at": dict(self.first_at),
                "last_at": dict(self.last_at),
            }

    def _take(self, targets: Iterable[str], kinds: set[str]) -> Fault | None:
        """The first active fault of one of ``kinds`` for any of ``targets``, consuming one firing."""
        with self._lock:
            for target in targets:
                for fault in self._faults.get(target, []):
                    if fault.kind in kinds and (fault.times is None or fault.times > 0):
                        if fault.times is not None:
                            fault.times -= 1
                        return fault
        return None

    # -- rendering

    def image_json(self, im: FakeImage, origin: str | None = None, consume: bool = True) -> dict[str, Any]:
        """The ``ImageOut`` JSON of one image, with listing faults applied."""
        origin = origin or self.origin
        size = len(im.full)
        isic_id = im.isic_id
        if consume:
            for _ in range(2):  # at most one of each listing fault per rendering
                fault = self._take([im.isic_id], {"wrong_size", "bad_id"})
                if fault is None:
                    break
                if fault.kind == "wrong_size":
                    size += int(fault.options.get("delta", 5))
                else:
                    isic_id = str(fault.options.get("value", "../../x"))
        return {
            "isic_id": isic_id,
            "public": im.public,
            "copyright_license": im.copyright_license,
            "attribution": im.attribution,
            "files": {
                "full": {"url": f"{origin}/files/images/{im.isic_id}{im.ext}", "size": size},
                "thumbnail_256": {
                    "url": f"{origin}/files/thumbnails/{im.isic_id}_thumbnail.jpg",
                    "size": len(im.thumbnail),
                },
            },
            "metadata": {"acquisition": dict(im.acquisition), "clinical": dict(im.clinical)},
        }

    # -- request handling

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        path = split.path
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        origin = f"http://{h.headers.get('Host') or f'127.0.0.1:{self.port}'}"
        route, key = self._route(path)
        with self._lock:
            self.requests[route] += 1
            self.paths.append(h.path)
            self.user_agents[h.headers.get("User-Agent", "")] += 1
            self.accepts[h.headers.get("Accept", "")] += 1
            if route == "file" and key:
                self.file_requests[key] += 1  # every request for the file, redirected/failed ones too
            if route in ("search", "size"):
                self.queries.append(params.get("query"))
        if self.latency:
            time.sleep(self.latency)
        targets = [key, route] if key else [route]
        fault = self._take(targets, {"status", "429", "503", "slow", "hold", "redirect"})
        if fault is not None:
            if fault.kind == "slow":
                time.sleep(float(fault.options.get("seconds", 2.0)))
            elif fault.kind == "hold":
                fault.options["event"].wait(float(fault.options.get("timeout", 120.0)))
            elif fault.kind == "redirect":
                loc = str(fault.options.get("location", "https://evil.example.com/x.jpg"))
                self._send(h, 302, b"", "text/plain", {"Location": loc})
                return
            else:
                status = {"429": 429, "503": 503}.get(fault.kind) or int(fault.options.get("status", 503))
                headers = {}
                ra = fault.options.get("retry_after", "1" if status == 429 else None)
                if ra is not None:
                    headers["Retry-After"] = str(ra)
                body = json.dumps({"detail": f"fake {status}"}).encode()
                self._send(h, status, body, "application/json", headers)
                return
        handler = getattr(self, f"_r_{route}", None)
        if handler is None:
            self._json(h, 404, NOT_FOUND)
            return
        handler(h, key, params, origin)

    @staticmethod
    def _route(path: str) -> tuple[str, str | None]:
        if path == "/_fake/stats":
            return "stats", None
        m = re.fullmatch(r"/files/images/(ISIC_\d{7})(\.[A-Za-z0-9]+)", path)
        if m:
            return "file", m.group(1)
        m = re.fullmatch(r"/files/thumbnails/(ISIC_\d{7})_thumbnail\.jpg", path)
        if m:
            return "thumbnail", m.group(1)
        if not path.startswith(API):
            return "unknown", None
        rest = path[len(API) :]
        fixed = {
            "images/search/": "search",
            "images/search/size/": "size",
            "images/": "list",
            "collections/": "collections",
        }
        if rest in fixed:
            return fixed[rest], None
        for pattern, route in (
            (r"images/([^/]+)/", "image"),
            (r"collections/([^/]+)/", "collection"),
            (r"zip-download/license-file/([^/]+)/", "license"),
        ):
            m = re.fullmatch(pattern, rest)
            if m:
                return route, m.group(1)
        return "unknown", None

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        ctype: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        route, _ = self._route(urlsplit(h.path).path)
        with self._lock:  # counted first: a client holding the whole body always sees it counted
            self.bytes_served += len(body)
            self.first_at.setdefault(route, time.time())
        self._write_body(h, body)
        with self._lock:
            self.last_at[route] = time.time()

    def _write_body(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        """Write ``body``, paying the shared throttle chunk by chunk when there is one."""
        if self.throttle is None:
            h.wfile.write(body)
            return
        view = memoryview(body)
        for start in range(0, len(body), THROTTLE_CHUNK):
            chunk = view[start : start + THROTTLE_CHUNK]
            self.throttle.take(len(chunk))
            h.wfile.write(chunk)

    def _json(self, h: BaseHTTPRequestHandler, status: int, obj: Any) -> None:
        self._send(h, status, json.dumps(obj).encode(), "application/json")

    @staticmethod
    def _invalid(loc: str, msg: str) -> dict[str, Any]:
        return {"detail": [{"type": "value_error", "loc": ["query", loc], "msg": msg}]}

    def _visible(self) -> list[FakeImage]:
        return [im for im in self.images if im.public]  # anonymous callers see public images only

    def _matching(self, h: BaseHTTPRequestHandler, params: dict[str, str]) -> list[FakeImage] | None:
        """Images matching ``query`` + ``collections``; None after an error answer was sent."""
        try:
            pred = parse_query(params.get("query", ""))
        except ParseError:
            self._json(h, 400, PARSE_ERROR)
            return None
        images = [im for im in self._visible() if pred(im.values())]
        raw = params.get("collections", "")
        if raw:
            try:
                ids = [int(x) for x in raw.split(",")]
            except ValueError:
                self._json(h, 422, self._invalid("collections", "Input should be a valid integer"))
                return None
            members: set[str] = set()
            for cid in ids:
                coll = self.collections.get(cid)
                if coll and coll["public"]:
                    members |= coll["ids"]
            images = [im for im in images if im.isic_id in members]
        return images

    def _paginate(
        self,
        h: BaseHTTPRequestHandler,
        params: dict[str, str],
        rows: list[Any],
        position: Callable[[Any], str],
        render: Callable[[Any], Any],
        origin: str,
    ) -> None:
        """Cursor pagination over ``rows`` (already in order), keyed on ``position(row)``."""
        raw_limit = params.get("limit", "")
        try:
            limit = int(raw_limit) if raw_limit else 0
        except ValueError:
            self._json(h, 422, self._invalid("limit", "Input should be a valid integer"))
            return
        limit = PAGE_MAX if limit <= 0 else min(limit, PAGE_MAX)
        cursor = params.get("cursor")
        reverse = False
        if cursor:
            try:
                fields = dict(
                    parse_qsl(base64.b64decode(cursor, validate=True).decode(), strict_parsing=True)
                )
                pos = fields["p"]
                datetime.fromisoformat(pos)  # a position must be a timestamp
                reverse = fields.get("r") == "1"
            except (binascii.Error, UnicodeDecodeError, ValueError, KeyError):
                self._json(h, 422, self._invalid("cursor", "Value error, Invalid cursor."))
                return
            if reverse:
                before = [r for r in rows if position(r) < pos]
                page = before[-limit:]
                more_after, more_before = True, len(before) > limit
            else:
                after = [r for r in rows if position(r) > pos]
                page = after[:limit]
                more_after, more_before = len(after) > limit, True
        else:
            page = rows[:limit]
            more_after, more_before = len(rows) > limit, False

        def link(fields: dict[str, str]) -> str:
            cur = base64.b64encode(urlencode(fields).encode()).decode()
            query = {k: v for k, v in params.items() if k != "cursor"}
            query["cursor"] = cur
            return f"{origin}{h.path.split('?', 1)[0]}?{urlencode(sorted(query.items()))}"

        body = {
            "results": [render(r) for r in page],
            "count": (len(rows) + self.count_offset) if not cursor else None,
            "next": link({"p": position(page[-1])}) if page and more_after else None,
            "previous": link({"r": "1", "p": position(page[0])}) if page and more_before else None,
        }
        self._json(h, 200, body)

    # routes

    def _r_search(
        self, h: BaseHTTPRequestHandler, key: str | None, params: dict[str, str], origin: str
    ) -> None:
        images = self._matching(h, params)
        if images is not None:
            self._paginate(
                h, params, images, lambda im: str(im.created), lambda im: self.image_json(im, origin), origin
            )

    def _r_list(
        self, h: BaseHTTPRequestHandler, key: str | None, params: dict[str, str], origin: str
    ) -> None:
        self._paginate(
            h,
            params,
            self._visible(),
            lambda im: str(im.created),
            lambda im: self.image_json(im, origin),
            origin,
        )

    def _r_size(
        self, h: BaseHTTPRequestHandler, key: str | None, params: dict[str, str], origin: str
    ) -> None:
        images = self._matching(h, params)
        if images is not None:
            size = sum(self.image_json(im, origin, consume=False)["files"]["full"]["size"] for im in images)
            self._json(h, 200, {"size": size})

    def _r_image(
        self, h: BaseHTTPRequestHandler, key: str | None, params: dict[str, str], origin: str
    ) -> None:
        im = self.by_id.get(key or "")
        if im is None or not im.public:
            self._json(h, 404, NOT_FOUND)
        else:
            self._json(h, 200, self.image_json(im, origin))

    def _collection_out(self, cid: int) -> dict[str, Any]:
        c = self.collections[cid]
        return {
            "id": cid,
            "name": c["name"],
            "description": "",
            "public": c["public"],
            "pinned": cid == 70,
            "locked": True,
            "doi": None,
            "doi_url": None,
        }

    def _r_collections(
        self, h: BaseHTTPRequestHandler, key: str | None, params: dict[str, str], origin: str
    ) -> None:
        ids = sorted(cid for cid, c in self.collections.items() if c["public"])
        self._paginate(
            h,
            params,
            ids,
            lambda cid: (datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=cid)).isoformat(sep=" "),
            self._collection_out,
            origin,
        )

    def _r_collection(
        self, h: BaseHTTPRequestHandler, key: str | None, params: dict[str, str], origin: str
    ) -> None:
        try:
            cid = int(key or "")
        except ValueError:
            self._json(
                h, 422, {"detail": [{"loc": ["path", "id"], "msg": "Input should be a valid integer"}]}
            )
            return
        if cid not in self.collections or not self.collections[cid]["public"]:
            self._json(h, 404, NOT_FOUND)
        else:
            self._json(h, 200, self._collection_out(cid))

    def _r_license(
        self, h: BaseHTTPRequestHandler, key: str | None, params: dict[str, str], origin: str
    ) -> None:
        text = self.license_texts.get(key or "")
        if text is None:
            self._json(h, 404, NOT_FOUND)
        else:
            self._send(h, 200, text.encode(), "text/plain; charset=utf-8")

    def _r_stats(
        self, h: BaseHTTPRequestHandler, key: str | None, params: dict[str, str], origin: str
    ) -> None:
        self._json(h, 200, self.stats())

    def _r_thumbnail(
        self, h: BaseHTTPRequestHandler, key: str | None, params: dict[str, str], origin: str
    ) -> None:
        im = self.by_id.get(key or "")
        if im is None:
            self._json(h, 404, NOT_FOUND)
        else:
            self._send(h, 200, im.thumbnail, "image/jpeg")

    def _r_file(
        self, h: BaseHTTPRequestHandler, key: str | None, params: dict[str, str], origin: str
    ) -> None:
        im = self.by_id.get(key or "")
        if im is None or h.path.split("?")[0] != f"/files/images/{im.isic_id}{im.ext}":
            self._json(h, 404, NOT_FOUND)
            return
        body = im.full
        fault = self._take([im.isic_id, "file"], {"reset", "truncate", "short", "size_mismatch"})
        ctype = "image/png" if im.ext.lower() == ".png" else "image/jpeg"
        if fault is None:
            self._send(h, 200, body, ctype)
            with self._lock:
                self.file_bytes += len(body)
            return
        if fault.kind == "short":
            body = body[: len(body) // 2]
        elif fault.kind == "size_mismatch":
            body = body + b"\0" * int(fault.options.get("extra", 7))
        if fault.kind in ("short", "size_mismatch"):
            self._send(h, 200, body, ctype)
            with self._lock:
                self.file_bytes += len(body)
            return
        # reset / truncate: promise the whole body, send half, then drop the connection.
        half = body[: len(body) // 2]
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        self._write_body(h, half)
        h.wfile.flush()
        with self._lock:
            self.file_bytes += len(half)
            self.bytes_served += len(half)
        h.close_connection = True
        if fault.kind == "reset":
            # SO_LINGER 0 + close = RST instead of FIN: a "connection reset by peer" on the client.
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()


def main(argv: list[str] | None = None) -> int:
    """Run the fake in the foreground (for benchmarks): prints its base URL, serves until killed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    ap.add_argument("--bandwidth", type=float, default=0.0,
                    help="bytes/s shared by all connections (0 = unlimited)")  # fmt: skip
    ap.add_argument("--image-bytes", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                    help="full images of LO..HI bytes (default: tiny)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    server = FakeIsicServer(
        args.n_images,
        seed=args.seed,
        latency=args.latency,
        bandwidth=args.bandwidth or None,
        image_bytes=tuple(args.image_bytes) if args.image_bytes else None,
        port=args.port,
    ).start()
    print(server.base_url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
