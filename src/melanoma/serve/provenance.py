"""What the app says about the served model in words: the data it learnt from and its scores.

A person who uploads an image should not need to know what ``pauc_80_ci_high`` means, nor that the
champion learnt from generated pictures. This module turns model.json's ``trained_on`` and the
evaluation blocks (reports/metrics/<name>.json, or the MLflow run of a registry version) into the
sentences ``GET /model`` returns under ``summary`` and the page shows, and into the warning a
synthetic-trained model carries in every answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

SYNTHETIC_WARNING = "Trained on generated images: its answers say nothing about real lesions."
UNKNOWN = "unknown"
# The evaluation blocks evaluate writes (reports/metrics/<name>.json), in the order they are told.
BLOCKS = ("test", "test_images_only", "external", "external_images_only")
# How the metadata columns read in a sentence.
COLUMN_WORDS = {"age_approx": "age", "sex": "sex", "site": "site"}


def trained_on_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """model.json -> what the model learnt from: ``source``, ``name``, ``synthetic``, ``n_train``, ``n_val``.

    A model saved before model.json recorded ``trained_on`` is "unknown" (``synthetic`` None: not
    known either way), with the split sizes model.json kept at its top level when it has them.
    """
    recorded = info.get("trained_on")
    if isinstance(recorded, Mapping) and recorded.get("source"):
        return {
            "source": str(recorded["source"]),
            "name": str(recorded.get("name") or recorded["source"]),
            "synthetic": bool(recorded.get("synthetic", recorded["source"] == "synthetic")),
            "n_train": _count(recorded.get("n_train", info.get("n_train"))),
            "n_val": _count(recorded.get("n_val", info.get("n_val"))),
        }
    return {
        "source": UNKNOWN,
        "name": f"{UNKNOWN} (this model was saved before models recorded their training data)",
        "synthetic": None,
        "n_train": _count(info.get("n_train")),
        "n_val": _count(info.get("n_val")),
    }


def model_warnings(trained_on: Mapping[str, Any]) -> list[str]:
    """Warnings every answer about this model carries: today, that it learnt from generated images."""
    return [SYNTHETIC_WARNING] if trained_on.get("synthetic") is True else []


# ------------------------------------------------------------------------------ the metrics
def number(x: Any, digits: int = 2) -> str | None:
    """``x`` to ``digits`` decimals; None for a missing or non-finite value (never 'nan')."""
    if x is None or isinstance(x, bool):
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return f"{value:.{digits}f}" if math.isfinite(value) else None


def threshold_text(x: Any) -> str | None:
    """A threshold to 3 decimals; a smaller one to 2 significant digits, so it never reads 0.000."""
    text = number(x, 3)
    if text is None or float(text) != 0.0 or float(x) == 0.0:
        return text
    return f"{float(x):.2g}"


def _count(x: Any) -> int | None:
    """A count (MLflow logs them as floats: 40.0 -> 40); None when missing."""
    text = number(x, 0)
    return None if text is None else int(float(text))


def auc_text(block: Mapping[str, Any]) -> str | None:
    """'ROC AUC 0.85 (95% CI 0.71–0.94)', without the interval when it is missing."""
    auc = number(block.get("roc_auc"))
    if auc is None:
        return None
    low, high = number(block.get("roc_auc_ci_low")), number(block.get("roc_auc_ci_high"))
    return f"ROC AUC {auc}" + (f" (95% CI {low}–{high})" if low is not None and high is not None else "")


def rates_text(block: Mapping[str, Any]) -> str | None:
    """'sensitivity 0.90, specificity 0.62' (either alone when the other is missing)."""
    parts = [
        f"{what} {text}"
        for what in ("sensitivity", "specificity")
        if (text := number(block.get(what))) is not None
    ]
    return ", ".join(parts) or None


def images_text(block: Mapping[str, Any], what: str = "") -> str:
    """'395 test images, 40 melanoma' (or just 'the test images' when the counts are missing)."""
    kind = f"{what} images" if what else "images"
    n, n_mel = _count(block.get("n")), _count(block.get("n_melanoma"))
    if n is None:
        return f"the {kind}"
    return f"{n} {kind}" + (f", {n_mel} melanoma" if n_mel is not None else "")


def _words(columns: Sequence[str]) -> str:
    """('age_approx', 'sex', 'site') -> 'age, sex or site'."""
    names = [COLUMN_WORDS.get(c, c) for c in columns]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def metric_sentences(
    evaluation: Mapping[str, Mapping[str, Any]],
    threshold: float,
    metadata_columns: Sequence[str] = (),
) -> list[str]:
    """The evaluation blocks in sentences, test first, then the external set beside it.

    ``evaluation``: block name (``BLOCKS``, or ``val`` when no test evaluation was found) -> metrics
    as evaluate writes them (``roc_auc``, ``roc_auc_ci_low``/``_high``, ``sensitivity``,
    ``specificity``, ``n``, ``n_melanoma``, ``threshold``; the external block also ``name``).
    The images-only blocks are told only for a model that reads ``metadata_columns``.
    """
    out: list[str] = []

    def at_threshold(block: Mapping[str, Any]) -> str | None:
        rates = rates_text(block)
        cut = threshold_text(block.get("threshold", threshold))
        return None if rates is None else f"at the operating threshold {cut}: {rates}"

    test = evaluation.get("test")
    if test:
        auc = auc_text(test)
        out.append(
            f"{auc} on {images_text(test, 'test')}"
            if auc is not None
            else f"No ROC AUC on {images_text(test, 'test')} (one class only)"
        )
        rates = at_threshold(test)
        if rates is not None:
            out.append(f"{rates[0].upper()}{rates[1:]} on the test images")
    elif evaluation.get("val"):
        val = evaluation["val"]
        told = [t for t in (auc_text(val), at_threshold(val)) if t is not None]
        out.append(
            f"No test-set evaluation was found for this model; on {images_text(val, 'validation')} "
            f"(the images its threshold was chosen on, so optimistic): {'; '.join(told) or 'no scores'}"
        )
    else:
        out.append("No evaluation of this model was found: its scores are unknown")

    alone = f"Images alone (no {_words(metadata_columns)} given)" if metadata_columns else ""
    test_alone = evaluation.get("test_images_only")
    if metadata_columns and test_alone:
        told = [t for t in (auc_text(test_alone), at_threshold(test_alone)) if t is not None]
        if told:
            out.append(f"{alone}: {'; '.join(told)} on the same test images")

    external = evaluation.get("external")
    if external:
        name = str(external.get("name") or "").strip()
        where = f"On the external set {name}" if name else "On the external set"
        told = [t for t in (auc_text(external), at_threshold(external)) if t is not None]
        if told:
            out.append(f"{where}: {told[0]} on {images_text(external)}" + "".join(f"; {t}" for t in told[1:]))
        ext_alone = evaluation.get("external_images_only")
        if metadata_columns and ext_alone:
            told = [t for t in (auc_text(ext_alone), at_threshold(ext_alone)) if t is not None]
            if told:
                out.append(f"{where}, {alone[0].lower()}{alone[1:]}: {'; '.join(told)}")
    return out
