"""Uploads in, model-ready pixels out: size limit, JPEG/PNG only, decompression-bomb guard.

Everything stays in memory: the body is read with a byte cap, multipart is parsed from those bytes
(no spooled temp files), and the image is decoded by ``melanoma.images`` (the code ``prepare`` uses).
Every refusal is an ``IntakeError`` carrying an HTTP 4xx status and a message for the client.

Optional patient metadata (``age_approx``, ``sex``, ``site``) comes as text form fields or query
parameters and becomes one metadata row (``patient_metadata``); a bad age is a 422 naming it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image
from python_multipart.multipart import MultipartParser, parse_options_header

from melanoma.images import ColorConstancy, Fit, ImageDecodeError, load_resized
from melanoma.metadata import METADATA_COLUMNS, parse_age

IMAGE_TYPES = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/png": "PNG"}
# A browser or curl may send these for a file field it cannot type; the bytes decide then.
GENERIC_TYPES = frozenset({"", "application/octet-stream"})
MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
# Patient metadata fields (form or query) and the longest text kept for sex and site.
METADATA_FIELDS: tuple[str, ...] = METADATA_COLUMNS
MAX_FIELD_CHARS = 100


class IntakeError(Exception):
    """An upload refused with HTTP ``status`` (always 4xx) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its bytes, the content type it claimed and its name (for messages only)."""

    data: bytes
    content_type: str
    filename: str = ""


@dataclass(frozen=True)
class Limits:
    """What the app accepts (from params ``serve``)."""

    max_bytes: int
    max_pixels: int
    max_batch: int


def too_large(limit: int) -> IntakeError:
    return IntakeError(413, f"upload too large: the limit is {limit} bytes ({limit / 1e6:g} MB)")


def parse_multipart(body: bytes, content_type: str, field_names: tuple[str, ...]) -> list[Upload]:
    """The file parts of a multipart/form-data body whose field name is in ``field_names``."""
    return parse_form(body, content_type, field_names)[0]


def parse_form(
    body: bytes, content_type: str, field_names: tuple[str, ...], text_fields: tuple[str, ...] = ()
) -> tuple[list[Upload], dict[str, str]]:
    """File parts named in ``field_names``, and the values of the text parts named in ``text_fields``."""
    _, opts = parse_options_header(content_type)
    boundary = opts.get(b"boundary")
    if not boundary:
        raise IntakeError(400, "multipart body without a boundary in its Content-Type")
    parts: list[Upload] = []
    texts: dict[str, str] = {}
    state: dict[str, object] = {}

    def on_part_begin() -> None:
        state.update(headers={}, data=bytearray(), field=b"", value=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] = state["field"] + data[start:end]  # type: ignore[operator]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] = state["value"] + data[start:end]  # type: ignore[operator]

    def on_header_end() -> None:
        state["headers"][bytes(state["field"]).lower()] = bytes(state["value"])  # type: ignore[index]
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].extend(data[start:end])  # type: ignore[attr-defined]

    def on_part_end() -> None:
        headers: dict[bytes, bytes] = state["headers"]  # type: ignore[assignment]
        _, disp = parse_options_header(headers.get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("latin-1")
        if name in text_fields and b"filename" not in disp:
            if name in texts:
                raise IntakeError(400, f"form field {name!r} sent twice")
            texts[name] = bytes(state["data"]).decode("utf-8", "replace")  # type: ignore[arg-type]
        elif name in field_names:
            parts.append(
                Upload(
                    bytes(state["data"]),  # type: ignore[arg-type]
                    headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower(),
                    disp.get(b"filename", b"").decode("utf-8", "replace"),
                )
            )

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except IntakeError:
        raise
    except Exception as exc:  # the parser raises its own error types for malformed bodies
        raise IntakeError(400, f"malformed multipart body: {exc}") from None
    return parts, texts


def patient_metadata(*sources: Mapping[str, object]) -> pd.DataFrame | None:
    """One image's metadata row from form fields and/or query parameters; None when none is given.

    Empty values count as not given. A field given by two sources, an age that is not 0-120 years
    or an over-long text is refused (422 or 400) naming the field.
    """
    row: dict[str, object] = {}
    for source in sources:
        for name in METADATA_FIELDS:
            value = source.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            if name in row:
                raise IntakeError(400, f"{name!r} given twice (as a form field and a query parameter)")
            row[name] = value
    if not row:
        return None
    if "age_approx" in row:
        try:
            row["age_approx"] = parse_age(row["age_approx"], "age_approx")
        except ValueError as exc:
            raise IntakeError(422, str(exc)) from None
    for name in ("sex", "site"):
        if name in row and len(str(row[name])) > MAX_FIELD_CHARS:
            raise IntakeError(422, f"{name}: at most {MAX_FIELD_CHARS} characters")
    return pd.DataFrame([row])


def sniff(data: bytes) -> str | None:
    """'JPEG' or 'PNG' from the first bytes, else None."""
    for magic, fmt in MAGIC.items():
        if data.startswith(magic):
            return fmt
    return None


def check_upload(upload: Upload, limits: Limits) -> str:
    """Refuse what is not a JPEG or PNG of acceptable size before any decoding; return its format."""
    label = f"{upload.filename!r}: " if upload.filename else ""
    if not upload.data:
        raise IntakeError(400, f"{label}empty upload: send the bytes of a JPEG or PNG image")
    if len(upload.data) > limits.max_bytes:
        raise too_large(limits.max_bytes)
    claimed = IMAGE_TYPES.get(upload.content_type)
    if claimed is None and upload.content_type not in GENERIC_TYPES:
        raise IntakeError(
            415, f"{label}unsupported content type {upload.content_type!r}: send image/jpeg or image/png"
        )
    fmt = sniff(upload.data)
    if fmt is None:
        raise IntakeError(415, f"{label}not a JPEG or PNG image (its first bytes are neither)")
    if claimed is not None and claimed != fmt:
        raise IntakeError(415, f"{label}declared {upload.content_type} but the bytes are a {fmt}")
    return fmt


def decode(
    upload: Upload,
    limits: Limits,
    size: int,
    fit: Fit,
    draft: bool = True,
    draft_margin: float = 2.0,
    color_constancy: ColorConstancy = "none",
    color_constancy_power: float = 6.0,
) -> np.ndarray:
    """Checked upload -> the uint8 (size, size, 3) array the model sees (prepare's decode, resize and
    colour constancy, with the settings the model's training data was prepared with: model.json's,
    through ``images.decoding_of``)."""
    fmt = check_upload(upload, limits)
    label = f"{upload.filename!r}: " if upload.filename else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Header only: dimensions and format before a single pixel is decoded.
            with Image.open(io.BytesIO(upload.data)) as probe:
                width, height, real = probe.width, probe.height, probe.format
    except Exception as exc:  # Pillow raises many types for bad headers
        raise IntakeError(422, f"{label}cannot read the image header ({type(exc).__name__})") from None
    if real != fmt:
        raise IntakeError(415, f"{label}not a JPEG or PNG image")
    if width * height > limits.max_pixels:
        raise IntakeError(
            413, f"{label}image too large: {width}x{height} pixels, the limit is {limits.max_pixels} pixels"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # load_resized itself, so the app's pixels are prepare's by construction
            return load_resized(
                upload.data, size, fit, draft, draft_margin, color_constancy, color_constancy_power
            )
    except ImageDecodeError as exc:
        raise IntakeError(422, f"{label}cannot decode the image (corrupt or truncated): {exc}") from None
    except (MemoryError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise IntakeError(413, f"{label}image too large to decode") from None
    except Exception as exc:  # anything else Pillow throws on hostile input is still the upload's fault
        raise IntakeError(422, f"{label}cannot decode the image: {type(exc).__name__}") from None
