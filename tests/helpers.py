"""Helpers shared by the tests: tiny raw layouts built by hand (independent of the synthetic generator).

A module of its own (not conftest.py) so that ``from helpers import ...`` works from every test
folder: a conftest.py in a subfolder would shadow the top one under the name ``conftest``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
from PIL import Image

from melanoma.raw_layout import write_raw_metadata

LICENSES = {"CC-0": "CC0 1.0 (test)", "CC-BY": "CC BY 4.0 (test)"}


def lesion_image(rng: np.random.Generator, melanoma: bool, w: int = 160, h: int = 120) -> Image.Image:
    """A skin-coloured frame with a dark blob; melanoma blobs are bigger and bluer (an easy signal)."""
    arr = np.empty((h, w, 3), np.float32)
    arr[:] = (200, 160, 140)
    arr += rng.normal(0, 6, arr.shape)
    yy, xx = np.mgrid[0:h, 0:w]
    r = (0.32 if melanoma else 0.16) * h * rng.uniform(0.85, 1.15)
    mask = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < r**2
    arr[mask] = (60, 60, 110) if melanoma else (110, 70, 50)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_raw(raw: Path, n: int = 40, seed: int = 0, pos_every: int = 4) -> list[dict]:
    """A raw layout of ``n`` labelled images, every ``pos_every``-th a melanoma, 2 images per patient."""
    rng = np.random.default_rng(seed)
    (raw / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        mel = i % pos_every == 0
        isic_id = f"ISIC_{i:07d}"
        (raw / "images" / f"{isic_id}.jpg").write_bytes(jpeg_bytes(lesion_image(rng, mel)))
        rec = {
            "isic_id": isic_id,
            "attribution": "Anonymous",
            "copyright_license": "CC-0",
            "pixels_x": 160,
            "pixels_y": 120,
            "patient_id": f"IP_{i // 2:07d}",
            "lesion_id": f"IL_{i:07d}",
            "age_approx": 30 + 5 * (i % 10),
            "sex": "male" if i % 3 else "female",
            "anatom_site_1": "Trunk",
            "diagnosis_1": "Malignant" if mel else "Benign",
            "diagnosis_2": "Malignant melanocytic proliferations (Melanoma)"
            if mel
            else "Benign melanocytic proliferations",
            "diagnosis_3": "Melanoma Invasive" if mel else "Nevus",
        }
        records.append(rec)
    write_raw_metadata(raw, records, LICENSES, {"source": "test"})
    return records


def tiny_params(test_fraction: float, val_fraction: float, bootstrap: int, **sections):  # noqa: ANN003, ANN201
    """Params for the unit tests' tiny studies: 24 px images, one worker, a logistic-regression baseline;
    ``sections`` (e.g. ``ensemble=EnsembleParams(...)``) are added or replace the defaults."""
    from melanoma.config import BaselineParams, EvaluateParams, Params, PrepareParams, SplitParams

    base = {
        "prepare": PrepareParams(image_size=24, workers=1),
        "split": SplitParams(test_fraction=test_fraction, val_fraction=val_fraction),
        "baseline": BaselineParams(candidates=("logistic_regression",)),
        "evaluate": EvaluateParams(bootstrap=bootstrap),
    }
    return Params(**(base | sections))


def local_tracking(root: Path, experiment: str):  # noqa: ANN201
    """An MLflow tracking target in ``root``: a sqlite store and a local artifact folder."""
    from melanoma.tracking import Tracking

    return Tracking(
        uri=f"sqlite:///{root / 'mlflow.db'}",
        experiment=experiment,
        artifact_location=(root / "mlartifacts").as_uri(),
    )


def prepared_and_split(root: Path, params, n: int, pos_every: int) -> tuple[Path, Path]:  # noqa: ANN001
    """raw -> prepare -> split under ``root`` with ``params`` (a melanoma.config.Params); returns the two folders."""
    from melanoma.contracts import load_prepared, write_splits
    from melanoma.prepare import prepare
    from melanoma.split import split_frame, split_report

    make_raw(root / "raw", n=n, pos_every=pos_every)
    prepare(root / "raw", root / "prepared", params.prepare)
    _, index = load_prepared(root / "prepared")
    frames = split_frame(index, params.split, params.base.seed)
    write_splits(root / "splits", frames, split_report(frames))
    return root / "prepared", root / "splits"


def save_local_pyfunc(model_dir: Path, dest: Path) -> None:
    """Save a trained model folder as the project's pyfunc at ``dest`` (a local MLflow model)."""
    import mlflow

    from melanoma.pyfunc import MODEL_DIR_ARTIFACT, MelanomaPyfunc, image_signature

    mlflow.pyfunc.save_model(
        dest,
        python_model=MelanomaPyfunc(),
        artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
        signature=image_signature(),
        pip_requirements=["mlflow"],  # skips requirement inference (a slow subprocess)
    )


def asgi_request(
    app: Any, method: str, path: str, body: bytes = b"", content_type: str = "", query: dict | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI interface: status, headers, body."""
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type:
        headers.append((b"content-type", content_type.encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": urlencode(query or {}).encode(), "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # a thread of its own: asyncio.run refuses to nest in a loop an earlier test left running
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()
    start = next(m for m in sent if m["type"] == "http.response.start")
    out_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], out_headers, payload
