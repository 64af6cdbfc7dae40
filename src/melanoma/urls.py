"""The one rule for every URL the pipeline fetches from: https, or plain http only on loopback.

Plain http is for servers on this machine (the test fakes, a local S3 or MLflow on 127.0.0.1);
anything that leaves the machine goes over https. The params schema (``melanoma.config``), the
bucket addresses (``sources.s3``) and the HTTP guard (``sources.http``) all ask here, so the
loopback host set and the wording of a refusal exist once. A leaf module: standard library only.
"""

from __future__ import annotations

from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # urlsplit().hostname spells them so (lower case)


def is_loopback_http(url: str) -> bool:
    """True for an http(s) URL on this machine (the only place plain http is acceptable)."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and parts.hostname in LOOPBACK_HOSTS
    except ValueError:  # e.g. a bad port or an unclosed IPv6 bracket
        return False


def url_problem(url: str) -> str | None:
    """None if ``url`` is https, or http on loopback; else what is wrong, as "must ..." words."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "must be an http(s) URL"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an http(s) URL"
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
        return f"must use https (plain http only on loopback: {', '.join(LOOPBACK_HOSTS)})"
    return None
