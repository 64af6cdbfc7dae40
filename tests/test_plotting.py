"""plotting.py: the one PNG writer is byte-reproducible and version-free; the shared curve figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
from PIL import Image

from melanoma import plotting

ROC = [{"fpr": 0.0, "tpr": 0.0}, {"fpr": 0.2, "tpr": 0.7}, {"fpr": 1.0, "tpr": 1.0}]
PRC = [{"recall": 1.0, "precision": 0.4}, {"recall": 0.5, "precision": 0.8}]
CAL = [{"predicted": 0.1, "observed": 0.0}, {"predicted": 0.8, "observed": None}]
METRICS = {"roc_auc": 0.8, "pr_auc": 0.7, "prevalence": 0.4, "sensitivity": 0.7, "specificity": 0.8,
           "tn": 8, "fp": 2, "fn": 3, "tp": 7, "threshold": 0.5, "ece": 0.05}  # fmt: skip


def _draw_all(folder: Path, models: list[plotting.Scored]) -> list[Path]:
    folder.mkdir()
    plotting.roc(folder / "roc.png", models, "ROC")
    plotting.precision_recall(folder / "prc.png", models, "PR")
    plotting.confusion(folder / "confusion.png", models, "Confusion")
    plotting.reliability(folder / "calibration.png", models, "Calibration")
    return sorted(folder.iterdir())


@pytest.mark.parametrize("n_models", [1, 3])
def test_the_figures_are_byte_identical_on_a_redraw_and_carry_no_software_version(
    tmp_path: Path, n_models: int
) -> None:
    models = [plotting.Scored(f"m{i}", METRICS, ROC, PRC, CAL) for i in range(n_models)]
    first, second = _draw_all(tmp_path / "a", models), _draw_all(tmp_path / "b", models)
    assert [p.name for p in first] == ["calibration.png", "confusion.png", "prc.png", "roc.png"]
    for a, b in zip(first, second, strict=True):
        data = a.read_bytes()
        assert data == b.read_bytes(), a.name
        assert b"Software" not in data and matplotlib.__version__.encode() not in data, a.name
        with Image.open(a) as im:
            assert im.format == "PNG" and im.info.get("dpi", (plotting.DPI,))[0] == pytest.approx(
                plotting.DPI, abs=1
            )


def test_missing_metrics_leave_labels_out_instead_of_failing(tmp_path: Path) -> None:
    bare = plotting.Scored("bare", {}, ROC, PRC)  # no metrics, no calibration rows
    assert len(_draw_all(tmp_path / "bare", [bare])) == 4


def test_a_failed_drawing_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), plotting.figure(tmp_path / "x.png"):
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
