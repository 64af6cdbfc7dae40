"""The MLflow UI as a user sees it: headless Chromium opens a real ``mlflow server``'s Models page and shows
the registered model with its ``champion`` alias (issue 8). Only 127.0.0.1 is ever loaded."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

if TYPE_CHECKING:
    from integration.conftest import LoopbackBrowser

pytestmark = pytest.mark.integration

MODEL_NAME = "melanoma-ui-check"
UI_TIMEOUT_MS = 60_000  # a loaded 2-core CI machine renders the React bundle slowly


class ConstantModel(mlflow.pyfunc.PythonModel):
    """The tiniest real pyfunc: P(melanoma) = 0.5 for every image."""

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - hints trip MLflow
        return [0.5] * len(model_input)


def register_champion(uri: str) -> str:
    """Log a model in a run, register it from that run's model and alias it champion, as the pipeline does."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("mlflow-ui-test")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # log_model goes through the fluent API; put the global back afterwards
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name="ui-constant") as run:
            mlflow.log_metric("val_roc_auc", 0.5)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=ConstantModel(),
                pip_requirements=["mlflow"],  # skip requirement inference: keeps the test fast
                input_example=pd.DataFrame({"x": [0.0]}),
            )
    finally:
        mlflow.set_tracking_uri(before)
    client.create_registered_model(MODEL_NAME, description="UI check: a constant model")
    mv = client.create_model_version(
        MODEL_NAME, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id
    )
    client.set_registered_model_alias(MODEL_NAME, "champion", mv.version)
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == mv.version
    return mv.version


def check_models_page(
    browser: LoopbackBrowser, server: str, name: str, version: int | str, folder: Path
) -> Path:
    """Open the registered model's page in Chromium; assert it shows ``name`` with ``@ champion`` on
    ``version`` and that nothing left 127.0.0.1. Returns the screenshot."""
    t0 = time.monotonic()
    # MLflow 3 UI routes are hash routes: #/models lists registered models, #/models/<name> is one model.
    url = f"{server}/#/models/{quote(name)}"
    with browser.open(url, timeout_s=UI_TIMEOUT_MS / 1000) as view:
        page = view.page
        try:
            # The model page's title, then its versions table: version N's row carries the alias tag,
            # rendered as "@ champion" (a status element titled with the alias name).
            page.get_by_role("heading", name=re.compile(re.escape(name))).first.wait_for()
            row = page.get_by_role("row").filter(
                has=page.get_by_role("link", name=f"Version {version}", exact=True)
            )
            alias = row.get_by_text(re.compile(r"^@\s*champion$"))
            alias.wait_for()
        finally:
            shot = view.screenshot(folder, f"mlflow-ui-{name}")
        text = view.text()
        assert name in text, f"model name not shown; page text:\n{text[:2000]}"
        assert re.search(r"@\s*champion", text), f"champion alias not shown; page text:\n{text[:2000]}"
        assert alias.is_visible() and row.get_by_title("champion", exact=True).is_visible()
        requests, blocked = list(view.requests), list(view.blocked)
        answered = view.outside_loopback(view.responses)
        unblocked = [u for u in view.outside_loopback(requests) if u not in blocked]
        failed = [f for f in view.failed if f.split(" ")[0] not in blocked]

    elapsed = time.monotonic() - t0
    assert shot.stat().st_size > 10_000, "the screenshot is (nearly) empty"
    print(f"\nUI opened and checked in {elapsed:.1f}s; {len(requests)} requests; screenshot {shot}")
    print(f"blocked non-loopback requests: {blocked or 'none'}")
    # Nothing left the machine: every non-loopback request was aborted, none got an answer ...
    assert not unblocked and not answered, f"non-loopback requests got past the route: {unblocked + answered}"
    # ... and the UI did not even try (a new MLflow that phones home should be noticed, not hidden).
    assert not blocked, f"the MLflow UI tried to reach the internet (blocked): {blocked}"
    assert not failed, f"loopback requests failed: {failed}"
    return shot


def test_models_page_shows_the_registered_model_with_its_champion_alias(
    mlflow_server: str, browser: LoopbackBrowser, tmp_path: Path
) -> None:
    version = register_champion(mlflow_server)
    check_models_page(browser, mlflow_server, MODEL_NAME, version, tmp_path)


def test_the_browser_guard_aborts_every_request_that_would_leave_loopback(
    mlflow_server: str, browser: LoopbackBrowser
) -> None:
    """The route in ``browser.open`` is what keeps UI tests offline: check it really refuses other hosts."""
    with browser.open(f"{mlflow_server}/health") as view:
        outcome = view.page.evaluate(
            """async (urls) => Promise.all(urls.map(u => fetch(u, {mode: "no-cors"})
                   .then(() => "loaded").catch(() => "refused")))""",
            ["http://example.com/", "https://1.1.1.1/", f"{mlflow_server}/health"],
        )
        blocked, answered = list(view.blocked), view.outside_loopback(view.responses)
    assert outcome == ["refused", "refused", "loaded"]
    assert blocked == ["http://example.com/", "https://1.1.1.1/"] and not answered
