"""Access control and the offline docs, in process: the bearer middleware, the public allow-list, the
OpenAPI security scheme, the docs' CSP, and the CLI's token sources and host rule (no server, no model).

The app is driven through the ASGI protocol as in test_serve_metadata.py; requests that the middleware
refuses never reach a route, so the app is built over a holder it never touches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from pathlib import Path
from typing import Any, cast

import pytest

from melanoma.cli.tools import TOKEN_ENV, check_exposure, read_token_file, serve_token
from melanoma.errors import MelanomaError
from melanoma.serve import Limits, ModelHolder, create_app
from melanoma.serve.auth import PUBLIC_PATHS, BearerAuth, check_token, is_loopback_host, tokens_match
from melanoma.serve.docs import DOCS_CSP, SWAGGER_UI_FILES

TOKEN = "s3cret-token-0123456789abcdef"
LIMITS = Limits(max_bytes=1000, max_pixels=1000, max_batch=1)


def call(
    app: Any, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI interface: status, headers (lower-case names) and body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop(0)
        await asyncio.Event().wait()  # the client stays: a file response listens for a disconnect
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # A thread of its own: Playwright's sync API may have left an event loop running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()
    start = next(m for m in sent if m["type"] == "http.response.start")
    head = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    return (
        start["status"],
        head,
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
    )


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What the middleware guards here: 200 "ok" for anything."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("10.0.0.1", False),
        ("fe80::1", False),
        ("example.org", False),
        ("localhost.example.org", False),
        ("128.0.0.1", False),
    ],
)
def test_host_classification(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_token_compare_and_check() -> None:
    assert tokens_match(TOKEN.encode(), TOKEN.encode())
    assert not tokens_match(TOKEN[:-1].encode(), TOKEN.encode())  # a prefix, another length
    assert not tokens_match(b"", TOKEN.encode())
    assert not tokens_match(TOKEN.upper().encode(), TOKEN.encode())
    assert check_token(TOKEN) == TOKEN
    with pytest.raises(MelanomaError, match="at least 16"):
        check_token("short")
    with pytest.raises(MelanomaError, match="printable ASCII"):
        check_token("has a space in it, sixteen+")


@pytest.mark.parametrize(
    ("headers", "detail", "challenge"),
    [
        ({}, "missing bearer token", 'Bearer realm="melanoma"'),
        ({"Authorization": "Bearer wrong-token-that-is-long"}, "wrong bearer token", "invalid_token"),
        ({"Authorization": f"Basic {TOKEN}"}, "not a bearer token", "invalid_token"),
        ({"Authorization": "Bearer "}, "not a bearer token", "invalid_token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "wrong bearer token", "invalid_token"),
    ],
)
def test_refusals_say_what_is_wrong_and_never_echo_a_token(
    headers: dict[str, str], detail: str, challenge: str
) -> None:
    status, head, body = call(BearerAuth(ok_app, TOKEN), "/model", headers=headers)
    assert status == 401
    assert head["www-authenticate"].startswith("Bearer") and challenge in head["www-authenticate"]
    assert head["content-type"] == "application/json" and head["cache-control"] == "no-store"
    message = json.loads(body)["detail"]
    assert detail in message
    assert TOKEN not in message and "wrong-token" not in message


def test_right_token_passes_and_the_public_list_is_exact() -> None:
    guarded = BearerAuth(ok_app, TOKEN)
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert call(guarded, "/model", headers={"Authorization": f"{scheme} {TOKEN}"})[0] == 200
    assert call(guarded, "/predict", "POST", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    for path in ("/", "/health", "/docs"):
        assert call(guarded, path)[0] == 200
        assert call(guarded, path, "HEAD")[0] == 200
        assert call(guarded, path, "POST")[0] == 401  # public means reading, not posting
    for path in ("/openapi.json", "/docs/", "/health/", "/docs/static/../openapi.json", "/nowhere"):
        assert call(guarded, path)[0] == 401, path
    # ... and GET /openapi.json, /model, /predict are not in it at all
    assert {"/openapi.json", "/model", "/predict", "/predict/batch"}.isdisjoint(PUBLIC_PATHS)


def app_with(token: str | None) -> Any:
    # Never touched: every request below is answered by the middleware or by the docs routes.
    return create_app(cast(ModelHolder, object()), LIMITS, token=token)


def test_app_with_token_guards_the_schema_and_serves_the_docs_publicly() -> None:
    app = app_with(TOKEN)
    status, head, _ = call(app, "/openapi.json")
    assert status == 401 and head["www-authenticate"].startswith("Bearer")
    assert call(app, "/model")[0] == 401 and call(app, "/predict", "POST")[0] == 401
    status, _, body = call(app, "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    schema = json.loads(body)
    assert status == 200
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert schema["security"] == [{"bearer": []}]
    assert schema["paths"]["/health"]["get"]["security"] == []  # the one public operation
    assert "security" not in schema["paths"]["/predict"]["post"]  # the global rule applies
    # the docs: public HTML with its own CSP (no inline script allowed), public Swagger UI files
    status, head, body = call(app, "/docs")
    assert status == 200 and head["content-security-policy"] == DOCS_CSP
    assert "script-src 'self';" in DOCS_CSP and "unsafe" not in DOCS_CSP
    assert b"<script>" not in body and b"cdn" not in body.lower()
    assert b'id="token-form"' in body and b'id="token"' in body and b'id="token-submit"' in body
    for path, media in (
        ("/docs/init.js", "text/javascript"),
        ("/docs/docs.css", "text/css"),
        ("/docs/static/swagger-ui-bundle.js", "javascript"),
        ("/docs/static/swagger-ui.css", "text/css"),
        ("/docs/static/favicon.png", "image/png"),
    ):
        status, head, body = call(app, path)
        assert status == 200 and media in head["content-type"] and body, path
    assert call(app, "/docs/static/redoc.standalone.js")[0] == 401  # in the folder, not on the list
    assert call(app, "/redoc")[0] == 401 and call(app, "/docs/oauth2-redirect")[0] == 401


def test_app_without_token_is_open_and_declares_no_scheme() -> None:
    app = app_with(None)
    status, _, body = call(app, "/openapi.json")
    schema = json.loads(body)
    assert status == 200 and "security" not in schema
    assert "securitySchemes" not in schema.get("components", {})
    assert call(app, "/docs")[0] == 200 and call(app, "/docs/static/swagger-ui-bundle.js")[0] == 200
    assert call(app, "/redoc")[0] == 404  # FastAPI's CDN-based pages are off
    assert (SWAGGER_UI_FILES / "swagger-ui-bundle.js").is_file()


def private_file(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_token_file_must_be_private_and_hold_a_token(tmp_path: Path) -> None:
    assert read_token_file(private_file(tmp_path / "ok", f"{TOKEN}\nignored\n", 0o600)) == TOKEN
    assert read_token_file(private_file(tmp_path / "ro", f"  {TOKEN}  \n", 0o400)) == TOKEN
    for mode in (0o644, 0o640, 0o604, 0o660):
        with pytest.raises(MelanomaError, match=f"mode {mode:04o}.*chmod 600"):
            read_token_file(private_file(tmp_path / f"m{mode:o}", TOKEN, mode))
    with pytest.raises(MelanomaError, match="no such file"):
        read_token_file(tmp_path / "missing")
    with pytest.raises(MelanomaError, match="first line is empty"):
        read_token_file(private_file(tmp_path / "empty", "", 0o600))
    with pytest.raises(MelanomaError, match="first line is empty"):
        read_token_file(private_file(tmp_path / "blank", "\n" + TOKEN, 0o600))
    with pytest.raises(MelanomaError, match="not a regular file"):
        read_token_file(tmp_path)
    with pytest.raises(MelanomaError, match="--token-file .*at least 16"):
        read_token_file(private_file(tmp_path / "short", "abc", 0o600))


def test_token_sources(tmp_path: Path) -> None:
    file = private_file(tmp_path / "token", TOKEN, 0o600)
    assert serve_token(None, {}) is None
    assert serve_token(None, {TOKEN_ENV: f" {TOKEN}\n"}) == TOKEN
    assert serve_token(file, {}) == TOKEN
    with pytest.raises(MelanomaError, match="both"):
        serve_token(file, {TOKEN_ENV: TOKEN})
    with pytest.raises(MelanomaError, match="set but empty"):
        serve_token(None, {TOKEN_ENV: " "})
    with pytest.raises(MelanomaError, match=f"\\${TOKEN_ENV}: .*at least 16"):
        serve_token(None, {TOKEN_ENV: "abc"})


def test_exposure_rule(caplog: pytest.LogCaptureFixture) -> None:
    check_exposure("127.0.0.1", None, insecure=False)  # as before: loopback needs nothing
    check_exposure("0.0.0.0", TOKEN, insecure=False)  # a token makes any interface fine
    with pytest.raises(MelanomaError) as refused:
        check_exposure("0.0.0.0", None, insecure=False)
    message = str(refused.value)
    assert "refusing" in message and TOKEN_ENV in message and "--token-file" in message
    assert "--insecure" in message
    with caplog.at_level(logging.WARNING, logger="melanoma"):
        check_exposure("0.0.0.0", None, insecure=True)
    assert any("--insecure" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
