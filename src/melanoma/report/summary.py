"""The one-table summary of a run: every model's validation and test figures, the champion marked.

The report puts it at the top of reports/README.md; the project's README.md carries the same
table between two markers, copied from the committed report by ``make readme-results``, and a
test compares the two, so the README's results cannot drift from the pipeline's files.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from melanoma.report import fmt
from melanoma.report.inputs import ModelResult, Study

HEADING = "## Summary"
BEGIN = "<!-- summary: copied from reports/README.md by `make readme-results`; do not edit -->"
END = "<!-- /summary -->"


def describe(m: ModelResult) -> str:
    """What the model is, in a few words, from its model.json."""
    info: dict[str, Any] = m.info
    family = info.get("family")
    if family == "baseline":
        meta = info.get("metadata") or {}
        cols = meta.get("columns") if isinstance(meta, dict) else None
        extra = f", + {'/'.join(cols)}" if cols else ", images only"
        return f"{m.name} ({info.get('candidate')}, chosen on validation{extra})"
    if family == "ensemble":
        members = " + ".join(info.get("members") or [])
        return f"{m.name} ({members}, {info.get('method')}; val AUC out-of-fold)"
    if info.get("backbone"):
        return f"{m.name} ({info['backbone']}, weights {info.get('weights')})"
    return f"{m.name} (CNN from scratch, best epoch {fmt.num(info.get('best_epoch'))} of {fmt.num(info.get('epochs_run'))})"


def summary_table(study: Study, champion: str | None) -> str:
    """Validation AUC, test ROC AUC [CI], PR AUC, sensitivity / specificity at the model's threshold,
    test ECE before → after calibration and the external ROC AUC [CI], one row per model."""
    header = ["model", "val AUC", "test ROC AUC [95% CI]", "PR AUC", "sens / spec",
              "test ECE before → after calibration", "external ROC AUC [95% CI]"]  # fmt: skip
    rows = []
    for m in study.models:
        t, val = m.test, m.info.get("val") or {}
        name = describe(m)
        rows.append(
            [
                f"**{name}**: champion" if m.name == champion else name,
                fmt.num(val.get("val_roc_auc")),
                fmt.with_ci(t, "roc_auc"),
                fmt.num(t.get("pr_auc")),
                f"{fmt.num(t.get('sensitivity'))} / {fmt.num(t.get('specificity'))}",
                f"{fmt.num(t.get('ece_uncalibrated'))} → {fmt.num(t.get('ece'))}",
                fmt.with_ci(m.external, "roc_auc") if m.external else fmt.NA,
            ]
        )
    return fmt.table(header, rows)


def extract(report_md: str) -> str:
    """The summary table of a rendered reports/README.md (the first table after ``HEADING``)."""
    lines = report_md.splitlines()
    if HEADING not in lines:
        raise ValueError(f"no '{HEADING}' section in the report")
    rest = lines[lines.index(HEADING) + 1 :]
    start = next((i for i, line in enumerate(rest) if line.startswith("|")), None)
    if start is None:
        raise ValueError(f"no table under '{HEADING}' in the report")
    end = next((i for i in range(start, len(rest)) if not rest[i].startswith("|")), len(rest))
    return "\n".join(rest[start:end])


def splice(readme: str, table: str) -> str:
    """``readme`` with the text between ``BEGIN`` and ``END`` replaced by ``table``."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ValueError(f"the README needs exactly one '{BEGIN}' ... '{END}' block")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def block(readme: str) -> str:
    """The table the README carries between the markers."""
    return readme.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def main(argv: list[str]) -> int:
    """``summary.py README.md reports/README.md``: copy the report's summary table into the README."""
    if len(argv) != 2:
        print("usage: python -m melanoma.report.summary README.md reports/README.md", file=sys.stderr)
        return 2
    readme, report = map(Path, argv)
    try:
        text = splice(readme.read_text(encoding="utf-8"), extract(report.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        print(f"readme-results: {exc}", file=sys.stderr)
        return 1
    readme.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
