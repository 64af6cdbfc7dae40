"""tf.data input pipeline over the prepared uint8 arrays: shuffle, balance, augment, prefetch.

Augmentation runs on whole batches with stateless random ops seeded by (base seed, batch
counter), so a run is reproducible (TensorFlow's op determinism leaves a stateless map parallel)
and the parallel map stays cheap: each image gets ONE of the dihedral flips/rotations, drawn per
image and applied to its group of the batch, instead of every transform computed for every image.

Mixup and cutmix run after that, on the augmented batch, from the same (seed, batch counter): each
image is mixed with one partner from its batch (a seeded permutation) with its own weight
``lam ~ Beta(alpha, alpha)``, and its label becomes the soft target mixed with the same weight.
Class weights travel with the samples (computed from the hard labels before mixing) and are mixed
too, so that the weighted loss is exactly the class-weighted mixup loss (see ``mix_targets``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from melanoma.config import AugmentParams
from melanoma.image_rows import ImageRows

AUTOTUNE = tf.data.AUTOTUNE
# Batches read/augmented at once. A fixed number, not AUTOTUNE: autotuning ramps the parallelism
# up in bursts, and each call holds a float batch (7.7 MB at 100 px), so peak memory jumped by
# ~150 MB on an otherwise flat epoch (tests/models/test_streaming.py); 4 keeps the input ahead
# of the model on 2 cores (benchmarks/bench_training.py: tf.data vs in-memory batches).
PARALLEL_BATCHES = 4
BALANCE_MODES = ("class_weight", "oversample", "none")
MIX_STREAM = 1  # folded into a batch's seed for mixup/cutmix draws

# The 8 symmetries of the square as k = quarter turns (k % 4) then a left-right mirror (k >= 4).
# flip alone gives {identity, left-right, up-down, half turn}: the old independent lr/ud flips.
_DIHEDRAL = {
    (True, True): (0, 1, 2, 3, 4, 5, 6, 7),
    (True, False): (0, 2, 4, 6),  # identity, half turn, lr mirror, ud mirror (= half turn + lr)
    (False, True): (0, 1, 2, 3),  # quarter turns only
}


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights, normalised so that the average sample weight is 1."""
    n = len(labels)
    pos = float(np.sum(labels == 1))
    neg = float(n - pos)
    return {0: n / (2 * max(neg, 1)), 1: n / (2 * max(pos, 1))}


def dihedral(images: tf.Tensor, k: int) -> tf.Tensor:
    """Symmetry ``k`` (0-7) of a batch of square images: ``k % 4`` quarter turns, mirrored if k >= 4."""
    turns = k % 4  # counter-clockwise, as tf.image.rot90 (written out: no shape asserts in the graph)
    x = images
    if turns == 1:
        x = tf.transpose(tf.reverse(x, axis=[2]), [0, 2, 1, 3])
    elif turns == 2:
        x = tf.reverse(x, axis=[1, 2])
    elif turns == 3:
        x = tf.reverse(tf.transpose(x, [0, 2, 1, 3]), axis=[2])
    return tf.reverse(x, axis=[2]) if k >= 4 else x


def random_dihedral(images: tf.Tensor, seed: tf.Tensor, choices: tuple[int, ...]) -> tf.Tensor:
    """Apply one symmetry drawn uniformly from ``choices`` to each image of a square batch.

    The batch is split by drawn symmetry (``dynamic_partition``), each group is transformed once
    and the groups are stitched back in order: about one transform's cost per image.
    """
    b = tf.shape(images)[0]
    pick = tf.random.stateless_uniform([b], seed, 0, len(choices), dtype=tf.int32)
    groups = tf.dynamic_partition(images, pick, len(choices))
    where = tf.dynamic_partition(tf.range(b), pick, len(choices))
    moved = [dihedral(g, k) for g, k in zip(groups, choices, strict=True)]
    return tf.dynamic_stitch(where, moved)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, params: AugmentParams) -> tf.Tensor:
    """Random flip/rotation, zoom crop and colour jitter on a batch; float32 in [0, 255] out.

    The flips and rotations are exact on any dtype, so they run before the cast (on uint8 they
    move a quarter of the bytes).
    """
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    x = images
    choices = _DIHEDRAL.get((bool(params.flip), bool(params.rotate90)))
    if choices is not None:
        x = random_dihedral(x, seeds[0], choices)
    x = tf.cast(x, tf.float32)
    shape = tf.shape(x)
    b, size = shape[0], shape[1]
    if params.zoom > 0:
        frac = 1.0 - tf.random.stateless_uniform([b], seeds[3], 0.0, params.zoom)
        off = tf.random.stateless_uniform([b, 2], seeds[4]) * (1.0 - frac)[:, None]
        boxes = tf.concat([off, off + frac[:, None]], axis=1)
        x = tf.image.crop_and_resize(x, boxes, tf.range(b), tf.stack([size, size]))
    if params.brightness > 0:
        x = x + 255.0 * tf.random.stateless_uniform(
            [b, 1, 1, 1], seeds[5], -params.brightness, params.brightness
        )
    if params.contrast > 0:
        c = tf.random.stateless_uniform([b, 1, 1, 1], seeds[6], 1 - params.contrast, 1 + params.contrast)
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = (x - mean) * c + mean
    if params.saturation > 0:
        s = tf.random.stateless_uniform([b, 1, 1, 1], seeds[7], 1 - params.saturation, 1 + params.saturation)
        gray = tf.reduce_mean(x, axis=3, keepdims=True)
        x = gray + (x - gray) * s
    return tf.clip_by_value(x, 0.0, 255.0)


def mixes(params: AugmentParams | None) -> bool:
    """Whether ``params`` turn batch mixing (mixup or cutmix) on."""
    return params is not None and (params.mixup > 0 or params.cutmix > 0)


def sample_beta(shape: tf.Tensor | list[int], seed: tf.Tensor, alpha: float) -> tf.Tensor:
    """Beta(alpha, alpha) draws, stateless: ``g1 / (g1 + g2)`` of two Gamma(alpha) draws."""
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    g1 = tf.random.stateless_gamma(shape, seeds[0], alpha)
    g2 = tf.random.stateless_gamma(shape, seeds[1], alpha)
    # Both tiny (a small alpha underflows): call it an even mix rather than divide 0 by 0.
    total = g1 + g2
    return tf.where(total > 0, g1 / tf.maximum(total, 1e-30), 0.5)


def partners(batch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A seeded permutation of ``range(batch)``: image i is mixed with image ``partners[i]``."""
    keys = tf.random.stateless_uniform([batch], seed)
    return tf.argsort(keys, stable=True)


def mixup(images: tf.Tensor, seed: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Mixup (Zhang et al. 2018): ``lam * x_i + (1 - lam) * x_partner``, one ``lam`` per image.

    Returns the mixed batch, the partner indices and ``lam`` (the share of each image's own label).
    """
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    b = tf.shape(images)[0]
    other = partners(b, seeds[0])
    lam = sample_beta([b], seeds[1], alpha)
    lam_x = tf.reshape(lam, [-1] + [1] * (images.shape.rank - 1))
    mixed = lam_x * images + (1.0 - lam_x) * tf.gather(images, other)
    return mixed, other, lam


def cutmix(images: tf.Tensor, seed: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """CutMix (Yun et al. 2019): a square of the partner pasted into each image, one box per image.

    The side is ``round(S * sqrt(1 - lam))`` for ``lam ~ Beta(alpha, alpha)`` and the box lies wholly
    inside the image (uniform position), so the returned ``lam`` (the image's own share of its
    label) is exactly ``1 - pasted pixels / all pixels``.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    other = partners(b, seeds[0])
    draw = sample_beta([b], seeds[1], alpha)
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    side_h = tf.cast(tf.round(hf * tf.sqrt(1.0 - draw)), tf.int32)
    side_w = tf.cast(tf.round(wf * tf.sqrt(1.0 - draw)), tf.int32)
    corner = tf.random.stateless_uniform([b, 2], seeds[2])
    top = tf.cast(tf.floor(corner[:, 0] * tf.cast(h - side_h + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(corner[:, 1] * tf.cast(w - side_w + 1, tf.float32)), tf.int32)
    top, left = tf.minimum(top, h - side_h), tf.minimum(left, w - side_w)  # corner draws of exactly 1.0
    rows, cols = tf.range(h)[None, :], tf.range(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + side_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + side_w)[:, None])
    box = in_rows[:, :, None] & in_cols[:, None, :]  # (b, h, w)
    mixed = tf.where(box[..., None], tf.gather(images, other), images)
    lam = 1.0 - tf.cast(side_h * side_w, tf.float32) / (hf * wf)
    return mixed, other, lam


def mix_targets(
    labels: tf.Tensor, weights: tf.Tensor | None, other: tf.Tensor, lam: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Soft targets (and loss weights) of mixed samples.

    Unweighted: ``t = lam * y_i + (1 - lam) * y_partner``. With class weights ``w`` the mixup loss
    is ``lam * w_i * BCE(y_i, p) + (1 - lam) * w_p * BCE(y_p, p)``; binary cross-entropy is linear
    in its target, so that equals ``W * BCE(t, p)`` with ``W = lam * w_i + (1 - lam) * w_p`` (the
    weights mixed with the same lam) and ``t = (lam * w_i * y_i + (1 - lam) * w_p * y_p) / W``:
    each class keeps its weight inside a mixed sample, and a batch's positive and negative loss
    mass is what class weighting promises. Rounding ``t`` to pick one class weight (what Keras'
    ``class_weight`` does with soft labels) would not.
    """
    y_other = tf.gather(labels, other)
    if weights is None:
        return lam * labels + (1.0 - lam) * y_other, None
    w_other = tf.gather(weights, other)
    own, theirs = lam * weights, (1.0 - lam) * w_other
    mixed_w = own + theirs
    return (own * labels + theirs * y_other) / mixed_w, mixed_w


def mix_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    weights: tf.Tensor | None,
    seed: tf.Tensor,
    params: AugmentParams,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
    """Mixup or cutmix on a batch (float images, hard or soft labels, optional loss weights).

    With both alphas above 0, a seeded coin picks one of the two per batch. Nothing changes with both 0.
    """
    if not mixes(params):
        return images, labels, weights
    seeds = tf.random.experimental.stateless_split(seed, num=3)

    def run_mixup() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return mixup(images, seeds[1], params.mixup)

    def run_cutmix() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return cutmix(images, seeds[2], params.cutmix)

    if params.mixup > 0 and params.cutmix > 0:
        coin = tf.random.stateless_uniform([], seeds[0]) < 0.5
        mixed, other, lam = tf.cond(coin, run_mixup, run_cutmix)
    else:
        mixed, other, lam = run_mixup() if params.mixup > 0 else run_cutmix()
    targets, mixed_w = mix_targets(labels, weights, other, lam)
    return mixed, targets, mixed_w


def make_dataset(
    images: np.ndarray | ImageRows,
    labels: np.ndarray,
    batch_size: int,
    *,
    training: bool,
    seed: int,
    augment: AugmentParams | None = None,
    balance: str = "none",
    shuffle_buffer: int = 4096,
    drop_remainder: bool = False,
    class_weight: dict[int, float] | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 inputs, float32 labels); inputs are images in [0, 255] or any feature rows.

    ``images`` given as ``ImageRows`` (a split of the prepared array) are streamed: the dataset
    shuffles and batches row *positions*, and each batch's images are read from disk when the
    batch is made, so memory holds a few batches, not the split. The stream is the same as for
    the same images in memory (shuffling depends only on the seed and the element count), so a
    streamed run trains the same bytes. An in-memory array is sliced into the graph as before.

    ``balance='oversample'`` draws both classes equally often: an infinite stream (pass
    ``steps_per_epoch`` to fit). ``class_weight`` and ``none`` do not change the stream (class
    weights are applied to the loss by the loop). Evaluation datasets (``training=False``) keep
    the given order. Augmentation needs square images (``augment`` given, ``training`` true);
    mixup/cutmix (``augment.mixup``/``cutmix``) turn the labels into soft targets in [0, 1].

    ``class_weight`` (training only): batches are (inputs, targets, per-sample loss weights), the
    weight of each sample's hard label, mixed along with the labels when batches are mixed.
    """
    if balance not in BALANCE_MODES:
        raise ValueError(f"unknown class balance {balance!r}; expected one of {BALANCE_MODES}")
    streamed = isinstance(images, ImageRows)
    if not streamed:
        images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.float32)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    # Streamed: the first column is the position of each image in ``images`` (8 bytes, not 30 KB).
    first = np.arange(len(labels), dtype=np.int64) if streamed else images
    if training and class_weight is not None:
        weights = np.where(labels == 1, class_weight[1], class_weight[0]).astype(np.float32)
        columns: tuple[np.ndarray, ...] = (first, labels, weights)
    else:
        columns = (first, labels)
    options = tf.data.Options()
    # Multi-worker training shards by element: every worker reads the same array file.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True

    if training and balance == "oversample":
        parts = []
        for cls in (0, 1):
            sel = labels == cls
            if not sel.any():
                raise ValueError(f"oversampling needs both classes; class {cls} has no sample")
            ds = tf.data.Dataset.from_tensor_slices(tuple(c[sel] for c in columns))
            parts.append(ds.shuffle(min(int(sel.sum()), shuffle_buffer), seed=seed + cls).repeat())
        ds = tf.data.Dataset.sample_from_datasets(parts, weights=[0.5, 0.5], seed=seed)
    else:
        ds = tf.data.Dataset.from_tensor_slices(columns)
        if training:
            ds = ds.shuffle(min(len(labels), shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if streamed:
        ds = ds.map(read_batch(images), num_parallel_calls=PARALLEL_BATCHES)

    if training and augment is not None:
        counter = tf.data.Dataset.counter()
        ds = tf.data.Dataset.zip((ds, counter))

        def aug(batch: tuple[tf.Tensor, ...], step: tf.Tensor) -> tuple[tf.Tensor, ...]:
            x, y, *w = batch
            batch_seed = tf.stack([tf.constant(seed, tf.int64), step])
            x = augment_batch(x, batch_seed, augment)
            if not mixes(augment):
                return (x, y, *w)
            # Its own stream: the per-image draws above stay what they were without mixing.
            mix_seed = tf.random.experimental.stateless_fold_in(batch_seed, MIX_STREAM)
            x, y, mixed_w = mix_batch(x, y, w[0] if w else None, mix_seed, augment)
            return (x, y) if mixed_w is None else (x, y, mixed_w)

        ds = ds.map(aug, num_parallel_calls=PARALLEL_BATCHES)
    else:

        def to_float(x: tf.Tensor, y: tf.Tensor, *w: tf.Tensor) -> tuple[tf.Tensor, ...]:
            return (tf.cast(x, tf.float32), y, *w)

        ds = ds.map(to_float, num_parallel_calls=PARALLEL_BATCHES)
    return ds.prefetch(AUTOTUNE).with_options(options)


def read_batch(images: ImageRows) -> Callable[..., tuple[tf.Tensor, ...]]:
    """A dataset map: a batch of positions (+ labels, weights) -> the images read from disk (+ same)."""
    dtype = tf.as_dtype(images.dtype)
    item_shape = images.shape[1:]

    def load(positions: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
        x = tf.numpy_function(images.take, [positions], dtype, stateful=False)
        x.set_shape((None, *item_shape))
        return (x, *rest)

    return load
