"""The model being served, and the hot swap when the ``champion`` alias moves.

A request takes ``holder.current`` once and uses that ``Served`` object to the end, so a swap never
changes the model under a request in flight. The poller loads the new version completely (weights,
a warm-up prediction, the explainer) before the one reference assignment that swaps it in; a load
that fails leaves the old model serving and is reported by ``/health``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from melanoma.images import decoding_of
from melanoma.models import ImageClassifier, metadata_columns
from melanoma.serve.provenance import (
    BLOCKS,
    metric_sentences,
    model_warnings,
    trained_on_of,
)
from melanoma.tracking import EXTERNAL_NAME_TAG

log = logging.getLogger("melanoma.serve")

CHAMPION = "champion"


@dataclass
class Served:
    """A fully loaded model and what the app tells about it."""

    classifier: ImageClassifier
    name: str  # model name in the pipeline: baseline, cnn, transfer, ensemble
    family: str  # baseline | keras | ensemble
    threshold: float
    version: str | None = None  # registry version; None for a model folder
    registered_model: str | None = None
    source: str = ""  # models:/name/3 or the folder path
    metrics: dict[str, Any] = field(default_factory=dict)  # test metrics
    data: dict[str, str] = field(default_factory=dict)  # data hashes
    # What it learnt from (model.json's trained_on; "unknown" for models saved before it existed)
    trained_on: dict[str, Any] = field(default_factory=lambda: trained_on_of({}))
    # Evaluate's blocks (test, test_images_only, external, external_images_only; "val" when no
    # test evaluation was found): what the summary sentences are made of
    evaluation: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Where it came from: git commit, MLflow run, registry version and weights (None: not recorded)
    lineage: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    # Keras models are not guaranteed thread-safe, and 2 cores gain nothing from parallel forward passes.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    explainer: Any = field(default=None, repr=False)
    # How prepare decoded this model's training data (model.json, see ``decoding_of``): JPEG draft
    # settings and colour constancy, passed to ``intake.decode`` as keyword arguments
    decoding: dict[str, Any] = field(default_factory=lambda: decoding_of({}))

    @property
    def image_size(self) -> int:
        return int(self.classifier.image_size)

    @property
    def fit(self) -> str:
        return str(getattr(self.classifier, "fit", "crop"))

    @property
    def metadata_columns(self) -> list[str]:
        """The patient metadata columns the model reads (empty: images only)."""
        return list(metadata_columns(self.classifier))

    @property
    def warnings(self) -> list[str]:
        """What every answer about this model must say (a synthetic-trained model's banner)."""
        return model_warnings(self.trained_on)

    def summary(self) -> list[str]:
        """The evaluation in sentences (``provenance.metric_sentences``)."""
        return metric_sentences(self.evaluation, self.threshold, self.metadata_columns)

    def predict(self, images: np.ndarray, metadata: Any = None) -> np.ndarray:
        """uint8 (N, S, S, 3) (+ optional patient metadata rows) -> float (N,) P(melanoma), one pass at a time."""
        with self.lock:
            return np.asarray(self.classifier.predict_proba(images, metadata), dtype=np.float64).reshape(-1)

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` answers."""
        from melanoma.serve.explain import explanation_kind

        return {
            "name": self.name,
            "family": self.family,
            "registered_model": self.registered_model,
            "version": self.version,
            "source": self.source,
            "threshold": self.threshold,
            "image_size": self.image_size,
            "fit": self.fit,
            **self.decoding,
            "test_metrics": self.metrics,
            "data_hashes": self.data,
            "explanation": explanation_kind(self.classifier),
            "trained_on": self.trained_on,
            "lineage": self.lineage,
            "metadata": {
                "columns": self.metadata_columns,
                "categories": metadata_categories(self.classifier),
            },
            "evaluation": self.evaluation,
            "summary": self.summary(),
            "warnings": self.warnings,
        }


def metadata_categories(model: Any) -> dict[str, list[str]]:
    """Column -> the categories the model's metadata encoder learnt (the page's select options).

    The encoder sits inside the wrappers (calibration, TTA: ``inner``) and, for an ensemble, inside
    its members; the categories of every encoder found are merged.
    """
    found: dict[str, set[str]] = {}
    stack, seen = [model], set()
    while stack:
        m = stack.pop()
        if m is None or id(m) in seen:
            continue
        seen.add(id(m))
        encoder = getattr(m, "encoder", None)
        for column, values in (getattr(encoder, "categories", None) or {}).items():
            found.setdefault(str(column), set()).update(map(str, values))
        stack.append(getattr(m, "inner", None))
        stack.extend((getattr(m, "members", None) or {}).values())
    return {c: sorted(v) for c, v in sorted(found.items())}


def numbers_and_names(block: Any) -> dict[str, Any]:
    """An evaluation block's numbers (and the external set's ``name``/``source``), nothing nested."""
    if not isinstance(block, dict):
        return {}
    return {
        k: v
        for k, v in block.items()
        if (isinstance(v, int | float) and not isinstance(v, bool)) or (k in ("name", "source") and v)
    }


def val_block(info: dict[str, Any]) -> dict[str, Any]:
    """model.json's validation metrics as a block (``val_`` dropped, images-only ones left out)."""
    val = info.get("val") or {}
    block = {
        k.removeprefix("val_"): v
        for k, v in val.items()
        if not k.startswith("val_images_only_") and isinstance(v, int | float) and not isinstance(v, bool)
    }
    n_val = trained_on_of(info)["n_val"]
    if block and n_val is not None:
        block["n"] = n_val
    return block


def _warm(served: Served) -> Served:
    """One prediction and one explanation, so the first request pays no lazy set-up."""
    from melanoma.serve.explain import make_explainer

    blank = np.full((1, served.image_size, served.image_size, 3), 128, np.uint8)
    served.predict(blank)
    served.explainer = make_explainer(served.classifier)
    served.explainer(blank[0])
    return served


def load_folder(model_dir: Path, metrics_path: Path | None = None) -> Served:
    """A model folder (``models/<name>/`` with model.json), served without the registry.

    Test metrics come from ``metrics_path`` (evaluate's JSON) when given, with its external and
    images-only blocks; else the folder's validation metrics are shown, under their ``val_`` names
    (and told in the summary as validation scores). A metrics file of another model is refused.
    """
    from melanoma.contracts import read_metrics, read_model_json
    from melanoma.errors import DataError
    from melanoma.models import load_model

    info = read_model_json(model_dir)
    classifier = load_model(model_dir)
    report = read_metrics(metrics_path) if metrics_path else {}
    if report.get("model") not in (None, info.get("name")):
        # another model's scores on this model's page would be a lie told in its name
        raise DataError(
            f"{metrics_path}: metrics of {report.get('model')!r}, but {model_dir} is {info.get('name')!r}"
        )
    evaluation = {k: numbers_and_names(report[k]) for k in BLOCKS if report.get(k)}
    if "test" not in evaluation and val_block(info):
        evaluation = {"val": val_block(info)}  # said in the summary: optimistic, not a test
    scores = (report.get("test") or {}) if metrics_path else (info.get("val") or {})
    test = {k: v for k, v in scores.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return _warm(
        Served(
            classifier=classifier,
            name=str(info.get("name") or Path(model_dir).name),
            family=str(info.get("family")),
            threshold=float(info.get("threshold", 0.5)),
            source=str(Path(model_dir).resolve()),
            metrics=test,
            data={k: str(v) for k, v in (info.get("data") or {}).items()},
            trained_on=trained_on_of(info),
            evaluation=evaluation,
            # a folder records neither commit nor run: only the registry's versions carry them
            lineage={"git_commit": None, "run_id": None, "weights": info.get("weights")},
            decoding=decoding_of(info),
        )
    )


def _tag_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_evaluation(metrics: dict[str, float]) -> dict[str, dict[str, Any]]:
    """An MLflow run's ``test_*``/``external_*``/``*_images_only_*`` metrics (evaluate logs them so,
    see ``evaluate.to_mlflow``) -> evaluation blocks, rounded to 6 decimals as the metrics files are.

    The external set's name is text, which MLflow metrics cannot hold: it comes from the run's
    ``external_name`` tag when evaluate set one (``load_version``).
    """
    from melanoma.registry.store import round6

    blocks: dict[str, dict[str, Any]] = {}
    # longest prefix first: test_images_only_roc_auc is not test's "images_only_roc_auc"
    prefixes = sorted(BLOCKS, key=len, reverse=True)
    for key, value in sorted(metrics.items()):
        block = next((b for b in prefixes if key.startswith(f"{b}_")), None)
        if block is not None and round6(value) is not None:
            blocks.setdefault(block, {})[key.removeprefix(f"{block}_")] = round6(value)
    return blocks


def run_record(client: Any, run_id: str | None) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) of the version's MLflow run; empty when there is none or it cannot be read."""
    if not run_id:
        return {}, {}
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # a deleted run, a store that is down: the version's tags still tell the test
        log.warning("serve: cannot read MLflow run %s (%s: %s); test scores from the version's tags only",
                    run_id, type(exc).__name__, exc)  # fmt: skip
        return {}, {}
    return dict(run.data.metrics), dict(run.data.tags)


def load_version(client: Any, registered_model: str, version: str) -> Served:
    """Registered version -> Served, loaded through its pyfunc (the logged model folder inside)."""
    import mlflow

    from melanoma.contracts import read_model_json

    mv = client.get_model_version(registered_model, version)
    tags = dict(mv.tags)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{registered_model}/{version}")
    wrapper = pyfunc.unwrap_python_model()
    classifier = wrapper.model
    info = read_model_json(wrapper.model_dir)  # the logged folder's model.json
    decoding = decoding_of(info)
    metrics = {
        k.removeprefix("test_"): _tag_value(v)
        for k, v in sorted(tags.items())
        if k.startswith("test_") and ":" not in k and k != "test_split_hash"
    }
    run_metrics, run_tags = run_record(client, getattr(mv, "run_id", None))
    evaluation = run_evaluation(run_metrics)
    if "external" in evaluation and run_tags.get(EXTERNAL_NAME_TAG):
        evaluation["external"]["name"] = run_tags[EXTERNAL_NAME_TAG]
    if "test" not in evaluation and metrics:
        evaluation["test"] = dict(metrics)  # register's tags: the test block's headline numbers
    lineage = {
        # the commit register ran at (a version's tag), else the one the training run recorded
        "git_commit": tags.get("git_commit") or run_tags.get("git_commit"),
        "run_id": getattr(mv, "run_id", None),
        "weights": tags.get("weights"),
        "model_fingerprint": tags.get("model_fingerprint"),
        "dvc_exp_name": tags.get("dvc_exp_name") or run_tags.get("dvc_exp_name"),
        "promoted_by": tags.get("promoted_by"),
    }
    return _warm(
        Served(
            classifier=classifier,
            name=tags.get("model_name", "?"),
            family=getattr(classifier, "family", tags.get("model_family", "?")),
            # model.json's threshold, as evaluate used it: the registry's tag is rounded to 6 decimals
            threshold=float(info.get("threshold", _tag_value(tags.get("threshold", "0.5")))),
            version=str(version),
            registered_model=registered_model,
            source=f"models:/{registered_model}/{version}",
            metrics=metrics,
            data={k.removeprefix("data."): v for k, v in sorted(tags.items()) if k.startswith("data.")},
            trained_on=trained_on_of(info),
            evaluation=evaluation,
            lineage=lineage,
            decoding=decoding,
        )
    )


class ModelHolder:
    """Holds the served model; optionally follows the registry's ``champion`` alias in a thread."""

    def __init__(self, served: Served, follow: Callable[[], Served | None] | None = None) -> None:
        self._current = served
        self._follow = follow
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.last_check: float | None = None
        self.swaps = 0

    @property
    def current(self) -> Served:
        return self._current  # one attribute read: atomic, so a request sees the old or the new model

    def check_now(self) -> bool:
        """Look once for a new champion; swap when one loaded. True when the model changed."""
        if self._follow is None:
            return False
        try:
            new = self._follow()
            self.last_error = None
        except Exception as exc:  # keep serving the old model; tell /health why
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("serve: could not load the new champion: %s", self.last_error)
            new = None
        self.last_check = time.time()
        if new is None:
            return False
        old, self._current = self._current, new
        self.swaps += 1
        log.info("serve: now serving %s (was %s)", new.source, old.source)
        return True

    def start(self, interval_s: float) -> None:
        """Poll every ``interval_s`` seconds in a daemon thread (no-op for a model folder)."""
        if self._follow is None or self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.check_now()

        self._thread = threading.Thread(target=loop, name="champion-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def registry_holder(tracking_uri: str, registered_model: str, alias: str = CHAMPION) -> ModelHolder:
    """Load the version ``alias`` points at; the holder follows the alias when started."""
    from melanoma.registry.store import connect

    client = connect(tracking_uri)

    def alias_version() -> str:
        return str(client.get_model_version_by_alias(registered_model, alias).version)

    first = load_version(client, registered_model, alias_version())
    holder: ModelHolder

    def follow() -> Served | None:
        version = alias_version()
        if version == holder.current.version:
            return None
        log.info("serve: %s@%s moved to version %s; loading it", registered_model, alias, version)
        return load_version(client, registered_model, version)

    holder = ModelHolder(first, follow)
    return holder
