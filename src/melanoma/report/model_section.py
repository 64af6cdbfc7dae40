"""reports/README.md's per-model section: architecture, size, training, threshold, curve."""

from __future__ import annotations

from typing import Any

from melanoma.report import fmt
from melanoma.report.inputs import ModelResult
from melanoma.report.names import training_figure


def _architecture(info: dict[str, Any]) -> str:
    if info.get("family") == "ensemble":
        how = {"stack": "logistic regression on their logits", "rank_mean": "mean of their validation ranks"}
        members = ", ".join(f"`{n}`" for n in info.get("members") or [])
        method = info.get("method")
        return f"ensemble of {members}: {how.get(method, method)}, fitted on validation"
    if info.get("family") == "baseline":
        return f"scikit-learn on image features; candidate chosen on validation: `{info.get('candidate')}`"
    colour = info.get("input_color_constancy", "none")
    colour = f"; colour constancy in the model: {colour}" if colour != "none" else ""
    if info.get("backbone"):
        blocks = info.get("backbone_blocks", 5)
        kept = f" cut after block{blocks}" if blocks != 5 else ""
        return (
            f"Keras transfer model: `{info['backbone']}` backbone{kept}, "
            f"{fmt.num(info.get('fine_tuned_layers'))} top layers fine-tuned, "
            f"{fmt.num(info.get('feature_dim'))} backbone features into a dense head{colour}"
        )
    return f"Keras CNN trained from scratch (family `{info.get('family')}`){colour}"


def model_section(m: ModelResult) -> list[str]:
    """One model: architecture, size, training, weights source, threshold, training curve."""
    info = m.info
    if "epochs_run" in info:
        best = fmt.num(info.get("best_epoch"))
        epochs = (
            f"{fmt.num(info['epochs_run'])} run; best epoch (as numbered in history.json, restored): {best}"
        )
    else:
        epochs = "per-epoch curve below (history.json)" if m.history else "not iterative (no history.json)"
    rows = [
        ["family / architecture", _architecture(info)],
        ["input", f"{fmt.num(info.get('image_size'))} px square, fit `{info.get('fit')}`"],
        ["parameters", fmt.num(info["n_params"]) if "n_params" in info else "not recorded in model.json"],
        [
            "training images / validation images",
            f"{fmt.num(info.get('n_train'))} / {fmt.num(info.get('n_val'))}",
        ],
        ["epochs", epochs],
        [
            "class balance",
            f"`{info['class_balance']}`" if "class_balance" in info else "not recorded in model.json",
        ],
        ["weights source", m.weights_source],
        [
            "operating threshold",
            f"{fmt.num(info.get('threshold'))} (`{info.get('threshold_rule')}` on validation)",
        ],
        ["validation ROC AUC", fmt.num((info.get("val") or {}).get("val_roc_auc"))],
        [
            "training time",
            "not in tracked files: metric `train_seconds` of this model's MLflow training run "
            "(tag `model_fingerprint`)",
        ],  # fmt: skip
    ]
    out = [f"### {m.name}", "", fmt.table(["", m.name], rows), ""]
    scores = info.get("candidate_val_auc")
    if isinstance(scores, dict):
        out += ["Baseline candidates (validation ROC AUC):", ""]
        out += [fmt.table(["candidate", "val ROC AUC"], [[k, fmt.num(v)] for k, v in scores.items()]), ""]
    members = info.get("member_val_auc")
    if isinstance(members, dict):
        coef = info.get("coefficients") or {}
        out += [
            "Ensemble members (validation ROC AUC; stacking weight on the logit where stacked). The "
            f"ensemble's validation AUC is out-of-fold ({fmt.num(info.get('oof_folds'))} folds over "
            f"validation); in-sample it was {fmt.num(info.get('val_roc_auc_in_sample'))}.",
            "",
        ]
        rows = [[k, fmt.num(v), fmt.num(coef.get(k)) if coef else "-"] for k, v in members.items()]
        out += [fmt.table(["member", "val ROC AUC", "weight"], rows), ""]
    if m.history:
        out += [fmt.figure(f"Training curve of {m.name}", training_figure(m.name)), ""]
    return out
