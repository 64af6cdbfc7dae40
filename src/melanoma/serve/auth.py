"""Bearer-token access control for the app: a pure ASGI middleware with an explicit public allow-list.

A middleware rather than a per-route dependency, so that no route (a new one, a mount, a 404) can be
reached without the token by forgetting to declare it. Only the static pieces a browser needs before it
can ask for the token are public: the page, the liveness probe and the API docs' HTML, script and style.
The token itself never comes from here: the CLI reads it (environment or a file) and passes it in.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from melanoma.errors import ConfigError
from melanoma.serve import docs

# The explicit allow-list (GET/HEAD, exact paths): the page (static HTML that asks for the token), the
# liveness probe, and the docs' HTML, script and style. /openapi.json and every API route need the token.
PUBLIC_PATHS = frozenset({"/", "/health", *docs.PUBLIC_PATHS})
REALM = "melanoma"
MIN_TOKEN_CHARS = 16
NEW_TOKEN_HINT = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def is_loopback_host(host: str) -> bool:
    """True when binding ``host`` keeps the app on this machine: ``localhost``, 127.0.0.0/8 or ::1
    (an IPv4-mapped loopback too). Anything else, other host names and ``0.0.0.0`` included, is not."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.split("%")[0])  # drop an IPv6 zone ("::1%lo")
    except ValueError:
        return False  # a host name other than localhost may resolve to any interface
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def check_token(token: str) -> str:
    """``token`` if it can be sent in an HTTP header and is not trivially guessable, else ConfigError."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"the serve token has {len(token)} characters: use at least {MIN_TOKEN_CHARS} "
            f"(make one with: {NEW_TOKEN_HINT})"
        )
    if not all("!" <= c <= "~" for c in token):
        raise ConfigError("the serve token must be printable ASCII without spaces (it is sent in a header)")
    return token


def tokens_match(given: bytes, expected: bytes) -> bool:
    """Constant-time comparison. Both sides are hashed first so that neither the content nor the length
    of the expected token shows in the time taken (``compare_digest`` returns early on unequal lengths)."""
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest())


class BearerAuth:
    """Requires ``Authorization: Bearer <token>`` on every HTTP request except GET/HEAD of the
    ``public`` paths (exact matches). Refusals are 401 with ``WWW-Authenticate: Bearer`` and a JSON
    ``detail`` that says what was missing or wrong, never the token."""

    def __init__(self, app: ASGIApp, token: str, public: Iterable[str] = PUBLIC_PATHS) -> None:
        self.app = app
        self.expected = check_token(token).encode("ascii")
        self.public = frozenset(public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or self.is_public(scope):
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # the app has none; refused before any accept all the same
            await send({"type": "websocket.close", "code": 1008})
            return
        # The body is not read: an unauthenticated upload costs the server nothing past its headers.
        await unauthorized(send, *refusal)

    def is_public(self, scope: Scope) -> bool:
        # Exact paths only (no prefixes), so "/docs/static/../x"-style paths can never widen the list.
        return scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and scope["path"] in self.public

    def refusal(self, scope: Scope) -> tuple[str, str] | None:
        """None when the request carries the right token, else (detail, WWW-Authenticate value)."""
        values = [v for k, v in scope.get("headers", ()) if k == b"authorization"]
        missing = f'Bearer realm="{REALM}"'
        invalid = f'Bearer realm="{REALM}", error="invalid_token"'
        if not values:
            return (
                "missing bearer token: send the header 'Authorization: Bearer <token>' with the token "
                "`melanoma serve` was started with",
                missing,
            )
        if len(values) > 1:
            return "more than one Authorization header: send exactly one", invalid
        scheme, _, given = values[0].strip().partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return (
                "the Authorization header is not a bearer token: send 'Authorization: Bearer <token>'",
                invalid,
            )
        if not tokens_match(given.strip(), self.expected):
            return "wrong bearer token", invalid
        return None


async def unauthorized(send: Send, detail: str, challenge: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge.encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
