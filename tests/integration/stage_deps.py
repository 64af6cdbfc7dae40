"""The dvc.yaml deps check: every project file a stage's command loads must be covered by its deps.

Traces come from ``trace/sitecustomize.py`` (the modules each stage's process really imported);
deps come from dvc.lock (the resolved ``deps:`` of every stage, foreach expanded by DVC itself).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path, PurePosixPath

# Plumbing that cannot change a stage's output: argument parsing and dispatch, exception classes,
# the package marker with the version string. Everything else a stage loads must be a dep.
EXEMPT = frozenset(
    {
        "src/melanoma/__init__.py",
        "src/melanoma/__main__.py",
        "src/melanoma/cli/__init__.py",
        "src/melanoma/cli/common.py",
        "src/melanoma/cli/stages.py",
        "src/melanoma/cli/tools.py",
        "src/melanoma/errors.py",
    }
)


def read_traces(trace_dir: Path, project: Path) -> dict[str, set[str]]:
    """Stage -> project-relative files (``src/melanoma/...``) loaded by that stage's processes.

    ``project`` is the checkout the ``melanoma`` package is imported from (an editable install).
    """
    src = (project / "src").resolve()
    loaded: dict[str, set[str]] = defaultdict(set)
    for path in sorted(Path(trace_dir).glob("*.json")):
        trace = json.loads(path.read_text(encoding="utf-8"))
        for file in trace["files"]:
            resolved = Path(file).resolve()
            if resolved.is_relative_to(src):
                loaded[trace["stage"]].add(resolved.relative_to(project.resolve()).as_posix())
    return dict(loaded)


def lock_deps(lock: dict) -> dict[str, list[str]]:
    """Stage -> its resolved dep paths, from a parsed dvc.lock."""
    return {name: [d["path"] for d in stage.get("deps", [])] for name, stage in lock["stages"].items()}


def covered(file: str, deps: list[str]) -> bool:
    """True when ``file`` is one of ``deps`` or lies under a directory dep."""
    p = PurePosixPath(file)
    return any(p == PurePosixPath(d) or PurePosixPath(d) in p.parents for d in deps)


def missing_deps(deps: dict[str, list[str]], loaded: dict[str, set[str]]) -> list[str]:
    """'stage: file' for every loaded, non-exempt project file that the stage's deps do not cover."""
    problems = []
    for stage, files in sorted(loaded.items()):
        if stage not in deps:
            problems.append(f"{stage}: traced but not in dvc.lock")
            continue
        problems += [f"{stage}: {f}" for f in sorted(files - EXEMPT) if not covered(f, deps[stage])]
    return problems
