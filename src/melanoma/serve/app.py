"""The ASGI app: the page, the JSON API and its OpenAPI schema (FastAPI).

Bodies are read with a byte cap and parsed in memory (``intake``); CPU work (decode, forward pass,
Grad-CAM) runs in the thread pool so the event loop keeps answering ``/health`` under load.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from melanoma.serve.auth import PUBLIC_PATHS, BearerAuth
from melanoma.serve.docs import declare_bearer, mount_docs
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
# The pipeline's documents the page links to: route -> its file in the reports folder (report stage).
DOCUMENTS = {"/report": "README.md", "/model-card": "model_card.md"}
# Markdown shown as plain text: nothing in it can run or load anything.
DOCUMENT_CSP = "default-src 'none'; sandbox"
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


def answer_warnings(served: Served, metadata: pd.DataFrame | None) -> list[str]:
    """Every warning an answer carries: the model's own (trained on generated images), then the
    missing-metadata one for this request."""
    missing = missing_metadata_warning(served, metadata)
    return [*served.warnings, *([missing] if missing else [])]


def document_links(reports_dir: Path | None) -> dict[str, str | None]:
    """``{"report": "/report", "model_card": "/model-card"}``, None for a document not written (yet)."""
    return {
        route.strip("/").replace("-", "_"): route
        if reports_dir is not None and (reports_dir / name).is_file()
        else None
        for route, name in DOCUMENTS.items()
    }


def document(reports_dir: Path | None, route: str) -> PlainTextResponse:
    """The report stage's Markdown file behind ``route``, as text; 404 saying how to make it."""
    name = DOCUMENTS[route]
    path = None if reports_dir is None else reports_dir / name
    if path is None or not path.is_file():
        where = "no reports folder was given to the app" if path is None else f"{path} does not exist"
        raise IntakeError(
            404, f"{where}: run the pipeline's report stage (dvc repro) in the served repository"
        )
    return PlainTextResponse(
        path.read_text(encoding="utf-8", errors="replace"),
        media_type="text/plain; charset=utf-8",
        headers={"Content-Security-Policy": DOCUMENT_CSP, "Cache-Control": "no-store"},
    )


def missing_metadata_warning(served: Served, metadata: pd.DataFrame | None) -> str | None:
    """Said when the served model reads patient metadata and this request gave none of it."""
    used = served.metadata_columns
    if not used or (metadata is not None and any(c in metadata.columns for c in used)):
        return None
    return (
        f"this model also reads {', '.join(used)}, and none was given: it judged the image alone. "
        "Its threshold keeps the validation sensitivity target without them too, but give them "
        "when known (the report's 'images only' rows show what is lost)"
    )


def create_app(
    holder: ModelHolder,
    limits: Limits,
    poll_seconds: float | None = None,
    token: str | None = None,
    reports_dir: Path | None = None,
) -> FastAPI:
    """The app over ``holder``; with ``poll_seconds`` it follows the champion alias while it runs; with
    ``token`` every request but the public paths (auth.PUBLIC_PATHS) needs ``Authorization: Bearer``.
    ``reports_dir``: the served repository's reports folder, whose README.md and model_card.md
    ``/report`` and ``/model-card`` serve (404 while the report stage has not written them).
    """

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
        docs_url=None,  # self-hosted below: FastAPI's own loads Swagger UI from a CDN
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    mount_docs(app)
    if token is not None:
        # Added before the middleware below, so it runs inside it: refusals get its headers too.
        app.add_middleware(BearerAuth, token=token, public=PUBLIC_PATHS)
        declare_bearer(app, PUBLIC_PATHS)
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

    @app.get(
        "/model",
        summary="the served model: what it was trained on, its scores in words, version, threshold, "
        "data hashes, warnings",
    )
    async def model() -> dict[str, Any]:
        return {
            **holder.current.describe(),
            "links": document_links(reports_dir),
            "limits": {"max_batch": limits.max_batch, "max_upload_bytes": limits.max_bytes},
        }

    def document_endpoint(route: str) -> Callable[[], Awaitable[PlainTextResponse]]:
        async def serve_document() -> PlainTextResponse:  # no parameters: none in the OpenAPI
            return document(reports_dir, route)

        return serve_document

    # One GET per entry of DOCUMENTS, which document_links reads too: /report, /model-card.
    for route, name in DOCUMENTS.items():
        app.add_api_route(
            route,
            document_endpoint(route),
            methods=["GET"],
            name=route.strip("/").replace("-", "_"),
            summary=f"the pipeline's {route.strip('/').replace('-', ' ')} (reports/{name}), as text",
            response_class=PlainTextResponse,
        )

    def run_one(
        served: Served, upload: Upload, explain: bool, metadata: pd.DataFrame | None
    ) -> dict[str, Any]:
        pixels = decode(upload, limits, served.image_size, served.fit, **served.decoding)  # type: ignore[arg-type]
        out = result(served, served.predict(pixels[None], metadata)[0])
        if metadata is not None:
            # what was sent, and what this model reads of it (an image-only model reads none)
            out["metadata"] = {"given": metadata.iloc[0].to_dict(), "used_by_model": served.metadata_columns}
        warnings = answer_warnings(served, metadata)
        if warnings:
            out["warnings"] = warnings
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

    def run_batch(served: Served, uploads: list[Upload], explain: bool) -> dict[str, Any]:
        pixels = []
        for i, upload in enumerate(uploads):
            try:
                pixels.append(decode(upload, limits, served.image_size, served.fit, **served.decoding))  # type: ignore[arg-type]
            except IntakeError as exc:
                raise IntakeError(exc.status, f"file {i + 1} of {len(uploads)}: {exc.message}") from None
        probs = served.predict(np.stack(pixels))
        results = [result(served, p) for p in probs]
        for r, upload, image in zip(results, uploads, pixels, strict=True):
            r["filename"] = upload.filename
            del r["model"]
            if explain:
                # one image at a time: a long batch does not hold the model from other requests
                with served.lock:
                    r["explanation"] = served.explainer(image)
        out = {"model": model_ref(served), "threshold": served.threshold, "results": results}
        warnings = answer_warnings(served, None)  # the batch takes no metadata
        if warnings:
            out["warnings"] = warnings
        return out

    @app.post(
        "/predict/batch",
        summary="P(melanoma) of several images in one forward pass (all valid, or the whole batch is refused)",
        openapi_extra=_BATCH_BODY,
    )
    async def predict_batch(
        request: Request,
        explain: bool = Query(
            False, description="add each image's heat map (as /predict's `explanation`), in `results`"
        ),
    ) -> dict[str, Any]:
        served = holder.current
        body = await read_body(request, limits.max_bytes)
        uploads = uploads_of(body, request.headers.get("content-type", ""), limits)
        if len(uploads) > limits.max_batch:
            raise IntakeError(413, f"{len(uploads)} files: a batch takes at most {limits.max_batch}")
        return await run_in_threadpool(run_batch, served, uploads, explain)

    return app
