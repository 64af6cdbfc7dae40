"""Typed pipeline parameters: loaded from params.yaml once, validated strictly, with clear errors.

Every knob of the pipeline is a field of one section (a pydantic dataclass): its type, bounds and
choices sit beside it, unknown keys are forbidden, and the few rules that relate two fields are
validators of their section. ``melanoma check`` runs exactly this validation, so it accepts what a
run accepts. Every failure is a ``ConfigError`` naming the dotted key, e.g.
``params.yaml: train.augment.zoom: must be < 0.5 (got 0.9)``, with a "did you mean" hint for a
misspelt key. Only the CLI calls ``load_params``; library code takes the typed sections (or plain
values) as arguments.

Modules: ``section`` (strict scalars, the section decorator), ``ingest`` (the ingest sources'
sections), ``schema`` (the other sections and ``Params``), ``messages`` (pydantic's errors as
messages about dotted keys). Everything public is importable from here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from melanoma.config.ingest import (
    ChallengeParams,
    ExternalParams,
    FolderParams,
    IngestParams,
    IsicParams,
    SyntheticParams,
)
from melanoma.config.messages import explain
from melanoma.config.schema import (
    FAMILY_NAMES,
    MODEL_NAMES,
    AugmentParams,
    BaselineModel,
    BaselineParams,
    BaseParams,
    CalibrationParams,
    CnnParams,
    EnsembleParams,
    EvaluateParams,
    MlflowParams,
    Params,
    PrepareParams,
    RegisterParams,
    ServeParams,
    SplitParams,
    TrainParams,
    TransferParams,
)
from melanoma.errors import ConfigError

__all__ = [
    "FAMILY_NAMES", "MODEL_NAMES", "AugmentParams", "BaseParams", "BaselineModel", "BaselineParams",
    "CalibrationParams", "ChallengeParams", "CnnParams", "EnsembleParams", "EvaluateParams",
    "ExternalParams", "FolderParams", "IngestParams", "IsicParams", "MlflowParams", "Params",
    "PrepareParams", "RegisterParams", "ServeParams", "SplitParams", "SyntheticParams", "TrainParams",
    "TransferParams", "flatten", "load_params", "params_from_dict",
]  # fmt: skip

_ADAPTER = TypeAdapter(Params)


def params_from_dict(data: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping and return typed ``Params``; ``source`` names it in errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(explain(exc, Params, source)) from None


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
