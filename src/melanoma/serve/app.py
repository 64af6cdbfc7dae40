"""The ASGI app: the page, the JSON API and its OpenAPI schema (FastAPI).

Bodies are read with a byte cap and parsed in memory (``intake``); CPU work (decode, forward pass,
Grad-CAM) runs in the thread pool so the event loop keeps answering ``/health`` under load.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from melanoma.models import metadata_columns
from melanoma.serve.holder import ModelHolder, Served
from melanoma.serve.intake import (
    METADATA_FIELDS,
    IntakeError,
    Limits,
    Upload,
    decode,
    parse_form,
    patient_metadata,
    too_large,
)
from melanoma.serve.page import CSP, PAGE

FILE_FIELDS = ("file", "image", "files", "images")
_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
_SINGLE_BODY = {
    "requestBody": {
        "required": True,
        "description": "a JPEG or PNG: a multipart form field `file` (or `image`), or the raw bytes; "
        "optional patient metadata as form fields (or query parameters)",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "age_approx": {"type": "number", "minimum": 0, "maximum": 120},
                        "sex": {"type": "string"},
                        "site": {"type": "string"},
                    },
                }
            },
            "image/jpeg": _IMAGE_BODY,
            "image/png": _IMAGE_BODY,
            "application/octet-stream": _IMAGE_BODY,
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "JPEG or PNG images as repeated multipart form fields `files`",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


def uploads_of(body: bytes, content_type: str, limits: Limits) -> list[Upload]:
    """Multipart file fields, or the raw body as one upload."""
    return form_of(body, content_type)[0]


def form_of(body: bytes, content_type: str) -> tuple[list[Upload], dict[str, str]]:
    """Multipart file fields and metadata text fields, or the raw body as one upload (no fields)."""
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        parts, fields = parse_form(body, content_type, FILE_FIELDS, METADATA_FIELDS)
        if not parts:
            raise IntakeError(
                400, f"no file in the form: send the image in a field named one of {FILE_FIELDS}"
            )
        return parts, fields
    if media in ("application/x-www-form-urlencoded", "application/json", "text/plain"):
        raise IntakeError(415, f"unsupported content type {media!r}: send multipart/form-data or image bytes")
    return [Upload(body, media)], {}


def model_ref(served: Served) -> dict[str, Any]:
    return {"name": served.name, "version": served.version, "registered_model": served.registered_model}


def result(served: Served, prob: float) -> dict[str, Any]:
    melanoma = bool(prob >= served.threshold)  # as evaluate applies the operating threshold
    return {
        "probability": round(float(prob), 6),
        "melanoma": melanoma,
        "label": "melanoma" if melanoma else "not melanoma",
        "threshold": served.threshold,
        "model": model_ref(served),
    }


def missing_metadata_warning(served: Served, metadata: pd.DataFrame | None) -> str | None:
    """Said when the served model reads patient metadata and this request gave none of it."""
    used = metadata_columns(served.classifier)
    if not used or (metadata is not None and any(c in metadata.columns for c in used)):
        return None
    return (
        f"this model also reads {', '.join(used)}, and none was given: it judged the image alone. "
        "Its threshold keeps the validation sensitivity target without them too, but give them "
        "when known (the report's 'images only' rows show what is lost)"
    )


def create_app(holder: ModelHolder, limits: Limits, poll_seconds: float | None = None) -> FastAPI:
    """The app over ``holder``; with ``poll_seconds`` it follows the champion alias while it runs."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if poll_seconds:
            holder.start(poll_seconds)
        try:
            yield
        finally:
            holder.stop()

    app = FastAPI(
        title="melanoma",
        summary="P(melanoma) from a dermoscopy image: a research tool, not a medical device",
        version="1",
        lifespan=lifespan,
    )
    started = time.time()

    @app.exception_handler(IntakeError)
    async def refused(request: Request, exc: IntakeError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    @app.get("/health", summary="liveness, the served version and the last champion check")
    async def health() -> dict[str, Any]:
        served = holder.current
        return {
            "status": "ok",
            "model": model_ref(served),
            "uptime_s": round(time.time() - started, 1),
            "swaps": holder.swaps,
            "last_check": holder.last_check,
            "last_error": holder.last_error,
        }

    @app.get("/model", summary="the served model: version, threshold, test metrics, data hashes")
    async def model() -> dict[str, Any]:
        return holder.current.describe()

    def run_one(
        served: Served, upload: Upload, explain: bool, metadata: pd.DataFrame | None
    ) -> dict[str, Any]:
        pixels = decode(upload, limits, served.image_size, served.fit, **served.decoding)  # type: ignore[arg-type]
        out = result(served, served.predict(pixels[None], metadata)[0])
        if metadata is not None:
            # what was sent, and what this model reads of it (an image-only model reads none)
            used = list(metadata_columns(served.classifier))
            out["metadata"] = {"given": metadata.iloc[0].to_dict(), "used_by_model": used}
        warning = missing_metadata_warning(served, metadata)
        if warning:
            out["warnings"] = [warning]
        if explain:
            with served.lock:
                out["explanation"] = served.explainer(pixels)
        return out

    @app.post(
        "/predict",
        summary="P(melanoma) of one image, with the decision at the version's threshold",
        openapi_extra=_SINGLE_BODY,
    )
    async def predict(
        request: Request,
        explain: bool = Query(False, description="add a heat map (Grad-CAM, or the baseline's lesion mask)"),
        age_approx: str | None = Query(None, description="optional: the patient's age in years (0-120)"),
        sex: str | None = Query(None, description="optional: the patient's sex (e.g. female, male)"),
        site: str | None = Query(
            None, description="optional: the anatomic site (e.g. trunk, lower extremity)"
        ),
    ) -> dict[str, Any]:
        served = holder.current  # this request's model, whatever the poller swaps in meanwhile
        body = await read_body(request, limits.max_bytes)
        uploads, fields = form_of(body, request.headers.get("content-type", ""))
        if len(uploads) != 1:
            raise IntakeError(400, f"{len(uploads)} files sent: /predict takes one (see /predict/batch)")
        metadata = patient_metadata(fields, {"age_approx": age_approx, "sex": sex, "site": site})
        return await run_in_threadpool(run_one, served, uploads[0], explain, metadata)

    def run_batch(served: Served, uploads: list[Upload]) -> dict[str, Any]:
        pixels = []
        for i, upload in enumerate(uploads):
            try:
                pixels.append(decode(upload, limits, served.image_size, served.fit, **served.decoding))  # type: ignore[arg-type]
            except IntakeError as exc:
                raise IntakeError(exc.status, f"file {i + 1} of {len(uploads)}: {exc.message}") from None
        probs = served.predict(np.stack(pixels))
        results = [result(served, p) for p in probs]
        for r, upload in zip(results, uploads, strict=True):
            r["filename"] = upload.filename
            del r["model"]
        out = {"model": model_ref(served), "threshold": served.threshold, "results": results}
        warning = missing_metadata_warning(served, None)  # the batch takes no metadata
        if warning:
            out["warnings"] = [warning]
        return out

    @app.post(
        "/predict/batch",
        summary="P(melanoma) of several images in one forward pass (all valid, or the whole batch is refused)",
        openapi_extra=_BATCH_BODY,
    )
    async def predict_batch(request: Request) -> dict[str, Any]:
        served = holder.current
        body = await read_body(request, limits.max_bytes)
        uploads = uploads_of(body, request.headers.get("content-type", ""), limits)
        if len(uploads) > limits.max_batch:
            raise IntakeError(413, f"{len(uploads)} files: a batch takes at most {limits.max_batch}")
        return await run_in_threadpool(run_batch, served, uploads)

    return app
