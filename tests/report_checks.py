"""Checks on the report stage's Markdown, shared by tests/test_report.py (one hand-made study, for edge
cases) and tests/integration/test_report_outputs.py (a real tiny pipeline's outputs): every printed
number traced back to a source file, Markdown tables read back as rows."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")


def fmt3(value: Any) -> str | None:
    """The report's number format, written out again here: ints as is, other numbers to 3 decimals."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return None


def ci(t: dict[str, Any], key: str) -> str:
    """``value [low, high]`` as the report prints a metric with its bootstrap interval."""
    return f"{fmt3(t[key])} [{fmt3(t[f'{key}_ci_low'])}, {fmt3(t[f'{key}_ci_high'])}]"


def _leaves(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _leaves(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _leaves(v)]
    return [obj]


def source_numbers(root: Path, models: Sequence[str], limits: tuple[int, int]) -> set[str]:
    """Every number the README may print: each numeric value of every source JSON, formatted as the
    report formats it, numbers quoted inside their strings (the registry's reason, '<40'), and the
    small-group ``limits`` (n, melanoma) the report was called with."""
    files = [root / "data/prepared/provenance/ingest_report.json", root / "data/prepared/prepare_report.json",
             root / "data/splits/split_report.json", root / "reports/registry.json"]  # fmt: skip
    for name in models:
        files += [root / f"models/{name}/model.json", root / f"reports/metrics/{name}.json"]
        files += sorted((root / "reports/plots" / name).glob("*.json"))
    out = {str(limit) for limit in limits}
    for path in files:
        for leaf in _leaves(json.loads(path.read_text())):
            if isinstance(leaf, str):
                out |= set(NUMBER_RE.findall(leaf))
            elif (text := fmt3(leaf)) is not None:
                out.add(text)
    return out


def report_numbers(markdown: str) -> list[str]:
    """Numbers a reader sees: table bodies and prose; not headings, table headers, code or links."""
    lines = markdown.splitlines()
    found = []
    for i, line in enumerate(lines):
        is_header = i + 1 < len(lines) and lines[i + 1].startswith("|---")
        if line.startswith("#") or line.startswith("|---") or is_header:
            continue
        text = re.sub(r"`[^`]*`", "", line)
        text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
        found += NUMBER_RE.findall(text)
    return found


def untraced(markdown: str, root: Path, models: Sequence[str], limits: tuple[int, int]) -> set[str]:
    return set(report_numbers(markdown)) - source_numbers(root, models, limits)


def md_tables(markdown: str) -> list[list[dict[str, str]]]:
    """Every Markdown table as a list of {header: cell} rows."""
    tables, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") and i > 0:
            head = [c.strip() for c in lines[i - 1].strip("|").split(" | ")]
            rows, j = [], i + 1
            while j < len(lines) and lines[j].startswith("|"):
                cells = [c.strip() for c in lines[j].strip().strip("|").split(" | ")]
                rows.append(dict(zip(head, cells, strict=True)))
                j += 1
            tables.append(rows)
    return tables


def table_with(markdown: str, column: str) -> list[dict[str, str]]:
    return next(t for t in md_tables(markdown) if t and column in t[0])


def digests(root: Path) -> dict[str, str]:
    """sha256 of README.md, model_card.md and every figure under ``root/reports``."""
    out = root / "reports"
    files = [out / "README.md", out / "model_card.md", *sorted((out / "figures").iterdir())]
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
