"""File names the report's documents link to and its figure writer writes, and the split names shown."""

from __future__ import annotations

SAMPLES, BALANCE = "samples.png", "class_balance.png"
ROC, PRC, CONFUSION, CALIBRATION = "roc.png", "prc.png", "confusion.png", "calibration.png"
EXTERNAL_ROC, EXTERNAL_PRC = "external_roc.png", "external_prc.png"
GAP = "generalisation_gap.png"
SPLIT_NAMES = ("train", "val", "test")


def training_figure(name: str) -> str:
    """File name of one model's training-curve figure."""
    return f"training_{name}.png"
