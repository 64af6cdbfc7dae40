"""Figures: one style, the one PNG writer, and the ROC, precision-recall, confusion-matrix and
reliability plots that both the evaluate stage (one model) and the report (every model) draw.

PNGs are byte-reproducible: the Agg backend, a fixed dpi and bundled font, and no Software
(matplotlib version) or date in the file, so the same numbers give the same bytes (DVC outputs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless, and the one backend whose PNG bytes we checked are stable
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from melanoma import atomic  # noqa: E402

DPI = 100
CLASS_LABELS = ("not melanoma", "melanoma")
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",  # bundled with matplotlib: the same glyphs on every machine
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "figure.dpi": DPI,
}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
CLASS_COLOURS = ("#4c72b0", "#c44e52")
Rows = Sequence[Mapping[str, Any]]


def colour(i: int) -> str:
    """The colour of the i-th model, the same in every figure."""
    return PALETTE[i % len(PALETTE)]


@dataclass(frozen=True)
class Scored:
    """One model's curves and metrics as the evaluate stage writes them (its plot data and metrics JSON).

    ``metrics`` keys used: roc_auc, pr_auc, prevalence, sensitivity, specificity, tn/fp/fn/tp,
    threshold and ece; a missing or None value leaves its label or marker out.
    """

    name: str
    metrics: Mapping[str, Any]
    roc: Rows  # rows with fpr, tpr
    prc: Rows  # rows with recall, precision
    calibration: Rows = ()  # metrics.reliability rows: predicted, observed


def save_png(fig: Any, path: Path) -> None:
    """The one PNG writer: fixed dpi, no metadata that changes between runs or matplotlib versions."""
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})


@contextmanager
def figure(path: Path, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """A styled figure (``plt.subplots`` arguments) saved to ``path`` by ``save_png`` on exit."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(layout="constrained", **kwargs)
        try:
            yield fig, axes
            save_png(fig, path)
        finally:
            plt.close(fig)


def roc(path: Path, models: Sequence[Scored], title: str) -> None:
    """ROC curves of ``models`` on one plot, each with its operating point."""
    with figure(path, figsize=(5.2, 5.0)) as (_, ax):
        for i, m in enumerate(models):
            auc = m.metrics.get("roc_auc")
            label = f"{m.name} (AUC {auc:.3f})" if auc is not None else m.name
            ax.plot([p["fpr"] for p in m.roc], [p["tpr"] for p in m.roc], color=colour(i), label=label)
            sens, spec = m.metrics.get("sensitivity"), m.metrics.get("specificity")
            if sens is not None and spec is not None:
                ax.plot(1 - spec, sens, "o", color=colour(i), mec="black", ms=6)
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
        ax.plot([], [], "o", color="white", mec="black", label="operating point")
        ax.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)",
               title=title, xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))  # fmt: skip
        ax.legend(loc="lower right")


def precision_recall(path: Path, models: Sequence[Scored], title: str) -> None:
    """Precision-recall curves of ``models``, with the first one's prevalence (no-skill) line."""
    with figure(path, figsize=(5.2, 5.0)) as (_, ax):
        for i, m in enumerate(models):
            ap = m.metrics.get("pr_auc")
            label = f"{m.name} (AP {ap:.3f})" if ap is not None else m.name
            ax.plot(
                [p["recall"] for p in m.prc], [p["precision"] for p in m.prc], color=colour(i), label=label
            )
        prevalence = models[0].metrics.get("prevalence")
        if prevalence is not None:
            ax.axhline(
                prevalence, ls="--", color="grey", lw=1, label=f"prevalence {prevalence:.3f} (no skill)"
            )
        ax.set(xlabel="Recall (sensitivity)", ylabel="Precision (PPV)", title=title,
               xlim=(-0.01, 1.01), ylim=(0, 1.02))  # fmt: skip
        ax.legend(loc="upper right")


def confusion(path: Path, models: Sequence[Scored], title: str) -> None:
    """One confusion matrix per model at its operating threshold, side by side."""
    n = len(models)
    with figure(path, ncols=n, figsize=(3.3 * n, 3.4), squeeze=False) as (fig, axes):
        for ax, m in zip(axes[0], models, strict=True):
            t = m.metrics
            cm = np.array([[t.get("tn", 0), t.get("fp", 0)], [t.get("fn", 0), t.get("tp", 0)]])
            ax.imshow(cm, cmap="Blues", vmin=0)
            ax.grid(False)
            for (r, c), v in np.ndenumerate(cm):
                dark = cm.max() > 0 and v > cm.max() / 2
                ax.text(
                    c, r, str(v), ha="center", va="center", fontsize=12, color="white" if dark else "black"
                )
            ax.set_xticks([0, 1], CLASS_LABELS)
            ax.set_yticks([0, 1], CLASS_LABELS, rotation=90, va="center")
            thr = t.get("threshold")
            ax.set(
                xlabel="Predicted",
                ylabel="Actual",
                title=f"{m.name} (threshold {thr:.3f})" if thr is not None else m.name,
            )
        fig.suptitle(title, fontweight="bold")


def reliability(path: Path, models: Sequence[Scored], title: str) -> None:
    """Reliability diagram: observed melanoma rate per bin of predicted probability."""
    with figure(path, figsize=(5.2, 5.0)) as (_, ax):
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        for i, m in enumerate(models):
            rows = [r for r in m.calibration if r.get("observed") is not None]
            ece = m.metrics.get("ece")
            label = f"{m.name} (ECE {ece:.3f})" if ece is not None else m.name
            ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o", ms=4,
                    color=colour(i), label=label)  # fmt: skip
        ax.set(xlabel="Mean predicted probability", ylabel="Observed melanoma fraction",
               title=title, xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))  # fmt: skip
        ax.legend(loc="upper left")
