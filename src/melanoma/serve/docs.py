"""The API docs (Swagger UI) served by the app itself, so that ``/docs`` works offline.

FastAPI's default ``/docs`` loads Swagger UI from a CDN (blank without a network). This follows FastAPI's
self-hosting recipe (``docs_url=None``, Swagger UI's files mounted from a package's folder: the
``fastapi-offline`` package's, which ships Swagger UI 5; ``swagger-ui-bundle`` ships Swagger UI 4, which
cannot render the OpenAPI 3.1 schema FastAPI writes), with one change: FastAPI's ``get_swagger_ui_html`` starts Swagger UI from an inline script that
fetches ``/openapi.json`` without a token, which a token-protected app refuses. Here the start-up is a
static script instead (so the CSP allows scripts from 'self' only, nothing inline): it fetches the schema
itself and, on a 401 asking for a bearer token, shows a token form (the same ``sessionStorage`` key as the
page), then starts Swagger UI pre-authorized with that token (its "Authorize" button changes it).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

# Swagger UI's bundle, style and icon as the package ships them (only its FastAPIOffline class is API:
# its inline start-up script is what this module replaces, see above)
SWAGGER_UI_FILES = Path(fastapi_offline.__file__).parent / "static"

DOCS = "/docs"
STATIC = "/docs/static"
INIT_JS = "/docs/init.js"
DOCS_CSS = "/docs/docs.css"
SWAGGER_JS = f"{STATIC}/swagger-ui-bundle.js"
SWAGGER_CSS = f"{STATIC}/swagger-ui.css"
FAVICON = f"{STATIC}/favicon.png"
# What a browser needs to show the docs and ask for a token: public even when the app has a token.
# (The rest of the mounted folder, ReDoc's bundle, stays behind the token.)
PUBLIC_PATHS = (DOCS, INIT_JS, DOCS_CSS, SWAGGER_JS, SWAGGER_CSS, FAVICON)
SCHEME = "bearer"  # the security scheme's name in the OpenAPI schema (Swagger UI's "Authorize")
TOKEN_KEY = "melanoma-token"  # sessionStorage key, shared with the page

# Only this origin's scripts and styles, none inline; data: images are Swagger UI's CSS icons, blob: its
# rendering of binary responses.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

DOCS_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>melanoma API docs</title>
<link rel="stylesheet" href="{SWAGGER_CSS}">
<link rel="stylesheet" href="{DOCS_CSS}">
<link rel="icon" type="image/png" href="{FAVICON}">
</head>
<body>
<form id="token-form" hidden>
  <label for="token" id="token-message">This server needs its access token:</label>
  <input id="token" type="password" autocomplete="off" required>
  <button id="token-submit" type="submit">Use token</button>
</form>
<p id="docs-error" role="alert"></p>
<div id="swagger-ui"></div>
<script src="{SWAGGER_JS}"></script>
<script src="{INIT_JS}"></script>
</body>
</html>
"""

DOCS_CSS_TEXT = """
#token-form { max-width: 1400px; margin: 16px auto; padding: 0 20px; font: 14px sans-serif; }
#token-form[hidden] { display: none; }
#token-form input { margin: 0 8px; padding: 4px; min-width: 24em; }
#docs-error { max-width: 1400px; margin: 8px auto; padding: 0 20px; color: #b00020; font: 14px sans-serif; }
"""

INIT_JS_TEXT = f""""use strict";
// Starts Swagger UI on this app's schema, asking for the bearer token first when the app wants one.
(() => {{
  const KEY = "{TOKEN_KEY}", SPEC = "/openapi.json";
  const $ = (id) => document.getElementById(id);
  const wantsBearer = (r) =>
    r.status === 401 && (r.headers.get("WWW-Authenticate") || "").startsWith("Bearer");
  const load = (token) => fetch(SPEC, {{ headers: token ? {{ Authorization: "Bearer " + token }} : {{}} }});

  function askToken(message) {{
    const form = $("token-form");
    $("token-message").textContent = message;
    $("token").value = "";
    form.hidden = false;
    $("token").focus();
    return new Promise((resolve) => {{
      form.addEventListener("submit", (e) => {{
        e.preventDefault();
        form.hidden = true;
        resolve($("token").value.trim());
      }}, {{ once: true }});
    }});
  }}

  async function schema() {{
    let token = sessionStorage.getItem(KEY);
    let r = await load(token);
    while (wantsBearer(r)) {{
      const detail = (await r.json().catch(() => ({{}}))).detail || "refused";
      token = await askToken(token ? "Token refused (" + detail + "). Enter the right one:"
                                   : "This server needs its access token:");
      r = await load(token);
    }}
    if (!r.ok) throw new Error(SPEC + ": HTTP " + r.status);
    if (token) sessionStorage.setItem(KEY, token);
    return [await r.json(), token];
  }}

  schema().then(([spec, token]) => {{
    const ui = SwaggerUIBundle({{
      spec,
      dom_id: "#swagger-ui",
      layout: "BaseLayout",
      deepLinking: true,
      validatorUrl: null,  // never ask swagger.io to validate (or even show its badge)
      presets: [SwaggerUIBundle.presets.apis],
      onComplete: () => {{ if (token) ui.preauthorizeApiKey("{SCHEME}", token); }},
    }});
  }}).catch((e) => {{ $("docs-error").textContent = "could not load the API schema: " + e; }});
}})();
"""


def mount_docs(app: FastAPI) -> None:
    """``/docs`` with Swagger UI from the ``fastapi-offline`` package (the browser needs no network)."""
    app.mount(STATIC, StaticFiles(directory=SWAGGER_UI_FILES), name="swagger-ui")

    @app.get(DOCS, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(
            DOCS_HTML, headers={"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-store"}
        )

    @app.get(INIT_JS, include_in_schema=False)
    async def init_js() -> Response:
        return Response(INIT_JS_TEXT, media_type="text/javascript")

    @app.get(DOCS_CSS, include_in_schema=False)
    async def docs_css() -> Response:
        return Response(DOCS_CSS_TEXT, media_type="text/css")


def declare_bearer(app: FastAPI, public: Iterable[str]) -> None:
    """Declare the bearer scheme in the OpenAPI schema, required by every operation but those on the
    ``public`` paths, so Swagger UI shows "Authorize" and the schema says what a client must send."""
    build = app.openapi
    public = frozenset(public)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # FastAPI's, cached in app.openapi_schema: amended once, in place
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})[SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "the token `melanoma serve` was started with (MELANOMA_SERVE_TOKEN or --token-file)",
        }
        schema["security"] = [{SCHEME: []}]
        for path, operations in schema.get("paths", {}).items():
            if path in public:
                for operation in operations.values():
                    operation["security"] = []  # no token needed here
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
