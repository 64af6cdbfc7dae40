"""Typed pipeline parameters: loaded from params.yaml once, validated strictly, with clear errors.

Every knob of the pipeline is a field of one section below, declared with pydantic: its type, its
bounds (``Field(ge=..., le=...)``) and its choices (``Literal[...]``) sit beside it, unknown keys are
forbidden, and the few rules that relate two fields are validators of their section. ``melanoma check``
runs exactly this validation, so it accepts what a run accepts. Every failure is a ``ConfigError``
naming the dotted key (``train.augment.zoom``), with a "did you mean" hint for a misspelt key.

The sections are pydantic dataclasses, i.e. real dataclasses: ``dataclasses.asdict``, ``replace``,
``fields`` and keyword construction (``SyntheticParams(n_images=200)``) work, and construction
validates too, raising the same ``ConfigError``. Only the CLI calls ``load_params``; library code
takes the typed sections (or plain values) as arguments.

Over ~400 lines because it holds two halves that change together: the schema (the sections) and
the translation of pydantic's errors into messages about dotted keys (below the sections).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from melanoma.errors import ConfigError

# The trained families (train@X) and the ensemble built from their saved models.
FAMILY_NAMES = ("baseline", "cnn", "transfer")
MODEL_NAMES = (*FAMILY_NAMES, "ensemble")

# Strict scalars: YAML's "100" is not an int, 1.5 is not an int, true is not a number; an int is a
# fine float (converted). Lists stay lax so that YAML lists become tuples.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]

_T = typing.TypeVar("_T")

# Where plain http is acceptable: test servers on this machine (the same set the ingest sources use).
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# 'diagnosis:' as a field name (not diagnosis_1: ...): retired by the ISIC Archive in 2025-04.
_LEGACY_DX_RE = re.compile(r"(?<![A-Za-z0-9_])diagnosis\s*:")


def _rule(key: str, requirement: str) -> PydanticCustomError:
    """A failed rule of a section validator, about its field ``key`` (reported as a dotted key)."""
    return PydanticCustomError("param_rule", "{requirement}", {"field": key, "requirement": requirement})


def _check_url(url: str) -> str:
    """``url`` if it is https, or http on loopback; else a ValueError saying what is accepted."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise ValueError("must be an http(s) URL")
    if parts.scheme == "http" and host not in _LOOPBACK_HOSTS:
        raise ValueError("must use https (plain http only on loopback: 127.0.0.1, localhost, ::1)")
    return url


def _section(cls: type[_T]) -> type[_T]:
    """A frozen pydantic dataclass that forbids unknown keys and raises ConfigError when built badly."""
    cls = pydantic_dataclass(cls, frozen=True, config=ConfigDict(extra="forbid"))
    init = cls.__init__

    # Loading validates through the schema (no __init__ call); this covers direct construction
    # (tests, benchmarks, library callers), so a bad value is a ConfigError wherever it comes from.
    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, cls, f"invalid {cls.__name__}")) from None

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@_section
class BaseParams:
    """Settings shared by every stage."""

    seed: Int = Field(default=42, ge=0)


@_section
class SyntheticParams:
    """The built-in synthetic ISIC-like sample (``ingest.source: synthetic``)."""

    n_images: Int = Field(default=2000, ge=1)
    melanoma_fraction: Float = Field(default=0.10, gt=0, lt=1)
    unlabeled_fraction: Float = Field(default=0.01, ge=0, lt=1)
    corrupt_count: Int = Field(default=4, ge=0)
    duplicate_count: Int = Field(default=3, ge=0)
    min_width: Int = Field(default=600, ge=64)
    max_width: Int = Field(default=2048, ge=64)
    max_images_per_lesion: Int = Field(default=3, ge=1)
    max_lesions_per_patient: Int = Field(default=4, ge=1)
    jpeg_quality: Int = Field(default=90, ge=1, le=100)

    @model_validator(mode="after")
    def _widths(self) -> SyntheticParams:
        if self.max_width < self.min_width:
            raise _rule("max_width", f"must be at least min_width ({self.min_width}), got {self.max_width}")
        return self


@_section
class IsicParams:
    """The ISIC Archive API v2 (``ingest.source: isic``); see shared reference isic_api.md."""

    base_url: Str = "https://api.isic-archive.com/api/v2/"  # https; plain http only on loopback
    query: Str = ""  # ISIC search syntax, e.g. 'diagnosis_3:"Melanoma Invasive"'; empty = everything
    collections: tuple[Annotated[Int, Field(ge=0)], ...] = ()
    limit: Int = Field(default=0, ge=0)  # 0 = all matching images
    concurrency: Int = Field(default=16, ge=1, le=128)
    allowed_hosts: tuple[Str, ...] = ("api.isic-archive.com", "isic-archive.s3.amazonaws.com")
    retries: Int = Field(default=8, ge=0)
    backoff_seconds: Float = Field(default=1.0, ge=0)  # 0 = retry at once
    # The cap also bounds a server's Retry-After: 0 or less would ignore it (and hammer the server).
    max_backoff_seconds: Float = Field(default=60.0, gt=0)
    connect_timeout: Float = Field(default=3.05, gt=0)
    read_timeout: Float = Field(default=60.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _https(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("query")
    @classmethod
    def _current_fields(cls, value: str) -> str:
        if _LEGACY_DX_RE.search(value):
            raise ValueError(
                "uses the retired field 'diagnosis:'; the archive now uses the hierarchical "
                'diagnosis_1 .. diagnosis_5, e.g. diagnosis_3:Melanoma* or diagnosis_2:"Malignant '
                'melanocytic proliferations (Melanoma)"'
            )
        return value

    @model_validator(mode="after")
    def _backoff_cap(self) -> IsicParams:
        if self.max_backoff_seconds < self.backoff_seconds:
            raise _rule(
                "max_backoff_seconds",
                f"must be at least backoff_seconds ({self.backoff_seconds}), got {self.max_backoff_seconds}",
            )
        return self


@_section
class FolderParams:
    """A local folder (``ingest.source: folder``): class subfolders, or images plus a metadata CSV."""

    path: Str = ""  # required when ingest.source is folder
    metadata_csv: Str = ""  # optional: a CSV with an image-name column and label columns


@_section
class ChallengeParams:
    """ISIC challenge ground truth (``ingest.source: challenge``): 2016-2020 and HAM10000 formats."""

    format: Literal["auto", "2016", "2017", "2018", "2019", "2020", "ham10000"] = "auto"
    # Without download: local paths (both required). With download: file names selecting bucket
    # objects (empty = chosen automatically), fetched into data/challenge_cache/ and imported from there.
    ground_truth: Str = ""  # the ground-truth CSV
    images: Str = ""  # the folder (or, with download, the zip) of the challenge images
    metadata_csv: Str = ""  # optional extra metadata CSV (e.g. 2019/2020 patient, age, sex, site)
    download: Bool = False  # fetch from the public ISIC bucket first (needs the internet)
    bucket_url: Str = "https://isic-archive.s3.amazonaws.com"  # with download: https (http on loopback)
    prefix: Str = ""  # e.g. challenges/2020/; required with download


@_section
class IngestParams:
    """Where the raw images come from."""

    source: Literal["synthetic", "isic", "folder", "challenge"] = "synthetic"
    workers: Int = Field(default=0, ge=0)  # 0 = all cores
    allow_partial: Bool = False  # exit 0 even when some images failed (they are listed in the report)
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    isic: IsicParams = field(default_factory=IsicParams)
    folder: FolderParams = field(default_factory=FolderParams)
    challenge: ChallengeParams = field(default_factory=ChallengeParams)

    @model_validator(mode="after")
    def _source_settings(self) -> IngestParams:
        """What the selected source needs (the others' settings are unused, so not required)."""
        if self.source == "folder" and not self.folder.path:
            raise _rule("folder.path", "must be set (the folder of images to import) when source is folder")
        ch = self.challenge
        if self.source == "challenge" and not ch.download:
            for name in ("ground_truth", "images"):
                if not getattr(ch, name):
                    raise _rule(
                        f"challenge.{name}",
                        "must be set when source is challenge (or set challenge.download)",
                    )
        if self.source == "challenge" and ch.download:
            if not ch.prefix.strip("/"):
                raise _rule(
                    "challenge.prefix", "must be set with download: the bucket folder, e.g. challenges/2020/"
                )
            try:
                _check_url(ch.bucket_url)
            except ValueError as exc:
                raise _rule("challenge.bucket_url", f"{exc}, got {ch.bucket_url!r}") from None
        return self


@_section
class ExternalParams(IngestParams):
    """An external labeled test set (never trained or tuned on), scored by evaluate beside the test split.

    Any ingest source; ``none`` turns it off. Its images are prepared exactly as the training data.
    """

    # synthetic by default: a small built-in external set, so the offline pipeline shows external validation
    source: Literal["none", "synthetic", "isic", "folder", "challenge"] = "synthetic"  # type: ignore[assignment]
    name: Str = "synthetic external (seed 1)"  # the report's label, e.g. "ISIC 2019 test"; empty = source
    seed: Int = Field(default=1, ge=0)  # the synthetic generator's seed (differs from base.seed: new images)
    # 400 images, not ingest's 2000: enough for a bootstrap CI, cheap for make run
    synthetic: SyntheticParams = field(default_factory=lambda: SyntheticParams(n_images=400))


@_section
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
    workers: Int = Field(default=0, ge=0)  # 0 = all cores
    drop_duplicates: Bool = True


@_section
class SplitParams:
    """Patient-grouped, label-stratified train/val/test split.

    Both fractions lie in (0, 1), so the training part, (1 - test) * (1 - val), is never empty.
    """

    test_fraction: Float = Field(default=0.2, gt=0, lt=1)
    val_fraction: Float = Field(default=0.15, gt=0, lt=1)  # fraction of the non-test part
    group_by: tuple[Str, ...] = ("patient_id", "lesion_id")

    @field_validator("group_by")
    @classmethod
    def _no_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a column")
        return value


@_section
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


@_section
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


@_section
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
    tta: Bool = False  # predict as the mean over the 8 flips/rotations (evaluate, registry, app)


@_section
class TransferParams:
    """Transfer learning on a Keras backbone: a head on frozen features, then optional fine-tuning."""

    backbone: Literal["vgg16", "mobilenet_v2", "efficientnet_b0"] = "vgg16"
    # imagenet (Keras cache, or download if allowed) | a local weights file | random
    weights: Str = Field(default="imagenet", min_length=1)
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
    tta: Bool = False  # predict as the mean over the 8 flips/rotations

    @field_validator("input_size")
    @classmethod
    def _input_size(cls, value: int) -> int:
        if 0 < value < 32:
            raise ValueError("must be 0 (the prepared size) or at least 32")
        return value


BaselineModel = Literal["logistic_regression", "random_forest", "gradient_boosting", "adaboost"]


@_section
class BaselineParams:
    """The scikit-learn baseline on hand-crafted image features."""

    candidates: tuple[BaselineModel, ...] = Field(
        default=("logistic_regression", "random_forest", "gradient_boosting", "adaboost"), min_length=1
    )
    n_estimators: Int = Field(default=200, ge=1)
    max_depth: Int = Field(default=3, ge=1)
    learning_rate: Float = Field(default=0.1, gt=0)
    class_weight: Literal["balanced", "none"] = "balanced"
    tta: Bool = False  # predict as the mean over the 8 flips/rotations
    # patient metadata used beside the image features when the prepared index has the column
    # (missing values allowed); the model still predicts from images alone
    metadata: tuple[Literal["age_approx", "sex", "site"], ...] = ("age_approx", "sex", "site")

    @field_validator("metadata")
    @classmethod
    def _no_repeated_columns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a column")
        return value


@_section
class CalibrationParams:
    """Probability calibration of every model, fitted on the validation split after training."""

    # temperature: one scale on the logit; platt: scale + shift; isotonic: monotone step map; none
    method: Literal["none", "temperature", "platt", "isotonic"] = "platt"


@_section
class EnsembleParams:
    """The ensemble candidate: the trained models' probabilities combined on validation."""

    members: tuple[Literal["baseline", "cnn", "transfer"], ...] = Field(
        default=("baseline", "cnn"), min_length=2
    )
    # stack: logistic regression on the members' logits, fitted on validation; rank_mean: mean of each
    # member's rank among its validation probabilities (nothing fitted but the reference ranks)
    method: Literal["stack", "rank_mean"] = "stack"

    @field_validator("members")
    @classmethod
    def _distinct_members(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a model")
        return value


@_section
class EvaluateParams:
    """Test-set evaluation."""

    bootstrap: Int = Field(default=500, ge=0)
    ci: Float = Field(default=0.95, gt=0, lt=1)
    calibration_bins: Int = Field(default=10, ge=2)


@_section
class RegisterParams:
    """Model Registry promotion: the champion moves only to a model that beats it on the same test split."""

    margin: Float = Field(default=0.005, ge=0, le=1)  # test ROC AUC the candidate must gain over the champion
    # champion's artifacts gone (cannot be re-scored on today's split): promote anyway?
    allow_unscored_champion: Bool = False


@_section
class MlflowParams:
    """Experiment and registry names (the tracking URI comes from the environment)."""

    experiment: Str = Field(default="melanoma-classification", min_length=1)
    registered_model: Str = Field(default="melanoma-classifier", min_length=1)


@_section
class ServeParams:
    """The app (``melanoma serve``): upload limits and how often it looks for a new champion."""

    max_upload_mb: Float = Field(default=10.0, gt=0, le=1024)  # request body limit, per image or batch
    max_pixels: Int = Field(default=40_000_000, ge=1, le=200_000_000)  # decompression-bomb guard (w x h)
    max_batch: Int = Field(default=16, ge=1, le=256)  # images per /predict/batch request
    poll_seconds: Float = Field(default=10.0, gt=0)  # how often the champion alias is checked


@_section
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


_ADAPTER = TypeAdapter(Params)


# ------------------------------------------------------------------------------------ error messages


def _sections(cls: type, prefix: str = "") -> dict[type, str]:
    """Each section class -> its dotted place in Params (``IsicParams`` -> ``ingest.isic``).

    A class used twice (the ingest sources, reused by ``external``) keeps its first place: ingest.
    """
    out = {cls: prefix}
    for name, info in cls.__pydantic_fields__.items():  # the annotations as pydantic resolved them
        tp = info.annotation
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            for section, place in _sections(tp, f"{prefix}{name}.").items():
                out.setdefault(section, place)
    return out


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, ...]`` -> (T, its constraints), flattening nested Field(...) metadata."""
    meta: list[Any] = []
    while get_origin(tp) is Annotated:
        tp, *extra = get_args(tp)
        for item in extra:
            meta.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return tp, meta


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _constraint(meta: list[Any], name: str) -> Any:
    """The value of constraint ``name`` (ge, lt, min_length, ...) among a field's metadata, or None."""
    return next((getattr(m, name) for m in meta if getattr(m, name, None) is not None), None)


def _bounds(meta: list[Any]) -> str:
    """The numeric constraints in words: ' >= 1', ' between 1 and 100', ' in [0, 1)'."""
    ge, gt, le, lt = (_constraint(meta, name) for name in ("ge", "gt", "le", "lt"))
    low = (">=", ge) if ge is not None else (">", gt) if gt is not None else None
    high = ("<=", le) if le is not None else ("<", lt) if lt is not None else None
    if low and high:
        if low[0] == ">=" and high[0] == "<=":
            return f" between {_num(low[1])} and {_num(high[1])}"
        left, right = "[" if low[0] == ">=" else "(", "]" if high[0] == "<=" else ")"
        return f" in {left}{_num(low[1])}, {_num(high[1])}{right}"
    if low or high:
        op, value = low or high  # type: ignore[misc]
        return f" {op} {_num(value)}"
    return ""


def _expected(tp: Any, meta: list[Any]) -> str:
    """What a field accepts, in words, from its declared type and constraints."""
    inner, more = _unwrap(tp)
    meta = meta + more
    origin = get_origin(inner)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(inner))
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in get_args(inner) if a is not type(None)]
        null = "null or " if len(arms) < len(get_args(inner)) else ""
        return null + " or ".join(_expected(a, meta) for a in arms)
    if origin is tuple:
        size = "a non-empty list" if _constraint(meta, "min_length") else "a list"
        return f"{size}, each {_expected(get_args(inner)[0], [])}"
    if dataclasses.is_dataclass(inner):
        return "a mapping"
    if inner is bool:
        return "true or false"
    if inner is int:
        return "an integer" + _bounds(meta)
    if inner is float:
        return "a number" + _bounds(meta)
    if inner is str:
        return "a non-empty string" if _constraint(meta, "min_length") else "a string"
    return getattr(inner, "__name__", str(inner))


def _dotted(prefix: str, loc: tuple[Any, ...]) -> str:
    key = prefix.rstrip(".")
    for part in loc:
        key = f"{key}[{part}]" if isinstance(part, int) else f"{key}.{part}" if key else str(part)
    return key


def _resolve(cls: type, loc: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """Follow ``loc`` from section ``cls`` to the declared type and constraints there (None if lost)."""
    tp: Any = cls
    meta: list[Any] = []
    for part in loc:
        tp, extra = _unwrap(tp)
        meta = meta + extra
        if isinstance(part, int) and get_origin(tp) is tuple:
            tp, meta = get_args(tp)[0], []
        elif isinstance(part, str) and dataclasses.is_dataclass(tp) and part in tp.__pydantic_fields__:
            info = tp.__pydantic_fields__[part]
            tp, meta = info.annotation, list(info.metadata)
        else:
            return None, []
    return tp, meta


def _suggest(section: type, prefix: str, name: str) -> str:
    """' (did you mean 'prepare.image_size'?)': the nearest key here, else the same key elsewhere."""
    here = [f.name for f in dataclasses.fields(section)]
    close = difflib.get_close_matches(name, here, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    elsewhere = [
        p + f.name for cls, p in _SECTIONS.items() for f in dataclasses.fields(cls) if cls is not section
    ]
    leaves: dict[str, str] = {}
    for key in elsewhere:  # the first place of a leaf name wins (base.seed before external.seed)
        leaves.setdefault(key.rsplit(".", 1)[-1], key)
    close = difflib.get_close_matches(name, list(leaves), n=1, cutoff=0.8)
    return f" (did you mean '{leaves[close[0]]}'?)" if close else ""


def _describe(error: Any, cls: type) -> str:
    """One pydantic error as a sentence about the dotted key."""
    prefix = _SECTIONS.get(cls, "")
    loc, kind, ctx = tuple(error["loc"]), error["type"], error.get("ctx") or {}
    names = list(cls.__pydantic_fields__)
    if loc and isinstance(loc[0], int) and loc[0] < len(names):  # a positional argument
        loc = (names[loc[0]], *loc[1:])
    value = error.get("input")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        section, _ = _resolve(cls, loc[:-1])
        section = section if isinstance(section, type) and section in _SECTIONS else cls
        here = _SECTIONS.get(section, "")
        known = ", ".join(f.name for f in dataclasses.fields(section))
        where = f"'{here.rstrip('.')}'" if here else "the top level"
        return (
            f"unknown key '{_dotted(prefix, loc)}'{_suggest(section, here, str(loc[-1]))}; "
            f"known keys in {where}: {known}"
        )
    if kind == "param_rule":  # a section validator about one of its fields
        return f"'{_dotted(prefix, loc + tuple(ctx['field'].split('.')))}' {ctx['requirement']}"
    key = _dotted(prefix, loc)
    if kind == "value_error":  # a field validator: its message says what is wrong
        return f"'{key}' {ctx.get('error', error['msg'])}, got {value!r}"
    if kind.endswith(("positional_argument", "multiple_argument_values")):  # direct construction
        return f"'{key}': {error['msg'].lower()}"
    tp, meta = _resolve(cls, loc)
    expected = _expected(tp, meta) if tp is not None else error["msg"].removeprefix("Input should be ")
    got = (
        repr(value)
        if kind.endswith(("than", "than_equal", "too_short", "too_long"))
        else (f"{type(value).__name__} {value!r}" if value is not None else "null")
    )
    hint = ""
    if kind == "literal_error" and str(value) in map(str, get_args(_unwrap(tp)[0]) if tp else ()):
        hint = f" (quote it in YAML: '{value}')"
    return f"'{key}' must be {expected}, got {got}{hint}"


def _explain(exc: ValidationError, cls: type, where: str) -> str:
    errors = exc.errors()
    # A list whose items failed also reports its length after validation: the items say it better.
    bad_items = {tuple(e["loc"][:-1]) for e in errors if e["loc"] and isinstance(e["loc"][-1], int)}
    lines = list(
        dict.fromkeys(
            _describe(e, cls)
            for e in errors
            if not (e["type"] in ("too_short", "too_long") and tuple(e["loc"]) in bad_items)
        )
    )
    if len(lines) == 1:
        return f"{where}: {lines[0]}"
    return f"{where}: {len(lines)} problems:\n" + "\n".join(f"  - {line}" for line in lines)


_SECTIONS = _sections(Params)


# ---------------------------------------------------------------------------------------------- public


def params_from_dict(data: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping and return typed ``Params``; ``source`` names it in errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, Params, source)) from None


def load_params(path: Path) -> Params:
    """Read and validate ``params.yaml``; raise ConfigError with the offending key on bad input."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read parameters file {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return params_from_dict(data, source=str(path))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a params dataclass into dotted keys (for MLflow params)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        elif isinstance(value, tuple):
            out[key] = ",".join(map(str, value))
        else:
            out[key] = value
    return out
