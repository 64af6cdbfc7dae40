"""Access control and the offline API docs over HTTP (issue 20): real `melanoma serve` processes over the
registry the shared tiny pipeline wrote (integration/tiny_pipeline.py), a real headless Chromium with every
request off 127.0.0.1 aborted.

A token from $MELANOMA_SERVE_TOKEN or --token-file guards every route but the page, /health and the docs'
files; a non-loopback --host without a token is refused before anything loads or binds; --insecure allows
it with a warning (that one server binds 0.0.0.0 for a few seconds and is reached through 127.0.0.1 only).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from integration.app_support import (
    BOUND,
    MODEL,
    TOKEN_ENV,
    Registry,
    Server,
    post_image,
    registry_of,
    sample_jpeg,
    serve_cmd,
    serve_env,
    serve_params_file,
    started,
)

if TYPE_CHECKING:
    from integration.conftest import LoopbackBrowser
    from integration.tiny_pipeline import TinyPipeline

pytestmark = pytest.mark.integration

TOKEN = "it-s3cret-Zq8wV1nR4tY7uK0pL3mX6"  # a test's own; the real one comes from the environment or a file
# the line `melanoma serve` logs once its socket is bound (any --host), with the port it got


@pytest.fixture(scope="module")
def registry(tiny_pipeline: TinyPipeline) -> Registry:
    return registry_of(tiny_pipeline)


def command(root: Path, registry: Registry, *args: str) -> tuple[list[str], dict[str, str]]:
    """`melanoma serve --port 0 ARGS` over ``registry`` from ``root`` (its own params.yaml), and an
    environment without any token the test run itself may have."""
    return serve_cmd(serve_params_file(root), *args), serve_env(registry.uri)


def baseline_dir(registry: Registry) -> str:
    """The tiny pipeline's baseline folder: the quickest model to load, for the servers that only show
    that they start (--model-dir: no registry)."""
    return str(registry.pipeline.repo / "models" / "baseline")


@contextlib.contextmanager
def running(
    root: Path, registry: Registry, *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> Iterator[Server]:
    """A `melanoma serve --port 0 ARGS` until /health answers through 127.0.0.1; stopped afterwards."""
    cmd, base = command(root, registry, *args)
    with started(cmd, {**base, **(env or {})}, root, timeout) as server:
        yield server


def refused(root: Path, registry: Registry, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Exit code and output of a `melanoma serve ARGS` expected to refuse to start."""
    cmd, base = command(root, registry, *args)
    done = subprocess.run(
        cmd, env={**base, **(env or {})}, cwd=root, capture_output=True, text=True, timeout=180, check=False
    )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def guarded(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The champion behind a token given the way a deployment gives it: in the server's environment."""
    with running(tmp_path_factory.mktemp("guarded"), registry, env={TOKEN_ENV: TOKEN}) as srv:
        yield srv


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_refused(r: requests.Response, detail: str) -> None:
    assert r.status_code == 401, (r.status_code, r.text[:300])
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert detail in r.json()["detail"] and TOKEN not in r.text


def test_token_from_the_environment_guards_every_api_route(guarded: Server, registry: Registry) -> None:
    url, image = guarded.url, sample_jpeg(seed=3)
    # public: the liveness probe, the page, the docs
    health = requests.get(f"{url}/health", timeout=30)
    assert (
        health.status_code == 200
        and health.json()["model"]["version"] == registry.versions[registry.champion]
    )
    for path in ("/", "/docs", "/docs/static/swagger-ui-bundle.js"):
        assert requests.get(f"{url}{path}", timeout=30).status_code == 200, path
    # no token, a wrong one, another scheme: 401 with a Bearer challenge, saying what is wrong
    for path in ("/model", "/openapi.json"):
        assert_refused(requests.get(f"{url}{path}", timeout=30), "missing bearer token")
        assert_refused(
            requests.get(f"{url}{path}", headers=bearer(TOKEN[:-1]), timeout=30), "wrong bearer token"
        )
    assert_refused(
        requests.get(f"{url}/model", headers={"Authorization": f"Basic {TOKEN}"}, timeout=30), "not a bearer"
    )
    assert_refused(post_image(url, image), "missing bearer token")
    assert_refused(
        requests.post(f"{url}/predict", files={"file": ("x.jpg", image, "image/jpeg")}, headers=bearer("x" * 20),
                      timeout=60),
        "wrong bearer token",
    )  # fmt: skip
    assert_refused(
        requests.post(f"{url}/predict/batch", files=[("files", ("a.jpg", image, "image/jpeg"))], timeout=60),
        "missing bearer token",
    )
    # the right token: the API answers as without access control
    info = requests.get(f"{url}/model", headers=bearer(TOKEN), timeout=30)
    assert info.status_code == 200 and info.json()["name"] == registry.champion
    answer = requests.post(
        f"{url}/predict", files={"file": ("x.jpg", image, "image/jpeg")}, headers=bearer(TOKEN), timeout=60
    )
    assert answer.status_code == 200 and 0 <= answer.json()["probability"] <= 1
    schema = requests.get(f"{url}/openapi.json", headers=bearer(TOKEN), timeout=30).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    log = guarded.log.read_text()
    assert f"${TOKEN_ENV}" in log and TOKEN not in log  # says where the token came from, never the token


def test_non_loopback_host_without_token_is_refused_before_binding(
    registry: Registry, tmp_path: Path
) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1"):  # the last: not even an address of this machine
        code, out = refused(tmp_path, registry, "--host", host)
        assert code == 2, out
        assert f"refusing to serve on --host {host} without a token" in out
        assert TOKEN_ENV in out and "--token-file" in out and "--insecure" in out
        assert not BOUND.search(out)  # it stopped before loading the model or binding a socket


def test_token_file_must_be_private(registry: Registry, tmp_path: Path) -> None:
    token_file = tmp_path / "serve.token"
    token_file.write_text(f"{TOKEN}\n")
    token_file.chmod(0o644)
    code, out = refused(tmp_path, registry, "--token-file", str(token_file), "--host", "0.0.0.0")
    assert code == 2 and "mode 0644" in out and f"chmod 600 {token_file}" in out, out
    assert not BOUND.search(out)
    token_file.chmod(0o600)
    with running(
        tmp_path, registry, "--token-file", str(token_file), "--model-dir", baseline_dir(registry)
    ) as srv:
        assert_refused(requests.get(f"{srv.url}/model", timeout=30), "missing bearer token")
        assert (
            requests.get(f"{srv.url}/model", headers=bearer(TOKEN), timeout=30).json()["name"] == "baseline"
        )
        assert "(--token-file)" in srv.log.read_text()


def test_insecure_gets_past_the_refusal_with_a_warning(registry: Registry, tmp_path: Path) -> None:
    """--insecure lets a non-loopback --host through the refusal, with a logged warning.

    The tests bind nothing but 127.0.0.1: 192.0.2.1 (TEST-NET-1) is no address of this machine, so
    past the check the bind itself fails, which shows the check let it through without opening a
    socket anywhere else.
    """
    code, out = refused(
        tmp_path, registry, "--host", "192.0.2.1", "--insecure", "--model-dir", baseline_dir(registry)
    )
    assert re.search(r"WARNING .*--insecure: 192\.0\.2\.1 is not loopback and there is no token", out), out
    assert "refusing to serve" not in out
    assert code not in (0, 2) and not BOUND.search(out), out  # the bind, not the check, stopped it


def csp_errors(messages: list[str]) -> list[str]:
    return [m for m in messages if "Content Security Policy" in m or "Refused to" in m]


def test_docs_offline_in_chromium_ask_for_the_token_and_authorize(
    guarded: Server, browser: LoopbackBrowser, tmp_path: Path
) -> None:
    with browser.open(f"{guarded.url}/docs") as view:
        page = view.page
        # The schema needs the token: the docs ask for it (once), then render Swagger UI from this app.
        page.locator("#token-form").wait_for(state="visible")
        page.fill("#token", TOKEN)
        page.click("#token-submit")
        page.locator(".opblock-summary-path", has_text="/predict").first.wait_for()
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert page.locator("#token-form").is_hidden()
        # "Authorize" is there, already holding the token: trying GET /model from the docs gets a 200
        assert "locked" in (page.locator(".btn.authorize").get_attribute("class") or "")
        page.locator(".opblock-summary-path", has_text="/model").first.click()
        page.locator(".try-out__btn").click()
        page.locator(".execute").click()
        status = page.locator(".live-responses-table tbody .response-col_status").first
        status.wait_for()
        tried = status.inner_text().strip()
        view.screenshot(tmp_path, "app-docs")
        served = [u for u in view.responses if "/docs/static/" in u]
        assert view.blocked == [] and view.outside_loopback(view.requests) == []
        assert csp_errors(view.console_errors) == [], view.console_errors
        # the one expected console error: the 401 that made the form appear
        assert all("401" in m for m in view.console_errors), view.console_errors
    assert {"/health", "/model", "/predict", "/predict/batch"} <= set(paths), paths
    assert tried == "200"
    assert any(u.endswith("/docs/static/swagger-ui-bundle.js") for u in served)


def test_page_asks_for_the_token_once_per_tab(
    guarded: Server, browser: LoopbackBrowser, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.jpg", tmp_path / "second.jpg"
    first.write_bytes(sample_jpeg(seed=11, w=320, h=240))
    second.write_bytes(sample_jpeg(seed=12, melanoma=False, w=320, h=240))
    with browser.open(f"{guarded.url}/") as view:  # the page itself loads without a token
        page = view.page
        statuses: list[int] = []
        page.on("response", lambda r: statuses.append(r.status))
        page.set_input_files("#file", str(first))
        # The page's calls were refused for want of a token: it asks for it, once for all of them.
        page.locator("#token-form").wait_for(state="visible")
        page.fill("#token", TOKEN)
        page.click("#token-submit")
        page.locator("#probability").filter(has_text="%").wait_for()
        page.locator("#model-version").filter(has_text=f"{MODEL} v").wait_for()
        assert page.locator("#token-form").is_hidden()
        before = len(statuses)
        # A second upload in the same tab: the stored token goes with it, nobody is asked again.
        with page.expect_response(lambda r: "/predict" in r.url) as again:
            page.set_input_files("#file", str(second))
        assert again.value.status == 200
        page.locator("#probability").filter(has_text="%").wait_for()
        later = statuses[before:]
        form_hidden = page.locator("#token-form").is_hidden()
        stored = page.evaluate("() => sessionStorage.getItem('melanoma-token')")
        assert view.blocked == [] and view.outside_loopback(view.requests) == []
        assert csp_errors(view.console_errors) == [], view.console_errors
    assert form_hidden and 401 not in later, later
    assert stored == TOKEN
