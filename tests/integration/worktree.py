"""A working copy of the project without its pipeline outputs (shared by the end-to-end tests and
benchmarks/bench_scale.py, which runs the pipeline at several N)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def copy_repo(dest: Path, repo: Path = REPO) -> None:
    """Copy the tracked and untracked-but-not-ignored files (what a clone would have, plus work in
    progress), leaving out data/, models/ and reports/ (the pipeline's outputs)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = repo / name.decode()
        if src.is_file() and not name.startswith((b"data/", b"models/", b"reports/")):
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
