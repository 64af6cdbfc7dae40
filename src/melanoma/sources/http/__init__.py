"""HTTP for bulk downloads of public files: urllib3 retries, guarded redirects, atomic files.

Nothing here knows about ISIC. What a library does, the library does: when to retry (429 and 5xx,
connection and read errors, idempotent GETs only), how long to wait (exponential backoff with
jitter, capped; a server's ``Retry-After`` honoured, also capped) and when to give up are urllib3's
``Retry`` (``RetryPolicy.retry``), mounted on the session's ``HTTPAdapter`` for ``get``. Kept here
is only what no library does:

* redirects are followed by hand and each target is checked by a ``UrlGuard`` (https on an exact
  host list) *before* anything connects to it: a redirect to a foreign host costs not even a DNS
  lookup;
* ``download_to``: a body that breaks mid-way, ends short or has the wrong size is fetched again
  (urllib3 cannot see a body it has already handed over), driven by the same ``Retry`` object so the
  budget and the waits are one; the body goes to a hidden temp file renamed into place only when
  complete (``melanoma.atomic``), and failures come back as a ``DownloadResult``, never raised.

Modules: ``retry`` (the policy, urllib3's ``Retry`` with a tally and cancellable waits),
``request`` (the guard, the session, ``get``), ``download`` (``download_to``). All functions are
thread-safe; one session may be shared by many threads (``make_session`` sizes the pool).
"""

from melanoma.sources.http.download import (
    DISK_FULL_ERRNOS,
    PARTIAL_SUFFIX,
    RETRYABLE_ERRORS,
    DiskFull,
    DownloadResult,
    ShortBody,
    SizeMismatch,
    download_to,
    partial_files,
)
from melanoma.sources.http.request import HttpError, UrlCheck, UrlGuard, get, make_session, server_message
from melanoma.sources.http.retry import (
    RETRY_STATUSES,
    Cancelled,
    RetryPolicy,
    RetryStats,
    TallyRetry,
    retry_reason,
)
from melanoma.urls import LOOPBACK_HOSTS, is_loopback_http  # the one URL rule, for the sources' use

__all__ = [
    "DISK_FULL_ERRNOS", "LOOPBACK_HOSTS", "PARTIAL_SUFFIX", "RETRYABLE_ERRORS", "RETRY_STATUSES",
    "Cancelled", "DiskFull", "DownloadResult", "HttpError", "RetryPolicy", "RetryStats", "ShortBody",
    "SizeMismatch", "TallyRetry", "UrlCheck", "UrlGuard", "download_to", "get", "is_loopback_http",
    "make_session", "partial_files", "retry_reason", "server_message",
]  # fmt: skip
