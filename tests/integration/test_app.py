"""The app over HTTP (issue 11): `melanoma serve` in a subprocess on 127.0.0.1 over the registry that the
project's own `register` stage wrote in a real tiny pipeline run (integration/tiny_pipeline.py: two versions,
the champion where register left it). What the app shows is checked against what register and evaluate
wrote (the champion alias, the version's threshold, reports/metrics/<name>.json), never against numbers
typed here. API, bad input, fuzzing with bounded memory, a load test with the champion alias moved under
it, and the page in a real headless Chromium."""

from __future__ import annotations

import io
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
import requests
from PIL import Image

from integration.app_support import (
    MODEL,
    Registry,
    Server,
    move_champion,
    percentile_ms,
    png_bytes,
    post_image,
    registry_of,
    sample_jpeg,
    serve,
    wait_for,
)
from integration.test_app_page import expected_summary
from melanoma.serve.provenance import SYNTHETIC_WARNING

if TYPE_CHECKING:
    from integration.conftest import LoopbackBrowser
    from integration.tiny_pipeline import TinyPipeline

pytestmark = pytest.mark.integration

MAX_UPLOAD = 300_000  # bytes (serve.max_upload_mb: 0.3), small so that "too large" is cheap to send
MAX_PIXELS = 4_000_000
LOAD_SECONDS = float(os.environ.get("MELANOMA_APP_LOAD_S", "10"))  # the benchmark runs the full 30 s


@pytest.fixture(scope="module")
def registry(tiny_pipeline: TinyPipeline) -> Registry:
    return registry_of(tiny_pipeline)


@pytest.fixture(scope="module")
def server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    params = {
        "max_upload_mb": MAX_UPLOAD / 1e6,
        "max_pixels": MAX_PIXELS,
        "max_batch": 4,
        "poll_seconds": 0.5,
    }
    with serve(tmp_path_factory.mktemp("app-serve"), registry, params) as srv:
        yield srv


def expected_answer(registry: Registry, name: str, data: bytes) -> tuple[float, float]:
    """(probability, threshold) of the registered model for ``data`` decoded the way prepare decodes
    files (with the draft settings its model.json records), read from the version's own files."""
    import mlflow

    from melanoma.contracts import read_model_json
    from melanoma.images import load_resized

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    # both: a server's registry hands out mlflow-artifacts: URIs, which only its tracking URI resolves
    mlflow.set_tracking_uri(registry.uri)
    mlflow.set_registry_uri(registry.uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/{registry.versions[name]}")
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    wrapper = pyfunc.unwrap_python_model()
    model, info = wrapper.model, read_model_json(wrapper.model_dir)
    pixels = load_resized(
        data, model.image_size, model.fit, info["draft"], info["draft_margin"],
        info.get("color_constancy", "none"), info.get("color_constancy_power", 6.0),
    )  # fmt: skip
    return float(model.predict_proba(pixels[None])[0]), float(info["threshold"])


def expected_probability(registry: Registry, name: str, data: bytes) -> float:
    return expected_answer(registry, name, data)[0]


def champion_alias(registry: Registry) -> str:
    """The version the registry's champion alias points at now (read from the server, not from a test)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    return str(client.get_model_version_by_alias(MODEL, "champion").version)


def explanation_of(family: str, members: list[str]) -> str:
    """What the app explains a model with: Grad-CAM for Keras models (and ensembles with a deep member),
    the lesion mask for the baseline."""
    if family == "ensemble":
        return "grad-cam" if set(members) & {"cnn", "transfer"} else "none"
    return "grad-cam" if family == "keras" else "lesion-mask"


def test_health_model_predict_and_batch_over_http(server: Server, registry: Registry) -> None:
    pipeline, champ = registry.pipeline, registry.champion
    decision = pipeline.second  # the last register run: its record names the champion it left
    version = registry.versions[champ]
    assert champion_alias(registry) == version == str(decision["champion_after"])
    health = requests.get(f"{server.url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["model"]["version"] == version

    info = requests.get(f"{server.url}/model", timeout=30).json()
    model_json = pipeline.model_json(champ)
    assert (info["name"], info["registered_model"]) == (champ, MODEL)
    assert info["family"] == model_json["family"]
    assert info["explanation"] == explanation_of(model_json["family"], model_json.get("members", []))
    # The version's threshold: model.json's own, as evaluate used it (register's tag rounds it) ...
    registered = pipeline.candidate(champ)
    assert info["threshold"] == model_json["threshold"] and registered["threshold"] == round(
        info["threshold"], 6
    )
    # ... its test metrics as evaluate wrote them to reports/metrics/<name>.json ...
    test = pipeline.metrics(champ)["test"]
    assert {"roc_auc", "sensitivity", "specificity", "n", "n_melanoma"} <= set(info["test_metrics"])
    assert info["test_metrics"] == {k: pytest.approx(test[k], abs=5e-7) for k in info["test_metrics"]}
    assert info["test_metrics"]["roc_auc"] == registered["test_roc_auc"]
    # ... and the data it was trained and tested on.
    assert info["data_hashes"] == model_json["data"]

    image = sample_jpeg(seed=1, w=640, h=480)  # any size: the app resizes as prepare does
    multipart = post_image(server.url, image).json()
    raw = requests.post(
        f"{server.url}/predict", data=image, headers={"Content-Type": "image/jpeg"}, timeout=30
    ).json()
    assert multipart == raw
    assert multipart["probability"] == pytest.approx(expected_probability(registry, champ, image), abs=1e-5)
    assert multipart["threshold"] == model_json["threshold"]
    assert multipart["melanoma"] == (multipart["probability"] >= multipart["threshold"])
    assert multipart["label"] == ("melanoma" if multipart["melanoma"] else "not melanoma")
    assert multipart["model"] == {"name": champ, "version": version, "registered_model": MODEL}

    explained = post_image(server.url, image, explain="true").json()["explanation"]
    assert explained["kind"] == info["explanation"]
    heat = Image.open(io.BytesIO(__import__("base64").b64decode(explained["image_png_b64"])))
    assert heat.format == "PNG" and heat.size == (256, 256)

    files = [
        ("files", (f"{i}.png", png_bytes(Image.open(io.BytesIO(sample_jpeg(i)))), "image/png"))
        for i in range(3)
    ]
    batch = requests.post(f"{server.url}/predict/batch", files=files, timeout=60).json()
    assert [r["filename"] for r in batch["results"]] == ["0.png", "1.png", "2.png"]
    assert batch["model"]["version"] == version

    schema = requests.get(f"{server.url}/openapi.json", timeout=30).json()
    assert {"/predict", "/predict/batch", "/health", "/model"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert requests.get(f"{server.url}/docs", timeout=30).status_code == 200


def version_record(registry: Registry, name: str) -> tuple[dict[str, str], str, dict[str, str]]:
    """(tags, run id, run tags) of ``name``'s registry version, read from the registry itself."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    mv = client.get_model_version(MODEL, registry.versions[name])
    return dict(mv.tags), str(mv.run_id), dict(client.get_run(mv.run_id).data.tags)


def test_model_says_it_learnt_from_generated_images_and_its_scores_in_words(
    server: Server, registry: Registry
) -> None:
    """Issue 20: the tiny pipeline's champion was trained on the synthetic sample: /model says so (its
    model.json's trained_on), every answer warns, and its scores are sentences whose numbers are
    evaluate's (reports/metrics/<name>.json, recomputed here), with the version's lineage."""
    champ, pipeline = registry.champion, registry.pipeline
    model_json = pipeline.model_json(champ)
    info = requests.get(f"{server.url}/model", timeout=30).json()
    assert info["trained_on"] == model_json["trained_on"]
    assert info["trained_on"]["source"] == "synthetic" and info["trained_on"]["synthetic"] is True
    assert "generated images" in info["trained_on"]["name"]
    assert info["trained_on"]["n_train"] == model_json["n_train"] > 0
    assert info["warnings"] == [SYNTHETIC_WARNING]

    tags, run_id, run_tags = version_record(registry, champ)
    assert info["version"] == registry.versions[champ]
    assert info["lineage"]["run_id"] == run_id
    assert info["lineage"]["git_commit"] == tags["git_commit"] and len(tags["git_commit"]) == 40
    assert info["data_hashes"] == model_json["data"]

    columns = model_json["metadata_columns"]
    assert info["metadata"]["columns"] == columns
    # the MLflow run holds every block as numbers; the external set's name is text: named only where
    # the run carries it as a tag
    named = bool(run_tags.get("external_name"))
    assert info["summary"] == expected_summary(pipeline.metrics(champ), columns, external_named=named)
    assert any(s.startswith("On the external set") for s in info["summary"])

    image = sample_jpeg(seed=12)
    one = post_image(server.url, image, explain="true").json()
    assert one["warnings"][0] == SYNTHETIC_WARNING  # first; a missing-metadata warning may follow
    files = [("files", (f"{i}.jpg", sample_jpeg(seed=13 + i), "image/jpeg")) for i in range(2)]
    batch = requests.post(f"{server.url}/predict/batch", files=files, params={"explain": "true"}, timeout=60)
    assert batch.status_code == 200, batch.text
    body = batch.json()
    assert body["warnings"][0] == SYNTHETIC_WARNING
    for r in body["results"]:
        assert r["explanation"]["kind"] == info["explanation"] == one["explanation"]["kind"]
        heat = Image.open(io.BytesIO(__import__("base64").b64decode(r["explanation"]["image_png_b64"])))
        assert heat.format == "PNG" and heat.size == (256, 256)


def test_page_banner_summary_and_a_batch_table_with_heat_maps_in_chromium(
    server: Server, registry: Registry, browser: LoopbackBrowser, tmp_path: Path
) -> None:
    images = []
    for i in range(2):
        images.append(tmp_path / f"lesion-{i}.jpg")
        images[-1].write_bytes(sample_jpeg(seed=30 + i, melanoma=bool(i), w=400, h=300))
    info = requests.get(f"{server.url}/model", timeout=30).json()
    with browser.open(f"{server.url}/") as view:
        page = view.page
        page.locator("#banner").filter(has_text="Trained on generated images").wait_for()
        banner = page.inner_text("#banner")
        trained_on = page.inner_text("#trained-on")
        summary = page.locator("#metric-summary li").all_inner_texts()
        patient_visible = page.locator("#patient").is_visible()
        page.set_input_files("#file", [str(p) for p in images])
        page.locator(".batch-row img.heat").nth(1).wait_for()
        rows = page.locator(".batch-row")
        table = [rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count())]
        widths = page.locator(".batch-row img.heat").evaluate_all(
            "imgs => Promise.all(imgs.map((i) => i.decode().then(() => i.naturalWidth)))"
        )
        warnings = page.inner_text("#warnings")
        view.screenshot(tmp_path, "app-page-batch")
        assert view.outside_loopback(view.requests) == [] and view.blocked == []
        assert view.console_errors == []
    assert banner.strip() == SYNTHETIC_WARNING
    assert trained_on == info["trained_on"]["name"]
    assert summary == [f"{s}." for s in info["summary"]]
    assert patient_visible == bool(info["metadata"]["columns"])
    assert widths == [256, 256]
    assert SYNTHETIC_WARNING in warnings
    # each row is the API's answer for that file
    api = requests.post(
        f"{server.url}/predict/batch",
        files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in images],
        timeout=60,
    ).json()["results"]
    assert [row[0] for row in table] == [p.name for p in images] == [r["filename"] for r in api]
    for row, r in zip(table, api, strict=True):
        assert float(row[1].split()[0]) == pytest.approx(100 * r["probability"], abs=0.051)
        assert row[2] == r["label"]


def huge_png() -> bytes:
    """A 3000x3000 greyscale PNG: a few kB on the wire, 9 Mpx decoded (over MAX_PIXELS)."""
    return png_bytes(Image.new("L", (3000, 3000)))


def bad_uploads() -> list[tuple[str, dict, int, str]]:
    """(case, requests.post kwargs, expected status, words in the message)."""
    good = sample_jpeg(seed=2)
    gif = io.BytesIO()
    Image.new("RGB", (20, 20)).save(gif, "GIF")
    big = os.urandom(MAX_UPLOAD + 10)
    return [
        ("empty multipart file", {"files": {"file": ("a.jpg", b"", "image/jpeg")}}, 400, "empty"),
        ("empty raw body", {"data": b"", "headers": {"Content-Type": "image/jpeg"}}, 400, "empty"),
        ("truncated jpeg", {"files": {"file": ("a.jpg", good[: len(good) // 2], "image/jpeg")}}, 422, "truncated"),
        ("text as jpeg", {"files": {"file": ("a.jpg", b"hello world" * 20, "image/jpeg")}}, 415, "not a JPEG or PNG"),
        ("gif", {"files": {"file": ("a.gif", gif.getvalue(), "image/gif")}}, 415, "image/jpeg or image/png"),
        ("gif as octet-stream", {"data": gif.getvalue(), "headers": {"Content-Type": "application/octet-stream"}}, 415, "not a JPEG or PNG"),
        ("jpeg declared png", {"files": {"file": ("a.png", good, "image/png")}}, 415, "declared image/png"),
        ("pdf content type", {"files": {"file": ("a.pdf", good, "application/pdf")}}, 415, "unsupported content type"),
        ("json body", {"json": {"image": "x"}}, 415, "unsupported content type"),
        ("too many bytes", {"files": {"file": ("a.jpg", big, "image/jpeg")}}, 413, "too large"),
        ("decompression bomb", {"files": {"file": ("a.png", huge_png(), "image/png")}}, 413, "pixels"),
        ("no file field", {"files": {"other": ("a.jpg", good, "image/jpeg")}}, 400, "no file"),
        ("broken multipart", {"data": b"--xyz\r\ngarbage", "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}}, 400, "no file in the form"),
        ("multipart without boundary", {"data": b"x", "headers": {"Content-Type": "multipart/form-data"}}, 400, "boundary"),
        ("two files on /predict", {"files": [("file", ("a.jpg", good, "image/jpeg"))] * 2}, 400, "/predict/batch"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", bad_uploads(), ids=lambda c: c[0])
def test_bad_input_gets_a_clear_4xx(server: Server, case: tuple[str, dict, int, str]) -> None:
    _, kwargs, status, words = case
    assert words.strip(), "a case must name words its message has: '' is in every string"
    r = requests.post(f"{server.url}/predict", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_batch_limits_and_a_bad_file_name_its_index(server: Server) -> None:
    good = sample_jpeg(seed=3)
    five = [("files", (f"{i}.jpg", good, "image/jpeg")) for i in range(5)]
    r = requests.post(f"{server.url}/predict/batch", files=five, timeout=60)
    assert r.status_code == 413 and "at most 4" in r.json()["detail"]
    mixed = [("files", ("a.jpg", good, "image/jpeg")), ("files", ("b.jpg", b"nope", "image/jpeg"))]
    r = requests.post(f"{server.url}/predict/batch", files=mixed, timeout=60)
    assert r.status_code == 415 and r.json()["detail"].startswith("file 2 of 2")


def mutate(rng: random.Random, seeds: list[bytes]) -> tuple[bytes, str]:
    """One malformed upload: flipped, cut, spliced, repeated or random bytes, under a random content type."""
    data = bytearray(rng.choice(seeds))
    kind = rng.randrange(6)
    if kind == 0:  # flip bytes anywhere (headers included)
        for _ in range(rng.randint(1, 40)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        data = data[: rng.randrange(1, len(data))]
    elif kind == 2:  # keep the magic, garbage after
        data = data[:16] + bytearray(rng.randbytes(rng.randint(0, 4000)))
    elif kind == 3:
        cut = rng.randrange(len(data))
        data = data[:cut] + data[cut:][::-1]
    elif kind == 4:
        data = bytearray(rng.randbytes(rng.randint(0, 3000)))
    else:  # a header patched to claim huge dimensions (PNG IHDR / JPEG SOF)
        data[16:24] = rng.randbytes(8)
    ctype = rng.choice(["image/jpeg", "image/png", "application/octet-stream", "text/plain", "image/gif", ""])
    return bytes(data), ctype


def test_fuzzing_500_malformed_uploads_never_5xx_and_memory_stays_bounded(server: Server) -> None:
    rng = random.Random(11)
    seeds = [sample_jpeg(seed=4), png_bytes(Image.open(io.BytesIO(sample_jpeg(seed=5)))), huge_png()]
    # Every choice is drawn here, in order, from the one seeded generator: the 4 sending threads draw
    # nothing, so the same 500 requests go out on every run.
    uploads = [(*mutate(rng, seeds), rng.random() < 0.5) for _ in range(500)]
    proc = psutil.Process(server.proc.pid)

    def send(item: tuple[bytes, str, bool]) -> int:
        data, ctype, multipart = item
        if multipart:
            return post_image(server.url, data, ctype or "application/octet-stream").status_code
        headers = {"Content-Type": ctype} if ctype else {}
        return requests.post(f"{server.url}/predict", data=data, headers=headers, timeout=60).status_code

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, uploads[:50]))  # warm-up: allocator pools and thread stacks settle
        rss_before = proc.memory_info().rss
        statuses = Counter(pool.map(send, uploads))
    rss_after = proc.memory_info().rss
    print(
        f"fuzz statuses {dict(statuses)}; server RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB"
    )
    assert not [s for s in statuses if s >= 500], statuses
    assert sum(statuses.values()) == 500
    assert rss_after - rss_before < 200 * 2**20  # bounded: no per-request leak of uploads or decodes
    assert requests.get(f"{server.url}/health", timeout=30).status_code == 200


def test_load_with_the_champion_moved_mid_run_fails_no_request(server: Server, registry: Registry) -> None:
    """20 clients for about LOAD_SECONDS; the alias moves to the other registered version halfway; every answer
    is 200 and its probability is exactly what the version it names gives (no request sees a half-swapped
    model). Both versions are the real register stage's: its first decision and a second register run."""
    champ, other = registry.champion, registry.other
    image = sample_jpeg(seed=6)
    expected = {}
    for name in (champ, other):
        prob, threshold = expected_answer(registry, name, image)
        # the app decides at the version's model.json threshold (register's tag is it to 6 decimals)
        assert registry.pipeline.candidate(name)["threshold"] == round(threshold, 6)
        expected[registry.versions[name]] = prob, threshold
    assert expected[registry.versions[champ]][1] != expected[registry.versions[other]][1]  # told apart
    latencies: list[float] = []
    failures: list[str] = []
    versions: list[str] = []
    mismatched: list[tuple[str, float]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = s.post(
                        f"{server.url}/predict",
                        data=image,
                        headers={"Content-Type": "image/jpeg"},
                        timeout=60,
                    )
                    ok = r.status_code == 200
                    body = r.json() if ok else None
                except requests.RequestException as exc:
                    ok, body, r = False, None, exc
                with lock:
                    if not ok:
                        failures.append(str(getattr(r, "text", r))[:200])
                        continue
                    latencies.append(time.perf_counter() - t0)
                    v = body["model"]["version"]
                    versions.append(v)
                    prob, threshold = expected[v]
                    if abs(body["probability"] - prob) > 1e-5 or body["threshold"] != threshold:
                        mismatched.append((v, body["probability"], body["threshold"]))

    threads = [threading.Thread(target=client) for _ in range(20)]
    started = time.monotonic()
    try:
        for t in threads:
            t.start()
        time.sleep(LOAD_SECONDS / 2)
        move_champion(registry, other)
        # The load goes on until the app serves the new champion (loading a Keras model on a busy machine
        # can take longer than the baseline's), then for the other half of LOAD_SECONDS.
        swapped = wait_for(
            lambda: (
                requests.get(f"{server.url}/health", timeout=30).json()["model"]["version"]
                == registry.versions[other]
            ),
            timeout=120,
        )
        time.sleep(LOAD_SECONDS / 2)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        # The new champion explains with its own kind (Grad-CAM for a Keras model, the lesion mask for
        # the baseline), so both explainers are exercised whichever model register made champion.
        info = registry.pipeline.model_json(other)
        explained = post_image(server.url, image, explain="true").json()
        assert explained["model"]["version"] == registry.versions[other]
        assert explained["explanation"]["kind"] == explanation_of(info["family"], info.get("members", []))
    finally:
        stop.set()
        move_champion(registry, champ)  # later tests expect register's champion; wait for it to be back
        assert wait_for(
            lambda: (
                requests.get(f"{server.url}/health", timeout=30).json()["model"]["version"]
                == registry.versions[champ]
            ),
            timeout=120,
        )
    n = len(latencies)
    print(
        f"load: 20 clients x {elapsed:.0f} s: {n} requests, {n / elapsed:.1f} req/s, "
        f"p50 {percentile_ms(latencies, 50):.1f} ms, p99 {percentile_ms(latencies, 99):.1f} ms, "
        f"versions served {dict(Counter(versions))}"
    )
    assert not failures, failures[:5]
    assert not mismatched, mismatched[:5]
    assert swapped and n > 0
    assert versions[0] == registry.versions[champ]
    # Both versions answered during the load, each with its own operating threshold (checked above).
    served = Counter(versions)
    assert served[registry.versions[champ]] > 0 and served[registry.versions[other]] > 0, served
    assert versions[-1] == registry.versions[other], "the new champion never took over under load"


def test_page_in_chromium_shows_probability_and_heat_map(
    server: Server, registry: Registry, browser: LoopbackBrowser, tmp_path: Path
) -> None:
    image = tmp_path / "lesion.jpg"
    image.write_bytes(sample_jpeg(seed=7, w=400, h=300))
    with browser.open(f"{server.url}/") as view:
        page = view.page
        # Locators, not wait_for_function: the page's CSP (no 'unsafe-eval') blocks string evaluation.
        page.locator("#model-version").filter(has_text=f"{MODEL} v").wait_for()
        assert "not a medical device" in view.text()
        page.set_input_files("#file", str(image))
        page.locator("#probability").filter(has_text="%").wait_for()
        page.locator("#heatmap[src^='data:image/png']").wait_for()
        assert page.locator("#heatmap").evaluate("img => img.decode().then(() => img.naturalWidth)") == 256
        shot = view.screenshot(tmp_path, "app-page")
        text = view.text()
        heat_src = page.get_attribute("#heatmap", "src") or ""
        preview_src = page.get_attribute("#preview", "src") or ""
        decision = page.inner_text("#decision")
        caption = page.inner_text("#heatcaption")
        assert view.outside_loopback(view.requests) == [] and view.blocked == []
        assert view.console_errors == []
    assert shot.stat().st_size > 10_000
    assert f"{MODEL} v{registry.versions[registry.champion]}" in text
    kind = requests.get(f"{server.url}/model", timeout=30).json()["explanation"]
    assert caption.startswith(f"{kind}: "), caption  # the heat map is captioned with what made it
    assert heat_src.startswith("data:image/png;base64,") and preview_src.startswith("blob:")
    # The page shows the API's answer for the same file (to the one decimal it prints).
    api = post_image(server.url, image.read_bytes(), "image/jpeg").json()
    assert float(page_probability(text)) == pytest.approx(100 * api["probability"], abs=0.051)
    assert decision == api["label"] and api["melanoma"] == (api["probability"] >= api["threshold"])


def page_probability(text: str) -> str:
    import re

    match = re.search(r"(\d+(?:\.\d+)?) %", text)
    assert match, text
    return match.group(1)
