"""Shared fixtures (the helpers behind them are in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import make_raw

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


TESTS = Path(__file__).resolve().parent
# Folders whose every test trains a model or starts a server: out of `make test-fast`.
SLOW_FOLDERS = frozenset({"models", "integration"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of ``SLOW_FOLDERS`` ``slow`` (others carry the mark themselves)."""
    for item in items:
        rel = Path(item.fspath).resolve().relative_to(TESTS)
        if rel.parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    make_raw(raw)
    return raw
