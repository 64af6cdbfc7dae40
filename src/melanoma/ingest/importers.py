"""Importers for local data: a folder of images (``folder``) and ISIC challenge datasets (``challenge``).

Both write the shared raw layout (``melanoma.ingest.layout``); the details live in
``melanoma.ingest.folder``, ``melanoma.ingest.challenge`` and, for ``download: true``,
``melanoma.ingest.s3list``.
"""

from __future__ import annotations

from melanoma.ingest.challenge import import_challenge
from melanoma.ingest.folder import import_folder

__all__ = ["import_challenge", "import_folder"]
