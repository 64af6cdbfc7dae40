"""Model quality on a real folder dataset, through the pipeline's own code: an ablation table.

    import_folder (into a temp raw dir) -> prepare -> split_frame -> fit_model per variant
    -> threshold on val (choose_threshold) -> test metrics (score_metrics, bootstrap CI)
    -> paired bootstrap CI of (variant - baseline) test ROC AUC on the same test images

A *variant* is a model family plus param overrides, e.g. ``cnn-res=cnn;cnn.architecture=residual``.
``--plan issue12`` runs the issue's ablation (baseline; plain CNN; residual CNN; + mixup / cutmix;
transfer). For each trained variant the benchmark also scores, without retraining:

- ``+tta``: the same model under test-time augmentation (mean over the 8 flips/rotations,
  ``melanoma.models.tta``);
- calibration: ECE and Brier on test before and after each calibration method fitted on val
  (``melanoma.models.calibration``);
- ensembles (``--ensemble a+b[+c]``, variant labels): ``melanoma.models.ensemble`` on the saved
  variant folders, stacked or rank-averaged on validation, exactly as the pipeline's ensemble stage.

Every choice is made on validation (thresholds, calibration, ensemble weights); the test split is
only scored. Trained variants are cached under ``--cache`` (default ``benchmarks/.cache/quality``)
keyed by their overrides, so adding a variant or an ensemble reruns only what is new.

Params are ``melanoma.config.Params()`` (the code defaults, not params.yaml) unless ``--params FILE``;
``--set KEY=VALUE`` overrides a dotted key for every variant; ``--epochs`` caps train.epochs.

    .venv/bin/python benchmarks/bench_quality.py --data ../shared/datasets/kaggle-isic-malignant-vs-benign \\
        --plan issue12 [--variant LABEL=MODEL;KEY=VALUE;...] [--ensemble cnn+baseline] [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")  # the importer's and prepare's progress bars

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
try:
    import melanoma  # noqa: F401
except ImportError:  # not installed into the interpreter: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

from melanoma.config import FolderParams, Params, load_params, params_from_dict  # noqa: E402
from melanoma.contracts import load_prepared, split_arrays, write_model_json  # noqa: E402
from melanoma.evaluate import score_metrics  # noqa: E402
from melanoma.metrics import (  # noqa: E402
    choose_threshold,
    expected_calibration_error,
    grouped_bootstrap_ci,
    safe_auc,
)
from melanoma.prepare import prepare  # noqa: E402
from melanoma.sources.folder import import_folder  # noqa: E402
from melanoma.split import split_frame  # noqa: E402
from melanoma.train import fit_model  # noqa: E402

DEFAULT_DATA = "../shared/datasets/kaggle-isic-malignant-vs-benign"
DEFAULT_CACHE = ROOT / "benchmarks" / ".cache" / "quality"
MODELS = ("baseline", "cnn", "transfer")
PLANS: dict[str, list[str]] = {
    "issue12": [
        "baseline=baseline",
        "cnn=cnn",
        "cnn-res=cnn;cnn.architecture=residual",
        "cnn-res-mixup=cnn;cnn.architecture=residual;train.augment.mixup=0.2",
        "cnn-res-cutmix=cnn;cnn.architecture=residual;train.augment.cutmix=1.0",
        "transfer=transfer",
    ],
    # issue 19, the generalisation gap: listed in priority order for a time-capped run (each reference
    # before the variants compared with it, ``vs=``), scored on an ``--external`` set too. fine_tune_layers=5 unfreezes
    # exactly block5_conv1..3 of VGG16 (its last layers are block5_conv1..3, block5_pool and the
    # global pooling; the count includes the weightless ones).
    "issue19": [
        "transfer-random=transfer;transfer.weights=random;transfer.blocks=5",
        "transfer-hed=transfer;vs=transfer-random;transfer.weights=hed-bsds500;transfer.blocks=5",
        "cnn=cnn",
        "cnn+sog=cnn;vs=cnn;prepare.color_constancy=shades_of_gray",
        "baseline=baseline",
        "transfer-hed-ft=transfer;vs=transfer-hed;transfer.weights=hed-bsds500;transfer.blocks=5;"
        "transfer.fine_tune_layers=5",
        "cnn+aug=cnn;vs=cnn;train.augment.brightness=0.2;train.augment.contrast=0.2;"
        "train.augment.saturation=0.2",
        # the correction inside the CNN only (the baseline keeps its acquisition colours)
        "cnn+sog-layer=cnn;vs=cnn;cnn.color_constancy=shades_of_gray",
        # only the lower VGG16 blocks kept (transfer.blocks), each paired with random-init at the
        # same depth; fine_tune_layers=5 on the block4 cut = block4_conv1..3 (+ its pool and the pooling)
        "transfer-random-b3=transfer;transfer.weights=random;transfer.blocks=3",
        "transfer-hed-b3=transfer;vs=transfer-random-b3;transfer.weights=hed-bsds500;transfer.blocks=3",
        "transfer-random-b4=transfer;transfer.weights=random;transfer.blocks=4",
        "transfer-hed-b4=transfer;vs=transfer-random-b4;transfer.weights=hed-bsds500;transfer.blocks=4",
        "transfer-hed-b4-ft=transfer;vs=transfer-hed-b4;transfer.weights=hed-bsds500;transfer.blocks=4;"
        "transfer.fine_tune_layers=5",
    ],
    "default": ["baseline=baseline", "cnn=cnn", "transfer=transfer"],
}
CALIBRATIONS = ("temperature", "platt", "isotonic")
warnings.filterwarnings("ignore", message="`shuffle=True` was passed")  # fit on a tf.data.Dataset


@dataclasses.dataclass(frozen=True)
class Variant:
    """A labelled model family with its own param overrides."""

    label: str
    model: str
    overrides: tuple[str, ...]
    ref: str | None = None  # ``vs=LABEL``: the variant its paired differences are taken against

    @classmethod
    def parse(cls, text: str) -> Variant:
        head, *items = [part.strip() for part in text.split(";") if part.strip()]
        label, sep, model = head.partition("=")
        if not sep or model.strip() not in MODELS:
            raise SystemExit(
                f"--variant {text!r}: expected LABEL=MODEL[;vs=LABEL][;KEY=VALUE...], MODEL in {MODELS}"
            )
        refs = [i.partition("=")[2].strip() for i in items if i.partition("=")[0].strip() == "vs"]
        overrides = tuple(i for i in items if i.partition("=")[0].strip() != "vs")
        return cls(label.strip(), model.strip(), overrides, refs[-1] if refs else None)


def apply_overrides(base: Params, overrides: list[str] | tuple[str, ...]) -> Params:
    """``KEY=VALUE`` dotted overrides (YAML values), validated as params.yaml is."""
    data: dict[str, Any] = dataclasses.asdict(base)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"override {item!r}: expected KEY=VALUE")
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"override {item!r}: {part!r} is not a params section")
            node = node[part]
        if leaf not in node:
            raise SystemExit(f"override {item!r}: unknown key {key!r}")
        node[leaf] = yaml.safe_load(raw)
    return params_from_dict(data)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class EpochPrinter:
    """One compact line per epoch of the deep models (fit's own verbose lines are swallowed)."""

    def __init__(self, name: str, show: bool = True) -> None:
        self.name, self.show, self.start, self.rows = name, show, time.perf_counter(), []
        self.out = sys.stdout  # the real one: fit's own prints are redirected while training

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        row = {"epoch": step, "seconds": time.perf_counter() - self.start, **metrics}
        self.rows.append(row)
        if not self.show:
            return
        shown = " ".join(
            f"{k} {metrics[k]:.4f}" for k in ("loss", "auc", "val_loss", "val_auc") if k in metrics
        )
        print(
            f"   {self.name} epoch {step + 1:>2}: {shown}  ({row['seconds']:.0f}s)", file=self.out, flush=True
        )


@dataclasses.dataclass
class Data:
    """One prepared, split dataset in memory."""

    images: np.ndarray
    frames: dict[str, pd.DataFrame]
    summary: dict[str, Any]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return split_arrays(self.images, self.frames[name])

    def meta(self, name: str) -> pd.DataFrame:
        return self.frames[name].reset_index(drop=True)

    def test_ids(self) -> list[str]:
        return self.frames["test"]["isic_id"].astype(str).tolist()


def load_data(data_dir: Path, params: Params, cache: Path) -> Data:
    """Import, prepare and split (cached per prepare/split params: the same images every run)."""
    key = digest(
        {
            "data": str(data_dir),
            "prepare": dataclasses.asdict(params.prepare),
            "split": dataclasses.asdict(params.split),
            "seed": params.base.seed,
        }
    )
    images, index, summary = imported_and_prepared(data_dir, params, cache / f"data-{key}")
    frames = split_frame(index, params.split, params.base.seed)
    return Data(np.asarray(images), frames, summary)


def imported_and_prepared(
    folder: Path, params: Params, where: Path
) -> tuple[Any, pd.DataFrame, dict[str, Any]]:
    """``folder`` through the project's folder import and prepare, cached in ``where``:
    (the memory-mapped images, the index, a summary of the import and the cleaning)."""
    if not (where / "prepared" / "index.csv").is_file():
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
            ingest = import_folder(Path(tmp) / "raw", FolderParams(path=str(folder)), params.base.seed)
            staging = Path(tmp) / "prepared"
            report = prepare(Path(tmp) / "raw", staging, params.prepare)
            where.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(where / "prepared", ignore_errors=True)
            shutil.copytree(staging, where / "prepared")
        summary = {
            "n_files": ingest["n_image_files"],
            "n_kept": report["n_kept"],
            "n_malignant": report["n_melanoma"],
            "n_duplicates": report["n_duplicates"],
            "n_corrupt": report["n_corrupt"],
            "prepare_seconds": round(time.perf_counter() - t0, 1),
        }
        (where / "summary.json").write_text(json.dumps(summary, indent=2))
    images, index = load_prepared(where / "prepared")
    return images, index, json.loads((where / "summary.json").read_text())


@dataclasses.dataclass
class External:
    """An external labelled set, prepared with one variant's prepare params (no split: all scored)."""

    name: str
    key: str
    images: np.ndarray
    index: pd.DataFrame
    summary: dict[str, Any]

    @property
    def y(self) -> np.ndarray:
        return self.index["label"].to_numpy().astype(np.int64)

    @property
    def groups(self) -> np.ndarray:
        from melanoma.evaluate.external_set import external_groups

        return external_groups(self.index)


def load_external(ext_dir: Path, params: Params, cache: Path) -> External:
    """Import the folder with the project's folder source (class folders, or ISIC JSON sidecars of
    API v1/v2: ``meta.clinical.benign_malignant``/``diagnosis``) and prepare it exactly as the
    training set is prepared (the variant's ``prepare.*``), cached per prepare-params key."""
    key = digest({"external": str(ext_dir), "prepare": dataclasses.asdict(params.prepare)})
    images, index, summary = imported_and_prepared(ext_dir, params, cache / f"external-{key}")
    return External(ext_dir.name, key, np.asarray(images), index.reset_index(drop=True), summary)


def external_probabilities(where: Path, ext: External) -> np.ndarray:
    """The saved variant's P(melanoma) on the external images (cached beside the model)."""
    cached = where / f"external-{ext.key}.npy"
    if cached.is_file():
        return np.load(cached)
    from melanoma.models import load_model

    model = load_model(where / "model")
    p = np.asarray(model.predict_proba(ext.images), dtype=np.float64)
    np.save(cached, p)
    return p


def variant_dir(cache: Path, v: Variant, params: Params) -> Path:
    """The cache folder of a trained variant: keyed by the params its training reads (only)."""
    sections = ["base", "prepare", "split", v.model] + (["train"] if v.model != "baseline" else [])
    used = {name: dataclasses.asdict(getattr(params, name)) for name in sections}
    if v.model == "baseline":
        used["target_sensitivity"] = params.train.target_sensitivity
    for section in used.values():  # prediction-time switches the benchmark scores separately
        if isinstance(section, dict):
            section.pop("tta", None)
    return cache / "variants" / f"{v.label}-{digest([v.model, used])}"


def train_variant(v: Variant, data: Data, params: Params, where: Path) -> dict[str, Any]:
    """Fit (unless cached), save the model folder, and keep raw val/test probabilities."""
    result_file = where / "result.json"
    if result_file.is_file():
        print(f"   (cached: {where.name})")
        return json.loads(result_file.read_text())
    (x_tr, y_tr), (x_val, y_val), (x_te, _) = data.split("train"), data.split("val"), data.split("test")
    strategy = None
    if v.model != "baseline":
        from melanoma.models.deep.loop import make_strategy

        strategy = make_strategy(params.train.strategy, params.train.devices)
    printer = EpochPrinter(v.label, show=v.model == "cnn")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        model, info = fit_model(
            v.model, x_tr, y_tr, x_val, y_val, params, strategy=strategy, on_epoch=printer
        )
    train_seconds = time.perf_counter() - t0
    history = info.pop("history", None)
    t1 = time.perf_counter()
    p_val = np.asarray(model.predict_proba(x_val), dtype=np.float64)
    p_test = np.asarray(model.predict_proba(x_te), dtype=np.float64)
    predict_seconds = time.perf_counter() - t1
    shutil.rmtree(where, ignore_errors=True)
    (where / "model").mkdir(parents=True)
    model.save(where / "model")
    model_info = {
        "name": v.model,
        "family": model.family,
        "image_size": model.image_size,
        "fit": model.fit,
        "threshold": choose_threshold(y_val, p_val, params.train.target_sensitivity),
        **{k: val for k, val in info.items() if k not in ("history",)},
    }
    write_model_json(where / "model", model_info)
    result = {
        "label": v.label,
        "model": v.model,
        "overrides": list(v.overrides),
        "train_seconds": round(train_seconds, 1),
        "predict_seconds": round(predict_seconds, 2),
        "epochs_run": info.get("epochs_run"),
        "best_epoch": info.get("best_epoch"),
        "n_params": info.get("n_params"),
        "info": {k: val for k, val in info.items() if isinstance(val, str | int | float | bool | type(None))},
        "epochs": printer.rows or history,
        "p_val": p_val.tolist(),
        "p_test": p_test.tolist(),
    }
    result_file.write_text(json.dumps(result, default=_jsonable))
    return result


def tta_probabilities(where: Path, data: Data) -> tuple[np.ndarray, np.ndarray]:
    """The saved model under the 8-view test-time augmentation (cached beside the model)."""
    cached = where / "tta.npz"
    if cached.is_file():
        z = np.load(cached)
        return z["val"], z["test"]
    from melanoma.models import load_model
    from melanoma.models.tta import TTAClassifier

    model = TTAClassifier(load_model(where / "model"))
    p_val = model.predict_proba(data.split("val")[0]).astype(np.float64)
    p_test = model.predict_proba(data.split("test")[0]).astype(np.float64)
    np.savez(cached, val=p_val, test=p_test)
    return p_val, p_test


def score(
    label: str, p_val: np.ndarray, p_test: np.ndarray, data: Data, params: Params, extra: dict[str, Any]
) -> dict[str, Any]:
    """Threshold on val, test metrics with CIs."""
    y_val, y_te = data.split("val")[1], data.split("test")[1]
    groups = data.frames["test"]["group"].astype(str).to_numpy()
    threshold = choose_threshold(y_val, p_val, params.train.target_sensitivity)
    test = score_metrics(y_te, p_test, groups, threshold, params.evaluate, params.base.seed)
    return {"label": label, "val_roc_auc": safe_auc(y_val, p_val), "test": test, **extra}


def score_external(
    row: dict[str, Any],
    ext: External,
    p_ext: np.ndarray,
    y_val: np.ndarray,
    p_val: np.ndarray,
    params: Params,
) -> float:
    """Score ``p_ext`` on the external set at the validation threshold into ``row``; return the threshold."""
    threshold = choose_threshold(y_val, p_val, params.train.target_sensitivity)
    row["threshold"] = threshold
    row["external"] = {
        **score_metrics(ext.y, p_ext, ext.groups, threshold, params.evaluate, params.base.seed),
        "key": ext.key, "n": len(ext.y), "n_malignant": int(ext.y.sum()),
    }  # fmt: skip
    row["external_ids"] = ext.index["isic_id"].astype(str).tolist()
    row["p_external"] = p_ext.tolist()
    return threshold


def paired_difference(
    p_a: np.ndarray,
    p_b: np.ndarray,
    data: Data,
    params: Params,
    y: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) on the same images (the test split, or ``y``/``groups`` given), paired CI."""
    y_te = data.split("test")[1] if y is None else y
    if groups is None:
        groups = data.frames["test"]["group"].astype(str).to_numpy()
    pair = np.stack([p_a, p_b], axis=1)
    lo, hi = grouped_bootstrap_ci(
        y_te, pair, groups, _auc_difference, params.evaluate.bootstrap, params.evaluate.ci, params.base.seed
    )
    return safe_auc(y_te, p_a) - safe_auc(y_te, p_b), lo, hi


def calibration_rows(
    label: str, p_val: np.ndarray, p_test: np.ndarray, data: Data, bins: int, seed: int
) -> list[dict]:
    """ECE / Brier before and after each method: out-of-fold on val (to choose by) and on test.

    The validation figure fits each calibrator on 4/5 of the val split and scores the held-out fifth
    (stratified, seeded), so the method can be chosen without looking at the test split.
    """
    from sklearn.model_selection import StratifiedKFold

    from melanoma.models.calibration import fit_calibrator

    y_val, y_te = data.split("val")[1], data.split("test")[1]
    folds = list(StratifiedKFold(5, shuffle=True, random_state=seed).split(p_val, y_val))
    rows = []
    for method in ("none", *CALIBRATIONS):
        oof = np.empty_like(p_val)
        for fit_idx, held in folds:
            oof[held] = fit_calibrator(method, y_val[fit_idx], p_val[fit_idx]).apply(p_val[held])
        q = np.asarray(fit_calibrator(method, y_val, p_val).apply(p_test), dtype=np.float64)
        rows.append(
            {
                "label": label,
                "method": method,
                "val_ece_oof": expected_calibration_error(y_val, oof, bins),
                "val_brier_oof": float(np.mean((oof - y_val) ** 2)),
                "ece": expected_calibration_error(y_te, q, bins),
                "brier": float(np.mean((q - y_te) ** 2)),
                "roc_auc": safe_auc(y_te, q),
            }
        )
    return rows


def ensemble_probabilities(
    members: list[str],
    variants: dict[str, Variant],
    dirs: dict[str, Path],
    data: Data,
    params: Params,
    method: str,
    external: External | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """The pipeline's ensemble (``fit_ensemble``) over saved variant folders: out-of-fold val, test
    and (given ``external``, prepared with ``params.prepare``) the external set.

    A member ``LABEL/tta`` is that variant's folder marked for test-time augmentation, as the
    pipeline's member would be with ``<family>.tta: true``. Members must be distinct families (the
    ensemble's members are named by family).
    """
    from melanoma.config import EnsembleParams
    from melanoma.contracts import read_model_json
    from melanoma.models.ensemble import fit_ensemble

    by_family: dict[str, Path] = {}
    for m in members:
        label, tta = m.removesuffix("/tta"), m.endswith("/tta")
        family, folder = variants[label].model, dirs[label]
        if family in by_family:
            raise SystemExit(f"--ensemble: two members of family {family!r}")
        if tta:
            marked = folder.parent / "model-tta"
            if not marked.is_dir():
                shutil.copytree(folder, marked)
                write_model_json(marked, {**read_model_json(folder), "tta": True})
            folder = marked
        by_family[family] = folder
    x_val, y_val = data.split("val")
    model, info = fit_ensemble(
        by_family,
        x_val,
        y_val,
        EnsembleParams(members=tuple(by_family), method=method),
        params.base.seed,
        params.prepare.image_size,
        params.prepare.fit,
    )
    p_val = np.asarray(info.pop("val_proba_oof"), dtype=np.float64)
    p_test = model.predict_proba(data.split("test")[0]).astype(np.float64)
    p_ext = None if external is None else model.predict_proba(external.images).astype(np.float64)
    return p_val, p_test, p_ext, {k: v for k, v in info.items() if isinstance(v, str | int | float)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data", default=DEFAULT_DATA, help=f"folder of class subfolders (default {DEFAULT_DATA})"
    )
    ap.add_argument("--plan", choices=sorted(PLANS), default=None, help="a built-in list of variants")
    ap.add_argument(
        "--variant", action="append", default=[], metavar="LABEL=MODEL;KEY=VALUE;...", help="add a variant"
    )
    ap.add_argument(
        "--models", default="", help="shorthand: comma-separated families, one plain variant each"
    )
    ap.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="A+B[/tta][+C][:rank_mean]",
        help="variants to ensemble",
    )
    ap.add_argument("--no-tta", action="store_true", help="skip the test-time-augmentation scores")
    ap.add_argument(
        "--external",
        type=Path,
        default=None,
        metavar="DIR",
        help="an external labelled folder (class folders or ISIC JSON sidecars) every variant is scored "
        "on, at its own validation threshold, with paired differences vs its reference (vs=)",
    )
    ap.add_argument(
        "--params", type=Path, default=None, help="a params.yaml to start from (default: code defaults)"
    )
    ap.add_argument("--epochs", type=int, default=None, help="cap train.epochs (the deep models) for time")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant"
    )
    ap.add_argument(
        "--bootstrap", type=int, default=None, help="bootstrap resamples (default evaluate.bootstrap)"
    )
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="trained variants are kept here")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    ap.add_argument(
        "--markdown", type=Path, default=None, help="also write the ablation table as Markdown here"
    )
    args = ap.parse_args(argv)

    data_dir = Path(args.data)
    data_dir = data_dir if data_dir.is_absolute() else (Path.cwd() / data_dir)
    if not data_dir.is_dir():
        ap.error(f"--data {args.data}: folder not found")
    data_dir = data_dir.resolve()
    shorthand = [f"{m.strip()}={m.strip()}" for m in args.models.split(",") if m.strip()]
    variants = [Variant.parse(t) for t in (PLANS[args.plan] if args.plan else []) + shorthand + args.variant]
    if not variants:
        variants = [Variant.parse(t) for t in PLANS["default"]]
    if len({v.label for v in variants}) != len(variants):
        ap.error("variant labels must be distinct")
    for i, v in enumerate(variants):
        if v.ref is not None and v.ref not in {w.label for w in variants[:i]}:
            ap.error(f"variant {v.label}: vs={v.ref} must name a variant listed before it")
    ext_dir = None
    if args.external is not None:
        ext_dir = args.external if args.external.is_absolute() else Path.cwd() / args.external
        if not ext_dir.is_dir():
            ap.error(f"--external {args.external}: folder not found")
        ext_dir = ext_dir.resolve()
    common = list(args.set)
    if args.epochs is not None:
        common.append(f"train.epochs={args.epochs}")
    if args.bootstrap is not None:
        common.append(f"evaluate.bootstrap={args.bootstrap}")
    base = apply_overrides(load_params(args.params) if args.params else Params(), common)
    logging.basicConfig(level=logging.WARNING, format="   %(levelname)s %(name)s: %(message)s")

    t_start = time.perf_counter()
    print(f"bench_quality: {data_dir}, cpu_count {os.cpu_count()}, seed {base.base.seed}")
    reference = load_data(data_dir, base, args.cache)
    print(
        f"   {reference.summary}; split "
        + ", ".join(f"{s} {len(f)} ({int(f['label'].sum())} malignant)" for s, f in reference.frames.items())
    )
    rows: dict[str, dict[str, Any]] = {}
    probs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    dirs: dict[str, Path] = {}
    calib: list[dict[str, Any]] = []
    ext_probs: dict[str, np.ndarray] = {}
    exts: dict[str, External] = {}
    paired_ok: dict[str, bool] = {}

    def write_outputs(final: bool) -> None:
        """JSON and Markdown after every variant, so a run cut short still leaves its rows."""
        table = markdown_table(rows, calib, reference, base, baseline_label(), exts, variants)
        if final:
            print("\n" + table)
        if args.markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(table)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            out = {
                "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if argv is None else argv,
                "complete": final,
                "data": str(data_dir),
                "data_summary": reference.summary,
                "external": str(ext_dir) if ext_dir else None,
                "external_summary": {k: e.summary for k, e in exts.items()},
                "params": dataclasses.asdict(base),
                "variants": [dataclasses.asdict(v) for v in variants],
                "rows": rows,
                "calibration": calib,
                "seconds": time.perf_counter() - t_start,
            }
            args.json.write_text(json.dumps(out, indent=2, default=_jsonable) + "\n")

    def baseline_label() -> str | None:
        return next((v.label for v in variants if v.model == "baseline" and v.label in rows), None)

    for v in variants:
        params = apply_overrides(base, v.overrides)
        data = load_data(data_dir, params, args.cache)
        paired_ok[v.label] = data.test_ids() == reference.test_ids()
        if not paired_ok[v.label]:
            print(
                f"   {v.label}: its prepare/split params give other test images; not paired with the others"
            )
        where = variant_dir(args.cache, v, params)
        print(f"\n== {v.label} ({v.model}{'; ' + '; '.join(v.overrides) if v.overrides else ''})")
        r = train_variant(v, data, params, where)
        p_val, p_test = np.asarray(r["p_val"]), np.asarray(r["p_test"])
        cost = {k: r[k] for k in ("train_seconds", "epochs_run", "best_epoch", "n_params", "overrides")}
        cost["candidate"] = r["info"].get("candidate")
        cost["ref"] = v.ref
        rows[v.label] = score(v.label, p_val, p_test, data, params, cost)
        probs[v.label], dirs[v.label] = (p_val, p_test), where / "model"
        row = rows[v.label]
        if ext_dir is not None:
            ext = load_external(ext_dir, params, args.cache)
            exts.setdefault(ext.key, ext)
            t0 = time.perf_counter()
            p_ext = external_probabilities(where, ext)
            ext_probs[v.label] = p_ext
            threshold = score_external(row, ext, p_ext, data.split("val")[1], p_val, params)
            print(
                f"   external ({ext.summary['n_kept']} images, {ext.summary['n_malignant']} malignant): "
                f"ROC AUC {row['external']['roc_auc']:.4f} [{row['external']['roc_auc_ci_low']:.4f}, "
                f"{row['external']['roc_auc_ci_high']:.4f}], sens {row['external']['sensitivity']:.2f} "
                f"spec {row['external']['specificity']:.2f} at the val threshold {threshold:.3f} "
                f"({time.perf_counter() - t0:.0f}s)"
            )
        if v.ref is not None:
            if paired_ok[v.label] and paired_ok[v.ref]:
                d, lo, hi = paired_difference(p_test, probs[v.ref][1], reference, base)
                row["minus_ref"] = {"ref": v.ref, "diff": d, "ci_low": lo, "ci_high": hi}
                # the decision's own figure: the same difference on validation, with its noise
                val_groups = reference.frames["val"]["group"].astype(str).to_numpy()
                d, lo, hi = paired_difference(
                    p_val, probs[v.ref][0], reference, base, reference.split("val")[1], val_groups
                )
                row["val_minus_ref"] = {"ref": v.ref, "diff": d, "ci_low": lo, "ci_high": hi}
            if ext_dir is not None:
                ref_ids = rows[v.ref].get("external_ids")
                if ref_ids == row["external_ids"]:
                    ext = exts[row["external"]["key"]]
                    d, lo, hi = paired_difference(
                        ext_probs[v.label], ext_probs[v.ref], reference, base, ext.y, ext.groups
                    )
                    row["external_minus_ref"] = {"ref": v.ref, "diff": d, "ci_low": lo, "ci_high": hi}
            for key, name in (
                ("val_minus_ref", "val"),
                ("minus_ref", "test"),
                ("external_minus_ref", "external"),
            ):
                if key in row:
                    m = row[key]
                    print(
                        f"   {name} ROC AUC - {v.ref}: {m['diff']:+.4f} [{m['ci_low']:+.4f}, "
                        f"{m['ci_high']:+.4f}] (paired)"
                    )
        calib += calibration_rows(
            v.label, p_val, p_test, data, params.evaluate.calibration_bins, params.base.seed
        )
        if not args.no_tta:
            t0 = time.perf_counter()
            tv, tt = tta_probabilities(where, data)
            label = f"{v.label}+tta"
            rows[label] = score(label, tv, tt, data, params, {**cost, "tta": True})
            probs[label] = (tv, tt)
            print(f"   tta scored in {time.perf_counter() - t0:.0f}s")
        _print_row(rows[v.label])
        write_outputs(final=False)
    for spec in args.ensemble:
        names, _, method = spec.partition(":")
        members = names.split("+")
        missing = [m for m in members if m.removesuffix("/tta") not in dirs]
        if missing:
            ap.error(f"--ensemble {spec}: unknown variant(s) {missing}")
        label = f"ensemble({'+'.join(members)}{', ' + method if method else ''})"
        print(f"\n== {label}")
        t0 = time.perf_counter()
        by_label = {v.label: v for v in variants}
        method = method or base.ensemble.method
        # The members read the prepared pixels of the defaults' prepare params (a member whose
        # variant changes prepare.* is not paired with the others, above), so does the external set.
        ext = load_external(ext_dir, base, args.cache) if ext_dir is not None else None
        ev, et, ee, einfo = ensemble_probabilities(members, by_label, dirs, reference, base, method, ext)
        train_s = sum(rows[m.removesuffix("/tta")]["train_seconds"] for m in members)
        cost = {"train_seconds": round(train_s, 1), "members": members}
        rows[label] = score(label, ev, et, reference, base, {**cost, **einfo})
        if ext is not None and ee is not None:
            score_external(rows[label], ext, ee, reference.split("val")[1], ev, base)
            print(f"   external ROC AUC {rows[label]['external']['roc_auc']:.4f}")
        probs[label] = (ev, et)
        calib += calibration_rows(label, ev, et, reference, base.evaluate.calibration_bins, base.base.seed)
        print(f"   combined in {time.perf_counter() - t0:.0f}s")
        _print_row(rows[label])

    baseline = baseline_label()
    if baseline is not None:
        for label, row in rows.items():
            if label != baseline and paired_ok.get(label.split("+tta")[0], True):
                d, lo, hi = paired_difference(probs[label][1], probs[baseline][1], reference, base)
                row["minus_baseline"] = {"diff": d, "ci_low": lo, "ci_high": hi}
    write_outputs(final=True)
    print(f"({time.perf_counter() - t_start:.0f}s in all)")
    for out in (args.json, args.markdown):
        if out:
            print(f"wrote {out}")
    return 0


def _print_row(row: dict[str, Any]) -> None:
    t = row["test"]
    print(
        f"   {row['label']}: val AUC {row['val_roc_auc']:.4f}; test ROC AUC {t['roc_auc']:.4f} "
        f"[{t['roc_auc_ci_low']:.4f}, {t['roc_auc_ci_high']:.4f}]; trained in {row['train_seconds']:.0f}s"
    )


def markdown_table(
    rows: dict[str, dict[str, Any]],
    calib: list[dict[str, Any]],
    data: Data,
    params: Params,
    baseline: str | None,
    exts: dict[str, External] | None = None,
    variants: list[Variant] | None = None,
) -> str:
    """The README's quality table: one row per variant, paired difference to the baseline; with an
    external set, first the generalisation-gap table (paired differences vs each variant's ``vs=``)."""
    ci = round(100 * params.evaluate.ci)
    n_test = len(data.frames["test"])
    lines = gap_table(rows, data, params, exts or {}, variants or []) if exts else []
    lines += [
        f"Test split: {n_test} images ({int(data.frames['test']['label'].sum())} malignant); thresholds, "
        f"calibration and ensemble weights fitted on validation ({len(data.frames['val'])} images); "
        f"{ci}% CIs from {params.evaluate.bootstrap} bootstrap resamples (paired for the difference).",
        "",
        f"| variant | val AUC | test ROC AUC [{ci}% CI] | − {baseline or 'baseline'} [paired {ci}% CI] "
        "| sens / spec | train time |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        t = row["test"]
        diff = row.get("minus_baseline")
        shown = (
            "—" if diff is None else f"{diff['diff']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}]"
        )
        secs = row.get("train_seconds")
        epochs = f", {row['epochs_run']} ep" if row.get("epochs_run") else ""
        lines.append(
            f"| {label} | {row['val_roc_auc']:.3f} | {t['roc_auc']:.3f} [{t['roc_auc_ci_low']:.3f}, "
            f"{t['roc_auc_ci_high']:.3f}] | {shown} | {t['sensitivity']:.2f} / {t['specificity']:.2f} "
            f"| {secs / 60:.1f} min{epochs} |"
        )
    lines += [
        "",
        "| model | calibration | val ECE (out-of-fold) | val Brier (oof) | test ECE | test Brier |",
        "|---|---|---|---|---|---|",
    ]
    for c in calib:
        lines.append(
            f"| {c['label']} | {c['method']} | {c['val_ece_oof']:.3f} | {c['val_brier_oof']:.3f} "
            f"| {c['ece']:.3f} | {c['brier']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def gap_table(
    rows: dict[str, dict[str, Any]],
    data: Data,
    params: Params,
    exts: dict[str, External],
    variants: list[Variant],
) -> list[str]:
    """Internal test vs external set, per variant, with paired differences vs its reference."""
    ci = round(100 * params.evaluate.ci)
    ext = next(iter(exts.values()))
    lines = [
        f"Internal test: {len(data.frames['test'])} images ({int(data.frames['test']['label'].sum())} "
        f"malignant) of the training set's source; external: {ext.name}, {ext.summary['n_kept']} images "
        f"({ext.summary['n_malignant']} malignant), prepared with each variant's own prepare params. "
        f"Threshold chosen on validation ({len(data.frames['val'])} images) for train.target_sensitivity "
        f"{params.train.target_sensitivity}; {ci}% CIs from {params.evaluate.bootstrap} bootstrap resamples; "
        "Δ = variant − its reference on the same images (paired bootstrap).",
        "",
        f"| variant | vs | val AUC | internal test AUC [{ci}% CI] | external AUC [{ci}% CI] "
        "| external sens / spec | Δ val [paired CI] | Δ internal [paired CI] | Δ external [paired CI] | train time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def diff(m: dict[str, float] | None) -> str:
        return "—" if m is None else f"{m['diff']:+.3f} [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}]"

    # every scored row in order: the variants, then the ensembles (whose members share the defaults' prepare)
    for label, row in rows.items():
        ref = row.get("ref") or next((v.ref for v in variants if v.label == label), None)
        t, e = row["test"], row.get("external")
        shown_e = (
            "—"
            if e is None
            else f"{e['roc_auc']:.3f} [{e['roc_auc_ci_low']:.3f}, {e['roc_auc_ci_high']:.3f}]"
        )
        ss = "—" if e is None else f"{e['sensitivity']:.2f} / {e['specificity']:.2f}"
        epochs = f", {row['epochs_run']} ep" if row.get("epochs_run") else ""
        lines.append(
            f"| {label} | {ref or '—'} | {row['val_roc_auc']:.3f} | {t['roc_auc']:.3f} "
            f"[{t['roc_auc_ci_low']:.3f}, {t['roc_auc_ci_high']:.3f}] | {shown_e} | {ss} "
            f"| {diff(row.get('val_minus_ref'))} | {diff(row.get('minus_ref'))} | {diff(row.get('external_minus_ref'))} "
            f"| {row['train_seconds']:.0f} s{epochs} |"
        )
    return lines + [""]


def _auc_difference(y: np.ndarray, pair: np.ndarray) -> float:
    return safe_auc(y, pair[:, 0]) - safe_auc(y, pair[:, 1])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


if __name__ == "__main__":
    sys.exit(main())
