"""Temporary alias: the HTTP layer moved to ``melanoma.sources.http``.

Kept only until ``ingest/s3list.py`` (being moved to ``melanoma.sources.s3``) stops importing it.
"""

import sys

from melanoma.sources import http as _http

sys.modules[__name__] = _http
