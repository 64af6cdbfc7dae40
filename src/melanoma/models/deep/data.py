"""tf.data input pipeline over the prepared uint8 arrays: shuffle, balance, augment, prefetch.

Augmentation runs on whole batches with stateless random ops seeded by (base seed, batch
counter), so a run is reproducible (TensorFlow's op determinism leaves a stateless map parallel)
and the parallel map stays cheap: each image gets ONE of the dihedral flips/rotations, drawn per
image and applied to its group of the batch, instead of every transform computed for every image.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from melanoma.config import AugmentParams

AUTOTUNE = tf.data.AUTOTUNE
BALANCE_MODES = ("class_weight", "oversample", "none")

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


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    training: bool,
    seed: int,
    augment: AugmentParams | None = None,
    balance: str = "none",
    shuffle_buffer: int = 4096,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of (float32 inputs, float32 labels); inputs are images in [0, 255] or any feature rows.

    ``balance='oversample'`` draws both classes equally often: an infinite stream (pass
    ``steps_per_epoch`` to fit). ``class_weight`` and ``none`` do not change the stream (class
    weights are applied to the loss by the loop). Evaluation datasets (``training=False``) keep
    the given order. Augmentation needs square images (``augment`` given, ``training`` true).
    """
    if balance not in BALANCE_MODES:
        raise ValueError(f"unknown class balance {balance!r}; expected one of {BALANCE_MODES}")
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.float32)
    options = tf.data.Options()
    # Multi-worker training shards by element: the arrays are in memory on every worker.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True

    if training and balance == "oversample":
        parts = []
        for cls in (0, 1):
            sel = labels == cls
            if not sel.any():
                raise ValueError(f"oversampling needs both classes; class {cls} has no sample")
            ds = tf.data.Dataset.from_tensor_slices((images[sel], labels[sel]))
            parts.append(ds.shuffle(min(int(sel.sum()), shuffle_buffer), seed=seed + cls).repeat())
        ds = tf.data.Dataset.sample_from_datasets(parts, weights=[0.5, 0.5], seed=seed)
    else:
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        if training:
            ds = ds.shuffle(min(len(labels), shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    if training and augment is not None:
        counter = tf.data.Dataset.counter()
        ds = tf.data.Dataset.zip((ds, counter))

        def aug(batch: tuple[tf.Tensor, tf.Tensor], step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            x, y = batch
            return augment_batch(x, tf.stack([tf.constant(seed, tf.int64), step]), augment), y

        ds = ds.map(aug, num_parallel_calls=AUTOTUNE)
    else:

        def to_float(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return tf.cast(x, tf.float32), y

        ds = ds.map(to_float, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(options)
