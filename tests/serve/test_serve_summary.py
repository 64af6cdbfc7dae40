"""What the app says about its model: provenance, the synthetic warning, the scores in sentences.

The sentence formatting is checked against strings written out here; the app's answers (``/model``,
``/predict``, ``/predict/batch?explain=true``, ``/report``) through the ASGI interface (no server,
no HTTP client) over a real tiny baseline folder that reads patient metadata.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import asgi_request, jpeg_bytes, lesion_image
from melanoma.config import BaselineParams
from melanoma.contracts import write_model_json
from melanoma.errors import DataError
from melanoma.images import load_resized
from melanoma.models.baseline import fit_baseline
from melanoma.serve import Limits, ModelHolder, create_app, load_folder
from melanoma.serve.holder import metadata_categories, run_evaluation
from melanoma.serve.provenance import (
    SYNTHETIC_WARNING,
    metric_sentences,
    model_warnings,
    threshold_text,
    trained_on_of,
)

LIMITS = Limits(max_bytes=200_000, max_pixels=1_000_000, max_batch=3)
SIZE = 24

TEST = {
    "n": 395, "n_melanoma": 40, "roc_auc": 0.852512, "roc_auc_ci_low": 0.711, "roc_auc_ci_high": 0.9366,
    "threshold": 0.3081, "sensitivity": 0.9, "specificity": 0.6249, "pauc_80": 0.07,
}  # fmt: skip
EXTERNAL = {
    "name": "ISIC 2020 (hold-out)", "source": "isic", "n": 389, "n_melanoma": 39, "roc_auc": 0.751465,
    "roc_auc_ci_low": 0.657202, "roc_auc_ci_high": 0.837291, "threshold": 0.3081, "sensitivity": 0.871795,
    "specificity": 0.5,
}  # fmt: skip
ALONE = {"n": 395, "roc_auc": 0.8, "roc_auc_ci_low": 0.7, "roc_auc_ci_high": 0.9, "threshold": 0.3081,
         "sensitivity": 0.95, "specificity": 0.3}  # fmt: skip


def test_test_and_external_sentences_with_their_numbers() -> None:
    assert metric_sentences({"test": TEST, "external": EXTERNAL}, 0.3081) == [
        "ROC AUC 0.85 (95% CI 0.71–0.94) on 395 test images, 40 melanoma",
        "At the operating threshold 0.308: sensitivity 0.90, specificity 0.62 on the test images",
        "On the external set ISIC 2020 (hold-out): ROC AUC 0.75 (95% CI 0.66–0.84) on 389 images, "
        "39 melanoma; at the operating threshold 0.308: sensitivity 0.87, specificity 0.50",
    ]


def test_images_only_sentences_only_for_a_model_that_reads_metadata() -> None:
    blocks = {
        "test": TEST,
        "test_images_only": ALONE,
        "external": EXTERNAL,
        "external_images_only": {**ALONE, "roc_auc": 0.7},
    }
    told = metric_sentences(blocks, 0.3081, ("age_approx", "sex", "site"))
    assert told[2] == (
        "Images alone (no age, sex or site given): ROC AUC 0.80 (95% CI 0.70–0.90); "
        "at the operating threshold 0.308: sensitivity 0.95, specificity 0.30 on the same test images"
    )
    assert told[4] == (
        "On the external set ISIC 2020 (hold-out), images alone (no age, sex or site given): "
        "ROC AUC 0.70 (95% CI 0.70–0.90); at the operating threshold 0.308: sensitivity 0.95, specificity 0.30"
    )
    assert len(told) == 5
    assert metric_sentences(blocks, 0.3081, ()) == metric_sentences(
        {"test": TEST, "external": EXTERNAL}, 0.3081
    )
    assert "no site given" in metric_sentences(blocks, 0.3081, ("site",))[2]


def test_missing_pieces_are_left_out_never_printed_as_nan() -> None:
    bare = {"roc_auc": 0.5, "roc_auc_ci_low": None, "roc_auc_ci_high": math.nan, "sensitivity": math.nan}
    told = metric_sentences({"test": bare, "external": {"roc_auc": 0.61, "n": 12.0}}, 0.2)
    assert told == [
        "ROC AUC 0.50 on the test images",
        "On the external set: ROC AUC 0.61 on 12 images",  # a registry run has no set name; counts as floats
    ]
    assert not any("nan" in s.lower() or "None" in s for s in told)
    assert metric_sentences({"test": {"n": 20, "n_melanoma": 0, "roc_auc": None}}, 0.5) == [
        "No ROC AUC on 20 test images, 0 melanoma (one class only)"
    ]


def test_validation_only_and_no_evaluation_say_so() -> None:
    (val,) = metric_sentences(
        {"val": {"roc_auc": 0.9, "sensitivity": 0.92, "specificity": 0.4, "n": 237}}, 0.035
    )
    assert val == (
        "No test-set evaluation was found for this model; on 237 validation images (the images its "
        "threshold was chosen on, so optimistic): ROC AUC 0.90; at the operating threshold 0.035: "
        "sensitivity 0.92, specificity 0.40"
    )
    assert metric_sentences({}, 0.5) == ["No evaluation of this model was found: its scores are unknown"]


@pytest.mark.parametrize(
    ("value", "text"), [(0.308123, "0.308"), (0.035454, "0.035"), (0.00042, "0.00042"), (0.0, "0.000")]
)
def test_thresholds_keep_their_digits(value: float, text: str) -> None:
    assert threshold_text(value) == text


def test_trained_on_recorded_and_unknown() -> None:
    synthetic = {"source": "synthetic", "name": "built-in synthetic sample (seed 42, 2000 generated images)",
                 "synthetic": True, "n_train": 1185, "n_val": 237}  # fmt: skip
    assert trained_on_of({"trained_on": synthetic}) == synthetic
    assert model_warnings(trained_on_of({"trained_on": synthetic})) == [SYNTHETIC_WARNING]
    folder = {"source": "folder", "name": "image folder lesions (labels)", "synthetic": False,
              "n_train": 10, "n_val": 5}  # fmt: skip
    assert model_warnings(trained_on_of({"trained_on": folder})) == []
    old = trained_on_of({"n_train": 80, "n_val": 20})  # saved before trained_on existed
    assert old["source"] == "unknown" and old["name"].startswith("unknown") and old["synthetic"] is None
    assert (old["n_train"], old["n_val"]) == (80, 20)
    assert model_warnings(old) == []  # not known to be generated: said as "unknown", not as a banner


def test_registry_run_metrics_become_blocks() -> None:
    blocks = run_evaluation(
        {
            "test_roc_auc": 0.8525123456,
            "test_n": 395.0,
            "test_images_only_roc_auc": 0.8,
            "external_roc_auc": 0.75,
            "external_images_only_sensitivity": 0.9,
            "val_roc_auc": 0.9,
            "train_seconds": 3.0,
            "test_brier": math.nan,
        }
    )
    assert blocks == {
        "test": {"roc_auc": 0.852512, "n": 395.0},
        "test_images_only": {"roc_auc": 0.8},
        "external": {"roc_auc": 0.75},
        "external_images_only": {"sensitivity": 0.9},
    }


def test_metadata_categories_are_found_through_wrappers_and_members() -> None:
    enc = SimpleNamespace(categories={"site": ("trunk", "head"), "sex": ("male",)})
    other = SimpleNamespace(categories={"sex": ("female",)})
    baseline = SimpleNamespace(encoder=enc)
    ensemble = SimpleNamespace(
        members={"baseline": SimpleNamespace(inner=baseline), "b2": SimpleNamespace(encoder=other)}
    )
    assert metadata_categories(SimpleNamespace(inner=ensemble)) == {
        "sex": ["female", "male"],
        "site": ["head", "trunk"],
    }
    assert metadata_categories(SimpleNamespace()) == {}


# ------------------------------------------------------------------------- the app, in process


def get_json(app: Any, path: str) -> dict[str, Any]:
    status, _, payload = asgi_request(app, "GET", path)
    assert status == 200, payload
    return json.loads(payload)


def files_form(*images: bytes, boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b""
    for i, data in enumerate(images):
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{i}.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def baseline_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny baseline that reads age and site, saved as train saves it (without trained_on yet)."""
    rng = np.random.default_rng(0)
    n = 80
    y = (rng.random(n) < 0.3).astype(int)
    x = np.stack([load_resized(jpeg_bytes(lesion_image(rng, bool(m), 40, 30)), SIZE, "crop") for m in y])
    meta = pd.DataFrame(
        {"age_approx": np.where(y == 1, 70.0, 30.0), "site": np.where(y == 1, "Lower extremity", "Trunk")}
    )
    params = BaselineParams(candidates=("logistic_regression",), metadata=("age_approx", "site"))
    model, _ = fit_baseline(x, y, x, y, params, 0, SIZE, meta_train=meta, meta_val=meta)
    folder = tmp_path_factory.mktemp("summary") / "baseline"
    folder.mkdir()
    model.save(folder)
    return folder


def write_info(folder: Path, **extra: Any) -> None:
    write_model_json(
        folder,
        {"name": "baseline", "family": "baseline", "image_size": SIZE, "threshold": 0.4,
         "val": {"val_roc_auc": 0.9, "val_sensitivity": 0.8, "val_specificity": 0.7}, **extra},
    )  # fmt: skip


def test_synthetic_model_warns_in_every_answer_and_explains_each_batch_image(
    baseline_folder: Path, tmp_path: Path
) -> None:
    synthetic = {"source": "synthetic", "name": "built-in synthetic sample (seed 1, 80 generated images)",
                 "synthetic": True, "n_train": 80, "n_val": 80}  # fmt: skip
    write_info(baseline_folder, trained_on=synthetic, n_train=80, n_val=80)
    metrics = tmp_path / "baseline.json"
    metrics.write_text(json.dumps({"model": "baseline", "test": TEST, "external": EXTERNAL}))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "README.md").write_text("# Report\nROC AUC 0.85\n")
    app = create_app(
        ModelHolder(load_folder(baseline_folder, metrics)), LIMITS, reports_dir=tmp_path / "reports"
    )

    info = get_json(app, "/model")
    assert info["trained_on"] == synthetic
    assert info["warnings"] == [SYNTHETIC_WARNING]
    assert info["summary"] == metric_sentences(
        {"test": TEST, "external": EXTERNAL}, 0.4, ("age_approx", "site")
    )
    assert info["evaluation"]["external"]["name"] == EXTERNAL["name"]
    assert info["metadata"] == {
        "columns": ["age_approx", "site"],
        "categories": {"site": ["lower extremity", "trunk"]},
    }
    assert info["lineage"] == {"git_commit": None, "run_id": None, "weights": None}
    assert info["links"] == {"report": "/report", "model_card": None}
    assert info["limits"]["max_batch"] == LIMITS.max_batch

    image = jpeg_bytes(lesion_image(np.random.default_rng(3), True, 40, 30))
    status, _, payload = asgi_request(app, "POST", "/predict", image, "image/jpeg")
    one = json.loads(payload)
    assert status == 200 and one["warnings"][0] == SYNTHETIC_WARNING
    assert "reads age_approx, site, and none was given" in one["warnings"][1]  # both, synthetic first
    status, _, payload = asgi_request(
        app, "POST", "/predict", image, "image/jpeg", {"age_approx": "50", "site": "trunk"}
    )
    assert json.loads(payload)["warnings"] == [SYNTHETIC_WARNING]

    body, ctype = files_form(image, jpeg_bytes(lesion_image(np.random.default_rng(4), False, 40, 30)))
    status, _, payload = asgi_request(app, "POST", "/predict/batch", body, ctype, {"explain": "true"})
    batch = json.loads(payload)
    assert status == 200 and batch["warnings"][0] == SYNTHETIC_WARNING and len(batch["warnings"]) == 2
    for r in batch["results"]:
        heat = Image.open(io.BytesIO(base64.b64decode(r["explanation"]["image_png_b64"])))
        assert r["explanation"]["kind"] == "lesion-mask" and heat.size == (256, 256)
    status, _, payload = asgi_request(app, "POST", "/predict/batch", body, ctype)
    assert all("explanation" not in r for r in json.loads(payload)["results"])  # only when asked

    status, headers, payload = asgi_request(app, "GET", "/report")
    assert status == 200 and payload.decode() == "# Report\nROC AUC 0.85\n"
    assert (
        headers["content-type"].startswith("text/plain")
        and "default-src 'none'" in headers["content-security-policy"]
    )
    status, _, payload = asgi_request(app, "GET", "/model-card")
    assert status == 404 and "model_card.md does not exist" in json.loads(payload)["detail"]


def test_a_folder_trained_model_without_test_metrics_warns_of_nothing_and_says_validation(
    baseline_folder: Path,
) -> None:
    folder = {"source": "folder", "name": "image folder lesions (labels)", "synthetic": False,
              "n_train": 60, "n_val": 20}  # fmt: skip
    write_info(baseline_folder, trained_on=folder)
    app = create_app(ModelHolder(load_folder(baseline_folder)), LIMITS)
    info = get_json(app, "/model")
    assert info["warnings"] == [] and info["trained_on"] == folder
    assert info["summary"][0].startswith(
        "No test-set evaluation was found for this model; on 20 validation images"
    )
    assert info["links"] == {"report": None, "model_card": None}
    image = jpeg_bytes(lesion_image(np.random.default_rng(3), True, 40, 30))
    _, _, payload = asgi_request(app, "POST", "/predict", image, "image/jpeg", {"age_approx": "50"})
    assert "warnings" not in json.loads(payload)
    status, _, payload = asgi_request(app, "GET", "/report")
    assert status == 404 and "no reports folder" in json.loads(payload)["detail"]


def test_an_old_model_says_unknown_and_another_models_metrics_are_refused(
    baseline_folder: Path, tmp_path: Path
) -> None:
    write_info(baseline_folder, n_train=60, n_val=20)  # no trained_on: saved before it existed
    info = get_json(create_app(ModelHolder(load_folder(baseline_folder)), LIMITS), "/model")
    assert info["trained_on"]["source"] == "unknown" and info["warnings"] == []
    assert (info["trained_on"]["n_train"], info["trained_on"]["n_val"]) == (60, 20)
    other = tmp_path / "cnn.json"
    other.write_text(json.dumps({"model": "cnn", "test": TEST}))
    with pytest.raises(DataError, match="metrics of 'cnn'"):
        load_folder(baseline_folder, other)
