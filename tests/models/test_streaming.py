"""Training streams its batches from the array file: the same batches as in memory, bounded RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from melanoma.config import AugmentParams
from melanoma.image_rows import open_rows
from melanoma.models.deep.data import make_dataset

SRC = Path(__file__).resolve().parents[2] / "src"


def batches(ds) -> list[tuple[np.ndarray, ...]]:  # noqa: ANN001
    return [tuple(t.numpy() for t in b) for b in ds]


@pytest.fixture
def split(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(120, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    rows = rng.permutation(120)[:70]  # a split: some rows, in split order
    labels = (rng.random(70) < 0.3).astype(np.int64)
    return tmp_path / "images.npy", images, rows, labels


@pytest.mark.parametrize(
    "kwargs",
    [
        {"training": False},
        {"training": True, "augment": AugmentParams(zoom=0.1, mixup=0.2), "class_weight": {0: 0.7, 1: 1.8}},
        {"training": True, "augment": AugmentParams(), "balance": "oversample", "shuffle_buffer": 16},
    ],
    ids=["eval", "augment-mixup-weights", "oversample"],
)
def test_streamed_batches_equal_the_in_memory_ones(split, kwargs) -> None:  # noqa: ANN001
    path, images, rows, labels = split
    streamed = make_dataset(open_rows(path, rows), labels, 16, seed=3, **kwargs)
    in_memory = make_dataset(images[rows], labels, 16, seed=3, **kwargs)
    if kwargs.get("balance") == "oversample":  # an endless stream: compare two epochs' worth
        streamed, in_memory = streamed.take(10), in_memory.take(10)
    a, b = batches(streamed), batches(in_memory)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y, strict=True))
    # and a second pass (the next epoch) reshuffles the same way on both paths
    if kwargs["training"] and kwargs.get("balance") != "oversample":
        assert np.array_equal(batches(streamed)[0][0], batches(in_memory)[0][0])


RSS_PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from melanoma.config import AugmentParams
    from melanoma.image_rows import open_rows
    from melanoma.models.deep.data import make_dataset

    def status_mib(key):  # VmRSS now, VmHWM its peak: this process's own (ru_maxrss would
        # include the parent's RSS at fork time, which Linux carries over into the child)
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith(key + ":"))
        return int(line.split()[1]) / 1024

    path, mode = sys.argv[2], sys.argv[3]
    view = open_rows(path)
    if mode.startswith("features"):  # the baseline's feature pass (train, evaluate, register)
        from melanoma.features import extract_features
        view = open_rows(path, np.arange(int(mode.split(":")[1])))
        extract_features(view[:256])
        base = status_mib("VmRSS")
        rows = extract_features(view)
        print(json.dumps({"base": base, "peak": status_mib("VmHWM"), "batches": len(rows) // 64}))
        sys.exit(0)
    labels = (np.arange(len(view)) % 5 == 0).astype(np.int64)
    images = view if mode == "streamed" else np.load(path)  # the old design: the split in memory
    ds = make_dataset(images if mode == "streamed" else images[np.arange(len(images))], labels, 64,
                      training=True, seed=0, augment=AugmentParams(), class_weight={0: 0.6, 1: 2.5})
    it = iter(ds)
    next(it)  # TensorFlow's own buffers and the first batch: the baseline
    base = status_mib("VmRSS")
    n = 1 + sum(1 for _ in it)
    peak = status_mib("VmHWM")
    print(json.dumps({"base": base, "peak": peak, "batches": n}))
    """
)


def probe(path: Path, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(SRC), str(path), mode],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_epoch_holds_a_few_batches_not_the_split(tmp_path: Path) -> None:
    # 240 MiB of images (20,480 of 64 x 64 x 3): an epoch through the training stream, measured
    # in a fresh process (~25 MiB of batches in flight here). Memory, not time: a busy machine
    # does not move it.
    n, size = 20480, 64
    path = tmp_path / "images.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    array[:] = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    array.flush()
    del array
    data_mib = n * size * size * 3 / 2**20
    streamed = probe(path, "streamed")
    assert streamed["batches"] == n // 64
    growth = streamed["peak"] - streamed["base"]
    assert growth < 0.25 * data_mib, f"streaming an epoch grew RSS by {growth:.0f} MiB of {data_mib:.0f} MiB"
    # The check can fail: the in-memory design holds the split (twice) and exceeds the same ceiling.
    in_memory = probe(path, "in-memory")
    assert in_memory["peak"] - streamed["base"] > data_mib, in_memory
    # The baseline's feature pass (what train, evaluate and register run) over a quarter of the file
    # and over all of it: its float temporaries are per batch, so 4x the images add ~nothing.
    quarter, whole = (probe(path, f"features:{k}") for k in (n // 4, n))
    grew = (whole["peak"] - whole["base"]) - (quarter["peak"] - quarter["base"])
    assert grew < 0.1 * data_mib, (
        f"4x the images grew the feature pass's peak by {grew:.0f} MiB: {quarter} {whole}"
    )


class RecordingRows:
    """An image array that records how many rows each read asked for."""

    def __init__(self, images: np.ndarray) -> None:
        self.images, self.reads = images, []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: slice) -> np.ndarray:
        part = self.images[key]
        self.reads.append(len(part))
        return part


def test_inference_converts_one_batch_at_a_time(split) -> None:  # noqa: ANN001
    # Eager inference holds a whole batch's activations: the batch, not N, must bound it.
    import keras

    from melanoma.models.deep import classifier

    _, images, _, _ = split
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    model = keras.Model(
        inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    )
    rows = RecordingRows(images)
    p = classifier.predict_batches(model, rows)
    assert p.shape == (len(images),) and p.dtype == np.float32
    assert max(rows.reads) <= classifier.PREDICT_BATCH and sum(rows.reads) == len(images)
    whole = np.asarray(model(images.astype(np.float32), training=False)).reshape(-1)
    np.testing.assert_allclose(p, whole, rtol=1e-5, atol=1e-6)
    assert classifier.forward_batches(model, images[:0]).shape == (0, 1)
