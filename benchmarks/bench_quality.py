"""Model quality on a real folder dataset, through the pipeline's own code, end to end.

    import_folder (into a temp raw dir) -> prepare -> split_frame -> fit_model (baseline, cnn,
    transfer) -> threshold on val (choose_threshold) -> test metrics (score_metrics, bootstrap CI)

Params are ``melanoma.config.Params()`` (the code defaults, not params.yaml) unless ``--params FILE``
is given; ``--epochs`` caps the deep models' epochs (train.epochs) for time and ``--set KEY=VALUE``
overrides any dotted key (YAML value, validated like params.yaml), e.g. ``--set cnn.filters=[16,32,64]``
or ``--set prepare.image_size=128``. Prints per model: test ROC AUC with its 95 % bootstrap CI,
PR AUC, sensitivity / specificity at the validation threshold, and training time.

The Kaggle "malignant vs benign" folder (train|test/benign|malignant, 3,297 images at 224x224)
takes ~13 minutes on 2 cores at the default 35 CNN epochs (~17 s each here; ``--epochs`` caps
them). Its own train/test folders are ignored and the images re-split with the default SplitParams
(no patient ids there, so every image is its own group). The imported files are hardlinks (or copies) in a temp dir that is removed at the end.

    .venv/bin/python benchmarks/bench_quality.py --data ../shared/datasets/kaggle-isic-malignant-vs-benign \\
        [--epochs N] [--models baseline,cnn,transfer] [--set KEY=VALUE] [--bootstrap 500] [--json OUT]
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")  # the importer's and prepare's progress bars

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
try:
    import melanoma  # noqa: F401
except ImportError:  # not installed into the interpreter: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

from melanoma.config import FolderParams, Params, load_params, params_from_dict  # noqa: E402
from melanoma.contracts import load_prepared, split_arrays  # noqa: E402
from melanoma.evaluate import score_metrics  # noqa: E402
from melanoma.metrics import choose_threshold, grouped_bootstrap_ci, safe_auc  # noqa: E402
from melanoma.prepare import prepare  # noqa: E402
from melanoma.sources.folder import import_folder  # noqa: E402
from melanoma.split import split_frame  # noqa: E402
from melanoma.train import fit_model  # noqa: E402

DEFAULT_DATA = "../shared/datasets/kaggle-isic-malignant-vs-benign"
MODELS = ("baseline", "cnn", "transfer")
warnings.filterwarnings("ignore", message="`shuffle=True` was passed")  # fit on a tf.data.Dataset


def build_params(args: argparse.Namespace) -> Params:
    """Code defaults (or --params FILE), then --epochs and --set overrides, validated as params.yaml is."""
    base = load_params(args.params) if args.params else Params()
    data: dict[str, Any] = dataclasses.asdict(base)
    overrides = list(args.set)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"--set {item!r}: {part!r} is not a params section")
            node = node[part]
        if leaf not in node:
            raise SystemExit(f"--set {item!r}: unknown key {key!r}")
        node[leaf] = yaml.safe_load(raw)
    return params_from_dict(data)


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


def run_model(
    name: str, data: dict[str, tuple[np.ndarray, np.ndarray]], groups: np.ndarray, params: Params, seed: int
) -> dict[str, Any]:
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = data["train"], data["val"], data["test"]
    strategy = None
    if name != "baseline":
        from melanoma.models.deep.loop import make_strategy

        strategy = make_strategy(params.train.strategy, params.train.devices)
    printer = EpochPrinter(name, show=name == "cnn")  # the transfer head's epochs take ~0.1 s each
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        model, info = fit_model(name, x_tr, y_tr, x_val, y_val, params, strategy=strategy, on_epoch=printer)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    p_val = model.predict_proba(x_val).astype(np.float64)
    threshold = choose_threshold(y_val, p_val, params.train.target_sensitivity)
    p_test = model.predict_proba(x_te).astype(np.float64)
    predict_seconds = time.perf_counter() - t1
    metrics = score_metrics(y_te, p_test, groups, threshold, params.evaluate, seed)
    history = info.pop("history", None)
    return {
        "val_roc_auc": safe_auc(y_val, p_val),
        "threshold": threshold,
        "test": metrics,
        "train_seconds": train_seconds,
        "predict_seconds": predict_seconds,
        "info": info,
        "epochs": printer.rows or history,
        "p_test": p_test,  # for the paired comparison; not written to the JSON
    }


def describe(name: str, r: dict[str, Any]) -> str:
    info = r["info"]
    if name == "baseline":
        return f"candidate {info.get('candidate')}"
    if name == "cnn":
        return f"{info.get('epochs_run')} epochs, best {int(info.get('best_epoch') or 0) + 1}, {info.get('n_params'):,} params"
    return f"{info.get('backbone')} weights={info.get('weights')}, {info.get('n_params'):,} params"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data", default=DEFAULT_DATA, help=f"folder of class subfolders (default {DEFAULT_DATA})"
    )
    ap.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS)
    )
    ap.add_argument(
        "--params", type=Path, default=None, help="a params.yaml to start from (default: code defaults)"
    )
    ap.add_argument("--epochs", type=int, default=None, help="cap train.epochs (the deep models) for time")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted param")
    ap.add_argument(
        "--bootstrap", type=int, default=None, help="bootstrap resamples (default evaluate.bootstrap)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.bootstrap is not None:
        args.set.append(f"evaluate.bootstrap={args.bootstrap}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; expected some of {', '.join(MODELS)}")
    data_dir = Path(args.data)
    data_dir = data_dir if data_dir.is_absolute() else (Path.cwd() / data_dir)
    if not data_dir.is_dir() and not Path(args.data).is_absolute():
        data_dir = ROOT / args.data
    if not data_dir.is_dir():
        ap.error(f"--data {args.data}: folder not found")
    params = build_params(args)
    seed = params.base.seed
    logging.basicConfig(level=logging.WARNING, format="   %(levelname)s %(name)s: %(message)s")

    t_start = time.perf_counter()
    cores = os.cpu_count() or 1
    print(f"bench_quality: {data_dir.resolve()}, cpu_count {cores}, models {', '.join(models)}, seed {seed}")
    print(
        f"   prepare.image_size {params.prepare.image_size} ({params.prepare.fit}); train.epochs {params.train.epochs} "
        f"(patience {params.train.early_stopping_patience} from epoch {params.train.early_stopping_start}, {params.train.lr_schedule}, {params.train.class_balance}); "
        f"cnn.filters {list(params.cnn.filters)}; transfer {params.transfer.backbone} "
        f"head_epochs {params.transfer.head_epochs}; bootstrap {params.evaluate.bootstrap}"
    )
    results: dict[str, Any] = {
        "data": str(data_dir.resolve()),
        "params": dataclasses.asdict(params),
        "overrides": args.set + ([f"train.epochs={args.epochs}"] if args.epochs is not None else []),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        t0 = time.perf_counter()
        ingest = import_folder(Path(tmp) / "raw", FolderParams(path=str(data_dir)), seed)
        report = prepare(Path(tmp) / "raw", Path(tmp) / "prepared", params.prepare)
        images, index = load_prepared(Path(tmp) / "prepared")
        images = np.asarray(images)  # into memory: the temp dir goes away before the models are done
        frames = split_frame(index, params.split, seed)
        prep_seconds = time.perf_counter() - t0
    print(
        f"   imported {ingest['n_image_files']} files, kept {report['n_kept']} ({report['n_melanoma']} malignant, "
        f"{report['melanoma_fraction']:.1%}; {report['n_duplicates']} duplicate, {report['n_corrupt']} corrupt dropped) "
        f"in {prep_seconds:.0f}s"
    )
    data = {s: split_arrays(images, frames[s]) for s in ("train", "val", "test")}
    print(
        "   split: "
        + ", ".join(f"{s} {len(y)} ({int(y.sum())} malignant)" for s, (_, y) in data.items())
        + f"; {frames['test']['group'].nunique()} test groups"
    )
    groups = frames["test"]["group"].astype(str).to_numpy()
    results["data_summary"] = {
        "n_kept": report["n_kept"],
        "n_malignant": report["n_melanoma"],
        "splits": {s: {"n": len(y), "n_malignant": int(y.sum())} for s, (_, y) in data.items()},
        "prepare_seconds": prep_seconds,
    }

    for name in models:
        print(f"\n== {name}")
        r = run_model(name, data, groups, params, seed)
        results["models"][name] = r
        t = r["test"]
        print(
            f"   {describe(name, r)}; trained in {r['train_seconds']:.0f}s; val AUC {r['val_roc_auc']:.4f}; "
            f"test ROC AUC {t['roc_auc']:.4f} [{t['roc_auc_ci_low']:.4f}, {t['roc_auc_ci_high']:.4f}]"
        )

    ci = round(100 * params.evaluate.ci)
    print(
        f"\n== test set ({len(data['test'][1])} images), threshold chosen on val; {ci}% CI, bootstrap {params.evaluate.bootstrap}"
    )
    print(
        f"   {'model':<10}{'ROC AUC':>9}{f'{ci}% CI':>18}{'PR AUC':>8}{'sens':>7}{'spec':>7}"
        f"{'spec@sens90':>13}{'train s':>9}{'s/epoch':>9}"
    )
    for name, r in results["models"].items():
        t = r["test"]
        per_epoch = "-"
        if name == "cnn" and r["info"].get("epochs_run"):
            per_epoch = f"{r['train_seconds'] / r['info']['epochs_run']:.0f}"
        interval = f"[{t['roc_auc_ci_low']:.4f}, {t['roc_auc_ci_high']:.4f}]"
        print(
            f"   {name:<10}{t['roc_auc']:>9.4f}{interval:>18}"
            f"{t['pr_auc']:>8.4f}{t['sensitivity']:>7.3f}{t['specificity']:>7.3f}{t['spec_at_sens_90']:>13.3f}"
            f"{r['train_seconds']:>9.0f}{per_epoch:>9}"
        )
    probs = {name: r.pop("p_test") for name, r in results["models"].items()}
    if "baseline" in probs:
        # Paired: both models scored on the same bootstrap resamples of the test set.
        y_te = data["test"][1]
        for name in ("cnn", "transfer"):
            if name not in probs:
                continue
            pair = np.stack([probs[name], probs["baseline"]], axis=1)
            diff = safe_auc(y_te, pair[:, 0]) - safe_auc(y_te, pair[:, 1])
            lo, hi = grouped_bootstrap_ci(
                y_te, pair, groups, _auc_difference, params.evaluate.bootstrap, params.evaluate.ci, seed
            )
            results["models"][name]["roc_auc_minus_baseline"] = {"diff": diff, "ci_low": lo, "ci_high": hi}
            print(f"   {name} - baseline ROC AUC = {diff:+.4f}  paired {ci}% CI [{lo:+.4f}, {hi:+.4f}]")
    results["seconds"] = time.perf_counter() - t_start
    print(f"\n({results['seconds']:.0f}s in all)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
        print(f"wrote {args.json}")
    return 0


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
