"""Typed pipeline parameters: loaded from params.yaml once, validated strictly, with clear errors.

Every knob of the pipeline lives in one dataclass below; ``load_params`` rejects unknown keys
(with a "did you mean" hint) and wrong types (naming the dotted key and the expected type)
before any stage does work. Only the CLI calls ``load_params``; library code takes the typed
dataclasses (or plain values) as arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from melanoma.errors import ConfigError

MODEL_NAMES = ("baseline", "cnn", "transfer")


@dataclass(frozen=True)
class BaseParams:
    """Settings shared by every stage."""

    seed: int = 42


@dataclass(frozen=True)
class SyntheticParams:
    """The built-in synthetic ISIC-like sample (``ingest.source: synthetic``)."""

    n_images: int = 2000
    melanoma_fraction: float = 0.10
    unlabeled_fraction: float = 0.01
    corrupt_count: int = 4
    duplicate_count: int = 3
    min_width: int = 600
    max_width: int = 2048
    max_images_per_lesion: int = 3
    max_lesions_per_patient: int = 4
    jpeg_quality: int = 90


@dataclass(frozen=True)
class IsicParams:
    """The ISIC Archive API v2 (``ingest.source: isic``); see shared reference isic_api.md."""

    base_url: str = "https://api.isic-archive.com/api/v2/"
    query: str = ""  # ISIC search syntax, e.g. 'diagnosis_3:"Melanoma Invasive"'; empty = everything
    collections: tuple[int, ...] = ()
    limit: int = 0  # 0 = all matching images
    concurrency: int = 16
    allowed_hosts: tuple[str, ...] = ("api.isic-archive.com", "isic-archive.s3.amazonaws.com")
    retries: int = 8
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    connect_timeout: float = 3.05
    read_timeout: float = 60.0


@dataclass(frozen=True)
class FolderParams:
    """A local folder (``ingest.source: folder``): class subfolders, or images plus a metadata CSV."""

    path: str = ""
    metadata_csv: str = ""  # optional: a CSV with an image-name column and label columns


@dataclass(frozen=True)
class ChallengeParams:
    """ISIC challenge ground truth (``ingest.source: challenge``): 2016-2020 and HAM10000 formats."""

    format: Literal["auto", "2016", "2017", "2018", "2019", "2020", "ham10000"] = "auto"
    # Without download: local paths. With download: file names selecting bucket objects (empty = chosen
    # automatically), fetched into data/challenge_cache/ and imported from there.
    ground_truth: str = ""  # the ground-truth CSV
    images: str = ""  # the folder (or, with download, the zip) of the challenge images
    metadata_csv: str = ""  # optional extra metadata CSV (e.g. 2019/2020 patient, age, sex, site)
    download: bool = False  # fetch from the public ISIC bucket first (needs the internet)
    bucket_url: str = "https://isic-archive.s3.amazonaws.com"
    prefix: str = ""  # e.g. challenges/2020/


@dataclass(frozen=True)
class IngestParams:
    """Where the raw images come from."""

    source: Literal["synthetic", "isic", "folder", "challenge"] = "synthetic"
    workers: int = 0  # 0 = all cores
    allow_partial: bool = False  # exit 0 even when some images failed (they are listed in the report)
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    isic: IsicParams = field(default_factory=IsicParams)
    folder: FolderParams = field(default_factory=FolderParams)
    challenge: ChallengeParams = field(default_factory=ChallengeParams)


@dataclass(frozen=True)
class PrepareParams:
    """Cleaning and resizing of the raw layout."""

    image_size: int = 100
    fit: Literal["crop", "squash", "pad"] = "crop"
    draft: bool = True
    workers: int = 0  # 0 = all cores
    drop_duplicates: bool = True


@dataclass(frozen=True)
class SplitParams:
    """Patient-grouped, label-stratified train/val/test split."""

    test_fraction: float = 0.2
    val_fraction: float = 0.15  # fraction of the non-test part
    group_by: tuple[str, ...] = ("patient_id", "lesion_id")


@dataclass(frozen=True)
class AugmentParams:
    """Training-time augmentation in the tf.data pipeline (lesions have no canonical orientation)."""

    flip: bool = True
    rotate90: bool = True
    zoom: float = 0.1  # random crop of up to this fraction, resized back
    brightness: float = 0.0  # colour jitter: off by default, see params.yaml
    contrast: float = 0.0
    saturation: float = 0.0


@dataclass(frozen=True)
class TrainParams:
    """Settings shared by every trainer (the deep models' loop, the operating point, scaling)."""

    target_sensitivity: float | None = None  # None: threshold at Youden's J on validation
    epochs: int = 35
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    early_stopping_patience: int = 10
    early_stopping_start: int = 10  # epochs before early stopping may act (val AUC is noisy early on)
    class_balance: Literal["class_weight", "oversample", "none"] = "class_weight"
    shuffle_buffer: int = 4096
    augment: AugmentParams = field(default_factory=AugmentParams)
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    devices: tuple[str, ...] = ()  # mirrored: explicit devices (e.g. /cpu:0, /cpu:1); empty = all GPUs


@dataclass(frozen=True)
class CnnParams:
    """The compact CNN for 100x100 input."""

    filters: tuple[int, ...] = (16, 32, 64)
    convs_per_block: int = 2
    dense: int = 128
    dropout: float = 0.3
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class TransferParams:
    """Transfer learning on a Keras backbone: a head on frozen features, then optional fine-tuning."""

    backbone: Literal["vgg16", "mobilenet_v2", "efficientnet_b0"] = "vgg16"
    weights: str = (
        "imagenet"  # imagenet (Keras cache, or download if allowed) | a local weights file | random
    )
    download_weights: bool = False  # offline by default: only the Keras cache is used
    input_size: int = 0  # 0 = the prepared image size
    head_units: int = 256
    dropout: float = 0.4
    head_epochs: int = 60
    head_learning_rate: float = 1e-3
    fine_tune_layers: int = 0  # top backbone layers unfrozen in phase 2; 0 = no fine-tuning
    fine_tune_epochs: int = 5
    fine_tune_learning_rate: float = 1e-5


@dataclass(frozen=True)
class BaselineParams:
    """The scikit-learn baseline on hand-crafted image features."""

    candidates: tuple[
        Literal["logistic_regression", "random_forest", "gradient_boosting", "adaboost"], ...
    ] = ("logistic_regression", "random_forest", "gradient_boosting", "adaboost")
    n_estimators: int = 200
    max_depth: int = 3
    learning_rate: float = 0.1
    class_weight: Literal["balanced", "none"] = "balanced"


@dataclass(frozen=True)
class EvaluateParams:
    """Test-set evaluation."""

    bootstrap: int = 500
    ci: float = 0.95
    calibration_bins: int = 10


@dataclass(frozen=True)
class MlflowParams:
    """Experiment and registry names (the tracking URI comes from the environment)."""

    experiment: str = "melanoma-classification"
    registered_model: str = "melanoma-classifier"


@dataclass(frozen=True)
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
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)


# Range checks that a type alone cannot express: dotted key -> (predicate, requirement text).
_RULES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "ingest.synthetic.n_images": (lambda v: v >= 1, "at least 1"),
    "ingest.synthetic.melanoma_fraction": (lambda v: 0 < v < 1, "between 0 and 1"),
    "ingest.synthetic.unlabeled_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "ingest.synthetic.corrupt_count": (lambda v: v >= 0, "at least 0"),
    "ingest.synthetic.duplicate_count": (lambda v: v >= 0, "at least 0"),
    "ingest.synthetic.min_width": (lambda v: v >= 64, "at least 64"),
    "ingest.synthetic.max_images_per_lesion": (lambda v: v >= 1, "at least 1"),
    "ingest.synthetic.max_lesions_per_patient": (lambda v: v >= 1, "at least 1"),
    "ingest.synthetic.jpeg_quality": (lambda v: 1 <= v <= 100, "between 1 and 100"),
    "ingest.workers": (lambda v: v >= 0, "at least 0 (0 = all cores)"),
    "ingest.isic.limit": (lambda v: v >= 0, "at least 0 (0 = all)"),
    "ingest.isic.concurrency": (lambda v: 1 <= v <= 128, "between 1 and 128"),
    "ingest.isic.retries": (lambda v: v >= 0, "at least 0"),
    "ingest.isic.backoff_seconds": (lambda v: v >= 0, "at least 0"),
    "ingest.isic.connect_timeout": (lambda v: v > 0, "greater than 0"),
    "ingest.isic.read_timeout": (lambda v: v > 0, "greater than 0"),
    "ingest.isic.base_url": (lambda v: v.startswith(("https://", "http://")), "an http(s) URL"),
    "prepare.image_size": (lambda v: 8 <= v <= 1024, "between 8 and 1024"),
    "prepare.workers": (lambda v: v >= 0, "at least 0 (0 = all cores)"),
    "split.test_fraction": (lambda v: 0 < v < 1, "between 0 and 1"),
    "split.val_fraction": (lambda v: 0 < v < 1, "between 0 and 1"),
    "split.group_by": (lambda v: len(set(v)) == len(v), "a list without repeats"),
    "train.target_sensitivity": (lambda v: v is None or 0 < v < 1, "null or between 0 and 1"),
    "train.epochs": (lambda v: v >= 1, "at least 1"),
    "train.batch_size": (lambda v: v >= 1, "at least 1"),
    "train.learning_rate": (lambda v: v > 0, "greater than 0"),
    "train.early_stopping_patience": (lambda v: v >= 1, "at least 1"),
    "train.early_stopping_start": (lambda v: v >= 0, "at least 0"),
    "train.shuffle_buffer": (lambda v: v >= 1, "at least 1"),
    "train.augment.zoom": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "train.augment.brightness": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.augment.contrast": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.augment.saturation": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "cnn.filters": (lambda v: len(v) >= 1 and all(f >= 1 for f in v), "a non-empty list of positive ints"),
    "cnn.convs_per_block": (lambda v: v >= 1, "at least 1"),
    "cnn.dense": (lambda v: v >= 1, "at least 1"),
    "cnn.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "cnn.weight_decay": (lambda v: v >= 0, "at least 0"),
    "transfer.weights": (lambda v: v != "", "imagenet, random or a weights file path"),
    "transfer.input_size": (lambda v: v == 0 or v >= 32, "0 (prepared size) or at least 32"),
    "transfer.head_units": (lambda v: v >= 1, "at least 1"),
    "transfer.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "transfer.head_epochs": (lambda v: v >= 1, "at least 1"),
    "transfer.head_learning_rate": (lambda v: v > 0, "greater than 0"),
    "transfer.fine_tune_layers": (lambda v: v >= 0, "at least 0"),
    "transfer.fine_tune_epochs": (lambda v: v >= 0, "at least 0"),
    "transfer.fine_tune_learning_rate": (lambda v: v > 0, "greater than 0"),
    "baseline.candidates": (lambda v: len(v) >= 1, "a non-empty list"),
    "baseline.n_estimators": (lambda v: v >= 1, "at least 1"),
    "baseline.max_depth": (lambda v: v >= 1, "at least 1"),
    "baseline.learning_rate": (lambda v: v > 0, "greater than 0"),
    "evaluate.bootstrap": (lambda v: v >= 0, "at least 0"),
    "evaluate.ci": (lambda v: 0 < v < 1, "between 0 and 1"),
    "evaluate.calibration_bins": (lambda v: v >= 2, "at least 2"),
}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; return it converted (lists to tuples)."""
    origin = get_origin(tp)
    wrong = ConfigError(
        f"params.yaml: '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong
        return _build(tp, value, key)
    if origin is Literal:
        if value not in get_args(tp):
            raise wrong
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise wrong
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise wrong
        item_tp = get_args(tp)[0]
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    raise TypeError(f"unsupported parameter type {tp!r} for {key}")  # a bug in this module


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else key
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"params.yaml: unknown key '{dotted}'{hint}; known keys here: {', '.join(names)}"
            )
    kwargs = {}
    for name in names:
        if name in data:
            dotted = f"{prefix}.{name}" if prefix else name
            value = _convert(data[name], hints[name], dotted)
            rule = _RULES.get(dotted)
            if rule and not rule[0](value):
                raise ConfigError(f"params.yaml: '{dotted}' must be {rule[1]}, got {value!r}")
            kwargs[name] = value
    return cls(**kwargs)


def params_from_dict(data: dict[str, Any] | None) -> Params:
    """Validate a parsed params mapping and return typed ``Params``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("params.yaml: the top level must be a mapping of sections")
    params = _build(Params, data, "")
    syn = params.ingest.synthetic
    if syn.max_width < syn.min_width:
        raise ConfigError(
            "params.yaml: 'ingest.synthetic.max_width' must be >= 'ingest.synthetic.min_width', "
            f"got {syn.max_width} < {syn.min_width}"
        )
    if params.split.test_fraction + params.split.val_fraction * (1 - params.split.test_fraction) >= 1:
        raise ConfigError(
            "params.yaml: 'split.test_fraction' and 'split.val_fraction' leave no training data"
        )
    return params


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
    return params_from_dict(data)


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
