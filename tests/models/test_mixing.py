"""Mixup and cutmix in the tf.data stream: what each mixed image is made of, its soft target and loss
weight, determinism, and the training metrics on soft targets."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from melanoma.config import AugmentParams
from melanoma.models.deep.data import cutmix, make_dataset, mix_batch, mix_targets, mixup
from melanoma.models.deep.layers import ClassTally, SoftAUC

B, S = 16, 12
NO_AUG = {"flip": False, "rotate90": False, "zoom": 0.0}  # mixing alone, on the stored pixels


def batch(seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """Random pixels (every image distinct everywhere) and random soft labels (every label distinct)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (B, S, S, 3)).astype(np.float32)
    return tf.constant(x), tf.constant(rng.uniform(0, 1, B).astype(np.float32))


def seed(a: int, b: int = 0) -> tf.Tensor:
    return tf.constant([a, b], tf.int64)


def decompose_blend(out: np.ndarray, x: np.ndarray, i: int) -> tuple[int, float]:
    """(j, lam) with ``out == lam * x[i] + (1 - lam) * x[j]``, found from the pixels alone."""
    fits = []
    for j in range(len(x)):
        d = (x[i] - x[j]).ravel()
        if j == i or not d.any():
            continue
        lam = float(np.dot(out.ravel() - x[j].ravel(), d) / np.dot(d, d))
        fits.append((float(np.abs(lam * x[i] + (1 - lam) * x[j] - out).max()), j, lam))
    err, j, lam = min(fits)
    if np.allclose(out, x[i], atol=1e-3):  # mixed with itself (a fixed point of the permutation)
        return i, 1.0
    assert err < 1e-2, f"image {i} is not a blend of two images"
    return j, lam


def test_mixup_blends_each_image_with_one_partner_of_a_permutation() -> None:
    x, _ = batch()
    mixed, other, lam = mixup(x, seed(1), 0.4)
    xn, other, lam = x.numpy(), other.numpy(), lam.numpy()
    assert sorted(other) == list(range(B))  # every image is someone's partner
    assert np.all((lam >= 0) & (lam <= 1)) and len(set(lam.round(4))) > B // 2  # one lambda per image
    expected = lam[:, None, None, None] * xn + (1 - lam[:, None, None, None]) * xn[other]
    assert np.allclose(mixed.numpy(), expected, atol=1e-3)


def test_mixup_labels_mix_with_the_lambda_of_the_pixels() -> None:
    x, y = batch()
    mixed, targets, weights = mix_batch(x, y, None, seed(1), AugmentParams(**NO_AUG, mixup=0.4))
    assert weights is None
    xn, yn, out, t = x.numpy(), y.numpy(), mixed.numpy(), targets.numpy()
    for i in range(B):  # read (partner, lambda) back from the pixels alone
        j, lam = decompose_blend(out[i], xn, i)
        assert -1e-4 <= lam <= 1 + 1e-4
        assert t[i] == pytest.approx(lam * yn[i] + (1 - lam) * yn[j], abs=1e-4)
    assert len({round(float(v), 3) for v in t}) > B // 2


def test_cutmix_pastes_one_box_and_lambda_is_the_kept_area() -> None:
    x, y = batch(1)
    mixed, other, lam = cutmix(x, seed(2), 1.0)
    xn, out, other, lam = x.numpy(), mixed.numpy(), other.numpy(), lam.numpy()
    targets, _ = mix_targets(y, None, tf.constant(other), tf.constant(lam))
    for i in range(B):
        j = int(other[i])
        pasted = np.all(out[i] == xn[j], axis=-1) & np.any(xn[i] != xn[j], axis=-1)
        kept = np.all(out[i] == xn[i], axis=-1)
        assert np.all(pasted | kept)  # every pixel is from exactly the image or its partner
        if j != i:
            rows, cols = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
            if len(rows):  # the pasted pixels fill one rectangle
                assert pasted[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
                assert pasted.sum() == len(rows) * len(cols)
            assert lam[i] == pytest.approx(1 - pasted.sum() / (S * S), abs=1e-6)
            yn = y.numpy()
            assert targets.numpy()[i] == pytest.approx(lam[i] * yn[i] + (1 - lam[i]) * yn[j], abs=1e-6)
    assert lam.min() >= 0 and lam.max() <= 1 and len(set(lam.round(4))) > 2  # one box per image


def test_mixing_is_seeded_and_off_at_zero() -> None:
    x, y = batch(2)
    params = AugmentParams(**NO_AUG, mixup=0.4, cutmix=1.0)
    a = mix_batch(x, y, None, seed(3), params)
    b = mix_batch(x, y, None, seed(3), params)
    c = mix_batch(x, y, None, seed(4), params)
    assert np.array_equal(a[0].numpy(), b[0].numpy()) and np.array_equal(a[1].numpy(), b[1].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())
    off = mix_batch(x, y, None, seed(3), AugmentParams(**NO_AUG))
    assert off[0] is x and off[1] is y

    images = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    labels = (np.arange(24) % 3 == 0).astype(int)

    def stream(aug: AugmentParams) -> list[np.ndarray]:
        ds = make_dataset(images, labels, 8, training=True, seed=5, augment=aug)
        return [t.numpy() for xb, yb in ds for t in (xb, yb)]

    plain = stream(AugmentParams())
    assert all(
        np.array_equal(p, q) for p, q in zip(plain, stream(AugmentParams(mixup=0, cutmix=0)), strict=True)
    )
    mixed = stream(AugmentParams(mixup=0.4))
    assert all(np.array_equal(p, q) for p, q in zip(mixed, stream(AugmentParams(mixup=0.4)), strict=True))
    soft = np.concatenate(mixed[1::2])
    assert np.all((soft >= 0) & (soft <= 1)) and not np.all(np.isin(soft, (0.0, 1.0)))
    assert np.all(np.isin(np.concatenate(plain[1::2]), (0.0, 1.0)))


def test_both_on_picks_mixup_or_cutmix_per_batch() -> None:
    x, y = batch(3)
    params = AugmentParams(**NO_AUG, mixup=1.0, cutmix=1.0)
    kinds = set()
    for step in range(12):
        out = mix_batch(x, y, None, seed(7, step), params)[0].numpy()
        from_sources = np.all(np.any(np.all(out[:, None] == x.numpy()[None], axis=-1), axis=1))
        kinds.add("cutmix" if from_sources else "mixup")  # cutmix only moves pixels; mixup blends
    assert kinds == {"mixup", "cutmix"}


def test_class_weights_are_mixed_so_the_loss_is_the_class_weighted_mixup_loss() -> None:
    rng = np.random.default_rng(4)
    y = (np.arange(B) % 3 == 0).astype(np.float32)
    cw = {0: 0.75, 1: 1.5}
    w = np.where(y == 1, cw[1], cw[0]).astype(np.float32)
    other = rng.permutation(B).astype(np.int32)
    lam = rng.uniform(0, 1, B).astype(np.float32)
    t, mixed_w = mix_targets(tf.constant(y), tf.constant(w), tf.constant(other), tf.constant(lam))
    t, mixed_w = t.numpy(), mixed_w.numpy()
    assert np.all((t >= 0) & (t <= 1)) and np.all((mixed_w >= 0.75 - 1e-6) & (mixed_w <= 1.5 + 1e-6))
    assert np.allclose(mixed_w, lam * w + (1 - lam) * w[other], atol=1e-6)  # weights mixed with lambda

    def bce(target: np.ndarray, p: np.ndarray) -> np.ndarray:
        return -(target * np.log(p) + (1 - target) * np.log(1 - p))

    p = rng.uniform(0.05, 0.95, B)
    expected = lam * w * bce(y, p) + (1 - lam) * w[other] * bce(y[other], p)
    assert np.allclose(mixed_w * bce(t, p), expected, rtol=1e-5)
    # Unweighted (all weights 1): the plain mix of the labels.
    t1, w1 = mix_targets(tf.constant(y), tf.ones(B), tf.constant(other), tf.constant(lam))
    assert np.allclose(t1.numpy(), lam * y + (1 - lam) * y[other]) and np.allclose(w1.numpy(), 1)


def test_stream_carries_hard_label_weights_and_mixes_them() -> None:
    images = np.random.default_rng(1).integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    labels = (np.arange(24) % 3 == 0).astype(int)
    cw = {0: 0.75, 1: 1.5}
    plain = list(
        make_dataset(images, labels, 8, training=True, seed=0, augment=AugmentParams(), class_weight=cw)
    )
    for _, yb, wb in plain:  # unmixed: each sample's weight is its hard label's
        assert np.array_equal(wb.numpy(), np.where(yb.numpy() == 1, 1.5, 0.75).astype(np.float32))
    aug = AugmentParams(mixup=0.4)
    mixed = list(make_dataset(images, labels, 8, training=True, seed=0, augment=aug, class_weight=cw))
    w = np.concatenate([wb.numpy() for _, _, wb in mixed])
    assert np.all((w >= 0.75 - 1e-6) & (w <= 1.5 + 1e-6)) and not np.all(np.isin(w, (0.75, 1.5)))
    evaluation = next(iter(make_dataset(images, labels, 8, training=False, seed=0, class_weight=cw)))
    assert len(evaluation) == 2  # validation is never weighted or mixed


def test_soft_auc_counts_shares_and_matches_keras_on_hard_labels() -> None:
    rng = np.random.default_rng(6)
    p = rng.uniform(0, 1, 200).astype(np.float32)
    hard = (rng.uniform(0, 1, 200) < p).astype(np.float32)
    ours, theirs = SoftAUC(num_thresholds=400), keras.metrics.AUC(num_thresholds=400)
    ours.update_state(hard, p)
    theirs.update_state(hard, p)
    assert float(ours.result()) == pytest.approx(float(theirs.result()), abs=1e-7)

    soft = np.clip(hard * 0.7 + rng.uniform(0, 0.3, 200), 0, 1).astype(np.float32)
    ours.reset_state()
    ours.update_state(soft, p)
    # A sample with target t counts as a positive of weight t and a negative of weight 1 - t.
    expected = roc_auc_score(
        np.r_[np.ones(200), np.zeros(200)], np.r_[p, p], sample_weight=np.r_[soft, 1 - soft]
    )
    assert float(ours.result()) == pytest.approx(expected, abs=5e-3)
    keras_auc = keras.metrics.AUC(num_thresholds=400)
    keras_auc.update_state(soft, p)  # Keras' own reads every t > 0 as a positive
    assert abs(float(keras_auc.result()) - expected) > 0.05


def test_class_tally_counts_soft_targets_by_share() -> None:
    t = np.array([0.0, 1.0, 0.25, 0.6], np.float32)
    w = np.array([1.0, 2.0, 4.0, 1.0], np.float32)
    pos, neg, wpos = ClassTally(1), ClassTally(0), ClassTally(1, weighted=True)
    for m in (pos, neg):
        m.update_state(t, t)
    wpos.update_state(t, t, sample_weight=w)
    assert float(pos.result()) == pytest.approx(1.85) and float(neg.result()) == pytest.approx(2.15)
    assert float(wpos.result()) == pytest.approx(2.0 + 1.0 + 0.6)
