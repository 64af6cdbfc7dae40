"""Real servers for integration tests, on 127.0.0.1 only: an MLflow tracking server, a headless Chromium.

Ports: a server that can bind port 0 and say which port it got is started so (``melanoma serve --port 0``,
app_support.serve); the others (``mlflow server``, ``mlflow models serve``, TensorFlow workers) are given
free ports through the product's ``retry_on_taken_port``: another process on a busy machine may bind a
picked port before the server does, and the server is then started again on new ones.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from melanoma.stack import PortTaken, retry_on_taken_port
from melanoma.stack.ports import PORT_TAKEN as SERVER_PORT_TAKEN

BIN = Path(sys.executable).parent
# what the servers the tests start print when their port is taken: the stack's servers' words
# (uvicorn, mlflow's servers: "address already in use") and TensorFlow's gRPC server
PORT_TAKEN = re.compile(rf"{SERVER_PORT_TAKEN.pattern}|.*could not start grpc server.*", re.IGNORECASE)


def raise_if_port_taken(proc: subprocess.Popen, log: Path) -> None:
    """:class:`PortTaken` when ``proc`` has exited and its ``log`` says a port was taken."""
    if proc.poll() is not None:
        taken = PORT_TAKEN.search(log.read_text(errors="replace"))
        if taken:
            raise PortTaken(f"{log.name}: {taken.group(0).strip()}")


def listens_on(proc: subprocess.Popen, port: int) -> bool:
    """True when ``proc`` or one of its children listens on ``port``."""
    with contextlib.suppress(psutil.Error):
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr.port == port
            for p in procs
            for c in p.net_connections(kind="inet")
        )
    return False


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Until ``url`` answers 200 from ``proc``'s own port. :class:`PortTaken` when the server exited
    because its port was taken, or when another process answers there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raise_if_port_taken(proc, log)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                port = urlsplit(url).port
                if listens_on(proc, port):
                    return
                raise PortTaken(f"another process answers on port {port}")
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout}s:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """Terminate a server the test started; kill it if it has not exited after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def http_server(
    argv: Callable[[int], list[str]], path: str, logs: Path, timeout: float, grace: float, **popen
) -> Iterator[str]:
    """``argv(port)`` on a free loopback port until ``path`` answers 200; yields its base URL. Its
    output goes to ``logs``-<port>.log; a port taken before the server bound it is retried."""

    def start(ports: list[int]) -> tuple[str, subprocess.Popen]:
        (port,) = ports
        log = logs.with_name(f"{logs.name}-{port}.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv(port), stdout=out, stderr=subprocess.STDOUT, **popen)
        try:
            wait_http(f"http://127.0.0.1:{port}{path}", proc, timeout, log)
        except BaseException:
            stop_process(proc, grace)
            raise
        return f"http://127.0.0.1:{port}", proc

    url, proc = retry_on_taken_port(start, 1)
    try:
        yield url
    finally:
        stop_process(proc, grace)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` (sqlite backend, proxied artifacts) on a free loopback port."""
    mlflow_cli = shutil.which("mlflow", path=str(BIN)) or shutil.which("mlflow")
    if mlflow_cli is None:
        pytest.fail("the mlflow command is not installed in this environment (pip install mlflow)")
    root = tmp_path_factory.mktemp("mlflow")
    env = {**os.environ, "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}

    def argv(port: int) -> list[str]:
        return [
            mlflow_cli, "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ]  # fmt: skip

    with http_server(argv, "/health", root / "server", 120, 15, env=env, cwd=root) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str):  # noqa: ANN201
    """One real ``dvc repro`` on tiny data (plus a second real ``melanoma register``), against the
    session's MLflow server; shared by the app and report tests (integration/tiny_pipeline.py)."""
    from integration.tiny_pipeline import build

    pipeline = build(tmp_path_factory.mktemp("tiny-pipeline"), mlflow_server)
    print(f"\ntiny pipeline: dvc repro + second register in {pipeline.seconds:.0f} s")
    return pipeline


# --- A real headless browser (Debian's chromium driven by Playwright), loopback only --------------------------

CHROMIUM = Path("/usr/bin/chromium")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# DESIGN.md "Real components": headless, no sandbox (CI runs as root), nothing that phones home.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
    "--disable-dev-shm-usage", "--disable-default-apps", "--disable-domain-reliability",
    "--no-default-browser-check", "--metrics-recording-only",
    # Defence in depth below Playwright's routing: no host name but loopback resolves at all.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]  # fmt: skip
INSTALL_HINT = (
    "install Debian's chromium and Playwright for Python: `apt-get install -y chromium` and "
    "`.venv/bin/pip install -e '.[dev]' -c constraints.txt` (never `playwright install`; .ci/run does both)"
)


def is_loopback(url: str) -> bool:
    """True for URLs a test page may load: loopback http(s)/ws(s), or ones without a network (data:, blob:)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in {"http", "https", "ws", "wss"}:
        return parts.scheme in {"data", "blob", "about"}
    return (parts.hostname or "") in LOOPBACK_HOSTS


class BrowserView:
    """One open page in its own fresh context. ``requests``: every URL it asked for; ``blocked``: the ones
    refused because their host was not loopback (the route aborts them before they leave); ``responses``:
    the URLs that got an answer; ``failed``: requests that got none (blocked ones included)."""

    def __init__(self, context, page) -> None:  # noqa: ANN001 - playwright types imported lazily
        self.context, self.page = context, page
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.responses: list[str] = []
        self.failed: list[str] = []
        self.console_errors: list[str] = []

    def outside_loopback(self, urls: list[str]) -> list[str]:
        return [u for u in urls if not is_loopback(u)]

    def text(self) -> str:
        return self.page.inner_text("body")

    def screenshot(self, folder: Path, name: str) -> Path:
        """Full-page PNG into ``folder`` (a test's tmp_path) and, when ``MELANOMA_TEST_ARTIFACTS`` names a
        folder, a copy there as well, so CI can keep what the browser showed."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        keep = os.environ.get("MELANOMA_TEST_ARTIFACTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, Path(keep) / path.name)
        return path


class LoopbackBrowser:
    """A launched Chromium; ``open(url)`` gives a page whose every non-loopback request is aborted."""

    def __init__(self, browser) -> None:  # noqa: ANN001
        self.browser = browser

    @contextlib.contextmanager
    def open(self, url: str, timeout_s: float = 60) -> Iterator[BrowserView]:
        # Service workers would fetch past the route; blocking them keeps every request visible.
        context = self.browser.new_context(viewport={"width": 1440, "height": 900}, service_workers="block")
        context.set_default_timeout(timeout_s * 1000)
        context.set_default_navigation_timeout(timeout_s * 1000)
        view = BrowserView(context, context.new_page())

        def route(r) -> None:  # noqa: ANN001
            if is_loopback(r.request.url):
                r.continue_()
            else:
                view.blocked.append(r.request.url)
                r.abort("blockedbyclient")

        def route_ws(ws) -> None:  # noqa: ANN001
            if is_loopback(ws.url):
                ws.connect_to_server()
            else:
                view.blocked.append(ws.url)
                ws.close()

        context.route("**/*", route)
        context.route_web_socket("**/*", route_ws)
        context.on("request", lambda req: view.requests.append(req.url))
        context.on("response", lambda resp: view.responses.append(resp.url))
        context.on("requestfailed", lambda req: view.failed.append(f"{req.url} ({req.failure})"))
        view.page.on("console", lambda m: m.type == "error" and view.console_errors.append(m.text))
        try:
            view.page.goto(url, wait_until="domcontentloaded")
            yield view
        finally:
            context.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[LoopbackBrowser]:
    """Headless Debian Chromium via Playwright (a fresh temporary profile per launch), for UI tests."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright for Python is not installed: {INSTALL_HINT}")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: {INSTALL_HINT}")
    with sync_playwright() as pw:
        try:
            # Playwright itself gives each launch a fresh --user-data-dir (and refuses one in args).
            chromium = pw.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=120_000
            )
        except PlaywrightError as e:
            pytest.fail(f"{CHROMIUM} did not start under Playwright: {e}")
        try:
            yield LoopbackBrowser(chromium)
        finally:
            chromium.close()
