"""Transfer learning on a keras.applications backbone (VGG16 by default, as in the original study).

Phase 1 trains a small head on the frozen backbone's features, computed ONCE and cached, so a
frozen epoch costs a pass over a feature matrix instead of a backbone forward pass per image.
Phase 2 (optional) unfreezes the top backbone layers and fine-tunes end to end on images.
When ImageNet weights cannot be had, it says so, trains from random initialisation and records
``weights=random-init``: it never pretends. Weights can also come from an installed package
(``hed-bsds500``, ``package:<module>/<path>``; see ``package_weights``), recorded under that name.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from melanoma.config import TransferParams
from melanoma.errors import DataError
from melanoma.models.deep.classifier import KerasClassifier, forward_batches
from melanoma.models.deep.layers import input_color_constancy, model_input
from melanoma.models.deep.loop import LoopSettings, fit_loop, seed_everything
from melanoma.models.package_weights import PackageWeights, copy_by_name, locate, parse_spec, weights_note

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    """A keras.applications constructor, its input convention and its ImageNet no-top file pattern."""

    constructor: Callable[..., keras.Model]
    preprocess: str
    cache_glob: str


BACKBONES: dict[str, Backbone] = {
    # caffe (0-255, BGR minus the mean) is also what the hed-bsds500 weights were trained on: the
    # HED package's own preprocess_image does the same (details in package_weights.ALIASES)
    "vgg16": Backbone(keras.applications.VGG16, "caffe", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenet_v2": Backbone(
        keras.applications.MobileNetV2,
        "tf",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_*_no_top.h5",
    ),
    "efficientnet_b0": Backbone(keras.applications.EfficientNetB0, "raw", "efficientnetb0_notop.h5"),
}


@dataclass(frozen=True)
class WeightsChoice:
    """What to pass to keras.applications, and the honest description recorded everywhere."""

    keras_arg: str | None  # "imagenet" or None (random init; a file is loaded afterwards)
    file: Path | None
    recorded: str  # "imagenet", "random-init", "file:<path>", an alias or "package:<module>/<path>"
    reason: str = ""  # why not what was asked, or (package weights) what they are: model.json's note
    package: PackageWeights | None = None  # set: ``file`` is copied into the backbone by layer name


def resolve_weights(spec: str, backbone: str, keras_home: Path, allow_download: bool) -> WeightsChoice:
    """Decide where the backbone's weights come from, without touching the network unless allowed."""
    if spec == "random":
        return WeightsChoice(None, None, "random-init", "transfer.weights is 'random'")
    if (package := parse_spec(spec)) is not None:
        return _package_choice(spec, package, backbone)
    if spec == "imagenet":
        cached = sorted((Path(keras_home) / "models").glob(BACKBONES[backbone].cache_glob))
        if cached or allow_download:
            return WeightsChoice("imagenet", None, "imagenet")
        # The reason goes into model.json (a tracked output): no host path in it; the log has the folder.
        log.warning("transfer: no %s ImageNet weights in %s", backbone, Path(keras_home) / "models")
        return WeightsChoice(
            None,
            None,
            "random-init",
            f"ImageNet weights for {backbone} are not in the Keras cache ($KERAS_HOME/models) "
            "and transfer.download_weights is false",
        )
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(
            f"transfer.weights: weights file {path} not found "
            "(use imagenet, random, hed-bsds500, package:<module>/<path> or a file path)"
        )
    return WeightsChoice(None, path, f"file:{path}")


def _package_choice(spec: str, package: PackageWeights, backbone: str) -> WeightsChoice:
    """Weights from an installed package: only on the backbone they fit, recorded under ``spec``."""
    if package.backbone and package.backbone != backbone:
        raise DataError(
            f"transfer.weights: {spec} holds {package.backbone} layers and cannot initialise {backbone}; "
            f"set transfer.backbone: {package.backbone} or choose other weights"
        )
    return WeightsChoice(None, locate(package), spec, package=package)


def build_backbone(
    name: str, size: int, choice: WeightsChoice, blocks: int = 5
) -> tuple[keras.Model, WeightsChoice]:
    """Construct the backbone (no top, global average pooling), cut it after ``blocks`` (VGG16) and
    load its weights: package weights are copied into the kept layers only."""
    spec = BACKBONES[name]
    try:
        net = spec.constructor(
            include_top=False, weights=choice.keras_arg, input_shape=(size, size, 3), pooling="avg"
        )
    except Exception as exc:  # download refused / cache unreadable: fall back, loudly
        if choice.keras_arg != "imagenet":
            raise
        reason = f"ImageNet weights for {name} could not be loaded ({type(exc).__name__}: {exc})"
        net = spec.constructor(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
        choice = WeightsChoice(None, None, "random-init", reason)
    if choice.file is not None and choice.package is None:
        try:
            net.load_weights(str(choice.file))  # a structural load: the whole backbone, before the cut
        except Exception as exc:
            raise DataError(
                f"transfer.weights: cannot load {choice.file} into {name} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            ) from exc
    net = keep_blocks(net, name, blocks)
    if choice.package is not None and choice.file is not None:
        copied = copy_by_name(net, choice.file, choice.package.spec)
        choice = dataclasses.replace(choice, reason=weights_note(choice.package, copied))
        log.info("transfer: %s <- %s: %s", name, choice.recorded, choice.reason)
    if choice.recorded == "random-init":
        log.warning("transfer: %s; training %s from random initialisation (recorded as weights=random-init)",
                    choice.reason, name)  # fmt: skip
    return net, choice


def keep_blocks(net: keras.Model, name: str, blocks: int) -> keras.Model:
    """The backbone up to ``block<blocks>_pool``, then global average pooling (VGG16's layer names);
    ``net`` itself for all five blocks. Lower blocks hold generic edges and textures, the top ones
    what the weights were trained for (objects for ImageNet, contours for HED)."""
    if blocks == 5:
        return net
    if name != "vgg16":
        raise DataError(f"transfer.blocks: only vgg16's blocks can be cut (backbone is {name})")
    cut = net.get_layer(f"block{blocks}_pool").output
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(cut)
    return keras.Model(net.inputs, pooled, name=f"{net.name}_block{blocks}")


def feature_extractor(
    backbone: keras.Model, preprocess: str, size: int, color_constancy: str = "none", color_power: float = 6.0
) -> keras.Model:
    """pixels in [0, 255] -> pooled backbone features, in inference mode (frozen BN statistics),
    colours corrected first when ``color_constancy`` says so."""
    inputs = keras.Input((size, size, 3), name="image")
    feats = backbone(model_input(inputs, preprocess, color_constancy, color_power), training=False)
    return keras.Model(inputs, feats, name="features")


def compute_features(extractor: keras.Model, images: np.ndarray) -> np.ndarray:
    """One forward pass over ``images``: the cache the frozen phase trains on."""
    return forward_batches(extractor, images)


def build_head(f_train: np.ndarray, params: TransferParams) -> keras.Model:
    """Normalise -> Dropout -> Dense(relu) -> Dropout -> Dense(sigmoid) on pooled features.

    The normalisation is adapted on the training features: backbone feature scales differ by
    orders of magnitude (and wildly so for a random-init backbone).
    """
    inputs = keras.Input((f_train.shape[1],), name="features")
    norm = keras.layers.Normalization(name="normalise")
    norm.adapt(f_train)
    x = keras.layers.Dropout(params.dropout, name="dropout1")(norm(inputs))
    x = keras.layers.Dense(params.head_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(params.dropout, name="dropout2")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_melanoma")(x)
    return keras.Model(inputs, outputs, name="head")


def head_settings(loop: LoopSettings, params: TransferParams) -> LoopSettings:
    """Phase 1's loop: the head's epochs and LR, no augmentation (the inputs are feature rows), and
    early stopping free from the first epoch (a head epoch is cheap and converges fast)."""
    return loop.replace(
        epochs=params.head_epochs,
        learning_rate=params.head_learning_rate,
        augment=None,
        early_stopping_start=0,
    )


def fine_tune_settings(loop: LoopSettings, params: TransferParams) -> LoopSettings:
    """Phase 2's loop: the fine-tuning epochs and LR; augmentation and the rest as ``train.*``."""
    return loop.replace(epochs=params.fine_tune_epochs, learning_rate=params.fine_tune_learning_rate)


def fit_head(
    head: keras.Model,
    f_train: np.ndarray,
    y_train: np.ndarray,
    f_val: np.ndarray,
    y_val: np.ndarray,
    loop: LoopSettings,
    *,
    strategy: tf.distribute.Strategy | None = None,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
) -> list[dict[str, Any]]:
    """Phase 1 on cached features, through the shared loop (``loop`` from ``head_settings``):
    class balance as everywhere else, early stopping on val AUC, best epoch restored."""
    return fit_loop(
        head, f_train, y_train, f_val, y_val, loop, strategy=strategy or tf.distribute.get_strategy(),
        phase="head", on_epoch=on_epoch, verbose=0,
    )  # fmt: skip


def fit_transfer(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: TransferParams,
    loop: LoopSettings,
    *,
    image_size: int,
    fit: str,
    keras_home: Path,
    strategy: tf.distribute.Strategy,
    color_power: float = 6.0,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
) -> tuple[KerasClassifier, dict[str, Any]]:
    """Both phases; return the end-to-end model (pixels -> P(melanoma)) and what to record."""
    if params.input_size not in (0, image_size):
        raise DataError(
            f"transfer.input_size {params.input_size} differs from prepare.image_size {image_size}; "
            "set it to 0 or change prepare.image_size (the model sees the prepared pixels)"
        )
    seed_everything(loop.seed, loop.deterministic)
    choice = resolve_weights(params.weights, params.backbone, keras_home, params.download_weights)
    with strategy.scope():
        backbone, choice = build_backbone(params.backbone, image_size, choice, params.blocks)
        backbone.trainable = False
        extractor = feature_extractor(
            backbone, BACKBONES[params.backbone].preprocess, image_size, params.color_constancy, color_power
        )
    f_train = compute_features(extractor, x_train)
    f_val = compute_features(extractor, x_val)
    with strategy.scope():
        head = build_head(f_train, params)
    history = fit_head(
        head,
        f_train,
        y_train,
        f_val,
        y_val,
        head_settings(loop, params),
        strategy=strategy,
        on_epoch=on_epoch,
    )

    with strategy.scope():
        inputs = keras.Input((image_size, image_size, 3), name="image")
        model = keras.Model(inputs, head(extractor(inputs)), name=f"melanoma_{params.backbone}")
    fine_tuned = params.fine_tune_layers > 0 and params.fine_tune_epochs > 0
    if fine_tuned:
        backbone.trainable = True
        for layer in backbone.layers[: -params.fine_tune_layers]:
            layer.trainable = False
        history += fit_loop(
            model, x_train, y_train, x_val, y_val, fine_tune_settings(loop, params), strategy=strategy,
            phase="fine_tune", on_epoch=on_epoch, epoch_offset=len(history),
        )  # fmt: skip
    info = {
        "history": history,
        "backbone": params.backbone,
        "weights": choice.recorded,
        "weights_note": choice.reason,
        "backbone_blocks": params.blocks,
        "input_color_constancy": input_color_constancy(params.color_constancy, color_power),
        "fine_tuned_layers": params.fine_tune_layers if fine_tuned else 0,
        "feature_dim": int(f_train.shape[1]),
        "n_params": int(model.count_params()),
        **loop.applied(y_train),
    }
    return KerasClassifier(model=model, image_size=image_size, fit=fit), info
