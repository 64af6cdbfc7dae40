"""Everything the report shows, read once through the contracts readers (no other file access)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma import contracts, raw_layout
from melanoma.errors import DataError


@dataclass(frozen=True)
class ReportPaths:
    """Where the report's inputs are and where it writes (``out_dir``: README, card, figures/)."""

    provenance_dir: Path  # data/prepared/provenance: the raw layout's small files
    prepared_dir: Path
    splits_dir: Path
    models_dir: Path  # models/<name>/
    metrics_dir: Path  # <name>.json
    plots_dir: Path  # <name>/{roc,prc,calibration,subgroups}.json
    registry_json: Path
    out_dir: Path

    @classmethod
    def under(cls, root: Path) -> ReportPaths:
        """The pipeline's layout (dvc.yaml) below a repository root."""
        root = Path(root)
        return cls(
            provenance_dir=root / "data/prepared" / raw_layout.PROVENANCE_DIR,
            prepared_dir=root / "data/prepared",
            splits_dir=root / "data/splits",
            models_dir=root / "models",
            metrics_dir=root / "reports/metrics",
            plots_dir=root / "reports/plots",
            registry_json=root / "reports" / contracts.REGISTRY_JSON,
            out_dir=root / "reports",
        )


@dataclass(frozen=True)
class ModelResult:
    """One trained and evaluated model: model.json, history, test metrics and evaluate's series."""

    name: str
    info: dict[str, Any]
    history: list[dict[str, Any]] | None
    metrics: dict[str, Any]  # the whole metrics JSON: {"model", "test", "val"} (+ "external")
    series: dict[str, list[dict[str, Any]]]  # roc, prc, calibration, subgroups (+ external_roc, external_prc)

    @property
    def test(self) -> dict[str, Any]:
        return self.metrics.get("test") or {}

    @property
    def external(self) -> dict[str, Any]:
        """Metrics on the external set ({} when none was scored)."""
        return self.metrics.get("external") or {}

    def conditions(self) -> list[tuple[str, dict[str, Any]]]:
        """(label, metrics) for every condition evaluate scored: the test split and the external
        set, each also without patient metadata for a model that reads it."""
        ext = f"external: {self.external.get('name')}"
        found = [
            ("internal test", self.test),
            ("internal test, no metadata", self.metrics.get("test_images_only") or {}),
            (ext, self.external),
            (f"{ext}, no metadata", self.metrics.get("external_images_only") or {}),
        ]
        return [(label, m) for label, m in found if m]

    @property
    def weights(self) -> str:
        """Where the weights came from (the registry's wording for models without a 'weights' key)."""
        return str(self.info.get("weights", "none (trained from scratch)"))

    @property
    def weights_source(self) -> str:
        """The weights plus model.json's note on them (e.g. why ImageNet weights were not used)."""
        note = self.info.get("weights_note")
        return f"{self.weights} ({note})" if note else self.weights


@dataclass(frozen=True)
class Study:
    """All the inputs of the report."""

    ingest: dict[str, Any]
    attributions: list[str]
    licence_texts: dict[str, str]
    licence_counts: dict[str, int]  # images per copyright_license in metadata.csv
    cc_by_attributions: dict[str, int]  # attribution -> images, for the CC-BY* images
    images: np.ndarray  # memory-mapped prepared array
    index: pd.DataFrame
    prepare: dict[str, Any]
    split: dict[str, Any]
    models: list[ModelResult]
    registry: dict[str, Any]


def load_model_result(paths: ReportPaths, name: str) -> ModelResult:
    """model.json, history.json (None when absent), metrics JSON and plot series of one model."""
    model_dir = paths.models_dir / name
    plots = paths.plots_dir / name
    metrics = contracts.read_metrics(paths.metrics_dir / f"{name}.json")
    keys = contracts.PLOT_SERIES + (contracts.EXTERNAL_PLOT_SERIES if metrics.get("external") else ())
    return ModelResult(
        name=name,
        info=contracts.read_model_json(model_dir),
        history=contracts.read_history(model_dir),
        metrics=metrics,
        series={key: contracts.read_plot_data(plots, key) for key in keys},
    )


def load_study(paths: ReportPaths, model_names: Sequence[str]) -> Study:
    """Read every input; a missing or broken file raises DataError naming it."""
    if not model_names:
        raise DataError("report: no models given")
    images, index = contracts.load_prepared(paths.prepared_dir)
    counts, cc_by = raw_layout.read_licence_summary(paths.provenance_dir)
    return Study(
        ingest=raw_layout.read_ingest_report(paths.provenance_dir),
        attributions=raw_layout.read_attribution(paths.provenance_dir),
        licence_texts=raw_layout.read_license_texts(paths.provenance_dir),
        licence_counts=counts,
        cc_by_attributions=cc_by,
        images=images,
        index=index,
        prepare=contracts.read_prepare_report(paths.prepared_dir),
        split=contracts.read_split_report(paths.splits_dir),
        models=[load_model_result(paths, n) for n in model_names],
        registry=contracts.read_registry_record(paths.registry_json),
    )
