"""The report's figures: the study's own (sample images, class balance, training curves) and every
model's ROC, precision-recall, confusion and reliability plots, drawn by ``melanoma.plotting``.

Every plotted number comes from the Study (the pipeline's files); ``plotting`` keeps the PNG
bytes free of software versions and dates (they are a DVC output).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from melanoma import plotting
from melanoma.plotting import CLASS_COLOURS, CLASS_LABELS, colour
from melanoma.report.inputs import ModelResult, Study


def sample_grid(path: Path, study: Study, per_class: int, seed: int) -> list[str]:
    """A grid of ``per_class`` prepared images per class (seeded choice); returns the isic_ids."""
    labels = study.index["label"].to_numpy()
    rng = np.random.default_rng(seed)
    picks = []
    for cls in (1, 0):
        rows = np.flatnonzero(labels == cls)
        chosen = (
            np.sort(rng.choice(rows, size=min(per_class, len(rows)), replace=False)) if len(rows) else rows
        )
        picks.append(chosen)
    cols = max(1, max(len(p) for p in picks))
    with plotting.figure(path, nrows=2, ncols=cols, figsize=(1.3 * cols, 3.2), squeeze=False) as (fig, axes):
        for r, (cls, chosen) in enumerate(zip((1, 0), picks, strict=True)):
            for c in range(cols):
                ax = axes[r][c]
                ax.axis("off")
                if c < len(chosen):
                    ax.imshow(np.asarray(study.images[chosen[c]]), interpolation="nearest")
                    ax.set_title(str(study.index["isic_id"].iloc[chosen[c]]), fontsize=6, fontweight="normal")
            axes[r][0].text(-0.1, 0.5, CLASS_LABELS[cls], transform=axes[r][0].transAxes, rotation=90,
                            ha="right", va="center", fontsize=10, fontweight="bold")  # fmt: skip
        fig.suptitle("Sample prepared images per class", fontweight="bold")
    return [str(study.index["isic_id"].iloc[i]) for p in picks for i in p]


def class_balance(path: Path, split_report: dict[str, Any], splits: list[str]) -> None:
    """Melanoma and not-melanoma counts per split, stacked, counts written on the bars."""
    mel = [split_report[s]["n_melanoma"] for s in splits]
    ben = [split_report[s]["n_benign"] for s in splits]
    with plotting.figure(path, figsize=(5.5, 3.6)) as (_, ax):
        x = np.arange(len(splits))
        b0 = ax.bar(x, ben, color=CLASS_COLOURS[0], label=CLASS_LABELS[0])
        b1 = ax.bar(x, mel, bottom=ben, color=CLASS_COLOURS[1], label=CLASS_LABELS[1])
        ax.bar_label(b0, label_type="center", color="white", fontsize=9)
        ax.bar_label(b1, label_type="center", color="white", fontsize=9)
        ax.set_xticks(x, splits)
        ax.set(xlabel="Split", ylabel="Images", title="Class balance per split")
        ax.legend(loc="upper right")


def training_curve(path: Path, model: ModelResult) -> None:
    """AUC and loss per epoch (train and validation), phases shaded, best epoch marked."""
    hist = model.history or []
    x = np.arange(len(hist))  # history.json's order, 0-based like its epoch and best_epoch
    with plotting.figure(path, ncols=2, figsize=(9, 3.6)) as (fig, (ax_auc, ax_loss)):
        for ax, key, label in ((ax_auc, "auc", "ROC AUC"), (ax_loss, "loss", "Loss")):
            for k, style, who in ((key, "-", "train"), (f"val_{key}", "--", "validation")):
                y = [np.nan if r.get(k) is None else r[k] for r in hist]
                ax.plot(x, y, style, marker="o", ms=3, color=colour(0 if who == "train" else 1), label=who)
            ax.set(xlabel="Epoch (history.json order, from 0)", ylabel=label, title=label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _phase_marks(ax, hist)
        best = model.info.get("best_epoch")
        if isinstance(best, int) and 0 <= best < len(hist):
            ax_auc.axvline(best, color="grey", ls=":", lw=1, label="best epoch (restored)")
        ax_auc.legend(loc="best")
        ax_loss.legend(loc="best")
        fig.suptitle(f"Training curve: {model.name}", fontweight="bold")


def _phase_marks(ax: Any, hist: list[dict[str, Any]]) -> None:
    """A vertical line where the training phase changes (transfer: head, then fine-tuning)."""
    for i in range(1, len(hist)):
        if hist[i].get("phase") != hist[i - 1].get("phase"):
            ax.axvline(i - 0.5, color="black", lw=0.8)
            ax.text(i - 0.4, 0.02, str(hist[i].get("phase")), transform=ax.get_xaxis_transform(), fontsize=8)


def _scored(m: ModelResult, external: bool = False) -> plotting.Scored:
    """A model's curves and metrics on the test split, or on the external set."""
    if external:
        return plotting.Scored(m.name, m.external, m.series["external_roc"], m.series["external_prc"])
    return plotting.Scored(m.name, m.test, m.series["roc"], m.series["prc"], m.series.get("calibration", ()))


def _where(models: list[ModelResult], external: bool) -> str:
    return f"the external set ({models[0].external.get('name')})" if external else "the test split"


def roc_all(path: Path, models: list[ModelResult], external: bool = False) -> None:
    """ROC curves of every model on one plot, each with its operating point (test, or external set)."""
    plotting.roc(path, [_scored(m, external) for m in models], f"ROC on {_where(models, external)}")


def prc_all(path: Path, models: list[ModelResult], external: bool = False) -> None:
    """Precision-recall curves of every model, with the prevalence (no-skill) line (test, or external set)."""
    title = f"Precision-recall on {_where(models, external)}"
    plotting.precision_recall(path, [_scored(m, external) for m in models], title)


def gap(path: Path, models: list[ModelResult]) -> None:
    """ROC AUC with its 95% CI per model and condition (internal test, external set, each with and
    without patient metadata): the generalisation gap at a glance."""
    labels = sorted({label for m in models for label, _ in m.conditions()}, key=_condition_order)
    rows = len(models)
    with plotting.figure(path, figsize=(6.4, 0.9 + 0.7 * rows)) as (fig, ax):
        for j, label in enumerate(labels):
            for i, m in enumerate(models):
                t = dict(m.conditions()).get(label)
                if not t or t.get("roc_auc") is None:
                    continue
                y = i + (j - (len(labels) - 1) / 2) * 0.16
                lo, hi = t.get("roc_auc_ci_low"), t.get("roc_auc_ci_high")
                err = None if lo is None or hi is None else [[t["roc_auc"] - lo], [hi - t["roc_auc"]]]
                ax.errorbar(t["roc_auc"], y, xerr=err, fmt="o", color=colour(j), capsize=3,
                            label=label if i == 0 else None)  # fmt: skip
        ax.set_yticks(range(rows), [m.name for m in models])
        ax.invert_yaxis()
        ax.set_xlabel("ROC AUC (95% CI)")
        ax.set_title("Internal test vs external set, with and without metadata")
        ax.legend(fontsize=7, loc="lower left")


def _condition_order(label: str) -> tuple[bool, bool, str]:
    return (label.startswith("external"), label.endswith("no metadata"), label)


def confusion_all(path: Path, models: list[ModelResult]) -> None:
    """One confusion matrix per model at its operating threshold."""
    title = "Confusion matrices at the operating point (test split)"
    plotting.confusion(path, [_scored(m) for m in models], title)


def calibration_all(path: Path, models: list[ModelResult]) -> None:
    """Reliability diagram: observed melanoma rate per bin of predicted probability."""
    plotting.reliability(path, [_scored(m) for m in models], "Calibration on the test split")
