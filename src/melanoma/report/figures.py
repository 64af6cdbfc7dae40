"""The report's figures: one style, titled, labelled, byte-reproducible PNGs (matplotlib Agg).

Every plotted number comes from the Study (the pipeline's files). PNGs carry no software
version or timestamp, so the same inputs give the same bytes (they are a DVC output).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless, and the one backend whose PNG bytes we checked are stable
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from melanoma.report.inputs import ModelResult, Study  # noqa: E402

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


def colour(i: int) -> str:
    """The colour of the i-th model, the same in every figure."""
    return PALETTE[i % len(PALETTE)]


@contextmanager
def _figure(path: Path, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """A styled figure saved to ``path`` on exit, without metadata that changes between runs."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(layout="constrained", **kwargs)
        try:
            yield fig, axes
            fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
        finally:
            plt.close(fig)


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
    with _figure(path, nrows=2, ncols=cols, figsize=(1.3 * cols, 3.2), squeeze=False) as (fig, axes):
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
    with _figure(path, figsize=(5.5, 3.6)) as (_, ax):
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
    with _figure(path, ncols=2, figsize=(9, 3.6)) as (fig, (ax_auc, ax_loss)):
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


def _scored(m: ModelResult, external: bool) -> tuple[dict[str, Any], str]:
    """(metrics, series key prefix) of the test split or of the external set."""
    return (m.external, "external_") if external else (m.test, "")


def roc_all(path: Path, models: list[ModelResult], external: bool = False) -> None:
    """ROC curves of every model on one plot, each with its operating point (test, or external set)."""
    with _figure(path, figsize=(5.2, 5.0)) as (_, ax):
        for i, m in enumerate(models):
            scores, prefix = _scored(m, external)
            pts = m.series[f"{prefix}roc"]
            auc = scores.get("roc_auc")
            label = f"{m.name} (AUC {auc:.3f})" if auc is not None else m.name
            ax.plot([p["fpr"] for p in pts], [p["tpr"] for p in pts], color=colour(i), label=label)
            sens, spec = scores.get("sensitivity"), scores.get("specificity")
            if sens is not None and spec is not None:
                ax.plot(1 - spec, sens, "o", color=colour(i), mec="black", ms=6)
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
        ax.plot([], [], "o", color="white", mec="black", label="operating point")
        title = (
            f"ROC on the external set ({models[0].external.get('name')})"
            if external
            else "ROC on the test split"
        )
        ax.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)",
               title=title, xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))  # fmt: skip
        ax.legend(loc="lower right")


def prc_all(path: Path, models: list[ModelResult], external: bool = False) -> None:
    """Precision-recall curves of every model, with the prevalence (no-skill) line (test, or external set)."""
    with _figure(path, figsize=(5.2, 5.0)) as (_, ax):
        for i, m in enumerate(models):
            scores, prefix = _scored(m, external)
            pts = m.series[f"{prefix}prc"]
            ap = scores.get("pr_auc")
            label = f"{m.name} (AP {ap:.3f})" if ap is not None else m.name
            ax.plot([p["recall"] for p in pts], [p["precision"] for p in pts], color=colour(i), label=label)
        prevalence = _scored(models[0], external)[0].get("prevalence")
        if prevalence is not None:
            ax.axhline(
                prevalence, ls="--", color="grey", lw=1, label=f"prevalence {prevalence:.3f} (no skill)"
            )
        where = f"the external set ({models[0].external.get('name')})" if external else "the test split"
        ax.set(xlabel="Recall (sensitivity)", ylabel="Precision (PPV)", title=f"Precision-recall on {where}",
               xlim=(-0.01, 1.01), ylim=(0, 1.02))  # fmt: skip
        ax.legend(loc="upper right")


def confusion_all(path: Path, models: list[ModelResult]) -> None:
    """One confusion matrix per model at its operating threshold."""
    n = len(models)
    with _figure(path, ncols=n, figsize=(3.3 * n, 3.4), squeeze=False) as (fig, axes):
        for ax, m in zip(axes[0], models, strict=True):
            t = m.test
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
        fig.suptitle("Confusion matrices at the operating point (test split)", fontweight="bold")


def calibration_all(path: Path, models: list[ModelResult]) -> None:
    """Reliability diagram: observed melanoma rate per bin of predicted probability."""
    with _figure(path, figsize=(5.2, 5.0)) as (_, ax):
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        for i, m in enumerate(models):
            rows = [r for r in m.series["calibration"] if r.get("observed") is not None]
            ece = m.test.get("ece")
            label = f"{m.name} (ECE {ece:.3f})" if ece is not None else m.name
            ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o", ms=4,
                    color=colour(i), label=label)  # fmt: skip
        ax.set(xlabel="Mean predicted probability", ylabel="Observed melanoma fraction",
               title="Calibration on the test split", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))  # fmt: skip
        ax.legend(loc="upper left")
