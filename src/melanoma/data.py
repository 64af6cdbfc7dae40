"""tf.data input pipeline over the prepared uint8 arrays: shuffle, balance, augment, prefetch.

Augmentation runs on whole batches with stateless random ops seeded by (base seed, batch
counter), so a run is reproducible and the parallel map stays cheap.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from melanoma.config import AugmentParams

AUTOTUNE = tf.data.AUTOTUNE


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights, normalised so that the average sample weight is 1."""
    n = len(labels)
    pos = float(np.sum(labels == 1))
    neg = float(n - pos)
    return {0: n / (2 * max(neg, 1)), 1: n / (2 * max(pos, 1))}


def augment_batch(images: tf.Tensor, seed: tf.Tensor, params: AugmentParams) -> tf.Tensor:
    """Random flips, 90-degree rotations, zoom crops and colour jitter on a float batch in [0, 255]."""
    shape = tf.shape(images)
    b, size = shape[0], shape[1]
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    x = images
    if params.flip:
        lr = tf.random.stateless_uniform([b, 1, 1, 1], seeds[0]) < 0.5
        ud = tf.random.stateless_uniform([b, 1, 1, 1], seeds[1]) < 0.5
        x = tf.where(lr, tf.reverse(x, axis=[2]), x)
        x = tf.where(ud, tf.reverse(x, axis=[1]), x)
    if params.rotate90:
        # Images are square, so a transpose + flip is an exact 90-degree rotation.
        rot = tf.random.stateless_uniform([b, 1, 1, 1], seeds[2]) < 0.5
        x = tf.where(rot, tf.reverse(tf.transpose(x, [0, 2, 1, 3]), axis=[2]), x)
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
) -> tf.data.Dataset:
    """Batches of (float32 images in [0, 255], float32 labels).

    ``balance='oversample'`` draws both classes equally often (an infinite stream: pass
    ``steps_per_epoch`` to fit). Evaluation datasets (``training=False``) keep the given order.
    """
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
            ds = tf.data.Dataset.from_tensor_slices((images[sel], labels[sel]))
            parts.append(ds.shuffle(min(int(sel.sum()), shuffle_buffer), seed=seed + cls).repeat())
        ds = tf.data.Dataset.sample_from_datasets(parts, weights=[0.5, 0.5], seed=seed)
    else:
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        if training:
            ds = ds.shuffle(min(len(labels), shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=False)

    def to_float(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(x, tf.float32), y

    ds = ds.map(to_float, num_parallel_calls=AUTOTUNE)
    if training and augment is not None:
        counter = tf.data.Dataset.counter()
        ds = tf.data.Dataset.zip((ds, counter))

        def aug(batch: tuple[tf.Tensor, tf.Tensor], step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            x, y = batch
            return augment_batch(x, tf.stack([tf.constant(seed, tf.int64), step]), augment), y

        ds = ds.map(aug, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(options)
