"""Does self-supervised pretraining (SimCLR) on the training images fit the CPU budget? A measurement.

ImageNet weights cannot be had offline, so the one weights source left for transfer learning is the
training images themselves. This benchmark puts a SimCLR-style objective (Chen et al. 2020, "A
Simple Framework for Contrastive Learning of Visual Representations") on the encoder of the
project's CNN (``build_cnn(100, CnnParams())`` up to its global average pooling) and measures, side
by side in one process on the same images:

1. supervised   epochs of the CNN through the pipeline's own ``fit_loop`` (default ``train.*``:
                batch 64, class weights, the default augmentation), validated on a 64-image slice
                only, so that an epoch is (almost) all training, like a SimCLR epoch;
2. SimCLR       epochs of the same encoder (same initial weights) under NT-Xent: two views per image,
                each through the project's ``augment_batch`` (dihedral flip/rotation, a zoom crop of
                up to 49% of the side, brightness/contrast/saturation jitter) plus the hue jitter and
                random grayscale SimCLR adds; a 2-layer MLP projection head; temperature ``--tau``;
                Adam. Every step runs the encoder forward and backward on 2x the images.

Per epoch it records the wall time, this process's CPU seconds and the cores OTHER processes used
meanwhile (``/proc/stat``): the machine is shared, so the wall times move with the load, while the
CPU seconds, and the ratio of the two paths measured in the same run, move much less. The first
epoch of each path traces the graph and is left out. A SimCLR epoch on the full training split is
then estimated three ways: as timed (wall); our CPU seconds over all cores (a lower bound on an idle
machine); and the CPU ratio of the two paths times a supervised epoch on free cores
(``--ref-sup-epoch-s``, 17.3 s: 607 s / 35 epochs in benchmarks/README.md). Each is scaled to a
useful pretraining (``--assume-epochs``, 100: the shortest run in Figure 9 of the SimCLR paper,
which trains 100 to 800 epochs) and set against the pipeline's 10-minute budget (``--budget-s``),
of which the supervised CNN itself takes ``train.epochs`` epochs.

3. probe        (skipped with ``--no-probe``) whether the few SimCLR epochs taught the encoder
                anything: a logistic regression on frozen pooled features of the whole training
                split, scored by validation ROC AUC, for the encoder before (random init) and after
                the SimCLR epochs.

    .venv/bin/python benchmarks/bench_ssl.py [--data DIR] [--n 1000] [--sup-epochs 3]
        [--ssl-epochs 5] [--batch 128] [--tau 0.5] [--assume-epochs 100] [--no-probe] [--json OUT]
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
try:
    import melanoma  # noqa: F401
except ImportError:  # not installed into the interpreter: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from loadmeter import BUSY_LIMIT, HZ  # noqa: E402
from melanoma.config import AugmentParams, FolderParams, Params  # noqa: E402
from melanoma.contracts import load_prepared, split_arrays  # noqa: E402
from melanoma.metrics import safe_auc  # noqa: E402
from melanoma.models.cnn import build_cnn  # noqa: E402
from melanoma.models.deep.data import augment_batch  # noqa: E402
from melanoma.models.deep.loop import LoopSettings, fit_loop, seed_everything  # noqa: E402
from melanoma.prepare import prepare  # noqa: E402
from melanoma.sources.folder import import_folder  # noqa: E402
from melanoma.split import split_frame  # noqa: E402

DEFAULT_DATA = "../shared/datasets/kaggle-isic-malignant-vs-benign"
# SimCLR's colour distortion at strength s = 0.5 (its CIFAR-10 setting): 0.8 s for brightness,
# contrast and saturation, 0.2 s for hue; the crop is the project's zoom at its largest allowed value.
SIMCLR_AUGMENT = AugmentParams(
    flip=True, rotate90=True, zoom=0.49, brightness=0.4, contrast=0.4, saturation=0.4
)
HUE = 0.1
GRAYSCALE_P = 0.2
warnings.filterwarnings("ignore", message="`shuffle=True` was passed")


# --------------------------------------------------------------------------- load accounting


def _busy_jiffies() -> int | None:
    """Non-idle jiffies of all CPUs, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *vals = line.split()
                if name == "cpu":
                    v = [int(x) for x in vals[:8]]
                    return sum(v) - v[3] - v[4]  # minus idle and iowait
    except (OSError, ValueError):
        return None
    return None


def _own_jiffies() -> int | None:
    """utime + stime of this process (TensorFlow's thread pools included)."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


@dataclasses.dataclass
class Mark:
    """A point in time: wall clock, this process's CPU jiffies, all CPUs' busy jiffies."""

    wall: float
    own: int | None
    busy: int | None

    @classmethod
    def now(cls) -> Mark:
        return cls(time.perf_counter(), _own_jiffies(), _busy_jiffies())


def epoch_row(a: Mark, b: Mark, images: int) -> dict[str, Any]:
    """Wall and CPU seconds between two marks, and the cores other processes used meanwhile."""
    seconds = b.wall - a.wall
    row: dict[str, Any] = {"seconds": seconds, "images": images, "cpu_seconds": None, "other_cores": None}
    if None not in (a.own, b.own, a.busy, b.busy):
        cpu = (b.own - a.own) / HZ  # type: ignore[operator]
        row["cpu_seconds"] = cpu
        row["other_cores"] = max(0.0, ((b.busy - a.busy) / HZ - cpu) / seconds)  # type: ignore[operator]
    return row


def steady(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median per-image wall and CPU seconds over the epochs after the first (which traces)."""
    rest = rows[1:] or rows
    per_image = [r["seconds"] / r["images"] for r in rest]
    cpu = [r["cpu_seconds"] / r["images"] for r in rest if r["cpu_seconds"] is not None]
    other = [r["other_cores"] for r in rest if r["other_cores"] is not None]
    return {
        "epochs_timed": len(rest),
        "s_per_image": statistics.median(per_image),
        "cpu_s_per_image": statistics.median(cpu) if cpu else None,
        "other_cores_max": max(other) if other else None,
    }


# --------------------------------------------------------------------------- data


def load_split(data_dir: Path, params: Params) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Import -> prepare -> split, as the pipeline (and bench_quality) does; a temp dir, ~5 s."""
    with tempfile.TemporaryDirectory(prefix="bench_ssl_") as tmp:
        import_folder(Path(tmp) / "raw", FolderParams(path=str(data_dir)), params.base.seed)
        prepare(Path(tmp) / "raw", Path(tmp) / "prepared", params.prepare)
        images, index = load_prepared(Path(tmp) / "prepared")
        frames = split_frame(index, params.split, params.base.seed)
        return {name: split_arrays(images, frames[name]) for name in ("train", "val")}


# --------------------------------------------------------------------------- SimCLR


def encoder_of(model: keras.Model) -> keras.Model:
    """The CNN up to its global average pooling (weights shared with ``model``)."""
    return keras.Model(model.input, model.get_layer("pool").output, name="encoder")


def projection_head(dim: int, out: int) -> keras.Model:
    """SimCLR's g(.): Dense(dim) + ReLU + Dense(out); thrown away after pretraining."""
    inputs = keras.Input((dim,), name="h")
    x = keras.layers.Dense(dim, activation="relu", name="proj_hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(out, name="proj_out")(x), name="projection")


def simclr_view(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One SimCLR view of a uint8 batch: the project's augmentation (dihedral, zoom crop, brightness,
    contrast, saturation) plus a per-image hue shift and, with probability 0.2, grayscale."""
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    x = augment_batch(images, seeds[0], SIMCLR_AUGMENT)  # float32 in [0, 255]
    b = tf.shape(x)[0]
    hsv = tf.image.rgb_to_hsv(x / 255.0)
    shift = tf.random.stateless_uniform([b, 1, 1], seeds[1], -HUE, HUE)
    hsv = tf.concat([tf.math.floormod(hsv[..., :1] + shift[..., None], 1.0), hsv[..., 1:]], axis=-1)
    x = tf.image.hsv_to_rgb(hsv) * 255.0
    gray = tf.random.stateless_uniform([b, 1, 1, 1], seeds[2]) < GRAYSCALE_P
    x = tf.where(gray, tf.repeat(tf.reduce_mean(x, axis=-1, keepdims=True), 3, axis=-1), x)
    return tf.clip_by_value(x, 0.0, 255.0)


def nt_xent(z1: tf.Tensor, z2: tf.Tensor, tau: float) -> tf.Tensor:
    """NT-Xent: each of the 2B views must pick its partner among the other 2B - 1 (cosine / tau)."""
    z = tf.math.l2_normalize(tf.concat([z1, z2], axis=0), axis=1)
    n = tf.shape(z1)[0]
    logits = tf.matmul(z, z, transpose_b=True) / tau
    logits = logits - 1e9 * tf.eye(2 * n)  # a view is not its own positive
    partner = tf.concat([tf.range(n) + n, tf.range(n)], axis=0)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(partner, logits))


def simclr_dataset(images: np.ndarray, batch: int, seed: int) -> tf.data.Dataset:
    """Shuffled uint8 batches (full batches only: NT-Xent wants the same number of negatives),
    each turned into two views with stateless seeds from (seed, batch counter, view)."""
    ds = tf.data.Dataset.from_tensor_slices(images)
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch, drop_remainder=True)

    def views(x: tf.Tensor, step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        base = tf.stack([tf.constant(seed, tf.int64), step])
        return (
            simclr_view(x, tf.random.experimental.stateless_fold_in(base, 0)),
            simclr_view(x, tf.random.experimental.stateless_fold_in(base, 1)),
        )

    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter())).map(views, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def pretrain_simclr(
    encoder: keras.Model, images: np.ndarray, *, epochs: int, batch: int, tau: float, lr: float, seed: int
) -> list[dict[str, Any]]:
    """SimCLR epochs on ``encoder`` (in place); one row per epoch with its loss, time and load."""
    head = projection_head(int(encoder.output.shape[-1]), 64)
    optimizer = keras.optimizers.Adam(learning_rate=lr)
    weights = encoder.trainable_weights + head.trainable_weights

    @tf.function
    def step(v1: tf.Tensor, v2: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            h = encoder(tf.concat([v1, v2], axis=0), training=True)
            z = head(h, training=True)
            loss = nt_xent(z[: tf.shape(v1)[0]], z[tf.shape(v1)[0] :], tau)
            total = loss + tf.add_n(encoder.losses) if encoder.losses else loss  # the CNN's L2, as in fit
        optimizer.apply_gradients(zip(tape.gradient(total, weights), weights, strict=True))
        return loss

    ds = simclr_dataset(images, batch, seed)
    rows = []
    for epoch in range(epochs):
        start, losses = Mark.now(), []
        for v1, v2 in ds:
            losses.append(float(step(v1, v2)))
        row = epoch_row(start, Mark.now(), len(losses) * batch)
        rows.append({"epoch": epoch, "loss": float(np.mean(losses)), **row})
        print(
            f"   simclr     epoch {epoch + 1}: loss {rows[-1]['loss']:.4f}  {row['seconds']:.1f}s "
            f"(cpu {row['cpu_seconds'] or 0:.1f}s, other load {row['other_cores'] or 0:.2f} cores)",
            flush=True,
        )
    return rows


# --------------------------------------------------------------------------- supervised


def supervised_epochs(
    params: Params, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, epochs: int
) -> list[dict[str, Any]]:
    """The CNN through the pipeline's ``fit_loop``; one row per epoch (end-to-end marks)."""
    seed_everything(params.base.seed)
    model = build_cnn(x.shape[1], params.cnn)
    loop = LoopSettings.from_params(params.train, params.base.seed).replace(
        epochs=epochs, early_stopping_start=epochs
    )
    marks = [Mark.now()]
    rows: list[dict[str, Any]] = []

    def on_epoch(metrics: dict[str, float], step: int) -> None:
        marks.append(Mark.now())
        row = epoch_row(marks[-2], marks[-1], len(y))
        rows.append({"epoch": step, "loss": metrics.get("loss"), **row})
        print(
            f"   supervised epoch {step + 1}: loss {metrics.get('loss', float('nan')):.4f}  "
            f"{row['seconds']:.1f}s (cpu {row['cpu_seconds'] or 0:.1f}s, "
            f"other load {row['other_cores'] or 0:.2f} cores)",
            file=sys.__stdout__,
            flush=True,
        )

    with contextlib.redirect_stdout(io.StringIO()):
        fit_loop(model, x, y, x_val, y_val, loop, strategy=tf.distribute.get_strategy(), on_epoch=on_epoch)
    return rows


# --------------------------------------------------------------------------- probe


def features(encoder: keras.Model, images: np.ndarray) -> np.ndarray:
    """Pooled features (inference mode) in batches of 256."""
    out = [
        np.asarray(encoder(tf.convert_to_tensor(images[i : i + 256], tf.float32), training=False))
        for i in range(0, len(images), 256)
    ]
    return np.concatenate(out).astype(np.float64)


def linear_probe(f_tr: np.ndarray, y_tr: np.ndarray, f_val: np.ndarray, y_val: np.ndarray) -> float:
    """Val ROC AUC of a standardised, class-balanced logistic regression on frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))
    clf.fit(f_tr, y_tr)
    return safe_auc(y_val, clf.predict_proba(f_val)[:, 1])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data", default=DEFAULT_DATA, help=f"folder of class subfolders (default {DEFAULT_DATA})"
    )
    ap.add_argument("--n", type=int, default=1000, help="training images timed (a seeded subset; 0 = all)")
    ap.add_argument("--sup-epochs", type=int, default=3, help="supervised epochs (the first is not timed)")
    ap.add_argument("--ssl-epochs", type=int, default=5, help="SimCLR epochs (the first is not timed)")
    ap.add_argument("--batch", type=int, default=128, help="SimCLR batch (2x views per step)")
    ap.add_argument("--tau", type=float, default=0.5, help="NT-Xent temperature (SimCLR's CIFAR-10 value)")
    ap.add_argument("--lr", type=float, default=1e-3, help="SimCLR Adam learning rate")
    ap.add_argument("--assume-epochs", type=int, default=100, help="SimCLR epochs of a useful pretraining")
    ap.add_argument("--budget-s", type=float, default=600.0, help="the whole pipeline's budget (make run)")
    ap.add_argument(
        "--ref-sup-epoch-s",
        type=float,
        default=17.3,
        help="a supervised epoch on the full split with free cores (benchmarks/README: 607 s / 35 epochs)",
    )
    ap.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.sup_epochs < 2 or args.ssl_epochs < 2:
        ap.error("--sup-epochs and --ssl-epochs must be at least 2 (the first epoch traces and is not timed)")

    data_dir = Path(args.data)
    data_dir = (data_dir if data_dir.is_absolute() else Path.cwd() / data_dir).resolve()
    if not data_dir.is_dir():
        ap.error(f"--data {args.data}: folder not found")
    params = Params()
    seed = params.base.seed
    t0 = time.perf_counter()
    splits = load_split(data_dir, params)
    (x_all, y_all), (x_val, y_val) = splits["train"], splits["val"]
    n_train = len(y_all)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(n_train)[: args.n]) if 0 < args.n < n_train else np.arange(n_train)
    x, y = x_all[pick], y_all[pick]
    # A 64-image validation slice keeps fit_loop's per-epoch validation (early stopping needs it)
    # from counting in the supervised epoch: the SimCLR epoch has none.
    val_slice = rng.permutation(len(y_val))[:64]
    print(
        f"data: {n_train} training images ({int(y_all.sum())} melanoma), {len(y_val)} validation; timing on "
        f"{len(y)} ({time.perf_counter() - t0:.1f}s to import+prepare+split)",
        flush=True,
    )

    print(f"\n1. supervised: default CNN, fit_loop, batch {params.train.batch_size}", flush=True)
    sup_rows = supervised_epochs(params, x, y, x_val[val_slice], y_val[val_slice], args.sup_epochs)

    print(f"\n2. SimCLR: same encoder, batch {args.batch} (x2 views), tau {args.tau}", flush=True)
    seed_everything(seed)
    encoder = encoder_of(build_cnn(x.shape[1], params.cnn))  # the same initial weights as supervised
    probe: dict[str, Any] = {}
    if not args.no_probe:
        t = time.perf_counter()
        probe["f_random"] = (features(encoder, x_all), features(encoder, x_val))
        probe["feature_seconds"] = time.perf_counter() - t
    ssl_rows = pretrain_simclr(
        encoder, x, epochs=args.ssl_epochs, batch=args.batch, tau=args.tau, lr=args.lr, seed=seed
    )

    sup, ssl = steady(sup_rows), steady(ssl_rows)
    ratio = ssl["s_per_image"] / sup["s_per_image"]
    cpu_ratio = None
    if ssl["cpu_s_per_image"] and sup["cpu_s_per_image"]:
        cpu_ratio = ssl["cpu_s_per_image"] / sup["cpu_s_per_image"]
    cores = os.cpu_count() or 1
    # Three estimates of one SimCLR epoch on the full training split, for a machine like this one:
    # as timed (wall, under whatever load there was); our CPU seconds spread over every core (a
    # lower bound on an idle machine: perfect parallelism); and the CPU ratio of the two paths
    # times the supervised epoch measured on free cores (--ref-sup-epoch-s).
    estimates = {
        "as timed (wall)": ssl["s_per_image"] * n_train,
        f"CPU s / {cores} cores": (ssl["cpu_s_per_image"] or np.nan) * n_train / cores,
        f"CPU ratio x {args.ref_sup_epoch_s:g} s": (cpu_ratio or np.nan) * args.ref_sup_epoch_s,
    }
    cheapest = min(v for v in estimates.values() if np.isfinite(v))
    loaded = max(sup["other_cores_max"] or 0, ssl["other_cores_max"] or 0) > BUSY_LIMIT

    print(f"\nper epoch, scaled to the full training split ({n_train} images; median of the timed epochs):")
    print(f"  {'path':<11} {'wall s':>8} {'CPU s':>8} {'other load (max cores)':>23}")
    for name, s in (("supervised", sup), ("SimCLR", ssl)):
        cpu = f"{s['cpu_s_per_image'] * n_train:.1f}" if s["cpu_s_per_image"] else "n/a"
        load = f"{s['other_cores_max']:.2f}" if s["other_cores_max"] is not None else "n/a"
        print(f"  {name:<11} {s['s_per_image'] * n_train:>8.1f} {cpu:>8} {load:>23}")
    print(f"  SimCLR / supervised: {ratio:.2f}x wall" + (f", {cpu_ratio:.2f}x CPU" if cpu_ratio else ""))
    print(
        f"\nextrapolated to {args.assume_epochs} SimCLR epochs (the shortest run in SimCLR's Fig. 9; "
        f"budget {args.budget_s / 60:.0f} min for the whole pipeline):"
    )
    for name, epoch_s in estimates.items():
        if np.isfinite(epoch_s):
            print(
                f"  {name:<22} {epoch_s:6.1f} s/epoch -> {epoch_s * args.assume_epochs / 60:6.1f} min "
                f"= {epoch_s * args.assume_epochs / args.budget_s:5.1f}x the budget; "
                f"{int(args.budget_s // epoch_s)} epochs fit in it"
            )
    ref_cnn = args.ref_sup_epoch_s * params.train.epochs
    verdict = "fits" if cheapest * args.assume_epochs <= args.budget_s - ref_cnn else "does NOT fit"
    print(
        f"  (the supervised CNN already needs {params.train.epochs} x {args.ref_sup_epoch_s:g} s = "
        f"{ref_cnn / 60:.1f} min of it on free cores)"
    )
    print(
        f"verdict: {args.assume_epochs} epochs of SimCLR pretraining {verdict} the budget at the cheapest "
        f"estimate" + ("  (timed under load: see 'other load')" if loaded else "")
    )

    out: dict[str, Any] = {
        "n_train": n_train,
        "n_timed": len(y),
        "cores": cores,
        "simclr": {"batch": args.batch, "tau": args.tau, "lr": args.lr, "epochs": ssl_rows, **ssl},
        "supervised": {"batch": params.train.batch_size, "epochs": sup_rows, **sup},
        "ratio_wall": ratio,
        "ratio_cpu": cpu_ratio,
        "simclr_s_per_epoch_full": {k: (v if np.isfinite(v) else None) for k, v in estimates.items()},
        "supervised_s_per_epoch_full": {
            "as timed (wall)": sup["s_per_image"] * n_train,
            "reference (free cores)": args.ref_sup_epoch_s,
        },
        "assume_epochs": args.assume_epochs,
        "pretrain_minutes_cheapest": cheapest * args.assume_epochs / 60,
        "budget_seconds": args.budget_s,
        "supervised_cnn_seconds_reference": ref_cnn,
        "verdict": verdict,
        "timed_under_load": loaded,
    }
    if not args.no_probe:
        t = time.perf_counter()
        f_tr, f_val = probe["f_random"]
        g_tr, g_val = features(encoder, x_all), features(encoder, x_val)
        auc_random = linear_probe(f_tr, y_all, f_val, y_val)
        auc_ssl = linear_probe(g_tr, y_all, g_val, y_val)
        out["probe"] = {
            "val_auc_random_init": auc_random,
            "val_auc_simclr": auc_ssl,
            "simclr_epochs": args.ssl_epochs,
            "seconds": probe["feature_seconds"] + time.perf_counter() - t,
        }
        print(
            f"\n3. linear probe (logistic regression on frozen pooled features of all {n_train} training "
            f"images, val ROC AUC on {len(y_val)}):\n   random-init encoder {auc_random:.3f}   after "
            f"{args.ssl_epochs} SimCLR epochs {auc_ssl:.3f}   ({auc_ssl - auc_random:+.3f})"
        )
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
