"""Temporary shim: the HTTP layer moved to ``melanoma.sources.http``.

Kept only until ``ingest/s3list.py`` (being replaced by ``melanoma.sources.s3``) is removed; it
keeps that module's old calls (``get_text``, a session with retries mounted) working meanwhile.
"""

from __future__ import annotations

from typing import Any

from melanoma.sources.http import (  # noqa: F401 - re-exported for ingest/s3list.py
    DownloadResult,
    HttpError,
    RetryPolicy,
    RetryStats,
    UrlGuard,
    download_to,
    get,
    is_loopback_http,
    partial_files,
)
from melanoma.sources.http import make_session as _make_session


def make_session(user_agent: str, pool_size: int = 16, accept: str = "application/json") -> Any:
    return _make_session(user_agent, pool_size, accept, retry=RetryPolicy().retry())


def get_text(session: Any, url: str, params: Any = None, policy: Any = None, *, url_guard: Any = None) -> str:
    return get(session, url, params, policy, decode="text", url_guard=url_guard)
