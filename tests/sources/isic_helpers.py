"""Helpers of the ISIC source tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fakes.isic_server import FakeIsicServer
from melanoma.config import IsicParams
from melanoma.sources import http as mhttp
from melanoma.sources.isic import RUN_KEYS, IsicApi


def isic_params(srv: FakeIsicServer, **overrides: Any) -> IsicParams:
    base: dict[str, Any] = {
        "base_url": srv.base_url,
        "concurrency": 4,
        "retries": 3,
        "backoff_seconds": 0.01,
        "max_backoff_seconds": 0.05,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
    }
    base.update(overrides)
    return IsicParams(**base)


def api_for(srv: FakeIsicServer, **overrides: Any) -> IsicApi:
    p = isic_params(srv, **overrides)
    policy = mhttp.RetryPolicy(retries=p.retries, backoff_seconds=p.backoff_seconds, max_backoff_seconds=0.05)
    return IsicApi(p.base_url, policy, p.allowed_hosts)


def visible_ids(srv: FakeIsicServer) -> list[str]:
    return sorted(im.isic_id for im in srv.images if im.public)


def image_files(raw: Path) -> dict[str, bytes]:
    """The files in ``raw/images`` by name ({} when there is no such folder)."""
    images = raw / "images"
    return {p.name: p.read_bytes() for p in sorted(images.iterdir())} if images.is_dir() else {}


def read_report(raw: Path) -> dict[str, Any]:
    return json.loads((raw / "ingest_report.json").read_text(encoding="utf-8"))


def written(report: dict[str, Any]) -> dict[str, Any]:
    """The part of download_isic's return value that ingest_report.json holds (no RUN_KEYS)."""
    return {k: v for k, v in report.items() if k not in RUN_KEYS}


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }
