"""The app tells people what they are looking at (issue 20), on a model trained on a FOLDER of images.

`melanoma serve --model-dir` in a subprocess on 127.0.0.1 over a copy of the tiny pipeline's baseline
(integration/tiny_pipeline.py: it reads patient metadata) whose model.json says it learnt from an image
folder, with `--metrics` the pipeline's reports/metrics/baseline.json and the pipeline's report and
model card beside it. No banner and no warning for such a model; its sentences are recomputed here
from the metrics file; the page shows the metadata inputs; the token form speaks auth's contract.
(The synthetic-trained registry champion's banner is checked in test_app.py.)
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from integration.app_support import (
    TOKEN_ENV,
    Server,
    post_image,
    sample_jpeg,
    serve_cmd,
    serve_env,
    serve_params_file,
    started,
)
from melanoma.raw_layout import describe_source
from melanoma.serve.provenance import SYNTHETIC_WARNING, threshold_text

if TYPE_CHECKING:
    from integration.conftest import LoopbackBrowser
    from integration.tiny_pipeline import TinyPipeline

pytestmark = pytest.mark.integration

TOKEN = "page-test-token-0123456789"  # the token-protected server's (auth wants 16+ characters)
WORDS = {"age_approx": "age", "sex": "sex", "site": "site"}


def expected_summary(metrics: dict[str, Any], metadata_columns: list[str], external_named: bool) -> list[str]:
    """GET /model's ``summary``, recomputed from evaluate's metrics JSON: what each sentence must say.

    ``external_named``: False for a registry version (its MLflow run cannot hold the set's name).
    """

    def auc(b: dict[str, Any]) -> str:
        text = f"ROC AUC {b['roc_auc']:.2f}"
        if b.get("roc_auc_ci_low") is not None and b.get("roc_auc_ci_high") is not None:
            text += f" (95% CI {b['roc_auc_ci_low']:.2f}–{b['roc_auc_ci_high']:.2f})"
        return text

    def rates(b: dict[str, Any]) -> str:
        return (
            f"at the operating threshold {threshold_text(b['threshold'])}: "
            f"sensitivity {b['sensitivity']:.2f}, specificity {b['specificity']:.2f}"
        )

    names = [WORDS[c] for c in metadata_columns]
    alone = (
        "images alone (no "
        + (names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}")
        + " given)"
    )
    test = metrics["test"]
    out = [
        f"{auc(test)} on {test['n']} test images, {test['n_melanoma']} melanoma",
        f"A{rates(test)[1:]} on the test images",
    ]
    if metadata_columns and metrics.get("test_images_only"):
        block = metrics["test_images_only"]
        out.append(f"I{alone[1:]}: {auc(block)}; {rates(block)} on the same test images")
    if metrics.get("external"):
        ext = metrics["external"]
        where = f"On the external set {ext['name']}" if external_named else "On the external set"
        out.append(f"{where}: {auc(ext)} on {ext['n']} images, {ext['n_melanoma']} melanoma; {rates(ext)}")
        if metadata_columns and metrics.get("external_images_only"):
            block = metrics["external_images_only"]
            out.append(f"{where}, {alone}: {auc(block)}; {rates(block)}")
    return out


@dataclass
class Folder:
    """The served copy of the tiny baseline and what it was made from."""

    model_dir: Path
    metrics: dict[str, Any]
    model_json: dict[str, Any]
    reports: Path  # the served root's reports/ (the pipeline's README.md and model_card.md)


@contextlib.contextmanager
def serve_folder(
    root: Path, folder: Folder, env_extra: dict[str, str], timeout: float = 240
) -> Iterator[Server]:
    """`melanoma serve --model-dir ... --metrics ... --port 0` run from ``root`` (where reports/ is)."""
    metrics_path = root / "baseline-metrics.json"
    metrics_path.write_text(json.dumps(folder.metrics))
    args = ("--model-dir", str(folder.model_dir), "--metrics", str(metrics_path))
    cmd = serve_cmd(serve_params_file(root, {"max_batch": 4}), *args)
    with started(cmd, serve_env(None, env_extra), root, timeout) as server:
        yield server


@pytest.fixture(scope="module")
def folder(tiny_pipeline: TinyPipeline, tmp_path_factory: pytest.TempPathFactory) -> Folder:
    """The tiny baseline, copied, with model.json saying it learnt from an image folder (a real model:
    only the provenance record is rewritten, as train writes it for a folder source)."""
    root = tmp_path_factory.mktemp("folder-model")
    model_dir = root / "models" / "baseline"
    shutil.copytree(tiny_pipeline.repo / "models" / "baseline", model_dir)
    info = json.loads((model_dir / "model.json").read_text())
    assert info["trained_on"]["synthetic"] is True  # the tiny pipeline's own record, before the rewrite
    info["trained_on"] = {
        **describe_source({"source": "folder", "path": "/data/lesions", "mode": "labels.csv"}),
        "n_train": info["trained_on"]["n_train"],
        "n_val": info["trained_on"]["n_val"],
    }
    (model_dir / "model.json").write_text(json.dumps(info, indent=2))
    reports = root / "reports"
    reports.mkdir()
    for name in ("README.md", "model_card.md"):
        shutil.copy2(tiny_pipeline.repo / "reports" / name, reports / name)
    return Folder(model_dir, tiny_pipeline.metrics("baseline"), info, reports)


@pytest.fixture(scope="module")
def server(folder: Folder) -> Iterator[Server]:
    with serve_folder(folder.reports.parent, folder, {}) as srv:
        yield srv


def test_folder_trained_model_has_no_warning_and_its_sentences_come_from_the_metrics_file(
    server: Server, folder: Folder
) -> None:
    info = requests.get(f"{server.url}/model", timeout=30).json()
    assert info["trained_on"] == folder.model_json["trained_on"]
    assert info["trained_on"]["source"] == "folder" and info["trained_on"]["synthetic"] is False
    assert info["warnings"] == []
    assert info["lineage"]["git_commit"] is None and info["version"] is None
    columns = folder.model_json["metadata_columns"]
    assert columns, "the tiny baseline reads patient metadata (params.yaml baseline.metadata)"
    assert info["metadata"]["columns"] == columns
    assert info["metadata"]["categories"] == {
        c: v for c, v in folder.model_json["metadata"]["categories"].items() if c in columns
    }
    # every block evaluate wrote is told: the test split, images alone, the external set by its name
    assert {"test", "test_images_only", "external", "external_images_only"} <= set(folder.metrics)
    assert info["summary"] == expected_summary(folder.metrics, columns, external_named=True)
    assert info["links"] == {"report": "/report", "model_card": "/model-card"}

    image = sample_jpeg(seed=21)
    alone = post_image(server.url, image).json()
    assert SYNTHETIC_WARNING not in alone["warnings"] and len(alone["warnings"]) == 1  # metadata only
    given = post_image(server.url, image, age_approx="55", sex="female", site="trunk").json()
    assert "warnings" not in given

    for route, name in (("/report", "README.md"), ("/model-card", "model_card.md")):
        r = requests.get(f"{server.url}{route}", timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert r.text == (folder.reports / name).read_text()


def test_page_shows_no_banner_and_sends_the_metadata_inputs(
    server: Server, folder: Folder, browser: LoopbackBrowser, tmp_path: Path
) -> None:
    image = tmp_path / "lesion.jpg"
    image.write_bytes(sample_jpeg(seed=22, w=400, h=300))
    info = requests.get(f"{server.url}/model", timeout=30).json()
    site = info["metadata"]["categories"]["site"][0]
    with browser.open(f"{server.url}/") as view:
        page = view.page
        page.locator("#trained-on").filter(has_text="image folder lesions").wait_for()
        assert page.locator("#banner").is_hidden()
        for field in ("#patient", "#age", "#sex", "#site"):
            assert page.locator(field).is_visible(), field
        options = page.locator("#site option").evaluate_all("els => els.map(e => e.value)")
        assert options == ["", *info["metadata"]["categories"]["site"]]
        summary = page.locator("#metric-summary li").all_inner_texts()
        page.fill("#age", "55")
        page.select_option("#site", site)
        page.set_input_files("#file", str(image))
        page.locator("#probability").filter(has_text="%").wait_for()
        shown, warnings = page.inner_text("#probability"), page.inner_text("#warnings")
        page.click("#card-link")
        page.locator("#doc-view").filter(has_text="Model card").wait_for()
        card = page.inner_text("#doc-view")
        view.screenshot(tmp_path, "app-page-folder")
        assert view.outside_loopback(view.requests) == [] and view.blocked == []
        assert view.console_errors == []
    assert summary == [f"{s}." for s in info["summary"]]
    # the page sent what the inputs held: its answer is the API's for the same image and metadata
    api = post_image(server.url, image.read_bytes(), age_approx="55", site=site).json()
    assert float(shown.split()[0]) == pytest.approx(100 * api["probability"], abs=0.051)
    assert warnings == "" and "warnings" not in api  # sex alone left out: the model still had some metadata
    assert card.strip() == (folder.reports / "model_card.md").read_text().strip()


def test_page_asks_for_the_token_once_and_again_when_refused(
    folder: Folder, browser: LoopbackBrowser, tmp_path: Path
) -> None:
    """auth's contract: a 401 with a Bearer challenge shows #token-form; the token is kept in
    sessionStorage (melanoma-token) and sent on every later call; a wrong one is asked for again."""
    root = tmp_path / "root"
    shutil.copytree(folder.reports.parent / "reports", root / "reports")
    image = tmp_path / "lesion.jpg"
    image.write_bytes(sample_jpeg(seed=23))
    with serve_folder(root, folder, {TOKEN_ENV: TOKEN}) as srv:
        assert requests.get(f"{srv.url}/model", timeout=30).status_code == 401
        with browser.open(f"{srv.url}/") as view:
            page = view.page
            page.locator("#token-form").wait_for(state="visible")
            assert page.locator("#model-name").inner_text() == "…"  # nothing shown without the token
            page.fill("#token", "not-the-token-at-all-0000")
            page.click("#token-submit")
            page.locator("#token-message").filter(has_text="refused").wait_for()
            assert "wrong bearer token" in page.inner_text("#token-message")
            page.fill("#token", TOKEN)
            page.click("#token-submit")
            page.locator("#model-name").filter(has_text="baseline").wait_for()
            assert page.locator("#token-form").is_hidden()
            assert page.evaluate("() => sessionStorage.getItem('melanoma-token')") == TOKEN
            page.set_input_files("#file", str(image))
            page.locator("#probability").filter(has_text="%").wait_for()
            page.click("#report-link")
            page.locator("#doc-view").wait_for(state="visible")
            report = page.inner_text("#doc-view")
            page.reload()  # the same tab: asked once per tab session, not per page load
            page.locator("#model-name").filter(has_text="baseline").wait_for()
            assert page.locator("#token-form").is_hidden()
            # the only errors: Chromium's own log of the refused calls (no token, the wrong one)
            assert all("401" in e for e in view.console_errors), view.console_errors
    assert report.strip() == (root / "reports" / "README.md").read_text().strip()
