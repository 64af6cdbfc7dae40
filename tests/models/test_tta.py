"""models/tta.py: the mean over the 8 flips/rotations, one inner call per chunk, metadata kept."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from melanoma.contracts import write_model_json
from melanoma.models import load_model
from melanoma.models.deep.classifier import KerasClassifier
from melanoma.models.tta import N_VIEWS, TTAClassifier, dihedral_views

SIZE = 8


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def keras_model(invariant: bool) -> KerasClassifier:
    """A tiny real Keras classifier: pooled colour (invariant) or every pixel (not invariant)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.GlobalAveragePooling2D()(x) if invariant else keras.layers.Flatten()(x)
    out = keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(0, 3)
    )(x)
    return KerasClassifier(model=keras.Model(inp, out), image_size=SIZE)


def test_the_eight_views_are_distinct_and_the_whole_dihedral_group() -> None:
    img = np.arange(SIZE * SIZE * 3, dtype=np.uint8).reshape(1, SIZE, SIZE, 3)  # no symmetry at all
    views = dihedral_views(img)[:, 0]
    assert views.shape == (N_VIEWS, SIZE, SIZE, 3) and np.array_equal(views[0], img[0])
    keys = {v.tobytes() for v in views}
    assert len(keys) == N_VIEWS
    # closed under both generators (a quarter turn, a mirror): nothing is missing from the group
    for v in views:
        assert np.rot90(v).tobytes() in keys and v[:, ::-1].tobytes() in keys and v[::-1].tobytes() in keys


def test_a_model_that_is_already_invariant_gives_the_same_probabilities() -> None:
    inner = keras_model(invariant=True)
    x = images(20)
    plain = inner.predict_proba(x)
    assert np.allclose(TTAClassifier(inner).predict_proba(x), plain, atol=1e-6)
    assert plain.std() > 0.01  # the test means something only if the images score differently


def test_a_model_that_is_not_invariant_gets_the_mean_over_views() -> None:
    inner = keras_model(invariant=False)
    x = images(11, seed=1)
    per_view = np.stack([inner.predict_proba(v) for v in dihedral_views(x)])
    assert np.abs(per_view - per_view[0]).max() > 0.05  # orientation does matter to this model
    tta = TTAClassifier(inner, chunk=4)  # several chunks, the last one short
    got = tta.predict_proba(x)
    assert got.dtype == np.float32 and got.shape == (11,)
    assert np.allclose(got, per_view.mean(axis=0), atol=1e-6)
    assert len(tta.predict_proba(x[:0])) == 0


class Recorder:
    """A real classifier over pixel means that also keeps what each call received."""

    image_size, fit, family = SIZE, "crop", "baseline"

    def __init__(self) -> None:
        self.calls: list[tuple[int, pd.DataFrame | None]] = []

    def predict_proba(self, images: np.ndarray, metadata: pd.DataFrame | None = None) -> np.ndarray:
        self.calls.append((len(images), metadata))
        return images[:, : SIZE // 2].mean(axis=(1, 2, 3)) / 255.0

    def save(self, out_dir: Path) -> None:
        raise AssertionError("not needed")


def test_views_go_in_one_call_per_chunk_and_metadata_rows_follow_their_image() -> None:
    inner = Recorder()
    meta = pd.DataFrame({"age_approx": [30.0, None, 70.0], "sex": ["male", "", "female"]}, index=[7, 8, 9])
    TTAClassifier(inner).predict_proba(images(3), metadata=meta)
    ((n, seen),) = inner.calls
    assert n == 3 * N_VIEWS
    assert seen is not None and len(seen) == 3 * N_VIEWS
    for view in range(N_VIEWS):  # view-major, like the stacked images
        block = seen.iloc[view * 3 : view * 3 + 3].reset_index(drop=True)
        pd.testing.assert_frame_equal(block, meta.reset_index(drop=True))
    TTAClassifier(inner).predict_proba(images(3))
    assert inner.calls[-1][1] is None
    with pytest.raises(ValueError, match="3 images but 2 metadata rows"):
        TTAClassifier(inner).predict_proba(images(3), metadata=meta.iloc[:2])


def test_a_folder_with_tta_loads_wrapped_and_exposes_the_inner_model(tmp_path: Path) -> None:
    inner = keras_model(invariant=False)
    inner.save(tmp_path)
    write_model_json(tmp_path, {"family": "keras", "image_size": SIZE, "fit": "crop", "tta": True})
    loaded = load_model(tmp_path)
    assert isinstance(loaded, TTAClassifier)
    assert loaded.family == "keras" and loaded.image_size == SIZE and loaded.model is not None
    x = images(5, seed=2)
    assert np.allclose(loaded.predict_proba(x), TTAClassifier(inner).predict_proba(x), atol=1e-6)
