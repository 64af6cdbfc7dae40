"""The ``report`` stage: reports/README.md, reports/model_card.md and reports/figures/*.png.

Everything is regenerated from the pipeline's files (read only through ``melanoma.contracts`` and
``melanoma.raw_layout``), and the same inputs give the same bytes, so DVC sees no change on a rerun.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from melanoma import atomic
from melanoma.report import figures, names, readme
from melanoma.report.inputs import ModelResult, ReportPaths, Study, load_study
from melanoma.report.model_card import render_model_card
from melanoma.report.tables import external_models

__all__ = ["ModelResult", "ReportPaths", "Study", "load_study", "write_report", "README_MD", "MODEL_CARD_MD"]

log = logging.getLogger(__name__)
README_MD = "README.md"
MODEL_CARD_MD = "model_card.md"
FIGURES_DIR = "figures"


def _write_figures(folder: Path, study: Study, per_class: int, seed: int) -> None:
    figures.sample_grid(folder / names.SAMPLES, study, per_class, seed)
    splits = [s for s in names.SPLIT_NAMES if isinstance(study.split.get(s), dict)]
    figures.class_balance(folder / names.BALANCE, study.split, splits)
    for m in study.models:
        if m.history:
            figures.training_curve(folder / names.training_figure(m.name), m)
    figures.roc_all(folder / names.ROC, study.models)
    figures.prc_all(folder / names.PRC, study.models)
    if external_models(study.models):
        figures.roc_all(folder / names.EXTERNAL_ROC, external_models(study.models), external=True)
        figures.prc_all(folder / names.EXTERNAL_PRC, external_models(study.models), external=True)
    if any(len(m.conditions()) > 1 for m in study.models):
        figures.gap(folder / names.GAP, study.models)
    figures.confusion_all(folder / names.CONFUSION, study.models)
    figures.calibration_all(folder / names.CALIBRATION, study.models)


def write_report(
    paths: ReportPaths,
    model_names: Sequence[str],
    *,
    seed: int,
    samples_per_class: int = 8,
    small_group_n: int = 30,
    small_group_melanoma: int = 5,
) -> list[Path]:
    """Write README.md, model_card.md and figures/ under ``paths.out_dir``; return the files written.

    ``model_names`` are the evaluated models, in the order they are shown. ``seed`` picks the
    sample images. Subgroups below ``small_group_n`` images or ``small_group_melanoma`` melanomas
    are flagged. A missing or unreadable input raises DataError naming the file, before anything
    is written. The figures folder is replaced as a whole, so figures of removed models vanish.
    """
    study = load_study(paths, model_names)
    limits = {"min_n": small_group_n, "min_melanoma": small_group_melanoma}
    readme_text = readme.render_readme(study, **limits)
    card_text = render_model_card(study, **limits)
    out = Path(paths.out_dir)
    with atomic.atomic_dir(out / FIGURES_DIR) as tmp:
        _write_figures(tmp, study, samples_per_class, seed)
        names = sorted(p.name for p in tmp.iterdir())
    atomic.write_text(out / README_MD, readme_text)
    atomic.write_text(out / MODEL_CARD_MD, card_text)
    written = [out / README_MD, out / MODEL_CARD_MD, *(out / FIGURES_DIR / n for n in names)]
    log.info("report: wrote %s, %s and %d figures in %s", README_MD, MODEL_CARD_MD, len(names), out)
    return written
