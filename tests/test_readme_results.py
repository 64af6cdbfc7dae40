"""The README's results table is the committed report's summary table, copied by `make readme-results`."""

from __future__ import annotations

from pathlib import Path

import pytest

from melanoma.report import summary

REPO = Path(__file__).resolve().parents[1]


def test_the_readme_table_is_the_committed_reports_summary() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    report = (REPO / "reports" / "README.md").read_text(encoding="utf-8")
    assert summary.block(readme) == summary.extract(report), (
        "README.md's results table differs from reports/README.md's summary: run `make readme-results`"
    )


REPORT = "# Report\n\nintro\n\n## Summary\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## Next\n\n| x |\n|---|\n"


def test_splice_replaces_only_the_block_and_extract_takes_the_summary_table() -> None:
    readme = f"top\n{summary.BEGIN}\n| old |\n{summary.END}\nbottom\n"
    table = summary.extract(REPORT)
    assert table == "| a | b |\n|---|---|\n| 1 | 2 |"
    out = summary.splice(readme, table)
    assert out == f"top\n{summary.BEGIN}\n{table}\n{summary.END}\nbottom\n"
    assert summary.block(out) == table
    assert summary.splice(out, table) == out  # idempotent


@pytest.mark.parametrize(
    ("readme", "report", "error"),
    [
        ("no markers", REPORT, "needs exactly one"),
        (f"{summary.END}\n{summary.BEGIN}", REPORT, "needs exactly one"),
        (f"{summary.BEGIN}\n{summary.END}", "# Report\n\nno summary\n", "no '## Summary' section"),
        (f"{summary.BEGIN}\n{summary.END}", "## Summary\n\ntext only\n", "no table under"),
    ],
)
def test_a_readme_or_report_without_its_part_is_refused(
    tmp_path: Path, readme: str, report: str, error: str, capsys
) -> None:  # noqa: ANN001
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "report.md").write_text(report)
    assert summary.main([str(tmp_path / "README.md"), str(tmp_path / "report.md")]) == 1
    assert error in capsys.readouterr().err
    assert (tmp_path / "README.md").read_text() == readme  # untouched
