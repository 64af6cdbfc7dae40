"""Benchmark training and inference as RATIOS measured side by side in one run.

Three checks on synthetic 100x100 uint8 lesion-like images (no dependency on any data folder):

1. input pipeline  Training throughput of the default CNN (``build_cnn(100, CnnParams())``, batch 64,
                   compiled by ``compile_for``) fed by ``make_dataset(..., training=True,
                   augment=AugmentParams())`` vs the same model fed the same augmented batches
                   pre-materialised as tensors in memory (``from_tensor_slices`` over the stacked
                   batches). Both go through ``model.fit``; images/s over ``--steps`` steps after
                   ``--warmup`` steps; passes interleaved, best of ``--repeat``. As a load-independent
                   cross-check, the CPU the pipeline burns per batch on its own (split into tf.data
                   and augmentation) is set against the CPU of a training step.
                   Target: pipeline / in-memory >= 0.9 (the pipeline is never the bottleneck).
2. cached features The transfer phase-1 path (``compute_features`` once, then K epochs of
                   ``fit_head`` on the feature matrix) vs the naive path (the same head on top of the
                   frozen backbone, ``fit_loop`` on images for K epochs, no augmentation). VGG16,
                   random init, 100x100. Per-epoch time (best epoch of each) and the ratio of the
                   whole K epochs with the one-off feature pass included. Target: per-epoch >= 5x.
3. inference       ``predict_proba`` of the baseline, the default CNN and VGG16-transfer: images/s
                   in batches of 128 and p50 latency of one image. Context only, no target.
4. augmentation    One batch of 64 at 100x100 through the flips/rotations and through the whole
                   default ``augment_batch``: the old way (every flip and rotation computed for every
                   image, then ``tf.where``; kept here as the reference) vs the pipeline's (one of the
                   dihedral symmetries per image, on uint8 before the cast). CPU ms per batch, best
                   of ``--repeat``; ratio old / new. Target: >= 2x on the flips/rotations.
5. op determinism  Training epoch time of the default CNN through ``fit_loop`` (augmentation on,
                   ``--det-n`` images, ``--det-epochs`` epochs) with TensorFlow's op determinism on
                   vs off, each in a fresh child process (the switch is process-wide), alternated,
                   best steady epoch of ``--repeat`` children each. Context: the price of
                   byte-reproducible models; no target.
6. architectures   Training time per epoch (``--arch-n`` images at 100x100, batch 64, through the
                   pipeline with the default augmentation and class weights, op determinism on as in
                   ``train``) of the plain default CNN against residual candidates (widths x blocks
                   per stage) and against residual with mixup + cutmix; ratios to the plain CNN,
                   steady steps after a traced warm-up, passes interleaved, best of ``--repeat``.
                   Context for choosing ``cnn.*`` defaults (quality: bench_quality.py); no target.
7. isa             Seconds per epoch of the default CNN with oneDNN capped at AVX2 (the default
                   ``train.cpu_isa``: the same bytes on every x86-64 CPU since 2013) vs oneDNN's own
                   pick for this CPU, fresh children as in 5. The price of CPU-independent bytes.

Absolute times are printed as context only: the machine may be shared, so each timed pass also
records how many cores OTHER processes used meanwhile (from ``/proc/stat``); a verdict drawn from a
pass where they used more than 0.25 cores is flagged "not clean".

    .venv/bin/python benchmarks/bench_training.py [--n 1024] [--steps 20] [--repeat 3] [--json OUT]
        [--only pipeline,cached,inference,augment,determinism,architectures,isa]
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from loadmeter import BUSY_LIMIT, HZ, busy, fmt_load, verdict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
try:
    import melanoma  # noqa: F401
except ImportError:  # not installed into the interpreter: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from melanoma.config import AugmentParams, BaselineParams, CnnParams, TrainParams, TransferParams  # noqa: E402
from melanoma.image_rows import open_rows  # noqa: E402
from melanoma.models.baseline import fit_baseline  # noqa: E402
from melanoma.models.cnn import build_cnn  # noqa: E402
from melanoma.models.deep.classifier import KerasClassifier  # noqa: E402
from melanoma.models.deep.data import augment_batch, class_weights, make_dataset  # noqa: E402
from melanoma.models.deep.loop import (  # noqa: E402
    LoopSettings,
    compile_for,
    fit_loop,
    seed_everything,
)
from melanoma.models.transfer import (  # noqa: E402
    BACKBONES,
    WeightsChoice,
    build_backbone,
    build_head,
    compute_features,
    feature_extractor,
    fit_head,
    head_settings,
)

warnings.filterwarnings("ignore", message="`shuffle=True` was passed")  # fit on a tf.data.Dataset

SIZE = 100
BATCH = 64
PREDICT_BATCH = 128
TARGET_PIPELINE = 0.9  # pipeline / in-memory training throughput
TARGET_CACHED = 5.0  # naive epoch / cached-feature epoch
# architectures last: it turns op determinism on, which is process-wide
SECTIONS = ("pipeline", "cached", "inference", "augment", "determinism", "architectures", "isa")
TARGET_AUGMENT = 2.0  # old all-transforms / one-transform flips and rotations, CPU per batch


# --------------------------------------------------------------------------- data


def synth_images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Lesion-like uint8 images: shaded skin, soft elliptical blobs, grain; ~30 % positives that are
    darker, larger and less regular (two overlapping blobs), so the models have something to learn."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    pos = labels[:, None, None].astype(np.float32)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    skin = np.array([205, 150, 130], np.float32) + rng.normal(0, 12, (n, 3)).astype(np.float32)
    gx, gy = rng.normal(0, 20, (2, n, 1, 1)).astype(np.float32)
    shade = (gx * (xx - 0.5) + gy * (yy - 0.5))[..., None]
    img = skin[:, None, None, :] + shade
    alpha = np.zeros((n, size, size), np.float32)
    for k in range(2):
        cx, cy = rng.uniform(0.35, 0.65, (2, n, 1, 1)).astype(np.float32)
        if k == 1:  # the second blob: only positives get a clearly offset one
            cx = cx + pos * rng.uniform(-0.15, 0.15, (n, 1, 1)).astype(np.float32)
        r = (rng.uniform(0.12, 0.25, (n, 1, 1)) * (1 + 0.4 * pos)).astype(np.float32)
        ax = rng.uniform(0.6, 1.4, (n, 1, 1)).astype(np.float32)
        d = np.sqrt(((xx - cx) / (r * ax)) ** 2 + ((yy - cy) * ax / r) ** 2)
        blob = 0.5 * (1 - np.tanh((d - 1) / 0.16))  # a logistic edge, without exp overflow
        alpha = np.maximum(alpha, blob if k == 0 else blob * (0.3 + 0.7 * pos))
    lesion = np.where(pos[..., None] > 0, [70, 45, 55], [140, 90, 60]).astype(np.float32)
    lesion = lesion + rng.normal(0, 15, (n, 1, 1, 3)).astype(np.float32)
    img = img * (1 - alpha[..., None]) + lesion * alpha[..., None]
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), labels


# --------------------------------------------------------------------------- timing


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
    """utime + stime of this process (all its threads: TensorFlow's pools included)."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Pass:
    """One timed pass: wall seconds, our CPU seconds, and the cores OTHER processes used meanwhile."""

    seconds: float = float("inf")
    cpu_seconds: float | None = None
    foreign_cores: float | None = None
    value: float = 0.0  # the figure of merit the pass produced (e.g. images/s)


@contextlib.contextmanager
def measured(out: Pass):
    """Fill ``out`` with the wall time, our CPU time and the other processes' load of the block."""
    b0, o0 = _busy_jiffies(), _own_jiffies()
    t0 = time.perf_counter()
    yield out
    out.seconds = time.perf_counter() - t0
    b1, o1 = _busy_jiffies(), _own_jiffies()
    if None not in (b0, b1, o0, o1):
        out.cpu_seconds = (o1 - o0) / HZ  # type: ignore[operator]
        out.foreign_cores = max(0.0, ((b1 - b0) / HZ - out.cpu_seconds) / out.seconds)  # type: ignore[operator]


class BatchClock(keras.callbacks.Callback):
    """perf_counter at the end of every training step (the callback syncs each step)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.times.append(time.perf_counter())


@contextlib.contextmanager
def quiet():
    """Swallow Keras' per-epoch prints (fit_loop trains with verbose=2)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


# --------------------------------------------------------------------------- 1. input pipeline


def bench_pipeline(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> dict:
    n_batches = len(y) // BATCH
    x, y = x[: n_batches * BATCH], y[: n_batches * BATCH]
    aug = AugmentParams()
    print(
        f"\n== 1. input pipeline: default CNN, batch {BATCH}, {len(y)} images, "
        f"{args.warmup} warm-up + {args.steps} timed steps per pass, best of {args.repeat}"
    )
    keras.utils.set_random_seed(args.seed)
    model = build_cnn(SIZE, CnnParams())
    total_steps = (args.warmup + args.steps) * (4 * args.repeat + 2)
    compile_for(model, 1e-3, "cosine", total_steps)

    # The same augmented batches, materialised once as tensors.
    t0 = time.perf_counter()
    batches = list(make_dataset(x, y, BATCH, training=True, seed=args.seed, augment=aug))
    t_pipe = time.perf_counter() - t0
    xs = tf.stack([b[0] for b in batches])
    ys = tf.stack([b[1] for b in batches])
    print(
        f"   materialised {len(batches)} augmented batches in {t_pipe:.2f}s "
        f"(the pipeline alone: {len(y) / t_pipe:.0f} img/s incl. start-up)"
    )

    def pipeline_ds(augment: AugmentParams | None) -> Callable[[], tf.data.Dataset]:
        return lambda: make_dataset(x, y, BATCH, training=True, seed=args.seed, augment=augment).repeat()

    def memory_ds() -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((xs, ys)).repeat()

    # What `train` runs since issue 17: the split read batch by batch from the prepared array file.
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    np.save(tmp / "images.npy", x)
    rows = open_rows(tmp / "images.npy")

    def streamed_ds() -> tf.data.Dataset:
        return make_dataset(rows, y, BATCH, training=True, seed=args.seed, augment=aug).repeat()

    sources: dict[str, Callable[[], tf.data.Dataset]] = {
        "in_memory": memory_ds, "pipeline": pipeline_ds(aug), "streamed": streamed_ds,
    }  # fmt: skip
    labels = {
        "in_memory": "in-memory batches (from tensors)",
        "pipeline": "make_dataset + augment (array)",
        "streamed": "make_dataset + augment (file)",
    }

    def one_pass(make: Callable[[], tf.data.Dataset], warmup: int, steps: int) -> Pass:
        clock = BatchClock()
        p = Pass()
        with measured(p):
            model.fit(make(), epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[clock])
        t = clock.times
        p.value = steps * BATCH / (t[-1] - t[warmup - 1])
        return p

    for make in sources.values():  # trace the train step for every input signature
        one_pass(make, 1, 2)
    best = {k: Pass() for k in sources}
    rounds = 0
    while rounds < args.repeat or (rounds < 2 * args.repeat and any(busy(b) for b in best.values())):
        rounds += 1
        for name, make in sources.items():
            p = one_pass(make, args.warmup, args.steps)
            if p.value > best[name].value:
                best[name] = p

    steps_per_pass = args.warmup + args.steps
    print(f"   {'source':<34}{'img/s':>9}{'ms/step':>9}{'vs memory':>11}{'CPU ms/img':>12}{'other load':>12}")
    for name, p in best.items():
        cpu = "n/a" if p.cpu_seconds is None else f"{1000 * p.cpu_seconds / (steps_per_pass * BATCH):.2f}"
        print(
            f"   {labels[name]:<34}{p.value:>9.1f}{1000 * BATCH / p.value:>9.0f}"
            f"{p.value / best['in_memory'].value:>11.3f}{cpu:>12}{fmt_load(p):>12}"
        )
    ratio = best["pipeline"].value / best["in_memory"].value
    streamed = best["streamed"].value / best["in_memory"].value
    ok = min(ratio, streamed) >= TARGET_PIPELINE
    print(
        f"   pipeline / in-memory = {ratio:6.3f}, streamed from the file / in-memory = {streamed:6.3f}"
        f"    target >= {TARGET_PIPELINE:.2f}   " + verdict(ok, best["streamed"], best["in_memory"])
    )
    shutil.rmtree(tmp, ignore_errors=True)

    # Load-independent context: the CPU the pipeline burns per batch when it runs alone, against the
    # CPU of one training step. A step keeps every core busy here, so that CPU is taken from it.
    def alone(augment: AugmentParams | None) -> Pass:
        it = iter(make_dataset(x, y, BATCH, training=True, seed=args.seed + 1, augment=augment).repeat())
        next(it)  # start-up (shuffle buffer fill, threads) not counted
        p = Pass()
        with measured(p):
            for _ in range(2 * n_batches):
                next(it)
        return p

    alone_aug, alone_plain = alone(aug), alone(None)
    step_cpu = best["in_memory"].cpu_seconds
    share = predicted = None
    if alone_aug.cpu_seconds is not None and alone_plain.cpu_seconds is not None and step_cpu:
        pipe_ms = 1000 * alone_aug.cpu_seconds / (2 * n_batches)
        aug_ms = pipe_ms - 1000 * alone_plain.cpu_seconds / (2 * n_batches)
        step_ms = 1000 * step_cpu / steps_per_pass
        share = pipe_ms / step_ms
        predicted = 1 / (1 + share)
        print(
            f"   pipeline alone: {2 * len(y) / alone_aug.seconds:.0f} img/s; CPU {pipe_ms:.1f} ms/batch "
            f"(augmentation {aug_ms:.1f}) = {share:.1%} of a training step's CPU ({step_ms:.0f} ms); "
            f"with every core busy that predicts {predicted:.3f}"
        )
    return {
        "images": len(y),
        "steps": args.steps,
        "warmup": args.warmup,
        "images_per_s": {k: v.value for k, v in best.items()},
        "cpu_seconds": {k: v.cpu_seconds for k, v in best.items()},
        "other_load_cores": {k: v.foreign_cores for k, v in best.items()},
        "pipeline_alone_images_per_s": 2 * len(y) / alone_aug.seconds,
        "pipeline_cpu_share_of_step": share,
        "predicted_ratio_from_cpu": predicted,
        "ratio_pipeline_over_memory": ratio,
        "ratio_streamed_over_memory": streamed,
        "clean": not any(busy(b) for b in best.values()),
        "pass": ok,
    }


# --------------------------------------------------------------------------- 2. cached features


def bench_cached(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> tuple[dict, keras.Model]:
    k = args.epochs
    n_val = max(len(y) // 8, 32)
    x_tr, y_tr, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    print(
        f"\n== 2. frozen VGG16 (random init, {SIZE}x{SIZE}): cached features vs backbone every epoch; "
        f"{len(y_tr)} train + {len(y_val)} val images, K={k} epochs"
    )
    tparams = TransferParams(head_epochs=k)
    train = TrainParams(early_stopping_patience=k + 1)  # every one of the K epochs runs
    head_loop = head_settings(LoopSettings.from_params(train, args.seed, deterministic=False), tparams)
    strategy = tf.distribute.get_strategy()
    keras.utils.set_random_seed(args.seed)
    choice = WeightsChoice(None, None, "random-init", "benchmark")
    logging.getLogger("melanoma").setLevel(logging.ERROR)  # the random-init warning is expected here
    backbone, _ = build_backbone("vgg16", SIZE, choice)
    backbone.trainable = False
    extractor = feature_extractor(backbone, BACKBONES["vgg16"].preprocess, SIZE)
    compute_features(extractor, x_tr[:BATCH])  # warm-up (oneDNN primitives), not timed

    def epoch_times(start: float, stamps: list[float]) -> list[float]:
        edges = [start, *stamps]
        return [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]

    # Cached: one feature pass over train + val, then K head epochs (fit_head, with validation).
    feat = Pass()
    with measured(feat):
        f_tr = compute_features(extractor, x_tr)
        f_val = compute_features(extractor, x_val)
    head = build_head(f_tr, tparams)
    stamps: list[float] = []
    cached = Pass()
    with measured(cached):
        t0 = time.perf_counter()
        fit_head(head, f_tr, y_tr, f_val, y_val, head_loop, on_epoch=lambda m, s: stamps.append(time.perf_counter()))  # fmt: skip
    cached_epochs = epoch_times(t0, stamps)

    # Naive: the same head on the frozen backbone, trained on images (fit_loop, no augmentation).
    keras.utils.set_random_seed(args.seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    naive_model = keras.Model(inputs, build_head(f_tr, tparams)(extractor(inputs)), name="naive")
    stamps = []
    naive = Pass()
    with measured(naive), quiet():
        t0 = time.perf_counter()
        fit_loop(
            naive_model, x_tr, y_tr, x_val, y_val, head_loop, strategy=strategy, phase="naive",
            on_epoch=lambda m, s: stamps.append(time.perf_counter()),
        )  # fmt: skip
    naive_epochs = epoch_times(t0, stamps)

    # Per epoch: the cached path's best steady epoch (its first one traces the step) against the
    # naive path's fastest epoch of all, its first included (it traces too, but its backbone passes
    # dominate and it is often the fastest): conservative. Amortised: the whole K epochs, every
    # one-off cost included on both sides (the feature pass, both traces).
    c_ep = min(cached_epochs[1:] or cached_epochs)
    n_ep = min(naive_epochs)
    per_epoch = n_ep / c_ep
    amortised = sum(naive_epochs) / (feat.seconds + sum(cached_epochs))
    default_k = TransferParams().head_epochs
    one_off = feat.seconds + cached_epochs[0] - c_ep
    amortised_default = n_ep * default_k / (one_off + c_ep * default_k)
    print(f"   {'path':<44}{'best epoch s':>13}{f'{k} epochs s':>12}{'other load':>12}")
    print(
        f"   {'naive: head on frozen backbone, images':<44}{n_ep:>13.2f}{sum(naive_epochs):>12.2f}{fmt_load(naive):>12}"
    )
    print(
        f"   {'cached: fit_head on feature matrix':<44}{c_ep:>13.3f}{sum(cached_epochs):>12.3f}{fmt_load(cached):>12}"
    )
    print(
        f"   {'cached: one-off compute_features':<44}{'':>13}{feat.seconds:>12.2f}{fmt_load(feat):>12}"
        f"   ({len(y)} images = {feat.seconds / n_ep:.2f} naive epochs)"
    )
    print(
        "   every epoch, s: naive "
        + ", ".join(f"{t:.2f}" for t in naive_epochs)
        + "; cached "
        + ", ".join(f"{t:.3f}" for t in cached_epochs)
        + " (the first ones trace the train step)"
    )
    ok = per_epoch >= TARGET_CACHED
    print(
        f"   per epoch:  naive / cached = {per_epoch:8.1f}x   target >= {TARGET_CACHED:.1f}x  "
        + verdict(ok, naive, cached)
    )
    print(
        f"   amortised:  {k} naive epochs / (feature pass + {k} cached epochs) = {amortised:5.2f}x   (context: "
        f"the one-off pass costs about one naive epoch, so at K={k} this is bounded by ~K)"
    )
    print(
        f"   amortised over the default head_epochs={default_k} (projected from the same measurements): "
        f"{amortised_default:5.1f}x"
    )
    info = {
        "train_images": len(y_tr),
        "val_images": len(y_val),
        "epochs": k,
        "feature_pass_seconds": feat.seconds,
        "cached_epoch_seconds": cached_epochs,
        "naive_epoch_seconds": naive_epochs,
        "cached_best_steady_epoch_seconds": c_ep,
        "naive_best_epoch_seconds": n_ep,
        "ratio_per_epoch": per_epoch,
        "ratio_amortised": amortised,
        "ratio_amortised_default_head_epochs": amortised_default,
        "other_load_cores": {"feature_pass": feat.foreign_cores, "cached": cached.foreign_cores, "naive": naive.foreign_cores},
        "clean": not any(busy(p) for p in (feat, cached, naive)),
        "pass": ok,
    }  # fmt: skip
    transfer_model = keras.Model(inputs, head(extractor(inputs)), name="melanoma_vgg16")
    return info, transfer_model


# --------------------------------------------------------------------------- 3. inference


def bench_inference(
    x: np.ndarray, y: np.ndarray, transfer_model: keras.Model, args: argparse.Namespace
) -> dict:
    n = min(args.infer_n, len(y))
    print(
        f"\n== 3. inference via predict_proba: {n} images in batches of {PREDICT_BATCH} (best of {args.repeat}), "
        f"p50 of {args.single} single-image calls (context, no target)"
    )
    split = int(0.75 * len(y))
    t0 = time.perf_counter()
    baseline, _ = fit_baseline(x[:split], y[:split], x[split:], y[split:], BaselineParams(), args.seed, SIZE)
    print(f"   baseline fitted in {time.perf_counter() - t0:.1f}s (chosen candidate: {baseline.candidate})")
    keras.utils.set_random_seed(args.seed)
    models = {
        "baseline": baseline,
        "cnn": KerasClassifier(build_cnn(SIZE, CnnParams()), SIZE),
        "transfer_vgg16": KerasClassifier(transfer_model, SIZE),
    }
    xs = x[:n]
    out = {}
    print(f"   {'model':<16}{'img/s':>9}{'ms/img':>9}{'p50 1 img ms':>14}{'p90 ms':>9}{'other load':>12}")
    for name, model in models.items():
        model.predict_proba(xs[:PREDICT_BATCH])  # warm-up
        best = Pass()
        for _ in range(args.repeat):
            p = Pass()
            with measured(p):
                model.predict_proba(xs)
            p.value = n / p.seconds
            if p.value > best.value:
                best = p
        for i in range(3):
            model.predict_proba(xs[i : i + 1])
        lat = []
        for i in range(args.single):
            t = time.perf_counter()
            model.predict_proba(xs[i % n : i % n + 1])
            lat.append(time.perf_counter() - t)
        p50, p90 = float(np.median(lat)), float(np.quantile(lat, 0.9))
        print(
            f"   {name:<16}{best.value:>9.1f}{1000 / best.value:>9.2f}{1000 * p50:>14.2f}{1000 * p90:>9.2f}"
            f"{fmt_load(best):>12}"
        )
        out[name] = {
            "images_per_s": best.value,
            "p50_single_ms": 1000 * p50,
            "p90_single_ms": 1000 * p90,
            "other_load_cores": best.foreign_cores,
        }
    return out


# --------------------------------------------------------------------------- 4. augmentation


def augment_all_transforms(images: tf.Tensor, seed: tf.Tensor, params: AugmentParams) -> tf.Tensor:
    """The reference: the pipeline's augmentation before the one-transform change. Every flip and
    rotation is computed for the whole batch and ``tf.where`` keeps it or not, image by image."""
    x = tf.cast(images, tf.float32)
    shape = tf.shape(x)
    b, size = shape[0], shape[1]
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    if params.flip:
        lr = tf.random.stateless_uniform([b, 1, 1, 1], seeds[0]) < 0.5
        ud = tf.random.stateless_uniform([b, 1, 1, 1], seeds[1]) < 0.5
        x = tf.where(lr, tf.reverse(x, axis=[2]), x)
        x = tf.where(ud, tf.reverse(x, axis=[1]), x)
    if params.rotate90:
        rot = tf.random.stateless_uniform([b, 1, 1, 1], seeds[2]) < 0.5
        x = tf.where(rot, tf.reverse(tf.transpose(x, [0, 2, 1, 3]), axis=[2]), x)
    if params.zoom > 0:
        frac = 1.0 - tf.random.stateless_uniform([b], seeds[3], 0.0, params.zoom)
        off = tf.random.stateless_uniform([b, 2], seeds[4]) * (1.0 - frac)[:, None]
        boxes = tf.concat([off, off + frac[:, None]], axis=1)
        x = tf.image.crop_and_resize(x, boxes, tf.range(b), tf.stack([size, size]))
    return tf.clip_by_value(x, 0.0, 255.0)


def bench_augment(x: np.ndarray, args: argparse.Namespace) -> dict:
    batch = tf.constant(x[:BATCH])
    geometric = AugmentParams(zoom=0.0)  # flips and rotations only
    default = AugmentParams()
    print(
        f"\n== 4. augmentation: one batch of {BATCH} at {SIZE}x{SIZE} (uint8 in, float32 out), "
        f"{args.aug_iters} calls per pass, best of {args.repeat}; CPU ms per batch (wall in brackets)"
    )
    variants = {
        "flips+rotations, all transforms": (augment_all_transforms, geometric),
        "flips+rotations, one per image": (augment_batch, geometric),
        "default augment, all transforms": (augment_all_transforms, default),
        "default augment, one per image": (augment_batch, default),
    }
    fns = {k: tf.function(lambda b, s, f=f, p=p: f(b, s, p)) for k, (f, p) in variants.items()}
    for fn in fns.values():  # trace and warm up
        for i in range(3):
            fn(batch, tf.constant([args.seed, i], tf.int64)).numpy()
    best = {k: Pass() for k in fns}
    for _ in range(args.repeat):
        for name, fn in fns.items():  # interleaved, so load hits every variant alike
            p = Pass()
            c0 = time.process_time()
            with measured(p):
                for i in range(args.aug_iters):
                    fn(batch, tf.constant([args.seed, i], tf.int64)).numpy()
            p.value = 1000 * (time.process_time() - c0) / args.aug_iters  # CPU ms per batch
            if p.value < best[name].value or best[name].value == 0.0:
                best[name] = p
    print(f"   {'variant':<36}{'CPU ms':>8}{'wall ms':>9}{'other load':>12}")
    for name, p in best.items():
        print(f"   {name:<36}{p.value:>8.1f}{1000 * p.seconds / args.aug_iters:>9.1f}{fmt_load(p):>12}")
    names = list(best)
    geo = best[names[0]].value / best[names[1]].value
    full = best[names[2]].value / best[names[3]].value
    ok = geo >= TARGET_AUGMENT
    print(
        f"   flips+rotations: all / one = {geo:5.2f}x   target >= {TARGET_AUGMENT:.1f}x   "
        + verdict(ok, best[names[0]], best[names[1]])
    )
    print(f"   default augment_batch (with the zoom crop): all / one = {full:5.2f}x")
    return {
        "cpu_ms_per_batch": {k: v.value for k, v in best.items()},
        "wall_ms_per_batch": {k: 1000 * v.seconds / args.aug_iters for k, v in best.items()},
        "ratio_geometric": geo,
        "ratio_default": full,
        "clean": not any(busy(b) for b in best.values()),
        "pass": ok,
    }


# --------------------------------------------------------------------------- 5. op determinism


def determinism_child(mode: str, args: argparse.Namespace) -> int:
    """In a fresh process: train the default CNN with op determinism ``mode`` (on/off); print the
    per-epoch seconds as one JSON line."""
    x, y = synth_images(args.det_n + 64, SIZE, args.seed)
    loop = LoopSettings.from_params(
        TrainParams(
            epochs=args.det_epochs, early_stopping_patience=args.det_epochs + 1, lr_schedule="constant"
        ),
        args.seed,
        deterministic=mode == "on",
    )
    seed_everything(loop.seed, loop.deterministic)
    model = build_cnn(SIZE, CnnParams())
    stamps: list[tuple[float, float]] = []
    with quiet():
        t0, c0 = time.perf_counter(), time.process_time()
        fit_loop(
            model, x[: args.det_n], y[: args.det_n], x[args.det_n :], y[args.det_n :], loop,
            strategy=tf.distribute.get_strategy(),
            on_epoch=lambda m, s: stamps.append((time.perf_counter(), time.process_time())),
        )  # fmt: skip
    edges = [(t0, c0), *stamps]
    wall = [b[0] - a[0] for a, b in zip(edges[:-1], edges[1:], strict=True)]
    cpu = [b[1] - a[1] for a, b in zip(edges[:-1], edges[1:], strict=True)]
    from tensorflow.python.framework import config as tf_config  # the switch's own getter

    enabled = tf_config.is_op_determinism_enabled()
    print(json.dumps({"mode": mode, "epochs": wall, "cpu": cpu, "enabled": enabled}))
    return 0


def child_epochs(
    args: argparse.Namespace, variants: dict[str, tuple[str, dict[str, str]]]
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[Pass]]]:
    """``args.repeat`` fresh children per variant (label -> (op determinism on/off, extra environment)),
    alternated; each trains the default CNN. Per variant: steady epochs' wall and CPU seconds, and the
    load meter of each child."""
    runs: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    loads: dict[str, list[Pass]] = {k: [] for k in variants}
    for _ in range(args.repeat):
        for label, (mode, extra) in variants.items():
            cmd = [sys.executable, __file__, "--determinism-child", mode, "--det-n", str(args.det_n),
                   "--det-epochs", str(args.det_epochs), "--seed", str(args.seed)]  # fmt: skip
            env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"} | extra
            p = Pass()
            with measured(p):
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("{")), None)
            if proc.returncode != 0 or line is None:
                raise RuntimeError(f"training child ({label}) failed:\n{proc.stderr[-2000:]}")
            got = json.loads(line)
            assert got["enabled"] == (mode == "on"), got
            runs[label].extend(got["epochs"][1:])  # the first epoch traces
            cpu[label].extend(got["cpu"][1:])
            loads[label].append(p)
    return runs, cpu, loads


def compare_children(
    title: str, runs: dict[str, list[float]], cpu: dict[str, list[float]], loads: dict[str, list[Pass]]
) -> dict:
    """Print best/median epoch seconds per variant and the ratio of the second to the first."""
    first, second = list(runs)
    best = {k: min(v) for k, v in runs.items()}
    median = {k: float(np.median(v)) for k, v in runs.items()}
    cpu_median = {k: float(np.median(v)) for k, v in cpu.items()}
    print(f"   {title:<16}{'best epoch s':>13}{'median s':>10}{'median CPU s':>14}{'other load':>12}")
    for k in runs:
        worst = max((p.foreign_cores or 0.0) for p in loads[k])
        print(f"   {k:<16}{best[k]:>13.2f}{median[k]:>10.2f}{cpu_median[k]:>14.2f}{worst:>12.2f}")
    ratio = best[second] / best[first]
    cpu_ratio = cpu_median[second] / cpu_median[first]
    print(
        f"   {second} / {first} = {ratio:5.3f} (best epochs, wall), {median[second] / median[first]:5.3f} "
        f"(median wall), {cpu_ratio:5.3f} (median CPU)   "
        + verdict(True, *loads[second], *loads[first]).replace("PASS", "context")
    )
    return {
        "epoch_seconds": runs,
        "epoch_cpu_seconds": cpu,
        "ratio_best": ratio,
        "ratio_median": median[second] / median[first],
        "ratio_cpu_median": cpu_ratio,
        "clean": not any(busy(p) for ps in loads.values() for p in ps),
    }


def bench_determinism(args: argparse.Namespace) -> dict:
    print(
        f"\n== 5. op determinism: default CNN via fit_loop, {args.det_n} images, batch {BATCH}, "
        f"{args.det_epochs} epochs per child, {args.repeat} children per mode (alternated); best steady epoch"
    )
    return compare_children("op determinism", *child_epochs(args, {"off": ("off", {}), "on": ("on", {})}))


def bench_isa(args: argparse.Namespace) -> dict:
    """train.cpu_isa: the stages cap oneDNN at AVX2 (same bytes on every x86-64 CPU since 2013) vs
    oneDNN's own pick for this CPU (native); both with op determinism, as `train` runs."""
    print(
        f"\n== 7. CPU numerics pinned (ONEDNN_MAX_CPU_ISA=AVX2, the default train.cpu_isa) vs native: "
        f"default CNN, {args.det_n} images, {args.det_epochs} epochs per child, {args.repeat} children each"
    )
    variants = {"native": ("on", {}), "AVX2": ("on", {"ONEDNN_MAX_CPU_ISA": "AVX2"})}
    return compare_children("oneDNN ISA", *child_epochs(args, variants))


# --------------------------------------------------------------------------- 6. architectures

# (label, CnnParams, augmentation): the default plain CNN first, the reference of every ratio.
ARCHITECTURES: tuple[tuple[str, CnnParams, AugmentParams], ...] = (
    ("plain [16,32,64] x2 convs (default)", CnnParams(), AugmentParams()),
    ("residual [16,32,64] x1", CnnParams(architecture="residual", filters=(16, 32, 64)), AugmentParams()),
    ("residual [16,32,64] x2", CnnParams(architecture="residual", filters=(16, 32, 64), blocks_per_stage=2),
     AugmentParams()),
    ("residual [32,64,128] x1", CnnParams(architecture="residual", filters=(32, 64, 128)), AugmentParams()),
    ("residual [16,32,64,128] x1", CnnParams(architecture="residual", filters=(16, 32, 64, 128)),
     AugmentParams()),
    ("residual [16,32,64] x1 + mixup/cutmix", CnnParams(architecture="residual", filters=(16, 32, 64)),
     AugmentParams(mixup=0.2, cutmix=1.0)),
)  # fmt: skip


def bench_architectures(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> dict:
    steps = -(-len(y) // BATCH)  # one epoch
    print(
        f"\n== 6. architectures: seconds per epoch of {len(y)} images ({steps} steps of {BATCH}), "
        f"{SIZE}x{SIZE}, pipeline with augmentation and class weights, op determinism on; "
        f"best of {args.repeat} interleaved passes"
    )
    seed_everything(args.seed, deterministic=True)  # as `train` runs (process-wide: the last section)
    cw = class_weights(y)
    runs = []
    for label, params, aug in ARCHITECTURES:
        keras.utils.set_random_seed(args.seed)
        model = build_cnn(SIZE, params)
        compile_for(model, 1e-3, "constant", 1)
        ds = make_dataset(x, y, BATCH, training=True, seed=args.seed, augment=aug, class_weight=cw).repeat()
        runs.append((label, model, iter(ds)))

    def one_pass(model: keras.Model, batches: object, n_steps: int) -> Pass:
        # train_on_batch on the stream's batches: the same step fit() runs, no per-pass fit() set-up.
        p = Pass()
        with measured(p):
            for _ in range(n_steps):
                xb, yb, wb = next(batches)  # type: ignore[call-overload]
                model.train_on_batch(xb, yb, sample_weight=wb)
        p.value = p.seconds / n_steps
        return p

    for _, model, batches in runs:  # trace the step, fill the shuffle buffer
        one_pass(model, batches, 2)
    best = [Pass() for _ in runs]
    for _ in range(args.repeat):
        for i, (_, model, batches) in enumerate(runs):
            p = one_pass(model, batches, steps)
            if best[i].seconds == float("inf") or p.value < best[i].value:
                best[i] = p
    base = best[0].value
    base_cpu = best[0].cpu_seconds
    # CPU seconds of this process per epoch: less sensitive than wall time to other processes' load.
    print(
        f"   {'model':<40}{'params':>9}{'s/epoch':>9}{'vs plain':>10}{'CPU s/epoch':>13}{'vs plain':>10}"
        f"{'other load':>12}"
    )
    rows = []
    for (label, model, _), p in zip(runs, best, strict=True):
        cpu = p.cpu_seconds  # a timed pass is one epoch's steps
        cpu_ratio = None if cpu is None or not base_cpu else cpu / base_cpu
        print(
            f"   {label:<40}{model.count_params():>9,}{p.value * steps:>9.1f}{p.value / base:>10.2f}"
            f"{'n/a' if cpu is None else f'{cpu:.1f}':>13}{'n/a' if cpu_ratio is None else f'{cpu_ratio:.2f}':>10}"
            f"{fmt_load(p):>12}"
        )
        rows.append({"model": label, "params": int(model.count_params()), "seconds_per_epoch": p.value * steps,
                     "ratio_to_plain": p.value / base, "cpu_seconds_per_epoch": cpu, "cpu_ratio_to_plain": cpu_ratio,
                     "other_load_cores": p.foreign_cores})  # fmt: skip
    print("   " + verdict(True, *best).replace("PASS", "context"))
    return {"images": len(y), "steps_per_epoch": steps, "rows": rows, "clean": not any(busy(p) for p in best)}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1024, help="synthetic images for check 1 and the baseline")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per pass (check 1)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each pass")
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats; the best counts")
    ap.add_argument("--transfer-n", type=int, default=576, help="images for check 2 (1/8 of them val)")
    ap.add_argument("--epochs", type=int, default=3, help="K, epochs of both paths in check 2")
    ap.add_argument("--infer-n", type=int, default=256, help="images per batched inference pass")
    ap.add_argument("--single", type=int, default=30, help="single-image calls for the p50 latency")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--aug-iters", type=int, default=30, help="augmented batches per pass (check 4)")
    ap.add_argument("--det-n", type=int, default=512, help="training images per epoch (check 5)")
    ap.add_argument("--det-epochs", type=int, default=3, help="epochs per child (check 5); the first traces")
    ap.add_argument("--arch-n", type=int, default=1024, help="training images per epoch (check 6)")
    ap.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    ap.add_argument("--determinism-child", choices=("on", "off"), help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.determinism_child:
        return determinism_child(args.determinism_child, args)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(only) - set(SECTIONS):
        ap.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}; expected {','.join(SECTIONS)}")
    if args.det_epochs < 2:
        ap.error("--det-epochs must be >= 2 (the first epoch traces)")
    if args.warmup < 1 or args.steps < 1 or args.epochs < 2:
        ap.error("--warmup and --steps must be >= 1 and --epochs >= 2")

    t_start = time.perf_counter()
    cores = os.cpu_count() or 1
    print(
        f"bench_training: TensorFlow {tf.__version__}, Keras {keras.__version__}, numpy {np.__version__}, "
        f"cpu_count {cores}, repeat {args.repeat}"
    )
    t0 = time.perf_counter()
    x, y = synth_images(max(args.n, args.transfer_n, args.arch_n), SIZE, args.seed)
    print(
        f"(made {len(y)} synthetic {SIZE}x{SIZE} images, {y.mean():.0%} positive, in {time.perf_counter() - t0:.1f}s)"
    )

    results: dict = {"tensorflow": tf.__version__, "keras": keras.__version__, "cpu_count": cores}
    sections: dict[str, float] = {}
    checks: dict[str, dict] = {}
    transfer_model = None
    for name in SECTIONS:
        if name not in only:
            continue
        t0 = time.perf_counter()
        if name == "pipeline":
            results["pipeline"] = checks["pipeline"] = bench_pipeline(x[: args.n], y[: args.n], args)
        elif name == "cached":
            results["cached_features"], transfer_model = bench_cached(
                x[: args.transfer_n], y[: args.transfer_n], args
            )
            checks["cached_features"] = results["cached_features"]
        elif name == "inference":
            if transfer_model is None:  # the transfer model comes from check 2: build an untrained one
                keras.utils.set_random_seed(args.seed)
                backbone, _ = build_backbone(
                    "vgg16", SIZE, WeightsChoice(None, None, "random-init", "benchmark")
                )
                transfer_model = feature_extractor(backbone, BACKBONES["vgg16"].preprocess, SIZE)
            results["inference"] = bench_inference(x[: args.n], y[: args.n], transfer_model, args)
        elif name == "augment":
            results["augment"] = checks["augment"] = bench_augment(x, args)
        elif name == "determinism":
            results["determinism"] = bench_determinism(args)
        elif name == "isa":
            results["isa"] = bench_isa(args)
        else:
            results["architectures"] = bench_architectures(x[: args.arch_n], y[: args.arch_n], args)
        sections[name] = time.perf_counter() - t0
    results["section_seconds"] = sections

    failed = [k for k, v in checks.items() if not v["pass"]]
    unclean = [k for k, v in checks.items() if not v["clean"]]
    results["seconds"] = time.perf_counter() - t_start
    print(
        f"\nsummary: {len(checks) - len(failed)}/{len(checks)} targets met"
        + (f"; FAIL: {', '.join(failed)}" if failed else "")
        + f"  ({results['seconds']:.0f}s: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in sections.items())
        + ")"
    )
    if unclean:
        print(
            f"note: other processes loaded the machine during {', '.join(unclean)} "
            f"(> {BUSY_LIMIT} cores; 'other load' columns): rerun on an idle machine before trusting those rows"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
